"""Which input channel a region's prediction relied on: CT windows, MR sequences, any multi-channel input.

Two estimators, each giving every channel a signed contribution and a share ``|contribution_c| / sum |.|``:

- ``"gradient"``, gradient x input summed over the channel: ``sum_v dS/dx_c(v) * (x_c(v) - fill)``, the
  first-order change of the region score ``S`` (:meth:`~monai_xres.regions.RegionTarget.score`) when channel
  ``c`` goes from the fill value to the image. Exact for a network linear in its input (then ``S`` minus
  its value on the all-``fill`` input is the sum of the contributions).
- ``"masks"``, RISE with masks drawn per channel: mask ``i`` (of
  :class:`~monai_xres.explainers.rise.masks.MaskSettings`) perturbs channel ``i mod C`` alone, the others
  kept as they are. The contribution of channel ``c`` is the mean score lost over its masks per removed
  fraction, ``mean_i (S - S_i) / (1 - p_keep)``: for a network linear in its input its expectation is the
  gradient x input contribution, and for a channel the network ignores every ``S_i`` equals ``S``, so it is
  exactly 0 (not merely in expectation). Its standard error over the masks is reported.

A channel the network provably ignores (zero weights) gets an exactly zero gradient contribution.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from monai_xres.explainers.base import Explainer, network_errors, predict, preserved_model_state
from monai_xres.explainers.rise.masks import MaskSettings, mask_windows
from monai_xres.explainers.rise.scoring import region_scorer
from monai_xres.networks import run_network
from monai_xres.regions.target import RegionTarget

__all__ = ["ChannelShares", "ESTIMATORS", "channel_shares", "gradient_channel_shares", "mask_channel_shares"]

ESTIMATORS = ("gradient", "masks")


@dataclass
class ChannelShares:
    """One estimator's answer: per channel the signed ``contribution``, its ``share`` of the total absolute
    contribution, a ``standard_error`` (masks only), and optionally one map per channel ``(C, *spatial)``."""

    estimator: str
    contribution: list[float]
    share: list[float]
    standard_error: list[float] | None = None
    maps: torch.Tensor | None = None

    def describe(self) -> dict:
        """JSON-friendly, for sidecars."""
        out = {"estimator": self.estimator, "contribution": self.contribution, "share": self.share}
        if self.standard_error is not None:
            out["standard_error"] = self.standard_error
        return out


def _shares(contribution: torch.Tensor) -> list[float]:
    total = contribution.abs().sum()
    return (contribution.abs() / total).tolist() if float(total) > 0 else [0.0] * contribution.numel()


def _prepared(x: torch.Tensor, target: RegionTarget | int):
    plain, targets, affines = Explainer.prepare(x, target)
    if plain.shape[0] != 1:
        raise ValueError(f"Channel shares take one sample, got a batch of {plain.shape[0]}: pass x[i:i + 1].")
    return plain, targets[0], affines[0]


def gradient_channel_shares(network: nn.Module, x: torch.Tensor, target: RegionTarget | int, fill: float = 0.0,
                            inferer=None, keep_maps: bool = False) -> ChannelShares:
    """Gradient x input per channel of one sample ``x`` ``(1, C_in, *spatial)`` (see the module docstring)."""
    x, target, affine = _prepared(x, target)
    with torch.inference_mode(False), preserved_model_state(network):
        leaf = x.detach().clone().requires_grad_(True)
        with torch.enable_grad(), network_errors(leaf):
            logits = run_network(network, leaf, inferer)
            region = target.region(logits[0].detach(), affine)
            (grad,) = torch.autograd.grad(target.score(logits[0].float(), region), leaf)
    maps = (grad * (x - fill))[0].detach()
    contribution = maps.flatten(1).sum(1, dtype=torch.float64)
    return ChannelShares("gradient", contribution.tolist(), _shares(contribution), None,
                         maps.float() if keep_maps else None)


def mask_channel_shares(network: nn.Module, x: torch.Tensor, target: RegionTarget | int, n_masks: int = 256,
                        masks: MaskSettings | None = None, score: str = "logit", fill: float = 0.0,
                        batch_size: int = 8, inferer=None, keep_maps: bool = False,
                        supplied: torch.Tensor | None = None) -> ChannelShares:
    """RISE with masks drawn per channel, on one sample ``x`` ``(1, C_in, *spatial)`` (see the module docstring).

    Args:
        n_masks: masked inputs ``N``, about ``N / C_in`` per channel (mask ``i`` on channel ``i mod C_in``).
        masks: the mask distribution (default ``MaskSettings()``: 7 cells per axis, ``p_keep`` 0.5, seed 0).
        score: ``"logit"`` (the region score) or a RISE Dice score (``"dice"``, ``"soft_dice"``).
        fill, batch_size, inferer: as :class:`~monai_xres.explainers.rise.SegRISE`.
        keep_maps: also return each channel's centred RISE map ``sum_i (S_i - mean) m_i / (N_c p_keep)``.
        supplied: spatial masks ``(N, *spatial)`` to use instead of generated ones.
    """
    x, target, affine = _prepared(x, target)
    n_channels, spatial = x.shape[1], tuple(x.shape[2:])
    count = n_masks if supplied is None else supplied.shape[0]
    if count < n_channels:
        raise ValueError(f"n_masks={count} leaves a channel without masks: give at least {n_channels}.")
    settings = masks or MaskSettings()
    spec = settings.spec(spatial)
    logits = predict(network, x, inferer)
    region = target.region(logits[0], affine)
    area = target.score_area(logits[0], affine)
    scorer = region_scorer(score, target, region, area, target.decision(logits)[0] & area)
    full = float(scorer(logits)[0])
    fill_t = torch.tensor(fill, dtype=x.dtype, device=x.device)
    scores: list[list[float]] = [[] for _ in range(n_channels)]
    weighted = torch.zeros((n_channels, *spatial), dtype=torch.float64, device=x.device) if keep_maps else None
    mask_sum = torch.zeros_like(weighted) if keep_maps else None
    for first in range(0, count, batch_size):
        ids = list(range(first, min(first + batch_size, count)))
        batch = supplied[ids].to(x.device, x.dtype) if supplied is not None else \
            mask_windows(spec, ids, (0,) * len(spatial), spatial, x.device, x.dtype)[:, 0]
        keep = torch.ones((len(ids), *x.shape[1:]), dtype=x.dtype, device=x.device)
        for j, i in enumerate(ids):
            keep[j, i % n_channels] = batch[j]
        new = scorer(predict(network, torch.addcmul(fill_t, x - fill_t, keep), inferer)).tolist()
        for j, i in enumerate(ids):
            scores[i % n_channels].append(new[j])
            if keep_maps:
                weighted[i % n_channels] += new[j] * batch[j].double()
                mask_sum[i % n_channels] += batch[j].double()
    drop = 1.0 - spec.p_keep
    losses = [(full - torch.tensor(v, dtype=torch.float64)) / drop for v in scores]
    contribution = torch.stack([v.mean() for v in losses])
    se = [float(v.std() / len(v) ** 0.5) if len(v) > 1 else float("nan") for v in losses]
    maps = None
    if keep_maps:  # centred: sum_i (S_i - mean) m_i = sum_i S_i m_i - mean * sum_i m_i
        shape = (n_channels,) + (1,) * len(spatial)
        n = torch.tensor([len(v) for v in scores], dtype=torch.float64, device=x.device).view(shape)
        mean = torch.tensor([sum(v) / len(v) for v in scores], dtype=torch.float64, device=x.device).view(shape)
        maps = ((weighted - mean * mask_sum) / (n * spec.p_keep)).float()
    return ChannelShares("masks", contribution.tolist(), _shares(contribution), se, maps)


def channel_shares(network: nn.Module, x: torch.Tensor, target: RegionTarget | int,
                   estimators: Sequence[str] = ESTIMATORS, **options) -> dict[str, ChannelShares]:
    """Every requested estimator's :class:`ChannelShares`; ``options`` go to the estimators that take them
    (``fill``, ``inferer``, ``keep_maps`` to both; ``n_masks``, ``masks``, ``score``, ``batch_size`` to masks).
    A one-channel input skips the masks (its share is 1; contribution NaN)."""
    unknown = [e for e in estimators if e not in ESTIMATORS]
    if unknown:
        raise ValueError(f"Unknown channel-share estimator(s) {unknown}: use {list(ESTIMATORS)}.")
    common = {k: options[k] for k in ("fill", "inferer", "keep_maps") if k in options}
    out = {}
    if "gradient" in estimators:
        out["gradient"] = gradient_channel_shares(network, x, target, **common)
    if "masks" in estimators and x.shape[1] == 1:  # one channel holds the whole share: no masks to spend
        out["masks"] = ChannelShares("masks", [float("nan")], [1.0], [float("nan")])
    elif "masks" in estimators:
        out["masks"] = mask_channel_shares(network, x, target, **options)
    return out
