"""Where each written map's evidence lies, by structure of a label map on the scan (``--anatomy``).

:class:`~monai_xres.handlers.SaliencyWriter` (``anatomy=...``, the overlays' ``explain_anatomy``, the CLI's
``--anatomy``) measures every map it writes, in the scan's geometry (the map as a user sees it in 3D Slicer),
against a label map on the scan's own grid: planted structures, a TotalSegmentator output, the bundle's own
multi-class prediction. Each sidecar gets ``"anatomy": {"shares", "chance", "labels"}``
(:func:`~monai_xres.metrics.structures.structure_shares`) and each instance row of the QC table one column per
structure. Structures are named by ``names`` (``{value: name}``; a value present without a name is
``"label <v>"``; 0, the background, counts as ``"outside"`` unless named).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np

from monai_xres.metrics.structures import OUTSIDE, structure_shares, top_structure

__all__ = ["AnatomySettings", "anatomy_columns", "anatomy_facts", "as_anatomy_settings", "summary_line"]


@dataclass
class AnatomySettings:
    """The label map every written map is measured against.

    Args:
        labels: a label file on the scan's grid, the same for every case; or
        key: the data key holding each case's label file (a cohort).
        names: ``{label value: name}`` (keys may be strings, as JSON gives them).
        target: what the maps explain, for the printed summary (e.g. ``"spleen"``).
    """

    labels: str | None = None
    key: str | None = None
    names: Mapping[Any, str] = field(default_factory=dict)
    target: str | None = None

    def __post_init__(self) -> None:
        if (self.labels is None) == (self.key is None):
            raise ValueError("Anatomy needs exactly one of labels (a label file on the scan's grid) and key (the "
                             "data key of each case's label file).")
        for value in dict(self.names or {}):
            try:
                int(value)
            except (TypeError, ValueError):
                raise ValueError(f"Anatomy names map label values to names, got key {value!r}: use e.g. "
                                 "{\"1\": \"spleen\"}.") from None


def as_anatomy_settings(value: AnatomySettings | Mapping[str, Any] | str | os.PathLike | None
                        ) -> AnatomySettings | None:
    """Settings from settings, a dict of their fields (configs, the CLI), a label file path, or None (off)."""
    if value is None or isinstance(value, AnatomySettings):
        return value
    if isinstance(value, (str, os.PathLike)):
        return AnatomySettings(labels=os.fspath(value))
    unknown = sorted(set(value) - {f.name for f in fields(AnatomySettings)})
    if unknown:
        valid = sorted(f.name for f in fields(AnatomySettings))
        raise ValueError(f"Unknown anatomy option(s) {unknown}; valid: {valid}.")
    settings = dict(value)
    if settings.get("labels") is not None:
        settings["labels"] = os.fspath(str(settings["labels"]))
    return AnatomySettings(**settings)


def _case_file(settings: AnatomySettings, data: Mapping) -> str:
    if settings.labels is not None:
        return settings.labels
    if settings.key not in data:
        raise ValueError(f"The anatomy key {settings.key!r} is missing from the data (keys: {list(data)}).")
    value = data[settings.key]
    value = value[0] if isinstance(value, (list, tuple)) and len(value) == 1 else value
    if not isinstance(value, (str, os.PathLike)):
        raise ValueError(f"The anatomy key {settings.key!r} must hold a label file's path, got {type(value).__name__}.")
    return os.fspath(value)


def _labels(writer: Any, path: str) -> tuple[np.ndarray, np.ndarray]:
    """The label map ``spatial`` and its affine, read once per file (MONAI's reader: the scan's convention)."""
    cache = writer.__dict__.setdefault("_anatomy_cache", {})
    if path not in cache:
        from monai.transforms import LoadImage

        try:
            image = LoadImage(image_only=True)(path)
        except Exception as e:  # MONAI's readers raise many types
            raise ValueError(f"Cannot read the anatomy label map {path!r}: {e}") from e
        cache.clear()  # one case at a time
        cache[path] = (np.asarray(image), np.asarray(image.affine, dtype=np.float64))
    return cache[path]


def _names(settings: AnatomySettings, labels: np.ndarray) -> dict[int, str]:
    present = {int(v): f"label {int(v)}" for v in np.unique(labels) if int(v) != 0}
    return {**present, **{int(k): str(v) for k, v in dict(settings.names or {}).items()}}


def anatomy_facts(writer: Any, data: Mapping, saliency: Any) -> dict[str, Any]:
    """``{"anatomy": {"shares", "chance", "labels"}}`` of one written map (a MetaTensor ``(1, *spatial)`` in the
    scan's geometry), or ``{}`` when the writer has no anatomy settings.

    Raises:
        ValueError: the label map is not on the map's grid (shape or affine), with the fix.
    """
    settings: AnatomySettings | None = getattr(writer, "anatomy", None)
    if settings is None:
        return {}
    path = _case_file(settings, data)
    labels, affine = _labels(writer, path)
    values = saliency.detach().cpu().numpy() if hasattr(saliency, "detach") else np.asarray(saliency)
    values = values[0] if values.ndim == labels.ndim + 1 else values
    own = np.asarray(saliency.affine.cpu() if hasattr(saliency, "affine") else np.eye(4), dtype=np.float64)
    if labels.shape != values.shape or own.shape != affine.shape or not np.allclose(own, affine, atol=1e-3):
        raise ValueError(f"The anatomy label map {path!r} ({labels.shape}) is not on the scan's grid "
                         f"({values.shape}, or another affine): resample it onto the scan first (nearest "
                         "neighbour, e.g. 3D Slicer's Resample Scalar/Vector/DWI Volume).")
    shares = structure_shares(values, labels, _names(settings, labels))
    target = {"target": settings.target} if settings.target else {}
    return {"anatomy": {**shares, "labels": os.path.abspath(path), **target}}


def anatomy_columns(facts: Mapping[str, Any], tag: str) -> dict[str, float]:
    """QC-table columns ``<tag>_anatomy_<structure>`` (spaces as ``-``) of a map's anatomy facts."""
    shares = facts.get("anatomy", {}).get("shares", {})
    return {f"{tag}_anatomy_{str(name).replace(' ', '-')}": value for name, value in shares.items()}


def summary_line(record: Mapping[str, Any]) -> str | None:
    """One line of a sidecar with anatomy: where the largest named share of the map's evidence lies."""
    anatomy = record.get("anatomy")
    found = top_structure(anatomy) if isinstance(anatomy, Mapping) else None
    if found is None:
        return None
    name, share, chance = found
    method = record.get("method", {}).get("name", "map")
    region = record.get("region", {})
    what = anatomy.get("target") or region.get("name", "region")
    outside = anatomy["shares"].get(OUTSIDE, math.nan)
    return (f"{method}: {share:.0%} of the {what}'s evidence lies in the {name} ({chance:.0%} of the scan's "
            f"volume; {outside:.0%} outside every structure)")
