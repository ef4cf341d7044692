"""nnU-Net's own prediction as an inferer for the explainers: ``inferer(x, network)`` and ``stitched_cam``.

The logits are nnU-Net's: ``nnUNetPredictor.predict_logits_from_preprocessed_data`` (its sliding window with
Gaussian weighting, test-time mirroring, mean over folds). CAMs follow that prediction pass by pass
(:func:`~monai_xres.explainers.nnunet_sliding.ensemble_cam`) with nnU-Net's own slicers, padding and
Gaussian. RISE re-predicts every masked input through nnU-Net's own sliding-window function; restricted to
an area (:meth:`NnUNetInferer.restricted_to`), only the windows that overlap it run. Every window holding a
voxel of the area is among them, added in nnU-Net's order, so inside the area the logits are nnU-Net's, bit
for bit; outside they are set to 0.

nnU-Net accumulates the stitched logits in float16 (on the CPU too). Where only the far tails of its Gaussian
reach a voxel (the corners and edges of the scan) that rounding moves a logit by up to about 0.5; the CAM is
the exact gradient of the same stitching in real arithmetic, and the region is nnU-Net's own.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import torch

from monai_xres.explainers.nnunet_sliding import EnsemblePlan, ensemble_cam, mirror_sets

__all__ = ["NnUNetInferer"]


class NnUNetInferer:
    """nnU-Net's prediction of preprocessed images ``(B, C_in, *spatial)``, for explainers.

    Args:
        predictor: an initialised ``nnUNetPredictor`` (:func:`~monai_xres.apps.nnunet.loader.load_model`).
        batch_size: window passes per backward in CAMs (nnU-Net predicts one at a time).

    The unmasked prediction of an input is kept (for the same tensor, unchanged), so several methods
    explaining one image predict it once. After each prediction the network holds the first fold's
    parameters again.
    """

    def __init__(self, predictor: Any, batch_size: int = 1) -> None:
        self.predictor = predictor
        self.batch_size = batch_size
        self.area: torch.Tensor | None = None
        self._cache: dict[str, Any] = {}

    def restricted_to(self, area: torch.Tensor | None) -> NnUNetInferer:
        """A copy that runs only the windows overlapping ``area`` (bool ``spatial``; None: all windows)."""
        clone = NnUNetInferer(self.predictor, self.batch_size)
        clone.area, clone._cache = area, self._cache
        return clone

    def params(self) -> dict[str, Any]:
        """What shapes the prediction, JSON-friendly (for provenance sidecars)."""
        p = self.predictor
        return {"name": "nnUNetPredictor", "patch_size": list(p.configuration_manager.patch_size),
                "tile_step_size": p.tile_step_size, "gaussian": p.use_gaussian,
                "mirror_axes": list(self._mirror_axes()), "folds": len(p.list_of_parameters),
                "windows": "overlapping the region" if self.area is not None else "all"}

    def _mirror_axes(self) -> tuple[int, ...]:
        p = self.predictor
        return tuple(p.allowed_mirroring_axes or ()) if p.use_mirroring else ()

    def _first_fold(self) -> None:
        if len(self.predictor.list_of_parameters) > 1:
            self.predictor.network.load_state_dict(self.predictor.list_of_parameters[0])

    def plan(self, image: torch.Tensor) -> EnsemblePlan:
        """nnU-Net's windows, padding, Gaussian, mirrors and folds for a preprocessed ``image`` ``(C, *spatial)``."""
        from acvl_utils.cropping_and_padding.padding import pad_nd_image
        from nnunetv2.inference.sliding_window_prediction import compute_gaussian

        p = self.predictor
        patch = tuple(p.configuration_manager.patch_size)
        padded, revert = pad_nd_image(image[:1], patch, "constant", {"value": 0}, True, None)
        weight = compute_gaussian(patch, sigma_scale=1.0 / 8, value_scaling_factor=10, device=image.device) \
            if p.use_gaussian else torch.ones(patch, device=image.device)
        return EnsemblePlan(p._internal_get_sliding_window_slicers(padded.shape[1:]), tuple(padded.shape[1:]),
                            tuple(revert[1:]), weight.float(), self._mirror_axes(), p.list_of_parameters)

    def predict(self, image: torch.Tensor) -> torch.Tensor:
        """nnU-Net's logits ``(C, *spatial)`` of one preprocessed image ``(C_in, *spatial)``, as nnU-Net returns
        them (float16 on the CPU); with an area, only the windows overlapping it run (see the module)."""
        p = self.predictor
        try:
            if self.area is None:
                return p.predict_logits_from_preprocessed_data(image)
            return self._predict_windows(image, self._overlapping(image))
        finally:
            self._first_fold()

    def _overlapping(self, image: torch.Tensor) -> Callable[[tuple], bool]:
        plan = self.plan(image)
        if tuple(self.area.shape) != tuple(image.shape[1:]):
            raise ValueError(f"The area {tuple(self.area.shape)} is not on the image grid {tuple(image.shape[1:])}.")
        area = plan.pad(self.area[None].to(image.device), False)[0]
        return lambda slicer: bool(area[slicer[1:]].any())

    def _predict_windows(self, image: torch.Tensor, keep: Callable[[tuple], bool]) -> torch.Tensor:
        """``predict_logits_from_preprocessed_data`` with only the windows ``keep`` accepts: nnU-Net's own padding,
        slicers and ``_internal_predict_sliding_window_return_logits``, its fold mean in its dtype."""
        from acvl_utils.cropping_and_padding.padding import pad_nd_image

        p = self.predictor
        patch = p.configuration_manager.patch_size
        autocast = torch.autocast(p.device.type, enabled=True) if p.device.type == "cuda" else contextlib.nullcontext()
        prediction = None
        with torch.inference_mode(), autocast:
            data, revert = pad_nd_image(image, patch, "constant", {"value": 0}, True, None)
            slicers = [s for s in p._internal_get_sliding_window_slicers(data.shape[1:]) if keep(s)]
            for params in p.list_of_parameters:
                if len(p.list_of_parameters) > 1:
                    p.network.load_state_dict(params)
                logits = p._internal_predict_sliding_window_return_logits(data, slicers, p.perform_everything_on_device)
                logits = logits[(slice(None), *revert[1:])].to("cpu")
                prediction = logits if prediction is None else prediction.add_(logits)
            if len(p.list_of_parameters) > 1:
                prediction /= len(p.list_of_parameters)
        return torch.nan_to_num(prediction, nan=0.0)  # voxels no kept window covers are 0/0

    def __call__(self, x: torch.Tensor, network: torch.nn.Module, *args: Any, **kwargs: Any) -> torch.Tensor:
        """nnU-Net's logits of each image of ``x`` ``(B, C_in, *spatial)``: ``(B, C, *spatial)`` float32."""
        if network is not self.predictor.network:
            raise ValueError("This nnU-Net inferer predicts with its own predictor's network: explain that network.")
        if self._cache.get("input") is x and self._cache.get("version") == x._version:
            return self._cache["logits"]
        raw = [self.predict(image) for image in x]
        out = torch.stack([r.float().clone() for r in raw]).to(x.device)
        if self.area is None:
            self._cache.update(input=x, version=x._version, logits=out, raw=raw)
        return out

    def forget(self) -> None:
        """Drop the kept prediction (and its input)."""
        self._cache.clear()

    def nnunet_logits(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The logits of the last unrestricted prediction of ``x``, as nnU-Net returned them (for its export)."""
        if self._cache.get("input") is not x or self._cache.get("version") != x._version:
            raise ValueError("No prediction of this input is kept: predict it through this inferer first.")
        return self._cache["raw"]

    def stitched_cam(self, cam: Any, x: torch.Tensor, targets: list, affines: list, verbose: bool = True):
        """The exact CAM of nnU-Net's prediction of ``x`` ``(1, C_in, *spatial)`` (see
        :func:`~monai_xres.explainers.nnunet_sliding.ensemble_cam`); every window runs."""
        logits = self.restricted_to(None)(x, cam.network)
        return ensemble_cam(cam, x, logits, targets, affines, self.plan(x[0]), verbose, self.batch_size,
                            after=self._first_fold)

    @property
    def mirrors(self) -> int:
        """Passes per window and fold: 1 plus the non-empty combinations of the mirror axes."""
        return len(mirror_sets(self._mirror_axes()))
