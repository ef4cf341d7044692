"""Region specs for pipelines: where the region comes from in a MONAI data dictionary.

A :class:`RegionSpec` names the region the way a pipeline or bundle config knows it (a key holding a mask
or label map, a box, a point in voxels or mm, a 3D Slicer markups file) and resolves it, for one case,
into a :class:`~monai_xres.regions.RegionTarget` on the preprocessed image grid.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from itertools import product
from typing import Any

import numpy as np
import torch

from monai_xres.regions.geometry import (
    image_affine,
    image_space,
    label_file_on_grid,
    point_to_voxel,
    scan_affine,
    scan_box_corners,
    world_box_to_voxels,
)
from monai_xres.regions.markups import read_markup
from monai_xres.regions.target import RegionTarget

__all__ = ["RegionSpec", "as_region_spec", "case_name"]


def case_name(data: Mapping, image_key: str) -> str:
    """The case's input file (``meta["filename_or_obj"]``), for error messages and provenance."""
    image = data.get(image_key)
    meta = getattr(image, "meta", None) or data.get(f"{image_key}_meta_dict") or {}
    name = meta.get("filename_or_obj") if isinstance(meta, Mapping) else None
    if isinstance(name, (list, tuple)) and name:
        name = name[0]
    return str(name) if name else "<unnamed case>"


@dataclass
class RegionSpec:
    """Class ``c`` and where its region comes from; at most one of the region fields.

    Args:
        class_index: output channel ``c`` to explain.
        region_key: data key holding a mask (nonzero = region) or, with ``label_value``, a label map: either
            loaded on the preprocessed image grid (passed through the same spatial preprocessing), or a
            file path on the scan's own grid, which is placed on the preprocessed grid through world
            coordinates (``ResampleToMatch``, nearest).
        label_value: with ``region_key``, the label selecting the region.
        box: ``(start, end)`` voxel indices (end exclusive) on ``voxel_grid``, or two opposite corners in
            world mm when ``box_in_mm``.
        box_in_mm: ``box`` is in world mm, in the image's space (``meta["space"]``, RAS in MONAI).
        point: a voxel index on ``voxel_grid``, or world mm when ``point_in_mm``.
        point_in_mm: ``point`` is in world mm, in the image's space.
        voxel_grid: the grid voxel indices refer to: ``"scan"`` (default), the scan as stored, i.e. the IJK
            a user reads off the scan in 3D Slicer or ITK-SNAP, placed on the preprocessed grid through
            world coordinates (a scan box covers the outer faces of its voxels, ``start - 0.5`` to
            ``end - 0.5``; the preprocessed voxels whose centres lie inside are kept); or
            ``"preprocessed"``, the grid the network sees (after orientation, spacing, crops).
        markup: a 3D Slicer ``.mrk.json`` file holding a point or an ROI.
        markup_key: data key holding each case's markups file path.
        markup_label: the control point label or markup name to use (default: the first).
        connected: with a point (or point markup), explain the predicted component under the point.
        restrict_to_prediction: intersect the region with the predicted class (see ``RegionTarget``).
        softmax: score probabilities instead of logits (see ``RegionTarget``).
        name: short name used in output keys and file names (default: derived from the region).
        contrast_class, border_class, border_mm, rim, rim_mm: contrastive, border and rim targets (see
            :class:`~monai_xres.regions.RegionTarget`); the default name then says so (``class1-vs2``,
            ``class1-border2``, ``class1-rim-inner3mm``).

    A markup ROI becomes a voxel box: the voxels whose centres lie in the ROI's axis-aligned hull on the
    preprocessed grid, clipped to the scan (see :func:`world_box_to_voxels`).
    """

    class_index: int = 1
    region_key: str | None = None
    label_value: int | None = None
    box: tuple[Sequence[float], Sequence[float]] | None = None
    box_in_mm: bool = False
    point: Sequence[float] | None = None
    point_in_mm: bool = False
    markup: str | os.PathLike | None = None
    markup_key: str | None = None
    markup_label: str | None = None
    connected: bool = False
    restrict_to_prediction: bool = True
    softmax: bool = False
    name: str | None = None
    voxel_grid: str = "scan"
    contrast_class: int | None = None
    border_class: int | None = None
    border_mm: float | None = None
    rim: str | None = None
    rim_mm: float | None = None

    def __post_init__(self) -> None:
        if self.voxel_grid not in ("scan", "preprocessed"):
            raise ValueError(f"voxel_grid must be 'scan' or 'preprocessed', got {self.voxel_grid!r}.")
        given = [k for k in ("region_key", "box", "point", "markup", "markup_key") if getattr(self, k) is not None]
        if len(given) > 1:
            raise ValueError(f"Give one region source, not {given}.")
        if self.label_value is not None and self.region_key is None:
            raise ValueError("label_value selects a label in a label map: give region_key=... too.")
        if self.connected and not {"point", "markup", "markup_key"} & set(given):
            raise ValueError("connected=True takes the component under a point: give point=... or a markup.")
        RegionTarget(self.class_index, **self._target_fields())  # validates the class and target fields early

    def _target_fields(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in ("contrast_class", "border_class", "border_mm", "rim", "rim_mm")}

    @property
    def label(self) -> str:
        """The name used in keys and file names, e.g. ``class1``, ``label3``, ``box``, ``markup``."""
        if self.name:
            return self.name
        return self._base_label() + "".join(f"-{text}" for text, value in (
            (f"vs{self.contrast_class}", self.contrast_class), (f"border{self.border_class}", self.border_class),
            (f"rim-{self.rim}{self.rim_mm:g}mm" if self.rim else "", self.rim)) if value is not None)

    def _base_label(self) -> str:
        if self.region_key is not None:
            return f"{self.region_key}{self.label_value if self.label_value is not None else ''}"
        for kind in ("box", "point", "markup", "markup_key"):
            if getattr(self, kind) is not None:
                return kind.replace("_key", "")
        return f"class{self.class_index}"

    def title(self, class_names: Mapping[Any, str] | None = None) -> str:
        """The region in words for a reader, e.g. ``spleen``, ``spleen in the box``, ``spleen, label 3``;
        ``class_names``: ``{class index: name}`` (e.g. a bundle's ``channel_def``), else ``class N``."""
        names = {int(k): str(v).replace("_", " ") for k, v in dict(class_names or {}).items()}
        words = names.get(self.class_index, f"class {self.class_index}")
        if self.name:
            return f"{words}, {self.name}"
        if self.region_key is not None:
            words += f", label {self.label_value}" if self.label_value is not None else f", {self.region_key}"
        for kind, where in (("box", "in the box"), ("point", "at the point"), ("markup", "at the markup"),
                            ("markup_key", "at the markup")):
            if getattr(self, kind) is not None:
                words += f" {where}"
        for value, text in ((self.contrast_class, "against {}"), (self.border_class, "border with {}")):
            if value is not None:
                words += ", " + text.format(names.get(value, f"class {value}"))
        return words + (f", {self.rim} rim" if self.rim else "")

    def describe(self) -> dict:
        """JSON-friendly description, for provenance sidecars."""
        out = {k: v for k, v in asdict(self).items() if v is not None and v is not False}  # keeps class 0
        out["class_index"] = self.class_index
        return {k: (os.fspath(v) if isinstance(v, os.PathLike) else v) for k, v in out.items()}

    def resolve(self, data: Mapping, image: torch.Tensor) -> tuple[RegionTarget, dict]:
        """The case's :class:`RegionTarget` on the grid of ``image`` ``(C, *spatial)``, and facts for provenance.

        Raises:
            ValueError: a missing key, an unreadable markups file, a point or ROI outside the scan, or a
                world position without an image affine.
        """
        target, facts = self._resolve(data, image)
        if (self.border_mm is None and self.rim_mm is None) or getattr(image, "affine", None) is None:
            return target, facts
        # widths in mm need the grid's affine; a voxel point is then given in mm, as the target reads it
        affine = image_affine(image)
        if target.point is not None:
            voxel = np.append(np.asarray(target.point, dtype=np.float64), 1.0)
            return replace(target, point=(affine @ voxel)[:-1].tolist(), affine=affine), facts
        return replace(target, affine=affine), facts

    def _resolve(self, data: Mapping, image: torch.Tensor) -> tuple[RegionTarget, dict]:
        spatial = tuple(image.shape[1:])
        common = {"restrict_to_prediction": self.restrict_to_prediction, "softmax": self.softmax,
                  **self._target_fields()}
        if self.region_key is not None:
            if self.region_key not in data:
                raise ValueError(f"Region key {self.region_key!r} is missing from the data (keys: {list(data)}): "
                                 "add it in the data list or fix region_key.")
            field = "mask" if self.label_value is None else "label_map"
            value = data[self.region_key]
            if isinstance(value, (list, tuple)) and len(value) == 1:
                value = value[0]
            facts = {}
            if isinstance(value, (str, os.PathLike)):
                facts["region_file"] = os.fspath(value)
                value = label_file_on_grid(value, image)
            return RegionTarget(self.class_index, **{field: value}, label_value=self.label_value, **common), facts
        if self.box is not None:
            box, scan = self.box, None if self.box_in_mm or self.voxel_grid == "preprocessed" else scan_affine(image)
            if self.box_in_mm:
                corners = np.array(list(product(*zip(*self.box))), dtype=np.float64)
                box = world_box_to_voxels(corners, image_affine(image), spatial)
            elif scan is not None:
                box = world_box_to_voxels(scan_box_corners(_whole(box, "box"), scan), image_affine(image), spatial)
            return RegionTarget(self.class_index, box=box, **common), {"box_voxels": _plain(box)}
        if self.point is not None:
            scan = None if self.point_in_mm or self.voxel_grid == "preprocessed" else scan_affine(image)
            point = self.point if scan is None else _to_world(_whole([self.point], "point")[0], scan)
            voxel = _voxel(point, image, self.point_in_mm or scan is not None)
            return RegionTarget(self.class_index, point=voxel, connected=self.connected, **common), \
                {"point_voxel": list(voxel)}
        if self.markup is not None or self.markup_key is not None:
            return self._markup_target(data, image, common)
        return RegionTarget(self.class_index, **common), {}

    def _markup_target(self, data: Mapping, image: torch.Tensor, common: dict) -> tuple[RegionTarget, dict]:
        path = self.markup
        if self.markup_key is not None:
            if self.markup_key not in data:
                raise ValueError(f"Markup key {self.markup_key!r} is missing from the data (keys: {list(data)}): "
                                 "add each case's .mrk.json path under that key.")
            path = data[self.markup_key]
            path = path[0] if isinstance(path, (list, tuple)) and len(path) == 1 else path
        markup = read_markup(path, self.markup_label)
        world = markup.in_space(image_space(image))
        facts = markup.describe()
        if markup.kind == "point":
            voxel = _voxel(world[0], image, True)
            facts["point_voxel"] = list(voxel)
            return RegionTarget(self.class_index, point=voxel, connected=self.connected, **common), facts
        if self.connected:
            raise ValueError(f"{markup.path!r} holds an ROI, and connected=True needs a point markup.")
        box = world_box_to_voxels(world, image_affine(image), tuple(image.shape[1:]))
        facts["box_voxels"] = _plain(box)
        return RegionTarget(self.class_index, box=box, **common), facts


def as_region_spec(region: RegionSpec | Mapping[str, Any] | int) -> RegionSpec:
    """A :class:`RegionSpec` from a spec, a dict of its fields (configs), or a bare class index."""
    if isinstance(region, RegionSpec):
        return region
    if isinstance(region, (int, np.integer)) and not isinstance(region, bool):
        return RegionSpec(int(region))
    if isinstance(region, Mapping):
        unknown = set(region) - set(RegionSpec.__dataclass_fields__)
        if unknown:
            raise ValueError(f"Unknown region field(s) {sorted(unknown)}; valid: "
                             f"{sorted(RegionSpec.__dataclass_fields__)}.")
        return RegionSpec(**region)
    raise ValueError(f"A region is a RegionSpec, a dict of its fields or a class index, got {type(region).__name__}.")


def _plain(box: Sequence[Sequence[float]]) -> list[list[float]]:
    return [[float(v) if not float(v).is_integer() else int(v) for v in corner] for corner in box]


def _voxel(point: Sequence[float], image: torch.Tensor, in_mm: bool) -> tuple[int, ...]:
    return point_to_voxel(point, tuple(image.shape[1:]), image_affine(image) if in_mm else None, image_space(image))


def _whole(corners: Sequence[Sequence[float]], what: str) -> list[list[int]]:
    """Voxel indices as whole numbers (a voxel index of the scan is an integer), finite."""
    values = np.asarray(corners, dtype=np.float64)
    if not np.isfinite(values).all() or not np.allclose(values, np.rint(values), atol=1e-9):
        raise ValueError(f"The {what} {values.tolist()} must be whole voxel indices of the scan: give integers, or "
                         "positions in mm.")
    return np.rint(values).astype(int).tolist()


def _to_world(index: Sequence[int], affine: np.ndarray) -> np.ndarray:
    d = len(index)
    return (affine @ np.append(np.asarray(index, dtype=np.float64), 1.0))[:d]
