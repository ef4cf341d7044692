"""PNG overlays: three orthogonal planes through the region's centre, scan in grey, saliency in colour,
region outline. For a quick look beside the NIfTI; the NIfTI is what to load in 3D Slicer."""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from monai_xres.output.writer import atomic_path

__all__ = ["overlay_centre", "save_overlay"]

_PLANES = {0: "sagittal", 1: "coronal", 2: "axial"}  # plane normal to world x (L-R), y (P-A), z (I-S)


def overlay_centre(saliency: np.ndarray, region: np.ndarray | None) -> tuple[int, ...]:
    """Voxel through which the planes pass: the region's centre of mass, else the saliency peak."""
    if region is not None and region.any():
        return tuple(int(round(float(c.mean()))) for c in np.nonzero(region))
    return tuple(int(v) for v in np.unravel_index(int(np.argmax(saliency)), saliency.shape))


def save_overlay(path: str | os.PathLike, scan: np.ndarray, saliency: np.ndarray, region: np.ndarray | None,
                 affine: np.ndarray | None = None, centre: Sequence[int] | None = None, title: str = "") -> None:
    """Write a PNG of the planes through ``centre`` (atomically).

    Args:
        path: the PNG file.
        scan: the scan, ``spatial`` (2D or 3D), on the same grid as ``saliency``.
        saliency: the map, ``spatial``; values up to 5% of its maximum are transparent.
        region: bool ``spatial`` or None; drawn as an outline.
        affine: the grid's voxel-to-world matrix, for the voxel aspect ratio and the plane names.
        centre: the voxel the planes pass through; default :func:`overlay_centre`.
        title: the figure title.
    """
    scan, saliency = np.asarray(scan, dtype=np.float32), np.asarray(saliency, dtype=np.float32)
    if scan.shape != saliency.shape or (region is not None and region.shape != scan.shape):
        raise ValueError(f"scan {scan.shape}, saliency {saliency.shape} and region "
                         f"{None if region is None else region.shape} must share one grid.")
    n = scan.ndim
    affine = np.eye(n + 1) if affine is None else np.asarray(affine, dtype=np.float64)
    spacing = np.linalg.norm(affine[:n, :n], axis=0)
    centre = tuple(centre) if centre is not None else overlay_centre(saliency, region)
    axes = [None] if n == 2 else [k for k in range(3) if scan.shape[k] > 1] or [2]
    top = float(saliency.max()) if saliency.size and saliency.max() > 0 else 1.0
    fig = Figure(figsize=(4.2 * len(axes), 4.4))
    FigureCanvasAgg(fig)
    for i, k in enumerate(axes):
        ax = fig.add_subplot(1, len(axes), i + 1)
        plane = (slice(None),) * n if k is None else tuple(centre[k] if a == k else slice(None) for a in range(n))
        rows, cols = [a for a in range(n) if a != k][:2]
        grey, heat = scan[plane].T, saliency[plane].T
        ax.imshow(grey, cmap="gray", origin="lower", aspect=spacing[cols] / spacing[rows],
                  interpolation="nearest")
        ax.imshow(np.ma.masked_less_equal(heat, 0.05 * top), cmap="jet", alpha=0.5, vmin=0, vmax=top, origin="lower",
                  aspect=spacing[cols] / spacing[rows], interpolation="nearest")
        if region is not None:
            outline = region[plane].T.astype(np.float32)
            if 0 < outline.sum() < outline.size:
                ax.contour(outline, levels=[0.5], colors="cyan", linewidths=1.0)
        name = "slice" if k is None else f"{_plane_name(affine, k)} {('i', 'j', 'k')[k]}={centre[k]}"
        ax.set_title(name, fontsize=9)
        ax.set_axis_off()
    fig.suptitle(title, fontsize=9)
    with atomic_path(path, ".png") as tmp:
        fig.savefig(tmp, format="png", dpi=80)


def _plane_name(affine: np.ndarray, axis: int) -> str:
    """Sagittal, coronal or axial: the plane normal to the world axis the voxel axis points along most."""
    return _PLANES[int(np.argmax(np.abs(affine[:3, axis])))]
