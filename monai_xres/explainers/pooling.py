"""Gradient pooling of Seg-XRes-CAM, exactly as the published code computes it, at every grid size."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from monai_xres.explainers.base import per_axis

__all__ = ["POOL_MODES", "PoolSize", "pool_gradient", "window_of"]

PoolSize = int | Sequence[int] | str

POOL_MODES = ("mean", "max", "sum")


def pool_gradient(grad: torch.Tensor, pool_size: PoolSize, mode: str = "mean") -> torch.Tensor:
    """Pool ``grad`` ``(B, K, *grid)`` in non-overlapping windows and bring it back to ``grid``.

    As the published Seg-XRes-CAM code (skimage ``block_reduce`` then ``resize(order=0)``, float64): the
    end of each axis is zero-padded to a multiple of the window; ``mean`` divides by the full window,
    padded zeros included, ``sum`` does not divide, ``max`` sees the padded zeros; then half-pixel nearest
    back to the grid, cell ``i`` taking pooled cell ``floor((i + 0.5) * s)`` with the scale
    ``s = n_pooled / n`` rounded to float64 first, which is exactly what scipy's zoom does for skimage.
    (torch's float32 ``nearest-exact`` and exact rational arithmetic each break ties differently on some
    grids, e.g. 37 cells with window 7, 47 with window 2.) ``pool_size="global"`` pools the whole map.

    The reduction runs in float64 and one axis at a time; the padding is never larger than the grid (a
    window longer than an axis pools the whole axis), so memory stays that of ``grad`` for any window.
    """
    grid = tuple(grad.shape[2:])
    if mode not in POOL_MODES:
        raise ValueError(f"pool_mode must be one of {POOL_MODES}, got {mode!r}.")
    if pool_size == "global":
        dims = tuple(range(2, grad.ndim))
        reduce = {"mean": grad.double().mean, "sum": grad.double().sum, "max": grad.amax}[mode]
        return reduce(dims, keepdim=True).to(grad.dtype).expand_as(grad)
    window = window_of(pool_size, len(grid))
    if all(w == 1 for w in window):
        return grad
    pooled = grad.double()
    for axis, w in enumerate(window, start=2):  # block reduction is separable, the padded zeros included
        if w > 1:
            pooled = _reduce_axis(pooled, axis, w, mode)
    if mode == "mean":
        pooled = pooled / math.prod(window)
    for axis, n in enumerate(grid, start=2):
        index = _nearest_source(n, pooled.shape[axis], pooled.device)
        pooled = pooled.index_select(axis, index)
    return pooled.to(grad.dtype)


def _reduce_axis(values: torch.Tensor, axis: int, w: int, mode: str) -> torch.Tensor:
    """Block sums (or maxima) of windows ``w`` along ``axis``, the end zero-padded to a multiple of ``w``."""
    n = values.shape[axis]
    if w >= n:  # one block holds the whole axis: its w - n padded zeros add nothing to a sum, a 0 to a max
        if mode != "max":
            return values.sum(axis, keepdim=True)
        peak = values.amax(axis, keepdim=True)
        return peak.clamp_min(0) if w > n else peak
    blocks, shape = -(-n // w), values.shape
    padded = F.pad(values.movedim(axis, -1), (0, blocks * w - n)).reshape(*shape[:axis], *shape[axis + 1:], blocks, w)
    return (padded.amax(-1) if mode == "max" else padded.sum(-1)).movedim(-1, axis)


def _nearest_source(n_out: int, n_in: int, device: torch.device) -> torch.Tensor:
    """Source cell of each of ``n_out`` cells in a half-pixel nearest resize from ``n_in`` cells (float64)."""
    scale = n_in / n_out  # a Python float: float64, rounded before the product, as scipy does
    index = np.floor((np.arange(n_out, dtype=np.float64) + 0.5) * scale).astype(np.int64)
    return torch.from_numpy(np.minimum(index, n_in - 1)).to(device)


def window_of(pool_size: PoolSize, n_dims: int) -> tuple[int, ...]:
    """``pool_size`` as one window per axis of an ``n_dims``-D feature map, or a ValueError."""
    window = per_axis(pool_size, n_dims)
    if window is None:
        raise ValueError(f"pool_size must be 'global', a positive int or {n_dims} positive ints for a "
                         f"{n_dims}D feature map, got {pool_size!r}.")
    return window
