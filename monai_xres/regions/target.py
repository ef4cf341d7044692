"""Region targets: which class and which voxels of a segmentation output an explanation is about.

One :class:`RegionTarget` serves every method (Seg-XRes-CAM, HiResCAM, Seg-Grad-CAM, RISE). It is
resolved against the network output of one sample, ``(C, *spatial)``, into a boolean region ``M``
on the output grid, and scores that output as the sum of the class-``c`` logits over ``M``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from scipy import ndimage

from monai_xres.regions.borders import check_border_fields, refine_region, score_area
from monai_xres.regions.geometry import point_to_voxel
from monai_xres.regions.instances import Instance, target_instances
from monai_xres.regions.scores import decision_mask, decision_probability, predicted_class_mask

__all__ = ["RegionTarget", "as_target_list"]

ArrayLike = Any  # torch.Tensor | np.ndarray | MetaTensor


def _as_tensor(value: ArrayLike, device: torch.device) -> torch.Tensor:
    t = value.as_tensor() if hasattr(value, "as_tensor") else torch.as_tensor(np.asarray(value))
    return t.to(device)


@dataclass
class RegionTarget:
    """Class ``c`` and a region of the output grid; at most one of ``mask``, ``box``, ``point``, ``label_map``.

    Args:
        class_index: output channel ``c`` to explain.
        mask: boolean/0-1 array on the output grid, shape ``spatial`` or ``(1, *spatial)``.
        box: ``(start, end)`` voxel indices per spatial axis, end exclusive (``start[i] <= v < end[i]``).
        point: a voxel index, or world millimetres (MONAI's RAS convention) when ``affine`` is given.
        affine: 4x4 voxel-to-world matrix of the output grid, to place a ``point`` given in mm. When
            omitted and the input is a ``MetaTensor``, the input's affine is used for mm points only if
            ``point_in_mm`` is True.
        point_in_mm: the point is in world mm (needs ``affine`` or a ``MetaTensor`` input).
        connected: with a point, take the connected component of the predicted class ``c`` that holds
            the point (a click on an organ explains the organ), instead of the single voxel.
        label_map: integer array on the output grid; the region is ``label_map == label_value``.
        label_value: the label value selecting the region (defaults to ``class_index``).
        restrict_to_prediction: intersect the region with ``argmax == c`` (the published
            ``M = (argmax == c) ∩ region``). False explains the raw logits everywhere in the region.
        softmax: score softmax probabilities of class ``c`` instead of raw logits.
        weights: float map on the output grid (may be negative): the score becomes ``sum_M w * logit_c``,
            and the region keeps only voxels with ``w != 0``. Set ``restrict_to_prediction=False`` to keep
            weights off the predicted class (e.g. a negative ring around it).
        contrast_class: class ``B``: the score is ``sum_M w * (logit_c - logit_B)``, why ``c`` rather than ``B``
            (probabilities with ``softmax``); Dice-based RISE scores count a voxel as ``c`` where ``logit_c >
            logit_B``.
        border_class: class ``B``: the region narrows to its voxels that touch the predicted ``B`` (face
            neighbours), or lie within ``border_mm`` of it.
        border_mm, rim_mm: widths in mm (they need the grid's affine).
        rim: ``"inner"`` or ``"outer"``: the band of the region of width ``rim_mm`` inside or just outside it.

    No region means every voxel predicted as ``c``: Seg-Grad-CAM's whole-class target. Border and rim
    targets are documented in :mod:`monai_xres.regions.borders`.
    """

    class_index: int
    mask: ArrayLike | None = None
    box: tuple[Sequence[int], Sequence[int]] | None = None
    point: Sequence[float] | None = None
    affine: ArrayLike | None = None
    point_in_mm: bool = False
    connected: bool = False
    label_map: ArrayLike | None = None
    label_value: int | None = None
    restrict_to_prediction: bool = True
    softmax: bool = False
    weights: ArrayLike | None = None
    contrast_class: int | None = None
    border_class: int | None = None
    border_mm: float | None = None
    rim: str | None = None
    rim_mm: float | None = None
    _kinds: tuple[str, ...] = field(init=False, repr=False, default=())

    def __post_init__(self) -> None:
        if isinstance(self.class_index, bool) or not isinstance(self.class_index, (int, np.integer)):
            raise ValueError(f"class_index must be an integer output channel, got {self.class_index!r}.")
        self.class_index = int(self.class_index)
        given = [k for k in ("mask", "box", "point", "label_map") if getattr(self, k) is not None]
        if len(given) > 1:
            raise ValueError(f"Give one region, not {given}: combine them into one mask instead.")
        self._kinds = tuple(given)
        if self.affine is not None and self.point is not None:
            self.point_in_mm = True
        if self.connected and self.point is None:
            raise ValueError("connected=True selects the component under a point: give point=... too.")
        check_border_fields(self)

    @property
    def kind(self) -> str:
        """``"mask"``, ``"box"``, ``"point"``, ``"label_map"``, or ``"class"`` (whole predicted class)."""
        return self._kinds[0] if self._kinds else "class"

    def describe(self) -> dict:
        """A JSON-friendly description, for provenance sidecars."""
        out: dict[str, Any] = {"class_index": self.class_index, "region": self.kind,
                               "restrict_to_prediction": self.restrict_to_prediction, "softmax": self.softmax}
        if self.box is not None:
            out["box"] = [list(map(int, self.box[0])), list(map(int, self.box[1]))]
        if self.point is not None:
            out.update(point=[float(v) for v in self.point], point_in_mm=self.point_in_mm,
                       connected=self.connected)
        if self.label_map is not None:
            out["label_value"] = self._label_value
        for name in ("contrast_class", "border_class", "border_mm", "rim", "rim_mm"):
            if getattr(self, name) is not None:
                out[name] = getattr(self, name)
        if self.weights is not None:
            out["weights"] = "map"
        return out

    @property
    def _label_value(self) -> int:
        return self.class_index if self.label_value is None else int(self.label_value)

    def region(self, logits: torch.Tensor, affine: ArrayLike | None = None) -> torch.Tensor:
        """Resolve the region ``M`` for one sample.

        Args:
            logits: the sample's network output ``(C, *spatial)``.
            affine: the output grid's voxel-to-world matrix, used for mm points when the target has none.

        Returns:
            bool tensor of shape ``spatial`` on ``logits.device``.

        Raises:
            ValueError: unknown class, region of the wrong shape or outside the image, or empty region.
        """
        n_classes, spatial = logits.shape[0], tuple(logits.shape[1:])
        if not 0 <= self.class_index < n_classes:
            raise ValueError(
                f"class_index {self.class_index} is not an output channel: the network gives {n_classes} "
                f"channel(s), so use 0..{n_classes - 1} (0 is usually background)."
            )
        needs_prediction = self.restrict_to_prediction or self.connected
        predicted = predicted_class_mask(logits, self.class_index) if needs_prediction else None
        region = self._raw_region(spatial, logits.device, affine, predicted)
        if self.restrict_to_prediction:
            region = region & predicted
        if self.weights is not None:
            region = region & (self._weight_map(spatial, logits.device) != 0)
        region = refine_region(self, region, logits, self._affine(affine))
        if not bool(region.any()):
            raise ValueError(self._empty_message(predicted_class_mask(logits, self.class_index)))
        return region

    def _affine(self, affine: ArrayLike | None) -> ArrayLike | None:
        return self.affine if self.affine is not None else affine

    def _weight_map(self, spatial: tuple[int, ...], device: torch.device) -> torch.Tensor:
        return self._on_grid(_as_tensor(self.weights, device), spatial, "weights").float()

    def score_area(self, logits: torch.Tensor, affine: ArrayLike | None = None) -> torch.Tensor:
        """``W``: the voxels where a Dice score compares predictions (bool ``spatial``): the region before its
        intersection with the prediction, or for border and rim targets the band on both sides of the
        boundary (:func:`~monai_xres.regions.borders.score_area`)."""
        plain = dataclasses.replace(self, restrict_to_prediction=False, border_class=None, border_mm=None, rim=None,
                                    rim_mm=None, weights=None)
        return score_area(self, logits, self._affine(affine), plain.region(logits, affine))

    def decision(self, out: torch.Tensor, soft: bool = False) -> torch.Tensor:
        """What a Dice score counts as the class in outputs ``(B, C, *spatial)``: bool ``argmax == c`` (``c``
        beating ``contrast_class`` for a contrastive target), or with ``soft`` its probability."""
        if soft:
            return decision_probability(out, self.class_index, self.contrast_class)
        return decision_mask(out, self.class_index, self.contrast_class)

    def instances(self, logits: torch.Tensor, truth: ArrayLike | None = None, affine: ArrayLike | None = None,
                  min_voxels: int = 1, min_ml: float | None = None, truth_value: int | None = None,
                  connectivity: int = 1) -> list[tuple[Instance, RegionTarget]]:
        """Every connected component of the predicted class in this target's region or, with ``truth`` (label
        map or mask on the output grid, class ``truth == truth_value``, default ``c``), every TP, FP and FN
        component, each with its fixed-region target (:func:`~monai_xres.regions.instances.target_instances`:
        ``min_voxels``/``min_ml`` the smallest kept, ``affine`` the grid's, ``connectivity`` 1 to ``ndim``)."""
        found = target_instances(self, logits, truth, self._affine(affine), min_voxels, min_ml, truth_value,
                                 connectivity)
        return [(instance, self.frozen(instance.mask)) for instance in found]

    def _raw_region(self, spatial: tuple[int, ...], device: torch.device, affine: ArrayLike | None,
                    predicted: torch.Tensor | None) -> torch.Tensor:
        kind = self.kind
        if kind == "class":
            return torch.ones(spatial, dtype=torch.bool, device=device)
        if kind == "mask":
            return self._on_grid(_as_tensor(self.mask, device), spatial, "mask") != 0
        if kind == "label_map":
            return self._on_grid(_as_tensor(self.label_map, device), spatial, "label_map") == self._label_value
        if kind == "box":
            return self._box_region(spatial, device)
        return self._point_region(spatial, device, affine, predicted)

    @staticmethod
    def _on_grid(t: torch.Tensor, spatial: tuple[int, ...], name: str) -> torch.Tensor:
        if t.ndim == len(spatial) + 1 and t.shape[0] == 1:
            t = t[0]
        if tuple(t.shape) != spatial:
            raise ValueError(
                f"{name} has shape {tuple(t.shape)} but the network output grid is {spatial}: give it on "
                f"the output grid (shape {spatial} or (1, *{spatial})), e.g. by passing it through the same "
                "preprocessing as the image."
            )
        return t

    def _box_region(self, spatial: tuple[int, ...], device: torch.device) -> torch.Tensor:
        start, end = (list(map(int, v)) for v in self.box)
        if len(start) != len(spatial) or len(end) != len(spatial):
            raise ValueError(f"box {self.box} must give {len(spatial)} start and end indices for a "
                             f"{len(spatial)}D output grid {spatial}.")
        for s, e, n in zip(start, end, spatial):
            if not 0 <= s < e <= n:
                raise ValueError(
                    f"box start {start} end {end} is outside the output grid {spatial} or empty: each axis "
                    "needs 0 <= start < end <= size (end is exclusive)."
                )
        region = torch.zeros(spatial, dtype=torch.bool, device=device)
        region[tuple(slice(s, e) for s, e in zip(start, end))] = True
        return region

    def _point_voxel(self, spatial: tuple[int, ...], affine: ArrayLike | None) -> tuple[int, ...]:
        aff = None
        if self.point_in_mm:
            aff = self.affine if self.affine is not None else affine
            if aff is None:
                raise ValueError("point is in mm but no affine is known: pass affine=... (voxel to world) "
                                 "or give the input as a MetaTensor.")
        return point_to_voxel(self.point, spatial, aff, grid="output grid")

    def _point_region(self, spatial: tuple[int, ...], device: torch.device, affine: ArrayLike | None,
                      predicted: torch.Tensor | None) -> torch.Tensor:
        voxel = self._point_voxel(spatial, affine)
        region = torch.zeros(spatial, dtype=torch.bool, device=device)
        if not self.connected:
            region[voxel] = True
            return region
        if not bool(predicted[voxel]):
            raise ValueError(f"point voxel {voxel} is not predicted as class {self.class_index}, so it has "
                             "no connected component: move the point onto the predicted structure.")
        components, _ = ndimage.label(predicted.cpu().numpy())
        return torch.from_numpy(components == components[voxel]).to(device)

    def _empty_message(self, predicted: torch.Tensor) -> str:
        n_pred = int(predicted.sum())
        if self.kind == "class" or n_pred == 0:
            return (f"The region is empty: no voxel is predicted as class {self.class_index}. Check the class "
                    "index and the input, or set restrict_to_prediction=False to explain the raw logits.")
        return (f"The {self.kind} region does not overlap the {n_pred} voxel(s) predicted as class "
                f"{self.class_index}: move the region onto the prediction, or set "
                "restrict_to_prediction=False to explain the raw logits there.")

    def frozen(self, region: torch.Tensor) -> RegionTarget:
        """This target with its region fixed to ``region`` (bool ``spatial``): the same voxels whatever a
        later (perturbed, randomised, windowed) prediction says, scored like this target."""
        return RegionTarget(self.class_index, mask=region, restrict_to_prediction=False, softmax=self.softmax,
                            weights=self.weights, contrast_class=self.contrast_class, affine=self.affine)

    def score(self, logits: torch.Tensor, region: torch.Tensor) -> torch.Tensor:
        """Sum of the class-``c`` logits (or softmax probabilities) over ``region``, times ``weights``, less
        those of ``contrast_class``.

        Args:
            logits: one sample's output ``(C, *spatial)``, differentiable.
            region: bool ``spatial`` from :meth:`region`.

        Returns:
            a scalar tensor.
        """
        values = logits
        if self.softmax:
            values = logits.sigmoid() if logits.shape[0] == 1 else logits.softmax(0)
        values = values[self.class_index] - (0 if self.contrast_class is None else values[self.contrast_class])
        weight = region.to(values.dtype)
        if self.weights is not None:
            weight = weight * self._weight_map(tuple(region.shape), values.device).to(values.dtype)
        return (values * weight).sum()


def as_target_list(target: RegionTarget | Sequence[RegionTarget] | int, batch_size: int) -> list[RegionTarget]:
    """One target per sample: a single target (or bare class index) is shared by the whole batch."""
    if isinstance(target, (int, np.integer)) and not isinstance(target, bool):
        target = RegionTarget(int(target))
    if isinstance(target, RegionTarget):
        return [target] * batch_size
    targets = list(target)
    if len(targets) != batch_size or not all(isinstance(t, RegionTarget) for t in targets):
        raise ValueError(f"Give one RegionTarget for the batch or a list of {batch_size} (one per sample), "
                         f"got {len(targets)} item(s).")
    return targets
