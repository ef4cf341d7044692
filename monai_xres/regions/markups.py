"""3D Slicer markups (``.mrk.json``): a point or an ROI box, in world millimetres.

Slicer stores positions in the file's ``coordinateSystem``, ``LPS`` (the default since Slicer 4.11) or
``RAS``. MONAI's affines are RAS unless the image's ``meta["space"]`` says LPS. The two differ by the sign
of x and y, so every position is converted to the image's space before it meets the affine.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from itertools import product
from typing import Any

import numpy as np

__all__ = ["Markup", "read_markup", "to_space"]

_UNITS = {"mm": 1.0, "um": 1e-3}
_POINT_TYPES = ("Fiducial", "Point", "PointList")


@dataclass
class Markup:
    """One markup read from a Slicer file.

    Attributes:
        kind: ``"point"`` or ``"roi"``.
        points: world positions in mm, ``(1, 3)`` for a point, ``(8, 3)`` ROI corners, in ``space``.
        space: ``"RAS"`` or ``"LPS"``, the file's ``coordinateSystem``.
        label: the control point label or markup name.
        path: the file it came from.
    """

    kind: str
    points: np.ndarray
    space: str
    label: str
    path: str

    def in_space(self, space: str) -> np.ndarray:
        """The positions in ``space`` (``"RAS"`` or ``"LPS"``), ``(N, 3)`` mm."""
        return to_space(self.points, self.space, space)

    def describe(self) -> dict:
        """JSON-friendly summary, for provenance sidecars."""
        return {"markup": self.path, "markup_kind": self.kind, "markup_label": self.label,
                "markup_space": self.space, "markup_points_mm": self.points.round(4).tolist()}


def to_space(points: np.ndarray, source: str, target: str) -> np.ndarray:
    """Convert ``(N, 3)`` world positions between RAS and LPS (x and y change sign)."""
    for name in (source, target):
        if name not in ("RAS", "LPS"):
            raise ValueError(f"Unknown coordinate system {name!r}: use 'RAS' or 'LPS'.")
    points = np.asarray(points, dtype=np.float64)
    if source == target:
        return points.copy()
    return points * np.array([-1.0, -1.0, 1.0])


def read_markup(path: str | os.PathLike, label: str | None = None) -> Markup:
    """Read the point or ROI of a Slicer markups file.

    Args:
        path: a ``.mrk.json`` file.
        label: the control point label (point lists) or markup name to use; None takes the first
            markup and, for a point list, its first defined control point.

    Raises:
        ValueError: unreadable file, not a markups file, no point/ROI markup, unknown label, or a
            coordinate system or unit that is not LPS/RAS in mm/um.
    """
    path = os.fspath(path)
    try:
        with open(path, encoding="utf-8") as f:
            doc = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"Cannot read markups file {path!r} ({type(e).__name__}: {e}): give a Slicer "
                         "'.mrk.json' file (Slicer: Save, format 'Markups JSON').") from e
    markups = doc.get("markups") if isinstance(doc, dict) else None
    if not isinstance(markups, list) or not markups or not all(isinstance(m, dict) for m in markups):
        raise ValueError(f"{path!r} is not a Slicer markups file: it needs a 'markups' list of markup objects "
                         "(Slicer: Save, format 'Markups JSON').")
    for markup in markups:
        kind = markup.get("type")
        if kind not in (*_POINT_TYPES, "ROI"):
            continue
        space, scale = _frame(markup, path)
        if kind == "ROI" and label in (None, markup.get("name")):
            return Markup("roi", _roi_corners(markup, path) * scale, space, str(markup.get("name", "")), path)
        point = _control_point(markup, label) if kind != "ROI" else None
        if point is not None:
            position = _numbers(point["position"], 3, path, "control point position")[None] * scale
            return Markup("point", position, space, str(point.get("label", "")), path)
    which = f" labelled {label!r}" if label is not None else ""
    kinds = [m.get("type") for m in markups]
    raise ValueError(f"{path!r} has no defined point or ROI markup{which} (found {kinds}): place a point "
                     "(Fiducial) or an ROI in Slicer, or pass the label of an existing one.")


def _frame(markup: dict, path: str) -> tuple[str, float]:
    space = markup.get("coordinateSystem", "LPS")
    units = markup.get("coordinateUnits", "mm")
    units = units[0] if isinstance(units, list) and units else units
    if space not in ("LPS", "RAS") or units not in _UNITS:
        raise ValueError(f"{path!r}: coordinateSystem {space!r} in {units!r} is not supported: Slicer "
                         "writes 'LPS' or 'RAS' in 'mm' (or 'um').")
    return space, _UNITS[units]


def _control_point(markup: dict, label: str | None) -> dict[str, Any] | None:
    for point in markup.get("controlPoints", []):
        if not isinstance(point, dict) or point.get("positionStatus", "defined") != "defined" or \
                "position" not in point:
            continue  # Slicer keeps unplaced points with no meaningful position
        if label is None or point.get("label") == label or markup.get("name") == label:
            return point
    return None


def _roi_corners(markup: dict, path: str) -> np.ndarray:
    """The 8 corners of a box ROI, in the file's space and units.

    Slicer writes ``center``, ``size`` and a 3x3 ``orientation`` whose columns (``orientation[k::3]``) are
    the box axes. A ``BoundingBox`` ROI without them is the bounding box of its control points.
    """
    if markup.get("insideOut", False):
        raise ValueError(f"{path!r}: an inside-out ROI selects everything but a box; turn 'Inside out' off.")
    if "center" in markup and "size" in markup:
        center = _numbers(markup["center"], 3, path, "ROI center")
        half = _numbers(markup["size"], 3, path, "ROI size") / 2
        axes = _numbers(markup.get("orientation", np.eye(3).ravel()), 9, path, "ROI orientation").reshape(3, 3)
        corners = [center + axes @ (half * np.array(signs)) for signs in product((-1.0, 1.0), repeat=3)]
        return np.stack(corners)
    points = [p["position"] for p in markup.get("controlPoints", []) if "position" in p]
    if not points:
        raise ValueError(f"{path!r}: the ROI has neither center/size nor control points.")
    pts = np.stack([_numbers(p, 3, path, "ROI control point") for p in points])
    lo, hi = pts.min(0), pts.max(0)
    return np.stack([np.where(np.array(s) > 0, hi, lo) for s in product((-1, 1), repeat=3)])


def _numbers(value: Any, count: int, path: str, what: str) -> np.ndarray:
    """``count`` finite numbers from a markup field, or a ValueError naming the file and the field."""
    try:
        values = np.asarray(value, dtype=np.float64).ravel()
    except (TypeError, ValueError):
        values = np.array([])
    if values.size != count or not np.isfinite(values).all():
        raise ValueError(f"{path!r}: the {what} {value!r} is not {count} finite numbers: re-save the markup in Slicer.")
    return values
