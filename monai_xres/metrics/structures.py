"""Where a map's evidence lies, by structure: its positive mass per label of a label map, against chance.

A label map on the map's own grid (the planted scenes' structures, a TotalSegmentator output, a bundle's
multi-class prediction) splits the map's positive mass into one share per named structure and the rest
("outside"). Each share comes with its chance level, the structure's share of the scan's volume: a map
that spreads its mass evenly scores its chance everywhere. Both are flattened, so 2D and 3D work alike.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

__all__ = ["OUTSIDE", "as_names", "structure_shares", "top_structure"]

OUTSIDE = "outside"  # the key of what no named structure holds


def _array(values: Any) -> np.ndarray:
    if hasattr(values, "detach"):
        values = values.detach().cpu().numpy()
    return np.asarray(values)


def as_names(names: Mapping[Any, str] | None, labels: np.ndarray) -> dict[int, str]:
    """``{label value: name}`` with integer keys (JSON gives strings); None names every nonzero value present
    ``"label <v>"``."""
    if names is None:
        return {int(v): f"label {int(v)}" for v in np.unique(labels) if int(v) != 0}
    out = {}
    for key, name in dict(names).items():
        try:
            out[int(key)] = str(name)
        except (TypeError, ValueError):
            raise ValueError(f"Structure names map label values to names, got key {key!r}: use e.g. "
                             "{\"1\": \"spleen\"}.") from None
    if OUTSIDE in out.values():
        raise ValueError(f"{OUTSIDE!r} is the name of what lies outside every structure: rename that structure.")
    return out


def structure_shares(saliency: Any, labels: Any, names: Mapping[Any, str] | None) -> dict[str, dict[str, float]]:
    """Shares of a map's positive mass per structure of a label map, with their chance levels.

    Args:
        saliency: the map, any shape (e.g. ``(1, 1, H, W[, D])``, ``(H, W[, D])``), numpy or torch.
        labels: integer label map with as many voxels, on the same grid (flattened in the same order).
        names: ``{label value: name}`` (keys may be strings, as JSON gives them); voxels of other values count
            as ``"outside"``. None: every nonzero value present, named ``"label <v>"``.

    Returns:
        ``{"shares": {name: share of the positive mass, ..., "outside": ...}, "chance": {name: share of the
        voxels (the scan's volume on a regular grid), ..., "outside": ...}}``. Each sums to 1. Only the
        positive part of the map counts (a map with a constant offset is measured against its own zero); a
        map with no positive mass has NaN shares (its chance levels stay defined).

    Raises:
        ValueError: the label map does not have as many voxels as the map, or the names are malformed.
    """
    sal, lab = _array(saliency).astype(np.float64).ravel(), _array(labels).ravel()
    if sal.size != lab.size:
        raise ValueError(f"The label map has {lab.size} voxels and the map {sal.size}: resample the label map onto "
                         "the map's grid (nearest neighbour) first.")
    if lab.size and not np.array_equal(lab, np.round(lab)):
        raise ValueError("The label map holds non-integer values: give a label map (integers), not probabilities.")
    lab = lab.astype(np.int64)
    named = as_names(names, lab)
    positive = np.clip(np.nan_to_num(sal, nan=0.0), 0.0, None)
    total = float(positive.sum())
    shares, chance, inside = {}, {}, np.zeros(lab.shape, dtype=bool)
    for value, name in named.items():
        where = lab == value
        inside |= where
        chance[name] = float(where.mean()) if lab.size else math.nan
        shares[name] = float(positive[where].sum()) / total if total > 0 else math.nan
    chance[OUTSIDE] = float((~inside).mean()) if lab.size else math.nan
    shares[OUTSIDE] = float(positive[~inside].sum()) / total if total > 0 else math.nan
    return {"shares": shares, "chance": chance}


def top_structure(result: Mapping[str, Mapping[str, float]]) -> tuple[str, float, float] | None:
    """``(name, share, chance)`` of the named structure (not ``"outside"``) holding the largest share, or None
    when the map has no positive mass or no structure."""
    shares = {k: v for k, v in result["shares"].items() if k != OUTSIDE and math.isfinite(v)}
    if not shares:
        return None
    name = max(shares, key=lambda k: shares[k])  # the first of equal shares, in the names' order
    return name, shares[name], result["chance"][name]
