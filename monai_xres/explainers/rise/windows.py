"""RISE through MONAI's sliding-window inference, running only the windows that reach the region.

The stitched output is ``L(v) = sum_w imp_w(v) out_w(v) / sum_w imp_w(v)`` over the windows ``w`` holding
voxel ``v``, and each ``out_w`` is computed from window ``w``'s own input alone. So the region's score
depends only on the windows that overlap the region, and on the input inside them: a masked prediction
needs those windows only, cut from the masked input inside their union. Nothing is approximated and
nothing is assumed of the network (no receptive field, no translation equivariance): each window is the
very window MONAI runs, in MONAI's order, weighted and divided by MONAI's own blending weights, so on the
region the output equals MONAI's ``sliding_window_inference`` of the whole masked scan.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from monai.inferers import SlidingWindowInferer
from monai.utils import PytorchPadMode, fall_back_tuple, look_up_option
from torch import nn

from monai_xres.explainers.base import network_errors
from monai_xres.explainers.sliding import importance_map, pad_sizes
from monai_xres.networks import first_head

__all__ = ["RegionWindows", "region_windows"]

Window = tuple[int, tuple[slice, ...]]


@dataclass
class RegionWindows:
    """The windows of a sliding-window layout that reach a region, and how to predict through them alone.

    Attributes:
        start, size: the input box the windows read, in image voxels (what the masks must cover).
        windows: the windows, as slices of the padded box, in MONAI's order.
        pad: ``F.pad`` amounts (last axis first) that turn the input box into the padded box.
        weight: MONAI's blending weights of one window ``(1, 1, *roi)``.
        count: their sum over the windows, on the padded box ``(1, 1, *padded box)``.
        total: windows of the whole layout.
    """

    start: tuple[int, ...]
    size: tuple[int, ...]
    windows: list[tuple[slice, ...]]
    pad: list[int]
    weight: torch.Tensor
    count: torch.Tensor
    total: int

    def predict(self, network: nn.Module, inferer: SlidingWindowInferer, x: torch.Tensor) -> torch.Tensor:
        """The stitched output ``(b, C, *size)`` of inputs ``x`` ``(b, C_in, *size)`` (the box of the scan); exact on
        every voxel that only selected windows cover (the region's), under ``torch.no_grad``."""
        padded = F.pad(x, self.pad, mode=look_up_option(inferer.padding_mode, PytorchPadMode), value=inferer.cval) \
            if any(self.pad) else x
        # MONAI's order: every window of sample 0, then of sample 1, ..., sw_batch_size at a time
        jobs = [(b, w) for b in range(x.shape[0]) for w in self.windows]
        out: torch.Tensor | None = None
        step = max(1, int(inferer.sw_batch_size))
        with torch.no_grad(), network_errors(x):
            for first in range(0, len(jobs), step):
                chunk = jobs[first:first + step]
                pred = first_head(network(torch.cat([padded[(slice(b, b + 1), slice(None), *w)] for b, w in chunk])))
                if out is None:
                    out = pred.new_zeros((x.shape[0], pred.shape[1], *padded.shape[2:]))
                for (b, w), p in zip(chunk, pred * self.weight.to(pred.dtype)):
                    out[(b, slice(None), *w)] += p
        out = out / self.count.to(out.dtype)
        crop = tuple(slice(self.pad[2 * k], self.pad[2 * k] + n) for k, n in enumerate(reversed(self.size)))[::-1]
        return out[(slice(None), slice(None), *crop)]


def region_windows(inferer: SlidingWindowInferer, spatial: Sequence[int], windows: Sequence[Window],
                   area: torch.Tensor) -> RegionWindows:
    """The windows of ``windows`` (MONAI's layout of an image of size ``spatial``, recorded by
    :func:`~monai_xres.explainers.sliding.forward_recording`) that overlap ``area`` (bool ``spatial``)."""
    spatial = tuple(int(n) for n in spatial)
    roi = tuple(fall_back_tuple(inferer.roi_size, spatial))
    pad = pad_sizes(spatial, roi)
    low = [pad[2 * k] for k in range(len(spatial))][::-1]  # per axis, in axis order
    padded_area = F.pad(area[None, None].float(), pad)[0, 0] > 0 if any(pad) else area
    layout = [sl for b, sl in windows if b == 0]
    chosen = [sl for sl in layout if bool(padded_area[sl].any())]
    if not chosen:
        raise ValueError("The region lies in no window of the sliding-window layout: check the region.")
    lo = [min(sl[a].start for sl in chosen) for a in range(len(spatial))]
    hi = [max(sl[a].stop for sl in chosen) for a in range(len(spatial))]
    start = tuple(max(l_ - p, 0) for l_, p in zip(lo, low))
    stop = tuple(min(h - p, n) for h, p, n in zip(hi, low, spatial))
    box_pad: list[int] = []
    for a in reversed(range(len(spatial))):  # F.pad order: last axis first
        box_pad += [max(low[a] - lo[a], 0), max(hi[a] - (low[a] + spatial[a]), 0)]
    image_size = tuple(max(n, r) for n, r in zip(spatial, roi))
    weight = importance_map(inferer, image_size, roi, area.device)[None, None]
    relative = [tuple(slice(s.start - o, s.stop - o) for s, o in zip(sl, lo)) for sl in chosen]
    count = torch.zeros((1, 1, *(h - l_ for l_, h in zip(lo, hi))), device=area.device)
    for sl in relative:
        count[(slice(None), slice(None), *sl)] += weight
    return RegionWindows(start, tuple(e - s for s, e in zip(start, stop)), relative, box_pad, weight, count,
                         len(layout))
