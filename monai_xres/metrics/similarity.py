"""Comparing two saliency maps: Spearman rank correlation and SSIM, and agreement between methods."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from monai.metrics.regression import compute_ssim_and_cs
from scipy import stats

from monai_xres.explainers.maps import normalize

__all__ = ["agreement", "map_ssim", "rank_correlation"]


def rank_correlation(a: torch.Tensor, b: torch.Tensor) -> float:
    """Spearman rank correlation of two maps of the same shape (``scipy.stats.spearmanr``, ties averaged).

    Convention for constant maps, where Spearman is undefined: 1 when both are constant (same ranking),
    0 when only one is (no shared ranking).
    """
    a = np.asarray(torch.as_tensor(a).detach().double().cpu()).ravel()
    b = np.asarray(torch.as_tensor(b).detach().double().cpu()).ravel()
    if a.shape != b.shape:
        raise ValueError(f"Maps must have the same number of voxels, got {a.size} and {b.size}.")
    flat_a, flat_b = np.ptp(a) == 0, np.ptp(b) == 0
    if flat_a or flat_b:
        return 1.0 if flat_a and flat_b else 0.0
    return float(stats.spearmanr(a, b).statistic)


def map_ssim(a: torch.Tensor, b: torch.Tensor, win_size: int = 7) -> float:
    """SSIM of two maps after min-max normalisation (data range 1), uniform ``win_size`` window, 2D or 3D.

    MONAI's ``compute_ssim_and_cs`` (valid windows, population covariances); equals
    ``skimage.metrics.structural_similarity(..., data_range=1, use_sample_covariance=False)``. The window
    shrinks to the smallest axis (odd) for small maps.
    """
    a, b = torch.as_tensor(a).detach().float().cpu().squeeze(), torch.as_tensor(b).detach().float().cpu().squeeze()
    if a.shape != b.shape or a.ndim not in (2, 3):
        raise ValueError(f"SSIM needs two 2D or 3D maps of one shape, got {tuple(a.shape)} and {tuple(b.shape)}.")
    win = min(win_size, *a.shape)
    win -= 1 - win % 2
    a, b = normalize(a[None, None]), normalize(b[None, None])
    ssim, _ = compute_ssim_and_cs(a, b, a.ndim - 2, [win] * (a.ndim - 2), [1.5] * (a.ndim - 2), 1.0, "uniform")
    return float(ssim.mean())


def agreement(maps: Mapping[str, torch.Tensor], reference: str) -> dict[str, float]:
    """Spearman rank correlation of every map with ``maps[reference]`` (e.g. the CAMs with RISE)."""
    if reference not in maps:
        raise ValueError(f"Reference map {reference!r} is not among the maps {list(maps)}.")
    return {name: rank_correlation(m, maps[reference]) for name, m in maps.items() if name != reference}
