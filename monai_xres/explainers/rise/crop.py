"""What SegRISE evaluates for each masked input: only the part of the scan that can reach the region.

Three ways, chosen per sample and recorded in ``Explanation.info["crop"]`` (and so in the sidecar):

- ``"windows"``: with a MONAI ``SlidingWindowInferer`` (the default ``context_margin="auto"``), only the
  sliding windows that overlap the region run, on the masked input inside them
  (:mod:`~monai_xres.explainers.rise.windows`): exact for any network.
- ``"receptive field"``: without an inferer, the region's bounding box plus the network's measured
  receptive field (``"auto"``, :func:`~monai_xres.explainers.receptive_field.receptive_field_radius`) or a
  given margin, aligned to the network's stride, evaluated alone: exact for a translation-equivariant
  network whose field fits in the margin.
- ``"whole image"``: every masked input in full, when ``context_margin=None``, when the measured field
  spans the image or does not move with its voxel (instance normalisation, global pooling, attention:
  not translation-equivariant), or when the output is not on the input grid. The reason is recorded.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from monai.inferers import SlidingWindowInferer

from monai_xres.explainers.receptive_field import crop_window, receptive_field_radius
from monai_xres.explainers.rise.masks import _check_ints, axis_values
from monai_xres.explainers.rise.windows import region_windows

__all__ = ["Crop", "CropSettings", "cached_radius", "equivariance_shift", "forget_radius", "plan_crop"]

Predict = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class CropSettings:
    """Region-restricted RISE: evaluate only what can reach the region (see :mod:`~monai_xres.explainers.rise.crop`).

    Args:
        context_margin: ``"auto"`` (default: the windows that reach the region with a sliding-window
            inferer, else the measured receptive field, else the whole image), voxels per side (int or
            per axis: the region's box plus this margin, also through an inferer), or None (the whole image).
        crop_multiple: crop alignment per axis; None takes the network's total stride.
    """

    context_margin: int | Sequence[int] | str | None = "auto"
    crop_multiple: int | Sequence[int] | None = None

    def __post_init__(self) -> None:
        if self.context_margin not in (None, "auto"):
            _check_ints(self.context_margin, "context_margin", 0)
        if self.crop_multiple is not None:
            _check_ints(self.crop_multiple, "crop_multiple", 1)


@dataclass
class Crop:
    """The box of the input that one sample's masked inputs are evaluated on.

    Attributes:
        start, size: the box, in input voxels (the masks are made for it alone).
        predict: masked inputs on the box ``(b, C_in, *size) -> (b, C, *size)``, no autograd.
        facts: how and why (``mode``, ``reason``, windows run), for the sidecar.
    """

    start: tuple[int, ...]
    size: tuple[int, ...]
    predict: Predict
    facts: dict[str, Any] = field(default_factory=dict)

    def describe(self, image_size: Sequence[int]) -> str:
        """What one masked prediction is, in words (for the cost log)."""
        box = "x".join(map(str, self.size))
        if self.facts.get("mode") == "windows":
            return f"the {box} box through {self.facts['windows_run']} of {self.facts['windows_total']} sliding windows"
        if tuple(self.size) == tuple(image_size):
            return f"the whole {box} image"
        return f"the {box} crop around the region"


def plan_crop(settings: CropSettings, x: torch.Tensor, area: torch.Tensor, inferer: Any,
              forward: Callable[[torch.Tensor, Any], torch.Tensor], network: Any, out_shape: Sequence[int],
              radius: Callable[[], tuple[int, ...]], stride: tuple[int, ...], layout: list | None) -> Crop:
    """The :class:`Crop` of one sample ``x`` ``(1, C_in, *spatial)`` for the region ``area`` (bool ``spatial``).

    Args:
        forward: ``forward(x, inferer)``, the explainer's prediction.
        out_shape: the output grid (the crop modes need it equal to the input grid).
        radius: the measured receptive-field radius per axis (called only for ``"auto"`` without an inferer).
        stride: the network's total stride per axis (the default crop alignment).
        layout: the sliding windows the unmasked prediction ran (``sliding.forward_recording``), or None.
    """
    spatial = tuple(x.shape[2:])
    margin = settings.context_margin

    def whole(reason: str) -> Crop:
        return Crop((0,) * len(spatial), spatial, lambda batch: forward(batch, inferer),
                    {"mode": "whole image", "reason": reason})

    if margin is None:
        return whole("context_margin=None")
    if tuple(out_shape) != spatial:
        if margin != "auto":
            raise ValueError(f"context_margin needs the output on the input grid {spatial}, got "
                             f"{tuple(out_shape)}: use context_margin=None.")
        return whole(f"the output grid {tuple(out_shape)} is not the input grid")
    if margin == "auto" and isinstance(inferer, SlidingWindowInferer) and layout is not None:
        plan = region_windows(inferer, spatial, layout, area)
        facts = {"mode": "windows", "windows_run": len(plan.windows), "windows_total": plan.total}
        return Crop(plan.start, plan.size, lambda batch: plan.predict(network, inferer, batch), facts)
    if margin == "auto" and inferer is not None:
        return whole(f"a receptive field cannot be measured through {type(inferer).__name__}")
    multiple = stride if settings.crop_multiple is None else axis_values(settings.crop_multiple, len(spatial),
                                                                         "crop_multiple", 1)
    if crop_window(area, (0,) * len(spatial), multiple)[1] == spatial:
        return whole("the region spans the image")
    if margin == "auto":
        sizes = radius()
        if all(r >= n for r, n in zip(sizes, spatial)):
            return whole("the network's receptive field spans the image or does not move with its voxel "
                         "(not translation-equivariant)")
    else:
        sizes = axis_values(margin, len(spatial), "context_margin", 0)
    start, size = crop_window(area, sizes, multiple)
    if size == spatial:
        return whole("the region plus its margin covers the image")
    facts = {"mode": "receptive field" if margin == "auto" else "margin", "margin": list(sizes),
             "multiple": list(multiple)}
    # the crop's output is the crop of the output grid (checked above): the box is predicted alone
    return Crop(start, size, lambda batch: forward(batch, inferer), facts)


def equivariance_shift(stride: Sequence[int]) -> tuple[int, ...]:
    """A probe shift for :func:`receptive_field_radius`: a multiple of the stride of at least 4 voxels, so that a
    field that stays put is told from one that moves (the check allows one voxel at the fringe)."""
    return tuple(s * math.ceil(4 / s) for s in stride)


_RADII: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def cached_radius(network: torch.nn.Module, x: torch.Tensor, eval_mode: bool, stride: tuple[int, ...]
                  ) -> tuple[int, ...]:
    """:func:`~monai_xres.explainers.receptive_field.receptive_field_radius` of ``network`` on ``x``'s grid, measured
    once per network object and input shape, device and dtype (a probe's forward and backward passes cost
    about a tenth of 128 masked forwards): the field is the architecture's, so every explainer of the same
    network reuses it. ``stride`` sets the equivariance probe's shift (:func:`equivariance_shift`).
    :func:`forget_radius` drops a network's entries (e.g. after changing its layers)."""
    shift = equivariance_shift(stride)
    key = (tuple(x.shape), x.device, x.dtype, eval_mode, shift)
    known = _RADII.setdefault(network, {})
    if key not in known:
        known[key] = receptive_field_radius(network, x, eval_mode=eval_mode, shift=shift)
    return known[key]


def forget_radius(network: torch.nn.Module) -> None:
    """Forget ``network``'s measured receptive fields."""
    _RADII.pop(network, None)
