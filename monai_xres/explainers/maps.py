"""Post-processing of saliency maps: resizing to the input grid and min-max normalisation."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

__all__ = ["normalize", "resize_linear"]

_LINEAR = {1: "linear", 2: "bilinear", 3: "trilinear"}


def resize_linear(maps: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """(Bi/tri)linear resize with ``align_corners=False`` (half-pixel centres), ``(B, C, *grid) -> (B, C, *size)``."""
    size = tuple(int(s) for s in size)
    if tuple(maps.shape[2:]) == size:
        return maps
    return F.interpolate(maps, size=size, mode=_LINEAR[maps.ndim - 2], align_corners=False)


def normalize(maps: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Min-max normalise each sample of ``maps`` ``(B, C, *spatial)`` to [0, 1].

    A constant map (all zero included) becomes all zero, never NaN: the range is floored at ``eps``.
    """
    flat = maps.reshape(maps.shape[0], -1).float()
    low = flat.min(1, keepdim=True).values
    span = (flat.max(1, keepdim=True).values - low).clamp_min(eps)
    return ((flat - low) / span).reshape(maps.shape)
