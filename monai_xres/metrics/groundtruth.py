"""Ground-truth measures of a map on a scene whose used evidence is known (a planted marker M).

On a planted-cue scene (:mod:`monai_xres.sample_data.planted`) a model verified to rely on the marker M
(:mod:`monai_xres.metrics.reliance`) should put its explanation's mass near M; a control model that relies on a
property inside the object should not. Every measure is flattened, so 2D and 3D work alike, and reads only the
positive part of the map (a map with a constant offset is measured against its own zero):

- :func:`marker_zone`: M dilated by a tolerance in mm (CAMs live on coarse grids), with the grid's spacing;
- :func:`mass_share` in the zone, its :func:`chance_level` (zone volume / scan volume) and the enrichment
  (share / chance);
- :func:`rank_accuracy`: of the top ``|zone|`` voxels, the share in the zone;
- :func:`pointing_game`: whether the map's maximum lies in the zone;
- :func:`contrast_auc`: the model-contrast ROC AUC over cases, shortcut-model shares against control-model
  shares on the same scenes (Mann-Whitney U, ties counted half; 0.5: the map cannot tell the models apart).
  A map made from the input alone is the same for both models, so it scores exactly 0.5.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import ndimage

__all__ = ["DEFAULT_TOLERANCE_MM", "chance_level", "contrast_auc", "marker_zone", "mass_share", "pointing_game",
           "rank_accuracy", "scene_measures"]

DEFAULT_TOLERANCE_MM = 5.0
MARKER, OBJECT_VALUES = 3, (1, 4)  # the planted scenes' structures: 1 target, 3 marker M, 4 property P (inside)


def _array(values: Any) -> np.ndarray:
    if hasattr(values, "detach"):
        values = values.detach().cpu().numpy()
    return np.asarray(values)


def _flat(saliency: Any, zone: Any) -> tuple[np.ndarray, np.ndarray]:
    sal, where = _array(saliency).astype(np.float64).ravel(), _array(zone).astype(bool).ravel()
    if sal.size != where.size:
        raise ValueError(f"The zone has {where.size} voxels and the map {sal.size}: put both on one grid.")
    return np.nan_to_num(sal, nan=-np.inf), where


def marker_zone(structures: Any, spacing: Sequence[float] | None = None, tolerance_mm: float = DEFAULT_TOLERANCE_MM,
                marker: int = MARKER) -> np.ndarray:
    """The voxels within ``tolerance_mm`` of the marker (value ``marker`` of ``structures``), as bool.

    Args:
        structures: label map ``spatial`` (2D or 3D).
        spacing: voxel size per axis, mm (default 1); the distance is Euclidean in mm
            (``scipy.ndimage.distance_transform_edt`` with ``sampling``).
        tolerance_mm: how far around M still counts (0: M itself).
        marker: the label value of M.

    Raises:
        ValueError: no voxel of the marker, a negative tolerance, or a spacing of the wrong length.
    """
    labels = _array(structures)
    found = labels == marker
    if not found.any():
        raise ValueError(f"The structure map has no voxel of the marker (value {marker}): is this a planted scene?")
    if not tolerance_mm >= 0:
        raise ValueError(f"tolerance_mm must be >= 0, got {tolerance_mm}.")
    if spacing is not None and len(spacing) != labels.ndim:
        raise ValueError(f"spacing has {len(spacing)} values for a {labels.ndim}D structure map.")
    distance = ndimage.distance_transform_edt(~found, sampling=None if spacing is None else tuple(spacing))
    return distance <= tolerance_mm


def mass_share(saliency: Any, zone: Any) -> float:
    """Share of the map's positive mass in ``zone`` (NaN when the map has no positive mass)."""
    sal, where = _flat(saliency, zone)
    positive = np.clip(sal, 0.0, None)
    total = float(positive.sum())
    return float(positive[where].sum()) / total if total > 0 else math.nan


def chance_level(zone: Any) -> float:
    """The zone's share of the scan's voxels: what a map spread evenly puts there."""
    where = _array(zone).astype(bool)
    return float(where.mean()) if where.size else math.nan


def rank_accuracy(saliency: Any, zone: Any) -> float:
    """Of the ``|zone|`` highest voxels of the map, the share inside the zone (NaN for an empty zone).

    Ties are broken stably, by flat (C-order) index: of equal values the voxel with the lower index ranks
    higher, so the measure is deterministic; a map flat over large areas (a ReLU-ed CAM) is then judged by
    the order of its voxels there, which a reader should keep in mind."""
    sal, where = _flat(saliency, zone)
    k = int(where.sum())
    if k == 0:
        return math.nan
    top = np.argsort(-sal, kind="stable")[:k]
    return float(where[top].mean())


def pointing_game(saliency: Any, zone: Any) -> float:
    """1.0 if the map's maximum lies in the zone, else 0.0 (the first maximum in flat C order, ``np.argmax``)."""
    sal, where = _flat(saliency, zone)
    return float(where[int(np.argmax(sal))])


def contrast_auc(shortcut: Sequence[float], control: Sequence[float]) -> float:
    """Model-contrast ROC AUC: the probability that a shortcut-model case's share exceeds a control-model case's,
    ties counted half (the Mann-Whitney U statistic over all pairs, divided by their number).

    Equals ``sklearn.metrics.roc_auc_score`` with the shortcut cases as positives. Scenes where either model's
    share is NaN (a map without positive mass) are left out of both lists; NaN when nothing is left."""
    a, b = np.asarray(shortcut, dtype=np.float64), np.asarray(control, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"Give one share per scene for each model, got {a.size} and {b.size}.")
    keep = np.isfinite(a) & np.isfinite(b)
    a, b = a[keep], b[keep]
    if a.size == 0:
        return math.nan
    greater = (a[:, None] > b[None, :]).sum()
    ties = (a[:, None] == b[None, :]).sum()
    return float((greater + 0.5 * ties) / (a.size * b.size))


def scene_measures(saliency: Any, structures: Any, spacing: Sequence[float] | None = None,
                   tolerance_mm: float = DEFAULT_TOLERANCE_MM, marker: int = MARKER,
                   object_values: Sequence[int] = OBJECT_VALUES) -> dict[str, float]:
    """Every per-scene measure of one map: ``share_marker``, ``chance_marker``, ``enrichment_marker``,
    ``rank_accuracy``, ``pointing``, ``share_object`` (positive mass inside the target object, the values
    ``object_values`` of ``structures``) and ``chance_object``."""
    labels = _array(structures)
    zone = marker_zone(labels, spacing, tolerance_mm, marker)
    share, chance = mass_share(saliency, zone), chance_level(zone)
    inside = np.isin(labels, list(object_values))
    return {"share_marker": share, "chance_marker": chance, "enrichment_marker": share / chance,
            "rank_accuracy": rank_accuracy(saliency, zone), "pointing": pointing_game(saliency, zone),
            "share_object": mass_share(saliency, inside), "chance_object": chance_level(inside)}
