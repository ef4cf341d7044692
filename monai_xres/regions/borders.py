"""Border and rim regions, and the area a Dice score looks at for them.

A *border* target is the voxels of class ``A`` that touch class ``B`` (face neighbours) or, with a width,
also those within that many mm of ``B``: "what decides where the spleen ends and the kidney begins". A *rim*
target is the inner or outer band of a region, of a width in mm. The layer touching the boundary is always
included, so a width below the voxel size still gives one layer. Distances are Euclidean in mm, with the
voxel size read from the output grid's affine (``scipy.ndimage.distance_transform_edt``).

The functions take the target duck-typed (its ``border_class``, ``border_mm``, ``rim``, ``rim_mm`` and
``class_index`` fields) so that :mod:`monai_xres.regions.target` can call them without an import cycle.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from scipy import ndimage

from monai_xres.regions.geometry import affine_matrix
from monai_xres.regions.scores import predicted_class_mask

__all__ = ["RIMS", "check_border_fields", "grid_spacing", "near", "refine_region", "rim", "score_area"]

RIMS = ("inner", "outer")


def check_border_fields(target: Any) -> None:
    """Raise ``ValueError`` for inconsistent border/rim/contrast fields of a target."""
    for name in ("border_class", "contrast_class"):
        value = getattr(target, name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, np.integer))):
            raise ValueError(f"{name} must be an integer output channel, got {value!r}.")
        if value is not None and int(value) == target.class_index:
            raise ValueError(f"{name} {value} is the explained class itself: name another class.")
    if target.rim is not None and target.rim not in RIMS:
        raise ValueError(f"rim must be 'inner' or 'outer', got {target.rim!r}.")
    if (target.rim is None) != (target.rim_mm is None):
        raise ValueError("A rim needs both its side and its width: give rim='inner' or 'outer' and rim_mm=... .")
    for name in ("border_mm", "rim_mm"):
        value = getattr(target, name)
        if value is not None and not (isinstance(value, (int, float)) and np.isfinite(value) and value > 0):
            raise ValueError(f"{name} must be a width in mm > 0, got {value!r}.")
    if target.border_mm is not None and target.border_class is None:
        raise ValueError("border_mm is the width of a border with another class: give border_class=... too.")
    if target.border_class is not None and target.rim is not None:
        raise ValueError("Give a border with another class or a rim of the region, not both.")


def grid_spacing(affine: Any | None, n_dims: int, what: str) -> tuple[float, ...]:
    """Voxel size in mm per axis from a voxel-to-world ``affine``.

    Raises:
        ValueError: no affine is known (``what`` names the width that needs it).
    """
    if affine is None:
        raise ValueError(f"{what} is in mm, so it needs the grid's affine: pass affine=... to the RegionTarget "
                         "or give the input as a MetaTensor.")
    matrix = affine_matrix(affine)
    return tuple(float(v) for v in np.linalg.norm(matrix[:n_dims, :n_dims], axis=0))


def near(mask: torch.Tensor, width_mm: float | None = None, spacing: Sequence[float] | None = None) -> torch.Tensor:
    """Voxels outside ``mask`` (bool ``spatial``) that touch it (face neighbours) and, with ``width_mm``, also
    those within that distance of it (mm, with ``spacing``): a width below the voxel size keeps the touching
    layer."""
    array = mask.cpu().numpy()
    grown = ndimage.binary_dilation(array, ndimage.generate_binary_structure(array.ndim, 1))
    if width_mm is not None:
        grown |= ndimage.distance_transform_edt(~array, sampling=spacing) <= width_mm
    return torch.from_numpy(grown & ~array).to(mask.device)


def rim(region: torch.Tensor, side: str, width_mm: float, spacing: Sequence[float]) -> torch.Tensor:
    """The inner band of ``region`` (its voxels within ``width_mm`` of the outside, the outermost layer at
    least) or the outer band (the voxels outside it within ``width_mm``)."""
    if side == "outer":
        return near(region, width_mm, spacing)
    array = np.pad(region.cpu().numpy(), 1)  # the grid's edge counts as outside
    inside = (slice(1, -1),) * array.ndim
    depth = ndimage.distance_transform_edt(array, sampling=spacing)[inside]
    layer = (array & ~ndimage.binary_erosion(array, ndimage.generate_binary_structure(array.ndim, 1)))[inside]
    return torch.from_numpy(array[inside] & ((depth <= width_mm) | layer)).to(region.device)


def refine_region(target: Any, region: torch.Tensor, logits: torch.Tensor, affine: Any | None) -> torch.Tensor:
    """``region`` narrowed to the target's border with another class, or to its rim."""
    if target.border_class is not None:
        spacing = grid_spacing(affine, region.ndim, "border_mm") if target.border_mm is not None else None
        other = predicted_class_mask(logits, int(target.border_class))
        return region & near(other, target.border_mm, spacing)
    if target.rim is not None:
        return rim(region, target.rim, float(target.rim_mm), grid_spacing(affine, region.ndim, "rim_mm"))
    return region


def score_area(target: Any, logits: torch.Tensor, affine: Any | None, raw: torch.Tensor) -> torch.Tensor:
    """``W``, the voxels a Dice score compares predictions in, for a border or rim target (else ``raw``).

    Border with ``B``: the band on both sides of the ``A``/``B`` interface (voxels of ``A`` near ``B`` and of
    ``B`` near ``A``) within ``raw``, so that the border moving either way counts. Rim: the inner and outer
    band of the predicted region together, so that the boundary moving in or out counts.
    """
    if target.border_class is None and target.rim is None:
        return raw
    own = predicted_class_mask(logits, target.class_index) & raw
    if target.border_class is not None:
        spacing = grid_spacing(affine, raw.ndim, "border_mm") if target.border_mm is not None else None
        other = predicted_class_mask(logits, int(target.border_class))
        return raw & ((own & near(other, target.border_mm, spacing)) | (other & near(own, target.border_mm, spacing)))
    spacing = grid_spacing(affine, raw.ndim, "rim_mm")
    return rim(own, "inner", float(target.rim_mm), spacing) | rim(own, "outer", float(target.rim_mm), spacing)
