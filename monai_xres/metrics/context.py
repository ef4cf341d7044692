"""The context radius of a region: how much of the image around it the network needs to segment it.

The dilation test: keep the image inside the region dilated by ``d`` mm (Euclidean, with the voxel size)
and set everything else to the fill value; re-predict; the region's Dice compares ``A``, the original
prediction of the class in the region, with ``B``, the new prediction's connected components of the class
that touch ``A`` (other structures and far-away false positives do not count against it). The context
radius is the smallest tested ``d`` whose Dice stays above the threshold (0.9): a region the network
recognises from its own voxels has radius 0; one it needs the neighbourhood for, more. A region that is
not predicted at all (a false negative) has no prediction to keep: its radius is NaN. ``inf`` means no
tested radius was enough.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from scipy import ndimage
from torch import nn

from monai_xres.explainers.base import Explainer, batched, predict
from monai_xres.metrics.faithfulness import spacing_of
from monai_xres.regions.target import RegionTarget

__all__ = ["DEFAULT_RADII", "ContextRadius", "context_radius"]

DEFAULT_RADII = (0.0, 2.5, 5.0, 7.5, 10.0, 15.0, 20.0, 30.0, 40.0)


@dataclass
class ContextRadius:
    """The dilation test of one region: ``dice[i]`` when keeping ``radii[i]`` mm around it; ``radius`` the
    smallest radius with ``dice > threshold`` (``inf`` if none, NaN for a region with no prediction)."""

    radius: float
    radii: list[float]
    dice: list[float]
    threshold: float


def _touching(new: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """The connected components of ``new`` that overlap ``reference``."""
    labels, _ = ndimage.label(new)
    hit = np.unique(labels[reference & new])
    return np.isin(labels, hit[hit > 0])


def context_radius(network: nn.Module, x: torch.Tensor, target: RegionTarget | int,
                   radii: Sequence[float] = DEFAULT_RADII, threshold: float = 0.9, fill: float = 0.0,
                   spacing: Sequence[float] | None = None, inferer: Callable[..., Any] | None = None,
                   batch_size: int = 4, logits: torch.Tensor | None = None, stop_early: bool = True) -> ContextRadius:
    """The dilation test of ``target``'s region on one sample ``x`` ``(1, C_in, *spatial)``.

    Args:
        network: the segmentation network (left as found).
        x: one sample; a ``MetaTensor`` gives the voxel size.
        target: the region (e.g. one instance's fixed-region target).
        radii: margins to test, mm, increasing.
        threshold: the Dice the region's prediction must stay above.
        fill: value of the removed voxels.
        spacing: voxel size in mm (default: from a ``MetaTensor``'s affine, else 1).
        inferer: a MONAI inferer to predict through (e.g. the bundle's sliding window).
        batch_size: perturbed inputs per forward pass.
        logits: the unperturbed prediction ``(1, C, *spatial)``, if already known.
        stop_early: stop after the batch of radii where the Dice first passes (later radii get NaN).
    """
    radii = [float(r) for r in radii]
    if not radii or any(r < 0 for r in radii) or radii != sorted(radii):
        raise ValueError(f"radii must be increasing distances >= 0 (mm), got {radii}.")
    if not 0 < threshold < 1:
        raise ValueError(f"threshold must be a Dice between 0 and 1, got {threshold!r}.")
    sampling = spacing_of(x, spacing)
    plain, targets, affines = Explainer.prepare(x, target)
    if plain.shape[0] != 1:
        raise ValueError(f"context_radius takes one sample, got a batch of {plain.shape[0]}: pass x[i:i + 1].")
    target = targets[0]
    logits = predict(network, plain, inferer) if logits is None else logits
    region = target.region(logits[0], affines[0]).cpu().numpy()
    reference = target.decision(logits)[0].cpu().numpy() & region
    if not reference.any():
        return ContextRadius(math.nan, radii, [math.nan] * len(radii), threshold)
    distance = ndimage.distance_transform_edt(~region, sampling=sampling)
    dices: list[float] = []
    for chunk in batched(radii, batch_size):
        keep = torch.from_numpy(np.stack([distance <= r for r in chunk]))[:, None].to(plain.device, plain.dtype)
        out = predict(network, plain * keep + fill * (1 - keep), inferer)
        for new in target.decision(out).cpu().numpy():
            kept = _touching(new, reference)
            dices.append(float(2 * (kept & reference).sum() / (kept.sum() + reference.sum())))
        if stop_early and max(dices) > threshold:
            break
    dices += [math.nan] * (len(radii) - len(dices))
    radius = next((r for r, d in zip(radii, dices) if d > threshold), math.inf)
    return ContextRadius(radius, radii, dices, threshold)
