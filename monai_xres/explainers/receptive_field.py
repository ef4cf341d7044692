"""Receptive field of a segmentation network and the crop a region-restricted explanation may use.

A perturbation of input voxel ``u`` can only change output voxel ``v`` if ``u`` lies in the receptive
field of ``v``. For a fully convolutional network that field is a box of radius ``r`` around ``v``; if
the crop holds the region plus ``r`` voxels on every side, the region's output computed from the crop
alone equals the output computed from the whole image, whatever the mask does outside the crop.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from monai_xres.explainers.base import preserved_model_state
from monai_xres.networks import first_head

__all__ = ["crop_window", "receptive_field_radius"]


def receptive_field_radius(network: nn.Module, sample: torch.Tensor, n_probes: int = 2, seed: int = 0,
                           eval_mode: bool = True, shift: Sequence[int] | None = None) -> tuple[int, ...]:
    """Per-axis radius of the receptive field of the central output voxel, measured on ``sample``'s grid.

    Method: the support (non-zero voxels) of the gradient of the central output voxel (all channels
    summed) with respect to a random normal probe input the shape of ``sample`` ``(1, C_in, *spatial)``,
    united over ``n_probes`` probes (a ReLU can zero a path for one probe, rarely for all). Where the
    support reaches the edge of the probe, the field may be larger than the image can show, and that
    axis is given the whole image length: the crop then spans the axis.

    A network with instance normalisation (MONAI's UNet default), global pooling or attention makes
    every output depend on the whole input: the measured radius is then the whole image, correctly,
    and a region-restricted explanation gains nothing.

    Args:
        shift: also measure the field of the voxel ``shift`` voxels beyond the centre (per axis; e.g. the
            network's total stride, and more than one voxel) and check that it is the central field moved
            by ``shift`` (within a voxel), as for a translation-equivariant network. Where it is not (the
            output reads fixed input voxels, say), the axis is given the whole image length.

    Returns:
        radius per spatial axis, in voxels.
    """
    spatial = tuple(sample.shape[2:])
    centre = tuple(n // 2 for n in spatial)
    other = None if shift is None else tuple(min(c + int(s), n - 1) for c, s, n in zip(centre, shift, spatial))
    support = torch.zeros(spatial, dtype=torch.bool, device=sample.device)
    moved = torch.zeros_like(support)
    gen = torch.Generator(device="cpu").manual_seed(seed)
    with torch.inference_mode(False), torch.enable_grad(), preserved_model_state(network, eval_mode):
        for _ in range(n_probes):
            probe = torch.randn((1, *sample.shape[1:]), generator=gen, dtype=sample.dtype)
            probe = probe.to(sample.device).requires_grad_(True)
            out = first_head(network(probe))
            if tuple(out.shape[2:]) != spatial:
                raise ValueError(f"The network maps the grid {spatial} to {tuple(out.shape[2:])}: a receptive "
                                 "field in input voxels needs an output on the input grid; give "
                                 "context_margin in voxels instead of 'auto'.")
            (grad,) = torch.autograd.grad(out[(0, slice(None)) + centre].sum(), probe, retain_graph=other is not None)
            support |= grad[0].abs().sum(0) > 0
            if other is not None:
                (grad,) = torch.autograd.grad(out[(0, slice(None)) + other].sum(), probe)
                moved |= grad[0].abs().sum(0) > 0
    return tuple(_axis_radius(support, moved if other is not None else None, axis, centre, other)
                 for axis in range(len(spatial)))


def _axis_radius(support: torch.Tensor, moved: torch.Tensor | None, axis: int, centre: tuple[int, ...],
                 other: tuple[int, ...] | None) -> int:
    """The field's radius along ``axis``, or the axis length where it reaches the edge or does not move with
    its voxel."""
    n, c = support.shape[axis], centre[axis]
    idx = support.nonzero()[:, axis]
    if idx.numel() == 0:  # the output does not depend on the input at all here: nothing to crop by
        return n
    low, high = int(idx.min()), int(idx.max())
    if low == 0 or high == n - 1:
        return n
    if moved is not None:
        idx = moved.nonzero()[:, axis]
        if idx.numel() == 0:
            return n
        low2, high2 = int(idx.min()), int(idx.max())
        step = other[axis] - c
        # a ReLU may gate a voxel at the fringe for one probe and not the other: allow one voxel
        if low2 == 0 or high2 == n - 1 or abs(low2 - low - step) > 1 or abs(high2 - high - step) > 1:
            return n
    return max(c - low, high - c)


def crop_window(area: torch.Tensor, margin: Sequence[int], multiple: Sequence[int]
                ) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Start and size of the crop: bounding box of ``area`` plus ``margin``, aligned to ``multiple``.

    The start is rounded down and the size up to multiples of ``multiple`` (a strided network needs
    both), the crop is kept inside the image and never exceeds it.

    Args:
        area: bool ``spatial``, the voxels whose output the score reads (non-empty).
        margin: context voxels per axis on each side (the receptive-field radius).
        multiple: alignment per axis.
    """
    idx = area.nonzero()
    start, size = [], []
    for axis, n in enumerate(area.shape):
        m = multiple[axis]
        low = max(0, int(idx[:, axis].min()) - margin[axis])
        high = min(n, int(idx[:, axis].max()) + 1 + margin[axis])
        low = (low // m) * m
        length = min(math.ceil((high - low) / m) * m, n)
        low = max(0, min(low, n - length))
        start.append(low)
        size.append(length)
    return tuple(start), tuple(size)
