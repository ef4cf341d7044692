"""Faithfulness metrics of saliency maps for segmentation: does a map show what the network used?

An explanation is judged by what happens to the network's output when the voxels it ranks high are
kept or removed, by whether it changes when the network's weights are randomised
(:mod:`monai_xres.metrics.randomisation`), and by where its mass lies; never by its overlap with the organ.

Every metric works on one sample ``x`` ``(1, C_in, *spatial)`` (2D or 3D), its saliency on the input
grid (``(1, 1, *spatial)``, ``(1, *spatial)`` or ``spatial``) and a
:class:`~monai_xres.regions.RegionTarget`. Perturbed inputs are ``fill + (x - fill) * keep``, all
channels alike, re-predicted in batches under ``torch.no_grad()`` in eval mode, the network left as found.

What is compared after a perturbation (``W`` is the target's region before its intersection with the
prediction, e.g. the box or the organ label; ``M`` the resolved region ``(argmax == c) ∩ W``):

- region score: :meth:`RegionTarget.score` of the new output on the original ``M`` (sum of class-``c``
  logits over ``M``), the score every explainer explains;
- region Dice: ``2|A ∩ B| / (|A| + |B|)`` with ``A`` the original prediction of class ``c`` in ``W`` and
  ``B`` the new one in ``W`` (the Seg-XRes-CAM paper's masking test and RISE score; 1 when both are empty).
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from scipy import ndimage
from torch import nn
from tqdm.auto import tqdm

from monai_xres.explainers.base import Explainer, batched, predict
from monai_xres.explainers.maps import normalize
from monai_xres.regions.scores import batch_class_mask, count_true, dice, predicted_class_mask
from monai_xres.regions.target import RegionTarget

__all__ = ["MaskingCurve", "PerturbationCurve", "RegionReference", "auc", "deletion_insertion", "locality",
           "masking_curve", "saliency_order", "spacing_of"]


@dataclass
class MaskingCurve:
    """Masking test over dilation distances: ``dice[i]``, ``score[i]`` with ``retained[i]`` of the voxels kept."""

    dilation: list[float]
    retained: list[float]
    dice: list[float]
    score: list[float]


@dataclass
class PerturbationCurve:
    """Deletion or insertion curve: ``fraction[k]`` of the voxels removed (deletion) or restored (insertion).

    ``score`` is the region score rescaled so that the original input gives 1 and the all-``fill`` input 0
    (NaN when the two are equal); ``raw_score`` is unscaled; ``dice`` the region Dice.
    """

    fraction: list[float]
    score: list[float]
    raw_score: list[float]
    dice: list[float]

    @property
    def auc_score(self) -> float:
        return auc(self.fraction, self.score)

    @property
    def auc_dice(self) -> float:
        return auc(self.fraction, self.dice)


def auc(x: Sequence[float], y: Sequence[float]) -> float:
    """Trapezoidal area under ``y(x)``."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    return float(((y[1:] + y[:-1]) * np.diff(x)).sum() / 2)


class RegionReference:
    """The unperturbed prediction of one sample and the scores of perturbed predictions against it.

    Args:
        network: the segmentation network.
        x: one sample ``(1, C_in, *spatial)`` (a ``MetaTensor`` gives the affine for mm points).
        target: the region to score.
    """

    def __init__(self, network: nn.Module, x: torch.Tensor, target: RegionTarget | int) -> None:
        x, targets, affines = Explainer.prepare(x, target)
        if x.shape[0] != 1:
            raise ValueError(f"Metrics take one sample at a time, got a batch of {x.shape[0]}: pass x[i:i + 1].")
        self.network, self.x, self.target = network, x, targets[0]
        self.logits = predict(network, x)[0]
        self.region = self.target.region(self.logits, affines[0])
        self.area = self.region
        if self.target.restrict_to_prediction:
            self.area = dataclasses.replace(self.target, restrict_to_prediction=False).region(self.logits, affines[0])
        self.predicted = predicted_class_mask(self.logits, self.target.class_index) & self.area
        self.score = float(self.target.score(self.logits.float(), self.region))

    def __call__(self, out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Region score and region Dice, float64 ``(b,)`` each, of outputs ``(b, C, *spatial)``."""
        scores = torch.stack([self.target.score(o.float(), self.region) for o in out]).double()
        new = batch_class_mask(out, self.target.class_index) & self.area
        return scores, dice(count_true(new & self.predicted), count_true(new), float(self.predicted.sum()))

    def repredict(self, keeps: Iterable[torch.Tensor], fill: float, batch_size: int, total: int | None = None,
                  desc: str = "re-predict", verbose: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """Scores and Dices of ``fill + (x - fill) * keep`` for each ``keep`` (``spatial``, bool or float)."""
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}.")
        scores, dices = [], []
        with tqdm(total=total, desc=desc, unit="input", disable=None if verbose else True, leave=False) as bar:
            for batch in batched(keeps, batch_size):
                keep = torch.stack(batch)[:, None].to(self.x.device, self.x.dtype)
                s, d = self(predict(self.network, self.x * keep + fill * (1 - keep)))
                scores.append(s.cpu())
                dices.append(d.cpu())
                bar.update(len(batch))
        return torch.cat(scores).numpy(), torch.cat(dices).numpy()


def _as_map(saliency: torch.Tensor, spatial: Sequence[int]) -> torch.Tensor:
    """``saliency`` as a float ``spatial`` tensor, checked against the input grid."""
    s = saliency.as_tensor() if hasattr(saliency, "as_tensor") else torch.as_tensor(saliency)
    while s.ndim > len(spatial) and s.shape[0] == 1:
        s = s[0]
    if tuple(s.shape) != tuple(spatial):
        raise ValueError(f"The saliency map has shape {tuple(saliency.shape)}, not the input grid {tuple(spatial)}: "
                         "give one sample's map (1, 1, *spatial) on the input grid (the explainers' output).")
    if not bool(torch.isfinite(s).all()):
        raise ValueError("The saliency map has NaN/Inf values: check the explainer's output.")
    return s.float()


def spacing_of(x: torch.Tensor, spacing: Sequence[float] | None = None) -> tuple[float, ...]:
    """Voxel size in mm per spatial axis: ``spacing`` if given, else from a ``MetaTensor``'s affine, else 1."""
    n = x.ndim - 2
    affine = getattr(x, "affine", None)
    if spacing is not None or affine is None:
        return _spacing(spacing, n)
    affine = torch.as_tensor(affine, dtype=torch.float64).cpu()
    affine = affine[0] if affine.ndim == 3 else affine
    return tuple(float(v) for v in affine[:n, :n].norm(dim=0))


def _spacing(spacing: Sequence[float] | float | None, n: int) -> tuple[float, ...]:
    if spacing is None:
        return (1.0,) * n
    values = tuple(float(v) for v in (spacing if isinstance(spacing, Sequence) else [spacing] * n))
    if len(values) != n or not all(v > 0 for v in values):
        raise ValueError(f"spacing must give {n} positive voxel sizes (mm), got {spacing!r}.")
    return values


def masking_curve(network: nn.Module, x: torch.Tensor, saliency: torch.Tensor, target: RegionTarget | int,
                  threshold: float = 0.2, dilations: Sequence[float] = (0.0,), spacing: Sequence[float] | None = None,
                  fill: float = 0.0, batch_size: int = 8, verbose: bool = True) -> MaskingCurve:
    """The masking test of the Seg-XRes-CAM paper (after Mullan and Sonka).

    The min-max normalised map is binarised at ``threshold`` (strictly greater), the kept set is dilated to
    every voxel within each distance of ``dilations`` (mm, Euclidean, with ``spacing``; the published code
    dilates with a 5x5 ellipse, about 2 voxels per step), everything else is set to ``fill``, and the
    input is re-predicted. A faithful map keeps the region's prediction (high Dice) with little retained.

    Args:
        network: the segmentation network.
        x: one sample ``(1, C_in, *spatial)``.
        saliency: its map on the input grid, ``(1, 1, *spatial)``.
        target: the explained region.
        threshold: binarisation level of the normalised map.
        dilations: dilation distances, mm (voxels when the spacing is unknown); 0 is the map itself.
        spacing: voxel size per axis in mm (default: from a ``MetaTensor``'s affine, else 1).
        fill: value of the removed voxels.
        batch_size: inputs per forward pass.
        verbose: progress bar (quiet when not on a TTY).
    """
    ref = RegionReference(network, x, target)
    spatial = tuple(ref.x.shape[2:])
    sal = normalize(_as_map(saliency, spatial)[None, None])[0, 0]
    kept = (sal > threshold).cpu().numpy()
    dilations = [float(d) for d in dilations]
    if not dilations or any(d < 0 for d in dilations):
        raise ValueError(f"dilations must be one or more distances >= 0 (0 keeps the map itself), got {dilations}.")
    if kept.any() and max(dilations, default=0) > 0:
        distance = ndimage.distance_transform_edt(~kept, sampling=spacing_of(x, spacing))
    else:
        distance = np.where(kept, 0.0, np.inf)
    keeps = [torch.from_numpy(distance <= d) for d in dilations]
    scores, dices = ref.repredict(keeps, fill, batch_size, len(keeps), "masking test", verbose)
    retained = [float(k.float().mean()) for k in keeps]
    return MaskingCurve(dilations, retained, dices.tolist(), scores.tolist())


def saliency_order(saliency: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """Rank of each voxel, 0 = most salient, ``spatial`` int64; ties in random order (``seed``), so a flat
    map (e.g. the zeros a ReLU leaves) is not removed in scan order."""
    flat = saliency.reshape(-1).cpu()
    perm = torch.randperm(flat.numel(), generator=torch.Generator().manual_seed(seed))
    order = perm[torch.argsort(flat[perm], descending=True, stable=True)]
    rank = torch.empty_like(order)
    rank[order] = torch.arange(order.numel())
    return rank.reshape(saliency.shape)


def deletion_insertion(network: nn.Module, x: torch.Tensor, saliency: torch.Tensor, target: RegionTarget | int,
                       n_steps: int = 20, fill: float = 0.0, batch_size: int = 8, seed: int = 0,
                       verbose: bool = True) -> dict[str, PerturbationCurve]:
    """Deletion and insertion curves (Petsiuk et al.), most salient voxels first, in ``n_steps`` equal steps.

    Deletion sets the top ``k / n_steps`` of the voxels to ``fill``; insertion starts from the all-``fill``
    input and restores them. A faithful map makes deletion fall and insertion rise at once: low deletion
    area, high insertion area (``PerturbationCurve.auc_score`` / ``auc_dice``).

    Returns:
        ``{"deletion": PerturbationCurve, "insertion": PerturbationCurve}``, ``n_steps + 1`` points each.
    """
    if not isinstance(n_steps, int) or n_steps < 1:
        raise ValueError(f"n_steps must be an int >= 1, got {n_steps!r}.")
    ref = RegionReference(network, x, target)
    rank = saliency_order(_as_map(saliency, tuple(ref.x.shape[2:])), seed)
    counts = [round(k * rank.numel() / n_steps) for k in range(n_steps + 1)]
    inner = counts[1:-1]
    keeps = itertools.chain([torch.zeros(rank.shape, dtype=torch.bool)], (rank >= m for m in inner),
                            (rank < m for m in inner))  # lazily: one batch of masks in memory
    scores, dices = ref.repredict(keeps, fill, batch_size, 1 + 2 * len(inner), "deletion/insertion", verbose)
    blank_score, blank_dice = float(scores[0]), float(dices[0])
    n = len(inner)
    curves = {}
    for name, sl, first, last in (("deletion", slice(1, 1 + n), (ref.score, 1.0), (blank_score, blank_dice)),
                                  ("insertion", slice(1 + n, None), (blank_score, blank_dice), (ref.score, 1.0))):
        raw = [first[0], *scores[sl].tolist(), last[0]]
        span = ref.score - blank_score
        rel = [(s - blank_score) / span if abs(span) > 1e-12 * max(1.0, abs(ref.score)) else float("nan")
               for s in raw]
        curves[name] = PerturbationCurve([m / rank.numel() for m in counts], rel, raw,
                                         [first[1], *dices[sl].tolist(), last[1]])
    return curves


def locality(saliency: torch.Tensor, region: torch.Tensor, distances: Sequence[float] = (0.0, 5.0, 10.0, 20.0),
             spacing: Sequence[float] | None = None, positive: bool = False) -> dict[str, Any]:
    """Share of the saliency mass within each distance (mm) of the region.

    The mass is that of the min-max normalised map (so a constant offset, such as uncentred RISE's mean
    score, does not count); with ``positive``, that of the map's positive part (the convention of
    :mod:`monai_xres.metrics.structures`: evidence against the class does not count). ``uniform`` is the
    share a flat map would get: the fraction of the volume within the distance, the level of a map that
    ignores where the region is.

    Args:
        saliency: one map on the grid of ``region``, ``(1, 1, *spatial)`` or ``spatial``.
        region: bool ``spatial``, e.g. ``Explanation.regions[0]``.
        distances: in mm (voxels when ``spacing`` is not given); 0 is the region itself.
        spacing: voxel size in mm per axis.
        positive: measure the positive part of the raw map, not the min-max normalised map.

    Returns:
        ``{"distance": [...], "share": [...], "uniform": [...]}`` (share NaN for an all-constant map, or
        with ``positive`` a map without positive mass).
    """
    region = torch.as_tensor(region).bool().cpu().numpy()
    sal = _as_map(saliency, region.shape)
    sal = (sal.double().clamp(min=0) if positive else normalize(sal[None, None])[0, 0].double()).cpu().numpy()
    if not region.any():
        raise ValueError("The region is empty: give the resolved region (e.g. Explanation.regions[0]).")
    distance = ndimage.distance_transform_edt(~region, sampling=_spacing(spacing, region.ndim))
    mass = sal.sum()
    share = [float(sal[distance <= d].sum() / mass) if mass > 0 else float("nan") for d in distances]
    uniform = [float((distance <= d).mean()) for d in distances]
    return {"distance": [float(d) for d in distances], "share": share, "uniform": uniform}
