"""Seg-XRes-CAM of the stitched output of MONAI's ``SlidingWindowInferer``.

The stitched output is ``L = sum_w place_w(imp * out_w) / count`` with ``count = sum_w place_w(imp)``:
linear in every window's output. So the gradient of the global region score ``S`` reaching window
``w`` is exactly ``dS/dout_w = imp * crop_w(dS/dL / count)``, which already carries the window's
blending weight. Each window's pre-ReLU map (pooled gradient x activation at its target layer) is
resized to the window and added into a scan-sized map; the ReLU comes once, after the sum. Windows
whose ``dS/dout_w`` is exactly zero (no overlap with the region) need no backward pass and are skipped.

The prediction itself comes from MONAI's ``sliding_window_inference`` (its window slices recorded with
``with_coord``), the blending weights from MONAI's ``compute_importance_map``: nothing of MONAI's
stitching is re-implemented beyond summing its weights over its own windows. A caller that already holds
that prediction (a bundle's evaluator has just run the same inferer on the same input) passes it as
``prediction``: ``dS/dL`` does not depend on ``L`` (the score is a sum of logits over the region), only the
region does, so the map is the same and one whole prediction is saved; the windows are then MONAI's own
``dense_patch_slices`` layout (:func:`window_layout`, tested equal to the recorded one).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from monai.data.utils import compute_importance_map, dense_patch_slices, get_valid_patch_size
from monai.inferers import SlidingWindowInferer, sliding_window_inference
from monai.inferers.utils import _get_scan_interval  # the scan step sliding_window_inference itself uses
from monai.utils import PytorchPadMode, ensure_tuple_rep, fall_back_tuple, look_up_option
from tqdm.auto import tqdm

from monai_xres.explainers.base import network_errors
from monai_xres.explainers.maps import resize_linear
from monai_xres.networks import first_head
from monai_xres.regions.target import RegionTarget

__all__ = ["Stitching", "check_inferer", "check_prediction", "forward_recording", "importance_map", "known_prediction",
           "pad_sizes", "sliding_cam", "stitching", "window_layout"]

Window = tuple[int, tuple[slice, ...]]  # (batch index, spatial slices in the padded image)


class WindowExplainer(Protocol):
    """What :func:`sliding_cam` needs of a CAM explainer (:class:`~monai_xres.explainers.cam.SegXResCAM`)."""

    network: Any
    score_sign: float

    def window_map(self, x: torch.Tensor, upstream: torch.Tensor) -> torch.Tensor: ...

    def resolve_regions(self, logits: torch.Tensor, targets: list[RegionTarget], affines: list) -> list: ...


def check_inferer(inferer: Any) -> Any:
    """Accept a ``SlidingWindowInferer`` whose stitching is the plain weighted sum explained above, or an
    inferer that explains its own stitched output with a ``stitched_cam(cam, x, targets, affines, verbose)``
    method returning what :func:`sliding_cam` returns (nnU-Net's, :mod:`monai_xres.apps.nnunet.inferer`)."""
    if callable(getattr(inferer, "stitched_cam", None)):
        return inferer
    if not isinstance(inferer, SlidingWindowInferer):
        raise ValueError(f"inferer must be a monai.inferers.SlidingWindowInferer, got {type(inferer).__name__}.")
    if inferer.buffer_steps is not None and inferer.buffer_steps > 0:
        raise ValueError("Buffered stitching (buffer_steps) is not supported for explanations: set buffer_steps=None.")
    return inferer


def pad_sizes(spatial: tuple[int, ...], roi: tuple[int, ...]) -> list[int]:
    """MONAI's symmetric padding of an image smaller than the window (F.pad order: last axis first)."""
    pad: list[int] = []
    for n, r in zip(reversed(spatial), reversed(roi)):
        diff = max(r - n, 0)
        pad += [diff // 2, diff - diff // 2]
    return pad


def forward_recording(network, x: torch.Tensor, inferer: SlidingWindowInferer, roi: tuple[int, ...]):
    """Stitched logits from MONAI's sliding window inference, and the windows it used."""
    windows: list[Window] = []

    def predictor(window: torch.Tensor, coords: list, *args, **kwargs) -> torch.Tensor:
        windows.extend((c[0].start, tuple(c[2:])) for c in coords)
        return first_head(network(window, *args, **kwargs))

    with torch.no_grad(), network_errors(x):
        logits = sliding_window_inference(
            x, roi, inferer.sw_batch_size, predictor, inferer.overlap, inferer.mode, inferer.sigma_scale,
            inferer.padding_mode, inferer.cval, inferer.sw_device, inferer.device, False,
            inferer.roi_weight_map, with_coord=True)
    return logits, windows


def window_layout(batch: int, spatial: tuple[int, ...], inferer: SlidingWindowInferer,
                  roi: tuple[int, ...]) -> list[Window]:
    """The windows ``sliding_window_inference`` runs on a ``(batch, C, *spatial)`` input, in its order (an
    unbuffered inferer, as :func:`check_inferer` requires): what :func:`forward_recording` records, without
    running the network."""
    image_size = tuple(max(n, r) for n, r in zip(spatial, roi))
    interval = _get_scan_interval(image_size, roi, len(roi), ensure_tuple_rep(inferer.overlap, len(roi)))
    slices = dense_patch_slices(image_size, roi, interval, return_slice=True)
    return [(b, tuple(sl)) for b in range(batch) for sl in slices]


def check_prediction(inferer: Any, prediction: torch.Tensor | None) -> None:
    """Refuse a ``prediction`` given to an explainer that has no ``SlidingWindowInferer`` to have made it."""
    if prediction is not None and not isinstance(inferer, SlidingWindowInferer):
        raise ValueError("prediction= is the stitched output of a SlidingWindowInferer: give the explainer that "
                         "inferer (inferer=... or with_inferer), or leave prediction out.")


def known_prediction(x: torch.Tensor, prediction: torch.Tensor, inferer: SlidingWindowInferer,
                     roi: tuple[int, ...]) -> tuple[torch.Tensor, list[Window]]:
    """What :func:`forward_recording` returns, from a prediction already made: ``prediction`` checked against
    ``x`` and detached as float32, and the windows of :func:`window_layout`."""
    if prediction.shape[0] != x.shape[0] or tuple(prediction.shape[2:]) != tuple(x.shape[2:]):
        raise ValueError(f"prediction {tuple(prediction.shape)} is not the inferer's output for an input of shape "
                         f"{tuple(x.shape)}: give the stitched logits (B, C, *spatial) of this input, or none.")
    return prediction.detach().to(device=x.device, dtype=torch.float32), window_layout(
        x.shape[0], tuple(x.shape[2:]), inferer, roi)


def importance_map(inferer: SlidingWindowInferer, image_size: tuple[int, ...], roi: tuple[int, ...],
                device: torch.device) -> torch.Tensor:
    valid = get_valid_patch_size(image_size, roi)
    if valid == roi and inferer.roi_weight_map is not None:
        return inferer.roi_weight_map.to(device=device, dtype=torch.float32)
    return compute_importance_map(valid, mode=inferer.mode, sigma_scale=inferer.sigma_scale, device=device,
                                  dtype=torch.float32)


@dataclass(frozen=True)
class Stitching:
    """Where MONAI's sliding-window inference puts its windows on one input, as the CAMs of its stitched
    output need it: the padded input, each window's blending weight ``imp`` and their sum ``count``.

    Built by :func:`stitching`; :func:`sliding_cam` and the instances' batched CAM both use it."""

    x_pad: torch.Tensor
    imp: torch.Tensor
    count: torch.Tensor
    pad: list[int]
    spatial: tuple[int, ...]

    def upstream(self, grad: torch.Tensor) -> torch.Tensor:
        """``dS/dL / count`` on the padded grid, for ``grad`` ``(..., *spatial)`` the gradient on the output."""
        return (F.pad(grad, self.pad) if any(self.pad) else grad) / self.count

    def crop(self, total: torch.Tensor) -> torch.Tensor:
        """A map ``(..., *padded)`` summed over the windows, back on the input grid ``(..., *spatial)``."""
        if not any(self.pad):
            return total
        crop = tuple(slice(self.pad[2 * k], self.pad[2 * k] + n) for k, n in enumerate(reversed(self.spatial)))
        return total[(..., *crop[::-1])]


def stitching(x: torch.Tensor, inferer: SlidingWindowInferer, roi: tuple[int, ...],
              windows: list[Window]) -> Stitching:
    """The :class:`Stitching` of ``x`` ``(B, C_in, *spatial)`` by ``inferer`` over its ``windows``."""
    spatial = tuple(x.shape[2:])
    pad = pad_sizes(spatial, roi)
    image_size = tuple(max(n, r) for n, r in zip(spatial, roi))
    x_pad = F.pad(x, pad, mode=look_up_option(inferer.padding_mode, PytorchPadMode), value=inferer.cval) \
        if any(pad) else x
    imp = importance_map(inferer, image_size, roi, x.device)
    count = torch.zeros(image_size, device=x.device)
    for _, sl in windows:
        count[sl] += imp
    return Stitching(x_pad, imp, count, pad, spatial)


def _region_gradient(logits: torch.Tensor, targets: list[RegionTarget], regions: list[torch.Tensor],
                     sign: float = 1.0):
    """d(sign * S)/dL on the stitched output (elementwise, cheap), and the per-sample scores ``S``."""
    leaf = logits.detach().float().requires_grad_(True)
    with torch.enable_grad():
        scores = [t.score(leaf[i], regions[i]) for i, t in enumerate(targets)]
        (grad,) = torch.autograd.grad(sign * torch.stack(scores).sum(), leaf)
    return grad, [float(s.detach()) for s in scores]


def sliding_cam(cam: WindowExplainer, x: torch.Tensor, targets: list[RegionTarget], affines: list,
                inferer: SlidingWindowInferer, verbose: bool = True, skip_empty: bool = True,
                prediction: torch.Tensor | None = None):
    """Signed Seg-XRes-CAM ``(B, n_maps, *spatial)`` of the stitched output (``cam.n_maps`` channels, default
    1: one per variant of a shared-gradient CAM, one per level of an explainer with several target layers,
    each channel's windows summed into it); see the module docstring.

    Args:
        skip_empty: skip windows whose gradient is exactly zero (they add exactly nothing).
        prediction: ``inferer``'s stitched logits of ``x`` ``(B, C, *spatial)``, if the caller has them (the
            region is resolved on them and no prediction is run); None: predict, recording the windows.

    Returns:
        ``(cam_map, logits, regions, scores, info)``, ``info`` counting the windows run and skipped.
    """
    spatial = tuple(x.shape[2:])
    roi = tuple(fall_back_tuple(inferer.roi_size, spatial))
    logits, windows = (forward_recording(cam.network, x, inferer, roi) if prediction is None
                       else known_prediction(x, prediction, inferer, roi))
    regions = cam.resolve_regions(logits, targets, affines)
    grad, scores = _region_gradient(logits, targets, regions, cam.score_sign)

    placed = stitching(x, inferer, roi, windows)
    x_pad, imp, upstream = placed.x_pad, placed.imp, placed.upstream(grad)

    needed = [w for w in windows if not skip_empty or bool(upstream[(w[0], slice(None), *w[1])].any())]
    # one channel per map: several CAM variants can share each window's backward pass (cam_shared), and one
    # explainer with several target layers keeps one channel per level
    total = torch.zeros((x.shape[0], getattr(cam, "n_maps", 1), *placed.count.shape), device=x.device)
    step = max(1, int(inferer.sw_batch_size))
    for start in tqdm(range(0, len(needed), step), desc="windows", disable=None if verbose else True, leave=False):
        batch = needed[start:start + step]
        data = torch.cat([x_pad[(b, slice(None), *sl)][None] for b, sl in batch])
        up = torch.cat([(imp * upstream[(b, slice(None), *sl)])[None] for b, sl in batch])
        window_maps = resize_linear(cam.window_map(data, up), roi)
        for (b, sl), wmap in zip(batch, window_maps):
            total[(b, slice(None), *sl)] += wmap
    info = {"windows_total": len(windows), "windows_skipped": len(windows) - len(needed)}
    return placed.crop(total), logits, regions, scores, info
