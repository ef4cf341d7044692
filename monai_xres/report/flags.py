"""What a reviewer should look at first: flags on the rows of a cohort report, each with its threshold.

Every threshold is a constant here, named in :data:`LEGEND` (the page's legend and ``docs/report.md``):

- ``failed``: the case (or one of its maps) failed; the row says why, in one line.
- ``empty_prediction``: the explained region is empty (nothing of the class predicted there):
  predicted volume ``<= EMPTY_ML`` mL.
- ``zero_map``: the map holds no positive evidence (all zero, or only evidence against the class):
  its maximum ``<= ZERO_MAP_MAX``.
- ``away_from_region``: most of the evidence lies away from the region: less than ``NEAR_SHARE_MIN``
  (a third) of the map's positive mass within ``NEAR_MM`` (10 mm) of it.
- ``low_dice``: where a label is given, the prediction's Dice against it is below ``DICE_MIN`` (0.5).
- ``other_structure``: where anatomy shares exist, one structure other than the region's own holds at
  least ``OTHER_STRUCTURE_MIN`` (half) of the positive mass.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from monai_xres.output.qc import NEAR_MM

__all__ = ["DICE_MIN", "EMPTY_ML", "FLAGS", "LEGEND", "NEAR_COLUMN", "NEAR_MM", "NEAR_SHARE_MIN",
           "OTHER_STRUCTURE_MIN", "OUTSIDE_COLUMN", "ZERO_MAP_MAX", "other_structure", "row_flags"]

NEAR_COLUMN = f"share_within_{NEAR_MM:g}mm"
OUTSIDE_COLUMN = f"share_beyond_{NEAR_MM:g}mm"

EMPTY_ML = 0.0
ZERO_MAP_MAX = 0.0
NEAR_SHARE_MIN = 1.0 / 3.0
DICE_MIN = 0.5
OTHER_STRUCTURE_MIN = 0.5

FLAGS = ("failed", "empty_prediction", "zero_map", "away_from_region", "low_dice", "other_structure")
LEGEND = {
    "failed": "the case or map failed (the reason is in the error column)",
    "empty_prediction": f"predicted volume of the region <= {EMPTY_ML:g} mL",
    "zero_map": f"no positive evidence: the map's maximum <= {ZERO_MAP_MAX:g}",
    "away_from_region": f"less than {NEAR_SHARE_MIN:.3g} of the positive mass within {NEAR_MM:g} mm of the region",
    "low_dice": f"Dice against the label below {DICE_MIN:g}",
    "other_structure": f"another structure than the region's holds >= {OTHER_STRUCTURE_MIN:g} of the positive mass",
}


def _number(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def other_structure(shares: Mapping[str, float], own: set[str]) -> str | None:
    """The structure (not ``own``, not ``"outside"``) holding at least ``OTHER_STRUCTURE_MIN`` of the mass."""
    for name, share in shares.items():
        if name != "outside" and name not in own and _number(share) >= OTHER_STRUCTURE_MIN:
            return name
    return None


def row_flags(row: Mapping[str, Any], anatomy: Mapping[str, float] | None = None,
              own: set[str] = frozenset()) -> list[str]:
    """The flags of one report row (``error``, ``predicted_ml``, ``map_max``, :data:`NEAR_COLUMN`, ``dice``), in
    :data:`FLAGS` order; ``anatomy``: the map's structure shares, ``own``: the names of the region's structure.

    A missing value (NaN, empty) raises no flag: no label, no Dice flag."""
    found = set()
    if row.get("error"):
        found.add("failed")
    if _number(row.get("predicted_ml")) <= EMPTY_ML:
        found.add("empty_prediction")
    if _number(row.get("map_max")) <= ZERO_MAP_MAX:
        found.add("zero_map")
    if _number(row.get(NEAR_COLUMN)) < NEAR_SHARE_MIN:
        found.add("away_from_region")
    if _number(row.get("dice")) < DICE_MIN:
        found.add("low_dice")
    if anatomy and other_structure(anatomy, set(own)):
        found.add("other_structure")
    return [f for f in FLAGS if f in found]
