"""The masking test at equal retained volume: keep the top ``k`` % of the voxels of each map.

The threshold form of the test (:func:`~monai_xres.metrics.faithfulness.masking_curve`, normalised map
> 0.2) keeps very different volumes for different maps: a RISE map is above 0.2 almost everywhere, a
CAM on a few percent of the scan, so their Dice values compare unequal things. Here every map keeps the
same number of voxels, its ``k`` % most salient (ties in a seeded random order), and everything else is
set to ``fill``: at equal ``k``, the map whose kept voxels preserve more of the region's prediction
(higher Dice) is the more faithful.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from monai_xres.metrics.faithfulness import RegionReference, _as_map, saliency_order
from monai_xres.regions.target import RegionTarget

__all__ = ["TOP_PERCENTS", "TopKMasking", "masking_top_k"]

TOP_PERCENTS = (1.0, 2.0, 5.0, 10.0, 20.0, 50.0)


@dataclass
class TopKMasking:
    """``dice[i]`` and ``score[i]`` (region Dice and raw region score, :class:`RegionReference`) with the top
    ``percent[i]`` % of the voxels kept; ``retained[i]`` is the exact fraction kept (``k`` % rounded to voxels)."""

    percent: list[float]
    retained: list[float]
    dice: list[float]
    score: list[float]


def masking_top_k(network: nn.Module, x: torch.Tensor, saliency: torch.Tensor, target: RegionTarget | int,
                  percents: Sequence[float] = TOP_PERCENTS, fill: float = 0.0, batch_size: int = 8, seed: int = 0,
                  verbose: bool = True) -> TopKMasking:
    """Keep the top ``k`` % of ``saliency`` for each ``k`` in ``percents``, re-predict, score the region.

    Args:
        network: the segmentation network.
        x: one sample ``(1, C_in, *spatial)``.
        saliency: its map on the input grid, ``(1, 1, *spatial)``.
        target: the explained region.
        percents: kept shares of the voxels, in percent, each in (0, 100].
        fill: value of the removed voxels.
        batch_size: inputs per forward pass.
        seed: order of equal saliency values (a flat part of a map is kept in a random, not scan, order).
        verbose: progress bar (quiet when not on a TTY).
    """
    percents = [float(p) for p in percents]
    if not percents or any(not 0 < p <= 100 for p in percents):
        raise ValueError(f"percents must be one or more shares in (0, 100], got {percents}.")
    ref = RegionReference(network, x, target)
    rank = saliency_order(_as_map(saliency, tuple(ref.x.shape[2:])), seed)
    counts = [max(1, round(p / 100 * rank.numel())) for p in percents]
    keeps = (rank < m for m in counts)  # lazily: one batch of masks in memory
    scores, dices = ref.repredict(keeps, fill, batch_size, len(counts), "masking top k", verbose)
    return TopKMasking(percents, [m / rank.numel() for m in counts], dices.tolist(), scores.tolist())
