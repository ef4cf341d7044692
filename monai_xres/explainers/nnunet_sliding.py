"""Exact CAMs of an nnU-Net prediction: Gaussian-weighted windows, test-time mirroring, a fold ensemble.

nnU-Net predicts a preprocessed image ``x`` ``(C_in, *spatial)``, padded to at least one patch, as

    L = 1/F sum_f sum_w place_w(g * P_fw) / N,    N = sum_w place_w(g),
    P_fw = 1/|A| sum_{a in A} flip_a(net_f(flip_a(x_w)))

over the folds ``f`` (one parameter set each), its windows ``w`` (its slicers), and the mirror sets ``a``
(none, then every non-empty combination of the allowed axes), with ``g`` its Gaussian. ``L`` is linear in
the output of every pass ``net_f(flip_a(x_w))``, so the gradient of the region score ``S`` reaching it is
exactly ``flip_a(g * crop_w(dS/dL / N)) / (F |A|)``: it carries the window's Gaussian weight, the mirror
average and the fold average. The rule of :mod:`monai_xres.explainers.sliding` then holds pass by pass:
each pass's signed map (pooled gradient x activation at the target layer, on its flipped window) is resized
to the window, flipped back and added into a scan-sized map; the ReLU comes once, after the sum. Windows
whose gradient is exactly zero (no overlap with the region) are skipped for every mirror and fold.

Nothing here imports nnU-Net: the caller describes the prediction (:class:`EnsemblePlan`, built from
nnU-Net's own slicers, padding, Gaussian, mirror axes and fold parameters) and supplies its logits.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from tqdm.auto import tqdm

from monai_xres.explainers.maps import resize_linear
from monai_xres.explainers.sliding import WindowExplainer, _region_gradient
from monai_xres.regions.target import RegionTarget

__all__ = ["EnsemblePlan", "ensemble_cam", "mirror_sets"]

Slicer = tuple[Any, ...]  # nnU-Net's window index into the padded image (C, *spatial): (slice(None), [z,] slices...)


def mirror_sets(axes: Sequence[int] | None) -> list[tuple[int, ...]]:
    """The mirror sets nnU-Net averages over, in its order: none, then each non-empty combination of ``axes``."""
    axes = tuple(axes or ())
    return [(), *[c for k in range(1, len(axes) + 1) for c in itertools.combinations(axes, k)]]


@dataclass(frozen=True)
class EnsemblePlan:
    """How one preprocessed image is predicted: what :func:`ensemble_cam` needs to follow every pass.

    Attributes:
        slicers: the windows, indices into the padded image ``(C, *padded_shape)``; a window's input is
            ``padded[slicer][None]``, and ``slicer[1:]`` indexes the spatial grid.
        padded_shape: spatial shape of the padded image.
        revert: spatial slices from the padded grid back to the image's.
        weight: the blending weight of a window, shaped like one window's spatial output.
        mirror_axes: spatial axes of a window that test-time mirroring flips (empty: no mirroring).
        parameters: one state dict per fold; the prediction is the mean of the folds' logits.
        padding_value: the constant the image is padded with.
    """

    slicers: Sequence[Slicer]
    padded_shape: tuple[int, ...]
    revert: tuple[slice, ...]
    weight: torch.Tensor
    mirror_axes: tuple[int, ...]
    parameters: Sequence[Mapping[str, torch.Tensor]]
    padding_value: float = 0.0

    def pad(self, image: torch.Tensor, value: float | None = None) -> torch.Tensor:
        """``image`` ``(C, *spatial)`` placed into the padded grid ``(C, *padded_shape)``, the rest ``value``
        (default: :attr:`padding_value`)."""
        value = self.padding_value if value is None else value
        padded = image.new_full((image.shape[0], *self.padded_shape), value)
        padded[(slice(None), *self.revert)] = image
        return padded

    def blending_sum(self, device: torch.device) -> torch.Tensor:
        """``N``: the sum of the windows' weights over the padded grid, float32."""
        total = torch.zeros(self.padded_shape, device=device)
        weight = self.weight.to(device=device, dtype=torch.float32)
        for slicer in self.slicers:
            total[slicer[1:]] += weight
        return total


def _use_fold(network: torch.nn.Module, plan: EnsemblePlan, fold: int) -> None:
    if len(plan.parameters) > 1:
        network.load_state_dict(plan.parameters[fold])


def _passes(needed: Sequence[int], mirrors: Sequence[tuple[int, ...]], size: int) -> Iterator[list[tuple[int, tuple]]]:
    """(window, mirror set) pairs in batches of ``size``, window by window."""
    pairs = [(w, a) for w in needed for a in mirrors]
    for start in range(0, len(pairs), size):
        yield pairs[start:start + size]


def ensemble_cam(cam: WindowExplainer, x: torch.Tensor, logits: torch.Tensor, targets: list[RegionTarget],
                 affines: list, plan: EnsemblePlan, verbose: bool = True, batch_size: int = 1,
                 skip_empty: bool = True, after: Callable[[], None] | None = None):
    """Signed Seg-XRes-CAM ``(1, n_maps, *spatial)`` of the ensemble prediction ``logits`` (``cam.n_maps``
    channels, default 1: one per level of an explainer with several target layers); see the module docstring.

    Args:
        cam: the CAM explainer (its ``network``, ``window_map`` and ``resolve_regions`` are used).
        x: the preprocessed image, ``(1, C_in, *spatial)``.
        logits: the ensemble's prediction of ``x``, ``(1, C, *spatial)`` (the region is resolved on it).
        targets, affines: one each, for the one image.
        plan: the windows, weights, mirrors and folds of the prediction.
        batch_size: passes (window, mirror) per backward.
        skip_empty: skip windows whose gradient is exactly zero (they add exactly nothing).
        after: called when done, also on error (e.g. to put the first fold's parameters back).

    Returns:
        ``(cam_map, logits, regions, scores, info)``; ``info`` counts windows, mirrors, folds and passes.
    """
    if x.shape[0] != 1:
        raise ValueError(f"An nnU-Net prediction explains one image at a time, got a batch of {x.shape[0]}.")
    regions = cam.resolve_regions(logits, targets, affines)
    grad, scores = _region_gradient(logits, targets, regions, cam.score_sign)
    mirrors = mirror_sets(plan.mirror_axes)
    scale = 1.0 / (len(plan.parameters) * len(mirrors))
    image = plan.pad(x[0])
    weight = plan.weight.to(device=x.device, dtype=torch.float32)
    upstream = plan.pad(grad[0].float(), 0.0) / plan.blending_sum(x.device)  # dS/dL / N on the padded grid
    needed = [i for i, s in enumerate(plan.slicers) if not skip_empty or bool(upstream[s].any())]
    # one channel per map: one per level of an explainer with several target layers (``n_maps``)
    total = torch.zeros((getattr(cam, "n_maps", 1), *plan.padded_shape), device=x.device)
    bar = tqdm(total=len(needed) * len(mirrors) * len(plan.parameters), desc="nnU-Net passes", leave=False,
               disable=None if verbose else True)
    try:
        for fold in range(len(plan.parameters)):
            _use_fold(cam.network, plan, fold)
            for batch in _passes(needed, mirrors, batch_size):
                dims = [[m + 2 for m in a] for _, a in batch]
                slicers = [plan.slicers[w] for w, _ in batch]
                data = torch.cat([image[s][None].flip(d) for s, d in zip(slicers, dims)])
                up = torch.cat([(weight * upstream[s] * scale)[None].flip(d) for s, d in zip(slicers, dims)])
                maps = resize_linear(cam.window_map(data, up), data.shape[2:])
                for s, d, window_map in zip(slicers, dims, maps):
                    total[s] += window_map[None].flip(d)[0]
                bar.update(len(batch))
    finally:
        bar.close()
        if after is not None:
            after()
    info = {"windows_total": len(plan.slicers), "windows_skipped": len(plan.slicers) - len(needed),
            "mirrors": len(mirrors), "folds": len(plan.parameters),
            "passes": len(needed) * len(mirrors) * len(plan.parameters)}
    return total[(slice(None), *plan.revert)][None], logits, regions, scores, info
