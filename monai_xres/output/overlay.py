"""PNG overlays: three orthogonal planes through the region's centre, scan in grey, saliency in colour
with its colour bar (the map's own values), region outline, each plane in the scan's true aspect ratio
(voxel sizes from the affine). For a quick look beside the NIfTI; the NIfTI is what to load in 3D Slicer."""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from monai_xres.output.writer import atomic_path

__all__ = ["overlay_centre", "save_overlay"]

_PLANES = {0: "sagittal", 1: "coronal", 2: "axial"}  # plane normal to world x (L-R), y (P-A), z (I-S)


def overlay_centre(saliency: np.ndarray, region: np.ndarray | None) -> tuple[int, ...]:
    """Voxel through which the planes pass: the region's centre of mass, else the saliency peak."""
    if region is not None and region.any():
        return tuple(int(round(float(c.mean()))) for c in np.nonzero(region))
    return tuple(int(v) for v in np.unravel_index(int(np.argmax(saliency)), saliency.shape))


# per plane (by the world axis of its normal, RAS): the world axis shown left to right and the direction
# it runs on screen (-1: towards -x, the patient's left, as radiologists and 3D Slicer show it), then the
# world axis shown bottom to top and its direction (anterior, superior up)
_SCREEN = {2: ((0, -1), (1, 1)), 1: ((0, -1), (2, 1)), 0: ((1, -1), (2, 1))}
_LETTERS = {(0, 1): "R", (0, -1): "L", (1, 1): "A", (1, -1): "P", (2, 1): "S", (2, -1): "I"}


def _screen_axes(affine: np.ndarray, k: int, n: int) -> tuple[int, bool, int, bool, str]:
    """For the plane normal to voxel axis ``k``: the voxel axes shown across and up, whether each is flipped
    so the world runs the conventional way on screen, and the letters of the screen-right/top directions."""
    across, up = [a for a in range(n) if a != k][:2]
    if n < 3:
        return across, False, up, False, ""
    world = {a: int(np.argmax(np.abs(affine[:3, a]))) for a in range(3)}
    (h, h_dir), (v, v_dir) = _SCREEN[world[k]]
    if world[up] == h or world[across] == v:
        across, up = up, across
    flip_across = bool(np.sign(affine[world[across], across]) != h_dir) if world[across] == h else False
    flip_up = bool(np.sign(affine[world[up], up]) != v_dir) if world[up] == v else False
    return across, flip_across, up, flip_up, _LETTERS[(h, h_dir)] + _LETTERS[(v, v_dir)]


def _on_screen(array: np.ndarray, across: int, flip_across: bool, up: int, flip_up: bool) -> np.ndarray:
    """A plane ``(n_a, n_b)`` (axes in voxel order) as an image: rows = the up axis, columns = the across axis."""
    image = array.T if across < up else array
    image = image[:, ::-1] if flip_across else image
    return image[::-1] if flip_up else image


def save_overlay(path: str | os.PathLike, scan: np.ndarray, saliency: np.ndarray, region: np.ndarray | None,
                 affine: np.ndarray | None = None, centre: Sequence[int] | None = None, title: str = "",
                 space: str = "RAS") -> Figure:
    """Write a PNG of the planes through ``centre`` (atomically); returns the figure (one axes per plane, then
    the colour bar's).

    Each plane is shown as radiologists and 3D Slicer show it (patient's right on the left of axial and
    coronal planes, anterior up in axial and on the left of sagittal planes, superior up), with square
    millimetres: the aspect ratio follows the voxel sizes of ``affine``.

    Args:
        path: the PNG file.
        scan: the scan, ``spatial`` (2D or 3D), on the same grid as ``saliency``.
        saliency: the map, ``spatial``; values up to 5% of its maximum are transparent; the colour bar
            gives the scale (0 to the maximum). A signed map (RISE's centred map: positive where keeping the
            voxel raises the region's score above its average) shows its positive part, on the same scale as
            the CAMs' non-negative maps; the colour bar says it shows the positive part.
        region: bool ``spatial`` or None; drawn as a cyan outline (named in the legend).
        affine: the grid's voxel-to-world matrix, for the voxel sizes, the plane names and orientations.
        centre: the voxel the planes pass through; default :func:`overlay_centre`.
        title: the figure title.
        space: the world space of ``affine``, ``"RAS"`` (MONAI's default) or ``"LPS"``.
    """
    scan, saliency = np.asarray(scan, dtype=np.float32), np.asarray(saliency, dtype=np.float32)
    if scan.shape != saliency.shape or (region is not None and region.shape != scan.shape):
        raise ValueError(f"scan {scan.shape}, saliency {saliency.shape} and region "
                         f"{None if region is None else region.shape} must share one grid.")
    n = scan.ndim
    affine = np.eye(n + 1) if affine is None else np.asarray(affine, dtype=np.float64)
    if str(space).upper() == "LPS" and n == 3:
        affine = np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine
    spacing = np.linalg.norm(affine[:n, :n], axis=0)
    centre = tuple(centre) if centre is not None else overlay_centre(saliency, region)
    axes = [None] if n == 2 else [k for k in range(3) if scan.shape[k] > 1] or [2]
    top = float(saliency.max()) if saliency.size and saliency.max() > 0 else 1.0
    # a fixed layout: a layout engine ("constrained", bbox "tight") redraws the figure, 3x the cost of a PNG
    width = 4.2 * len(axes) + 1.0
    fig = Figure(figsize=(width, 4.4))
    FigureCanvasAgg(fig)
    fig.subplots_adjust(left=0.01, right=1.0 - 1.0 / width, bottom=0.02, top=0.86, wspace=0.04)
    for i, k in enumerate(axes):
        ax = fig.add_subplot(1, len(axes), i + 1)
        plane = (slice(None),) * n if k is None else tuple(centre[k] if a == k else slice(None) for a in range(n))
        across, flip_a, up, flip_u, letters = _screen_axes(affine, 2 if k is None else k, n)
        grey, heat, outline = (None if a is None else _on_screen(a[plane], across, flip_a, up, flip_u)
                               for a in (scan, saliency, region))
        aspect = spacing[up] / spacing[across]  # pixel height / width in mm: the true shape
        ax.imshow(grey, cmap="gray", origin="lower", aspect=aspect, interpolation="nearest")
        ax.imshow(np.ma.masked_less_equal(heat, 0.05 * top), cmap="jet", alpha=0.5, vmin=0, vmax=top,
                  origin="lower", aspect=aspect, interpolation="nearest")
        if outline is not None:
            outline = outline.astype(np.float32)
            if 0 < outline.sum() < outline.size:
                ax.contour(outline, levels=[0.5], colors="cyan", linewidths=1.0)
        for text, where in zip(letters, ((1.0, 0.5, "right", "center"), (0.5, 1.0, "center", "top"))):
            ax.text(where[0], where[1], text, transform=ax.transAxes, ha=where[2], va=where[3], color="yellow",
                    fontsize=8)
        name = "slice" if k is None else f"{_plane_name(affine, k)} {('i', 'j', 'k')[k]}={centre[k]}"
        ax.set_title(name, fontsize=9)
        ax.set_axis_off()
    cax = fig.add_axes((1.0 - 0.8 / width, 0.12, 0.12 / width, 0.66))
    bar = fig.colorbar(ScalarMappable(Normalize(0.0, top), "jet"), cax=cax)
    signed = bool(saliency.size) and float(saliency.min()) < 0
    bar.set_label("positive part (≤ 5% of max: transparent)" if signed else
                  "saliency (≤ 5% of the maximum: transparent)", fontsize=8)
    bar.ax.tick_params(labelsize=7)
    if region is not None and region.any():
        fig.axes[0].legend(handles=[Line2D([], [], color="cyan", lw=1.0, label="region")], loc="lower left",
                           fontsize=7, framealpha=0.6)
    fig.suptitle(title, fontsize=9)
    with atomic_path(path, ".png") as tmp:
        fig.savefig(tmp, format="png", dpi=80)
    return fig


def _plane_name(affine: np.ndarray, axis: int) -> str:
    """Sagittal, coronal or axial: the plane normal to the world axis the voxel axis points along most."""
    return _PLANES[int(np.argmax(np.abs(affine[:3, axis])))]
