"""RISE masks (Petsiuk et al., 2018), generated on the fly, one mask index at a time.

A mask is a random binary grid of ``grid`` cells, upsampled with (bi/tri)linear interpolation
(``align_corners=False``) to ``(grid + 1) * cell`` voxels per axis, ``cell = ceil(size / grid)``, and
cropped at a random shift in ``[0, cell)``. Mask ``i`` is a function of ``(seed, i)`` only, so the
stream does not depend on how it is batched.

Only the voxels of a requested window are ever computed: the upsampling is separable, so the window
of mask ``i`` is ``cells`` contracted with one small interpolation matrix per axis (two non-zeros per
row, the weights of ``torch.nn.functional.interpolate``). A region-restricted explanation therefore sees
exactly the voxels that the full-image mask ``i`` has there, and memory is one batch of windows.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from monai_xres.explainers.base import per_axis

__all__ = ["MaskSettings", "MaskSpec", "draw_cells", "expected_keep", "mask_windows", "masks_from_cells"]

CELL_DRAWS = ("uniform", "randn")
INTERPOLATIONS = ("linear", "nearest")


def _check_ints(value, name: str, low: int) -> None:
    """An int >= low, or a non-empty sequence of them (its length is checked against the input later)."""
    n = len(value) if isinstance(value, Sequence) and not isinstance(value, str) and len(value) > 0 else 1
    if per_axis(value, n, low) is None:
        raise ValueError(f"{name} must be an int >= {low} or one per spatial axis, got {value!r}.")


def axis_values(value, n_dims: int, name: str, low: int) -> tuple[int, ...]:
    """``value`` as one int >= ``low`` per spatial axis, or a ValueError naming ``name``."""
    values = per_axis(value, n_dims, low)
    if values is None:
        raise ValueError(f"{name} must be an int >= {low} or {n_dims} of them (one per spatial axis), "
                         f"got {value!r}.")
    return values


@dataclass(frozen=True)
class MaskSettings:
    """How SegRISE draws its masks (the same for every image; :meth:`spec` fixes one image's grid).

    Args:
        grid_size: cells per axis, an int or per-axis tuple (e.g. fewer along a thick-slice axis).
        p_keep: keep probability of a cell, in (0, 1).
        seed: mask ``i`` depends on ``(seed, i)`` only: the same map for any batching or process split.
        cell_draw: ``"uniform"`` (paper) or ``"randn"`` (published Seg-XRes-CAM code; see :class:`MaskSpec`).
        interpolation: ``"linear"`` (paper) or ``"nearest"`` (published segmentation code).
    """

    grid_size: int | Sequence[int] = 7
    p_keep: float = 0.5
    seed: int = 0
    cell_draw: str = "uniform"
    interpolation: str = "linear"

    def __post_init__(self) -> None:
        _check_ints(self.grid_size, "grid_size", 1)
        if isinstance(self.grid_size, Sequence):
            object.__setattr__(self, "grid_size", tuple(self.grid_size))
        if not isinstance(self.p_keep, (int, float)) or not 0.0 < float(self.p_keep) < 1.0:
            raise ValueError(f"p_keep must lie in (0, 1) (the probability of keeping a cell), got {self.p_keep}.")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool) or self.seed < 0:
            raise ValueError(f"seed must be a non-negative int, got {self.seed!r}.")
        for name, value, allowed in (("cell_draw", self.cell_draw, CELL_DRAWS),
                                     ("interpolation", self.interpolation, INTERPOLATIONS)):
            if value not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {value!r}.")

    def spec(self, image_size: Sequence[int]) -> MaskSpec:
        """The mask distribution on an image of ``image_size`` voxels (at most one cell per voxel)."""
        image_size = tuple(int(n) for n in image_size)
        grid = axis_values(self.grid_size, len(image_size), "grid_size", 1)
        if any(s > n for s, n in zip(grid, image_size)):
            raise ValueError(f"grid_size {grid} exceeds the image {image_size}: use at most one cell per "
                             "voxel (typically 5-10 cells per axis).")
        return MaskSpec(image_size, grid, float(self.p_keep), self.seed, self.cell_draw, self.interpolation)


@dataclass(frozen=True)
class MaskSpec:
    """How the masks of one image are drawn.

    Args:
        image_size: spatial size of the full image, per axis.
        grid: number of cells per axis (``s`` in the paper).
        p_keep: keep probability of a cell.
        seed: non-negative integer; mask ``i`` depends on ``(seed, i)`` only.
        cell_draw: ``"uniform"`` keeps a cell when ``uniform < p_keep`` (the paper); ``"randn"`` when
            ``standard_normal < p_keep``, as the published Seg-XRes-CAM RISE code does (it keeps
            ``Phi(p_keep)`` of the cells: about 54% at ``p_keep=0.1``, not 10%).
        interpolation: ``"linear"`` (the paper, smooth masks) or ``"nearest"`` (the published
            segmentation code, binary masks; torch's ``mode="nearest"``).
    """

    image_size: tuple[int, ...]
    grid: tuple[int, ...]
    p_keep: float
    seed: int = 0
    cell_draw: str = "uniform"
    interpolation: str = "linear"

    @property
    def cell(self) -> tuple[int, ...]:
        """Cell size in voxels per axis, ``ceil(size / grid)``."""
        return tuple(math.ceil(n / s) for n, s in zip(self.image_size, self.grid))

    @property
    def upsampled(self) -> tuple[int, ...]:
        """Size of the upsampled grid before the crop, ``(grid + 1) * cell``."""
        return tuple((s + 1) * c for s, c in zip(self.grid, self.cell))


def expected_keep(cell_draw: str, p_keep: float) -> float:
    """Probability that a cell is kept: ``p_keep`` for ``"uniform"``, ``Phi(p_keep)`` for ``"randn"``."""
    if cell_draw == "randn":
        return 0.5 * (1.0 + math.erf(p_keep / math.sqrt(2.0)))
    return p_keep


def draw_cells(spec: MaskSpec, index: int) -> tuple[np.ndarray, tuple[int, ...]]:
    """The binary cell grid (float64, shape ``grid``) and the crop shift per axis of mask ``index``."""
    rng = np.random.default_rng(np.random.SeedSequence([spec.seed, index]))
    draw = rng.standard_normal(spec.grid) if spec.cell_draw == "randn" else rng.random(spec.grid)
    cells = (draw < spec.p_keep).astype(np.float64)
    shift = tuple(int(rng.integers(0, c)) for c in spec.cell)
    return cells, shift


def _interp_matrix(rows: np.ndarray, n_in: int, n_out: int, mode: str) -> np.ndarray:
    """Weights ``(len(rows), n_in)`` giving rows ``rows`` of a 1D resize from ``n_in`` to ``n_out``.

    Reproduces torch's index arithmetic (float32 scale ``n_in / n_out``, half-pixel source
    ``(j + 0.5) * scale - 0.5`` clamped at 0 for linear, ``floor(j * scale)`` for nearest), so that the
    masks equal ``F.interpolate(..., align_corners=False)`` cropped, up to float32 rounding.
    """
    scale = np.float32(n_in) / np.float32(n_out)
    weights = np.zeros((len(rows), n_in), dtype=np.float64)
    at = np.arange(len(rows))
    if mode == "nearest":
        src = np.floor(rows.astype(np.float32) * scale).astype(np.int64)
        weights[at, np.minimum(src, n_in - 1)] = 1.0
        return weights
    src = np.maximum((rows.astype(np.float32) + np.float32(0.5)) * scale - np.float32(0.5), 0).astype(np.float64)
    low = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
    high = np.minimum(low + 1, n_in - 1)
    frac = src - low
    np.add.at(weights, (at, low), 1.0 - frac)
    np.add.at(weights, (at, high), frac)
    return weights


def mask_windows(spec: MaskSpec, indices: Sequence[int], start: Sequence[int], size: Sequence[int],
                 device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The window ``[start, start + size)`` of masks ``indices``, ``(len(indices), 1, *size)``, values in [0, 1].

    Args:
        spec: the mask distribution of the full image.
        indices: mask indices.
        start: first voxel of the window in the full image, per axis.
        size: window size per axis.
        device, dtype: of the returned masks (the cells are drawn on the CPU, then moved).

    One batched matrix product per axis, whatever the number of masks: a few large operations rather
    than many small ones, which matters when the CPU is shared. Each mask is computed by the same
    per-matrix product whatever else is in the batch, so a mask does not depend on the batching.
    """
    return masks_from_cells(spec, [draw_cells(spec, int(i)) for i in indices], start, size, device, dtype)


def masks_from_cells(spec: MaskSpec, draws: Sequence[tuple[np.ndarray, Sequence[int]]], start: Sequence[int],
                     size: Sequence[int], device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
                     ) -> torch.Tensor:
    """The window ``[start, start + size)`` of the masks with the given ``(cells, shift)`` draws,
    ``(len(draws), 1, *size)`` (see :func:`mask_windows`)."""
    mask = torch.as_tensor(np.stack([cells for cells, _ in draws]), dtype=dtype).to(device)
    n = len(draws)
    for axis, (n_in, n_up) in enumerate(zip(spec.grid, spec.upsampled)):
        rows = np.arange(size[axis]) + start[axis]
        weights = np.stack([_interp_matrix(rows + shift[axis], n_in, n_up, spec.interpolation)
                            for _, shift in draws])
        weights = torch.as_tensor(weights, dtype=dtype).to(device)  # (n, size[axis], n_in)
        rest = mask.shape[2:]
        # contract the leading cell axis and append the window axis: after the last axis the result is
        # (n, size_0, ..., size_d) in order
        mask = torch.bmm(mask.reshape(n, n_in, -1).transpose(1, 2), weights.transpose(1, 2))
        mask = mask.view(n, *rest, size[axis])
    return mask[:, None]
