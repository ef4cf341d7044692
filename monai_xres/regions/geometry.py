"""Millimetres and voxels: placing world positions, boxes and label files on an image grid, once.

World positions are in the image's space (``meta["space"]``: RAS in MONAI unless LPS), mapped with the
image's voxel-to-world affine. A point goes to its nearest voxel centre; a box to the voxels whose centres
lie in it; a label file (on the scan's own grid) onto a preprocessed grid through world coordinates.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

__all__ = ["affine_matrix", "image_affine", "image_space", "label_file_on_grid", "point_to_voxel", "scan_affine",
           "scan_box_corners", "world_box_to_voxels", "world_to_index"]


def affine_matrix(affine: Any) -> np.ndarray:
    """A 4x4 (or (d+1)^2) affine as a float64 numpy array, from numpy, torch or a MetaTensor's affine."""
    if isinstance(affine, torch.Tensor):
        affine = affine.detach().cpu()
    return np.asarray(affine, dtype=np.float64)


def image_affine(image: Any) -> np.ndarray:
    """The voxel-to-world affine of a ``MetaTensor`` image, float64.

    Raises:
        ValueError: the image has no affine (a plain tensor).
    """
    affine = getattr(image, "affine", None)
    if affine is None:
        raise ValueError("A position in mm needs the image's affine: load the image as a MetaTensor "
                         "(MONAI's LoadImaged) or give the region in voxels.")
    return affine_matrix(affine)


def image_space(image: Any) -> str:
    """``"RAS"`` or ``"LPS"``: the world frame of the image's affine (MONAI's ``meta["space"]``, RAS by default)."""
    meta = getattr(image, "meta", {}) or {}
    return str(meta.get("space", "RAS"))


def scan_affine(image: Any) -> np.ndarray | None:
    """The voxel-to-world affine of the scan as loaded (MONAI's ``meta["original_affine"]``), before any
    orientation, spacing or crop; None for a plain tensor (no geometry: its grid is the only one).

    Raises:
        ValueError: a MetaTensor moved by transforms that does not record its original affine.
    """
    if getattr(image, "affine", None) is None:
        return None
    original = (getattr(image, "meta", None) or {}).get("original_affine")
    if original is not None:
        return affine_matrix(original)
    if not getattr(image, "applied_operations", None):
        return image_affine(image)  # nothing moved the grid
    raise ValueError("The image does not record its original affine (load it with MONAI's LoadImaged), so voxel "
                     "indices of the scan cannot be placed: give the region in mm, or on the preprocessed grid.")


def scan_box_corners(box: Sequence[Sequence[float]], scan: np.ndarray) -> np.ndarray:
    """World positions ``(2^d, d)`` of the corners of a scan voxel box ``(start, end)`` (end exclusive): the
    outer faces of its first and last voxels, at ``start - 0.5`` and ``end - 0.5`` in voxel units."""
    from itertools import product

    start, end = (np.asarray(v, dtype=np.float64) for v in box)
    corners = np.array(list(product(*zip(start - 0.5, end - 0.5))), dtype=np.float64)
    d = corners.shape[1]
    return (scan @ np.vstack([corners.T, np.ones(len(corners))]))[:d].T


def world_to_index(points: np.ndarray, affine: Any) -> np.ndarray:
    """Continuous voxel indices ``(N, d)`` of world points ``(N, d)`` (or ``(d,)`` -> ``(d,)``)."""
    points = np.asarray(points, dtype=np.float64)
    single = points.ndim == 1
    points = np.atleast_2d(points)
    d = points.shape[1]
    inverse = np.linalg.inv(affine_matrix(affine))
    index = (inverse @ np.vstack([points.T, np.ones(len(points))]))[:d].T
    return index[0] if single else index


def point_to_voxel(point: Sequence[float], spatial: Sequence[int], affine: Any | None = None,
                   space: str = "RAS", grid: str = "image grid") -> tuple[int, ...]:
    """The voxel of a point: given in voxels (``affine`` None) or in world mm (mapped with ``affine``).

    ``grid`` names the grid in messages (``"image grid"``, ``"output grid"``).

    Raises:
        ValueError: wrong number of coordinates, a NaN/Inf coordinate, or a voxel outside the grid.
    """
    p = np.asarray(point, dtype=np.float64)
    spatial = tuple(int(n) for n in spatial)
    if p.shape != (len(spatial),):
        raise ValueError(f"The point {list(np.atleast_1d(p))} needs {len(spatial)} coordinates for the "
                         f"{len(spatial)}D {grid} {spatial}.")
    if not np.isfinite(p).all():
        raise ValueError(f"The point {p.tolist()} has a NaN or infinite coordinate: give finite numbers.")
    index = p if affine is None else world_to_index(p, affine)
    voxel = tuple(int(v) for v in np.rint(index))
    if any(not 0 <= v < n for v, n in zip(voxel, spatial)):
        where = f"{p.round(2).tolist()} mm ({space}) is at voxel {voxel}" if affine is not None else f"voxel {voxel}"
        raise ValueError(f"The point at {where}, outside the {grid} {spatial}: check the coordinate system "
                         "(RAS vs LPS, voxels vs mm) and that the point lies in this scan.")
    return voxel


def world_box_to_voxels(corners: np.ndarray, affine: Any, spatial: Sequence[int]
                        ) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The voxel box ``(start, end)`` (end exclusive) of the voxels whose centres lie in a world-space box.

    ``corners`` ``(N, d)`` are mapped to continuous voxel indices with ``affine``; their per-axis bounding
    box keeps the voxel centres inside it (an oblique box becomes its axis-aligned hull on the grid). The
    box is clipped to the image; along an axis where it is thinner than a voxel, the voxel nearest its
    centre is kept.

    Raises:
        ValueError: the box lies wholly outside the image.
    """
    corners = np.asarray(corners, dtype=np.float64)
    if not np.isfinite(corners).all():
        raise ValueError("The box has a NaN or infinite coordinate: give finite numbers.")
    index = world_to_index(corners, affine)[:, : len(spatial)].T
    lo, hi = index.min(1), index.max(1)
    size = np.asarray(spatial)
    if np.any(hi < -0.5) or np.any(lo > size - 0.5):
        raise ValueError(f"The box spans voxels {lo.round(1).tolist()} to {hi.round(1).tolist()}, wholly "
                         f"outside the image grid {tuple(spatial)}: check the coordinate system (RAS vs LPS) "
                         "and that the box lies in this scan.")
    start = np.clip(np.ceil(lo - 1e-6), 0, size).astype(int)
    end = np.clip(np.floor(hi + 1e-6) + 1, 0, size).astype(int)
    nearest = np.clip(np.rint((lo + hi) / 2), 0, size - 1).astype(int)
    thin = start >= end
    start, end = np.where(thin, nearest, start), np.where(thin, nearest + 1, end)
    return tuple(int(v) for v in start), tuple(int(v) for v in end)


def label_file_on_grid(path: str | os.PathLike, image: torch.Tensor) -> torch.Tensor:
    """A mask or label map file on the scan's own grid, placed on the preprocessed ``image`` grid through
    world coordinates (MONAI's ``ResampleToMatch``, nearest neighbour): exact after orientation, spacing
    and cropping, whatever the preprocessing was."""
    from monai.transforms import LoadImage, ResampleToMatch

    if getattr(image, "affine", None) is None:
        raise ValueError("A region file needs the image's affine: load the image as a MetaTensor (LoadImaged).")
    try:
        label = LoadImage(image_only=True, ensure_channel_first=True)(os.fspath(path))
    except Exception as e:  # MONAI raises several types for unreadable files
        raise ValueError(f"Cannot read the region file {os.fspath(path)!r}: {e}") from e
    placed = ResampleToMatch(mode="nearest", padding_mode="zeros")(label, img_dst=image)
    return placed.as_tensor() if hasattr(placed, "as_tensor") else placed
