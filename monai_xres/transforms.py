"""Dictionary transforms: explanations inside MONAI pipelines, as MetaTensors that ``Invertd`` maps back.

The array logic stays in the explainers (:class:`~monai_xres.explainers.cam.SegXResCAM`,
:class:`~monai_xres.explainers.rise.SegRISE`); these adapters read one case from the data dictionary, resolve its
region (:class:`~monai_xres.regions.RegionSpec`), add and remove the batch axis, and return the map as a
``MetaTensor`` ``(1, *spatial)`` carrying the image's metadata and transform history. ``Invertd`` with
``orig_keys=<image key>`` then maps it back to the original scan like the prediction. Configs should use
the dotted ``_target_`` paths (``monai_xres.transforms.SegXResCAMd``).

They work standalone and in a ``SupervisedEvaluator``'s postprocessing (which runs after the evaluator's
``no_grad`` forward; the explainers switch gradients on locally). Explain before anything inverts the
image, then invert the map like the prediction, linearly::

    postprocessing = Compose([
        SegXResCAMd("image", network, pool_size=2, class_index=1, region_key="label", label_value=1),
        Invertd(["pred", "saliency_segxrescam"], preprocessing, orig_keys="image", nearest_interp=False),
        SaveImaged("saliency_segxrescam", output_postfix="segxrescam", output_dtype=np.float32),
    ])

:class:`~monai_xres.handlers.SaliencyWriter` does all of this (plus overlay and provenance) as a handler.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Hashable, Mapping, Sequence
from copy import deepcopy
from dataclasses import replace
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.inferers import SlidingWindowInferer
from monai.transforms import MapTransform
from torch import nn

from monai_xres.explainers.base import Explainer, Explanation, predict
from monai_xres.explainers.cam import SegXResCAM
from monai_xres.explainers.registry import name_of
from monai_xres.explainers.rise.explainer import SegRISE
from monai_xres.regions.scores import predicted_class_mask
from monai_xres.regions.spec import RegionSpec, as_region_spec, case_name
from monai_xres.regions.target import RegionTarget

__all__ = ["ExplainRegiond", "SegRISEd", "SegXResCAMd", "like_image"]

Inferer = Callable[[torch.Tensor, nn.Module], Any]


class ExplainRegiond(MapTransform):
    """Explain one region of one case with any :class:`~monai_xres.explainers.base.Explainer`.

    Args:
        keys: the image key, one key; the image is ``(C, *spatial)``, preprocessed for the network.
        explainer: e.g. ``SegXResCAM(network, ...)`` or ``SegRISE(network, ...)``.
        region: a :class:`RegionSpec`, a dict of its fields, or a class index (whole predicted class).
        output_key: where the map goes; default ``saliency_<method>``.
        inferer: optional MONAI inferer (e.g. ``SlidingWindowInferer``). An explainer that can explain its
            stitched output (``Explainer.with_inferer``; Seg-XRes-CAM and its presets) does so, window by
            window; for the others the inferer's prediction defines the region (``argmax == c`` within the
            spec's region) and the explainer runs the whole preprocessed input.
        slice_axis: for a 2D network on one slice of a 3D scan: the spatial axis (0, 1, 2 or -1) across
            the slices. The slice explained is ``slice_index``, or the one through the region's point or
            box centre, or the one where the network predicts the most voxels of the class; the map is
            zero on the other slices, so it inverts onto that slice of the scan.
        slice_index: the slice to explain along ``slice_axis`` (see above).
        allow_missing_keys: skip cases without the image key instead of raising.

    Returns (``__call__``): the data with ``output_key`` holding a float32 ``MetaTensor`` ``(1, *spatial)``.

    Raises:
        ValueError: naming the case (its input file): a missing key, an unreadable markups file, a
            region outside the scan or empty, NaN voxels, ...
    """

    def __init__(self, keys: KeysCollection, explainer: Explainer, region: RegionSpec | Mapping | int = 1,
                 output_key: str | None = None, inferer: Inferer | None = None, slice_axis: int | None = None,
                 allow_missing_keys: bool = False, slice_index: int | None = None) -> None:
        super().__init__(keys, allow_missing_keys)
        if len(self.keys) != 1:
            raise ValueError(f"Give one image key, got {list(self.keys)}: use one transform per image.")
        if not isinstance(explainer, Explainer):
            raise ValueError(f"explainer must be a monai_xres Explainer (e.g. SegXResCAM(network)), got "
                             f"{type(explainer).__name__}.")
        self.image_key = self.keys[0]
        self.explainer = explainer
        self.region = as_region_spec(region)
        self.output_key = output_key or f"saliency_{name_of(explainer)}"
        windowed = explainer.with_inferer(inferer) if inferer is not None else None
        if windowed is not None:  # the explainer follows the inferer's windows itself
            self.explainer, inferer = windowed, None
        self.inferer = inferer
        self.slice_axis = slice_axis
        self.slice_index = slice_index

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        if self.image_key not in d and self.allow_missing_keys:
            return d
        d[self.output_key] = self.explain(d)[0]
        return d

    def explain(self, data: Mapping[Hashable, Any], prediction: torch.Tensor | None = None
                ) -> tuple[MetaTensor, Explanation, dict]:
        """The case's map ``(1, *spatial)`` as a MetaTensor, the explainer's :class:`Explanation` (batch of
        one, on the explained grid), and region facts for provenance (voxel box/point, markup).

        ``prediction``: the stitched logits ``(C, *spatial)`` of this image by the explainer's own
        sliding-window inferer, if already made (:class:`~monai_xres.handlers.SaliencyWriter` passes the
        evaluator's): it saves one prediction where the explainer follows that inferer's windows over the
        whole image (no slice axis), or where the region is resolved on the inferer's prediction."""
        case = case_name(data, self.image_key)
        if isinstance(prediction, MetaTensor):
            prediction = prediction.as_tensor()
        try:
            image = self._image(data)
            target, facts = self.region.resolve(data, image)
            x = image.as_tensor() if isinstance(image, MetaTensor) else image
            x = x if x.is_floating_point() else x.float()
            index = None
            if self.slice_axis is not None:
                index = self._slice_of(x, target)
                x, target = self._drop_slice_axis(x, target, index)
            x = x[None]
            if self.inferer is not None:
                target = self._inferred_target(x, target, prediction)
            explanation = self.explainer.attribute(x, target, **self._known(x, prediction))
        except (ValueError, KeyError, OSError) as e:
            raise ValueError(f"Case {case}: {e}") from e
        saliency = self.restore_slice(explanation.saliency[0].detach(), image, index)
        facts["score"] = explanation.scores[0]
        if index is not None:
            facts["slice"] = {"axis": self._axis(image), "index": index}
        return like_image(saliency, image), explanation, facts

    def _known(self, x: torch.Tensor, prediction: torch.Tensor | None) -> dict[str, torch.Tensor]:
        """``{"prediction": (1, C, *spatial)}`` where the explainer can use it (see :meth:`explain`), else ``{}``."""
        windowed = self.inferer is None and isinstance(getattr(self.explainer, "inferer", None), SlidingWindowInferer)
        takes = "prediction" in inspect.signature(self.explainer.explain).parameters  # CAMs and RISE do
        if prediction is None or self.slice_axis is not None or not (windowed and takes):
            return {}
        return {"prediction": prediction[None]} if tuple(prediction.shape[1:]) == tuple(x.shape[2:]) else {}

    def _image(self, data: Mapping[Hashable, Any]) -> torch.Tensor:
        if self.image_key not in data:
            raise ValueError(f"Image key {self.image_key!r} is missing from the data (keys: {list(data)}): "
                             "fix keys=... or allow_missing_keys=True.")
        image = data[self.image_key]
        if isinstance(image, np.ndarray):
            image = torch.as_tensor(image)
        if not isinstance(image, torch.Tensor) or image.ndim not in (3, 4):
            what = tuple(image.shape) if hasattr(image, "shape") else type(image).__name__
            raise ValueError(f"{self.image_key!r} must be a loaded channel-first image (C, H, W[, D]), got "
                             f"{what}: add LoadImaged and EnsureChannelFirstd before this transform.")
        return image

    def _axis(self, image: torch.Tensor) -> int:
        n = image.ndim - 1
        if not -n <= self.slice_axis < n:
            raise ValueError(f"slice_axis={self.slice_axis} is not a spatial axis of a {n}D image.")
        return self.slice_axis % n

    def _slice_of(self, x: torch.Tensor, target: RegionTarget) -> int:
        """The slice along ``slice_axis`` to explain: given, under the point / box centre, or the busiest one."""
        axis, n = self._axis(x), x.shape[self._axis(x) + 1]
        if self.slice_index is not None:
            index = int(self.slice_index)
        elif target.point is not None and not target.point_in_mm:
            index = int(round(float(target.point[axis])))
        elif target.box is not None:
            index = (int(target.box[0][axis]) + int(target.box[1][axis]) - 1) // 2
        else:
            index = self._busiest_slice(x, target)
        if not 0 <= index < n:
            raise ValueError(f"Slice {index} is outside the {n} slices along slice_axis={self.slice_axis}.")
        return index

    def _busiest_slice(self, x: torch.Tensor, target: RegionTarget) -> int:
        """The slice where the network predicts the most voxels of the class (through its inferer, if any)."""
        axis, network = self._axis(x), self.explainer.network
        inferer = getattr(self.explainer, "inferer", None) or self.inferer
        areas = [int(predicted_class_mask(predict(network, x.select(axis + 1, k)[None], inferer)[0],
                                          target.class_index).sum()) for k in range(x.shape[axis + 1])]
        return int(np.argmax(areas))

    def _drop_slice_axis(self, x: torch.Tensor, target: RegionTarget, index: int
                         ) -> tuple[torch.Tensor, RegionTarget]:
        axis = self._axis(x)
        changes: dict[str, Any] = {}
        for name in ("mask", "label_map"):
            value = getattr(target, name)
            if value is not None:
                t = torch.as_tensor(value.as_tensor() if isinstance(value, MetaTensor) else value)
                changes[name] = t.select(axis + 1 if t.ndim == x.ndim else axis, index)
        if target.box is not None:
            if not int(target.box[0][axis]) <= index < int(target.box[1][axis]):
                raise ValueError(f"The box {target.box} does not cover slice {index} of axis {axis}.")
            changes["box"] = tuple([v for i, v in enumerate(corner) if i != axis] for corner in target.box)
        if target.point is not None:
            changes["point"] = [v for i, v in enumerate(target.point) if i != axis]
        return x.select(axis + 1, index), replace(target, **changes)

    def restore_slice(self, values: torch.Tensor, image: torch.Tensor, index: int | None) -> torch.Tensor:
        """``values`` ``(C, *slice)`` of a 2D explanation back into the image's 3D grid, zero off the slice."""
        if self.slice_axis is None or index is None:
            return values
        axis = self._axis(image)
        full = values.new_zeros((values.shape[0], *image.shape[1:]))
        full.select(axis + 1, index).copy_(values)
        return full

    def _inferred_target(self, x: torch.Tensor, target: RegionTarget,
                         prediction: torch.Tensor | None = None) -> RegionTarget:
        """The region under the inferer's prediction (``prediction``, ``(C, *spatial)``, if it is of this input),
        frozen as a mask so the explainer scores exactly it."""
        known = prediction is not None and self.slice_axis is None and tuple(prediction.shape[1:]) == x.shape[2:]
        logits = prediction[None] if known else predict(self.explainer.network, x, self.inferer)
        return target.frozen(target.region(logits[0], None))


def like_image(values: torch.Tensor, image: torch.Tensor) -> MetaTensor:
    """``values`` ``(1, *spatial)`` as a float32 MetaTensor with a copy of the image's metadata and transform
    history (what ``Invertd`` and ``SaveImage`` need); a plain-tensor image gives a MetaTensor without them."""
    values = values.detach().float()
    if not isinstance(image, MetaTensor):
        return MetaTensor(values)
    return MetaTensor(values, meta=deepcopy(image.meta), applied_operations=deepcopy(image.applied_operations))


class SegXResCAMd(ExplainRegiond):
    """Seg-XRes-CAM of a region (see :class:`~monai_xres.explainers.cam.SegXResCAM` and :class:`ExplainRegiond`).

    Args:
        keys: the image key.
        network: the segmentation network.
        target_layer, pool_size, pool_mode: as :class:`~monai_xres.explainers.cam.SegXResCAM` (pool 1 = HiResCAM,
            ``"global"`` = Seg-Grad-CAM).
        class_index: the class to explain.
        output_key, inferer, slice_axis, allow_missing_keys, slice_index: as :class:`ExplainRegiond`.
        counterfactual: explain what speaks against the class (see :class:`SegXResCAM`).
        region: the region's source, fields of :class:`RegionSpec` (``region_key``, ``label_value``,
            ``box``, ``point``, ``point_in_mm``, ``voxel_grid``, ``markup``, ``markup_key``, ``connected``, ...).

    Example (bundle config)::

        {"_target_": "monai_xres.transforms.SegXResCAMd", "keys": "image", "network": "@network",
         "pool_size": 2, "class_index": 1, "markup_key": "markup"}
    """

    def __init__(self, keys: KeysCollection, network: nn.Module, target_layer: str | nn.Module | None = None,
                 pool_size: int | Sequence[int] | str = 1, pool_mode: str = "mean", class_index: int = 1,
                 output_key: str = "saliency_segxrescam", inferer: Inferer | None = None,
                 slice_axis: int | None = None, allow_missing_keys: bool = False,
                 slice_index: int | None = None, counterfactual: bool = False, **region: Any) -> None:
        explainer = SegXResCAM(network, target_layer, pool_size, pool_mode, counterfactual=counterfactual)
        super().__init__(keys, explainer, {"class_index": class_index, **region}, output_key, inferer,
                         slice_axis, allow_missing_keys, slice_index)


class SegRISEd(ExplainRegiond):
    """RISE for segmentation of a region (see :class:`~monai_xres.explainers.rise.SegRISE` and :class:`ExplainRegiond`).

    Args:
        keys: the image key.
        network: the segmentation network.
        n_masks, grid_size, p_keep, batch_size, score, fill, seed: as :class:`~monai_xres.explainers.rise.SegRISE`.
        rise_kwargs: further ``SegRISE`` arguments (e.g. ``{"verbose": False}``).
        counterfactual: weight the masks by ``1 - score`` (see :class:`SegRISE`).
        class_index, output_key, inferer, slice_axis, allow_missing_keys, slice_index, region: as
            :class:`SegXResCAMd`.
    """

    def __init__(self, keys: KeysCollection, network: nn.Module, n_masks: int = 2000,
                 grid_size: int | Sequence[int] = 7, p_keep: float = 0.5, batch_size: int = 16,
                 score: str = "dice", fill: float = 0.0, seed: int = 0, rise_kwargs: Mapping | None = None,
                 class_index: int = 1, output_key: str = "saliency_segrise", inferer: Inferer | None = None,
                 slice_axis: int | None = None, allow_missing_keys: bool = False,
                 slice_index: int | None = None, counterfactual: bool = False, **region: Any) -> None:
        explainer = SegRISE(network, n_masks=n_masks, grid_size=grid_size, p_keep=p_keep, batch_size=batch_size,
                            score=score, fill=fill, seed=seed, counterfactual=counterfactual,
                            **dict(rise_kwargs or {}))
        super().__init__(keys, explainer, {"class_index": class_index, **region}, output_key, inferer,
                         slice_axis, allow_missing_keys, slice_index)
