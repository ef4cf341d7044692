"""RISE estimators: the published plain one, and adaptive importance sampling of the masks.

Plain (Petsiuk et al.): ``S(v) = sum_i w_i m_i(v) / (N p)`` with masks drawn independently, each cell kept
with probability ``p``. Most of its noise comes from the masks whose score is high: a region's Dice
survives only when the masks keep the cells it needs, often a few percent of the masks, and each such
mask adds its whole random pattern. ``"adaptive"`` draws masks where the map is being decided:

- Stages of doubling size, fixed by the mask index alone: masks ``[0, 64)`` are drawn as RISE draws them,
  then ``[64, 128)``, ``[128, 256)``, ... Stage ``k`` draws each cell with probability ``q`` taken from the
  map of every mask before it: ``q = p * r`` with ``r`` the map's ratio to its mean over that cell
  (``r = E[w | cell kept] / E[w]`` for binary cells), soft-thresholded by half the map's robust noise level
  so that cells the map cannot yet tell apart keep ``q = p``, and clipped to ``[p / 2.5, 1 - (1 - p) / 10]``.
- Defensive mixture: each mask of a stage is, with probability 1/2, drawn as RISE draws it instead.
- Importance weights: mask ``m`` counts ``rho = p(m) / q(m) = 1 / (1/2 + 1/2 * prod_k L_k)`` with
  ``L_k = (q_k / p)^{c_k} ((1 - q_k) / (1 - p))^{1 - c_k}``, so ``S(v) = sum_i rho_i w_i m_i(v) / (N p)``
  is RISE's map exactly in expectation (unbiased for the plain estimator's expectation, whatever the
  proposal), and ``rho <= 2``: the variance is at most twice the plain estimator's in the worst case.

Determinism: mask ``i`` depends on ``(seed, i)`` and on the map of the stages before it. That map is
accumulated exactly, in integers (``round(rho w 2^20) * round(m 2^12)``, int64), so it is the same whatever
the batching or the split across processes, and so are the proposals and every later mask: mask-parallel
RISE adds the integer sums of all ranks after each stage and gives the single-process map.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from monai_xres.explainers.rise.masks import MaskSpec, _interp_matrix, draw_cells, expected_keep

__all__ = ["ESTIMATORS", "EstimatorSettings", "Proposal", "draw_adaptive", "stage_bounds"]

ESTIMATORS = ("regression", "adaptive", "plain")
FIRST_STAGE = 64
DEFENSIVE = 0.5
THRESHOLD = 0.5
WEIGHT_SCALE, MASK_SCALE = 2 ** 20, 2 ** 12


@dataclass(frozen=True)
class EstimatorSettings:
    """How SegRISE turns masked scores into a map.

    Args:
        estimator: ``"regression"`` (default: the published masks with a cross-fitted control variate,
            :mod:`~monai_xres.explainers.rise.regression`), ``"adaptive"`` (adaptive importance
            sampling, see this module) or ``"plain"`` (the published estimator, every mask drawn
            independently). Both need generated masks, ``"adaptive"`` also scores in [0, 1] (Dice, soft
            Dice); otherwise the plain one is used, and ``Explanation.info["estimator_used"]`` says which ran.
    """

    estimator: str = "regression"

    def __post_init__(self) -> None:
        if self.estimator not in ESTIMATORS:
            raise ValueError(f"estimator must be one of {ESTIMATORS}, got {self.estimator!r}.")


def stage_bounds(n_masks: int, adaptive: bool) -> list[int]:
    """Stage boundaries ``[0, 64, 128, 256, ..., n_masks]`` (one stage ``[0, n_masks]`` for the plain estimator)."""
    bounds = [0, min(FIRST_STAGE, n_masks) if adaptive else n_masks]
    while bounds[-1] < n_masks:
        bounds.append(min(2 * bounds[-1], n_masks))
    return bounds


def _cell_draws(spec: MaskSpec, index: int) -> tuple[np.ndarray, tuple[int, ...], float]:
    """Uniform numbers behind mask ``index``'s cells (cell kept iff below the keep probability), its shift, and
    the uniform number choosing its mixture component: the same random stream as :func:`draw_cells`."""
    rng = np.random.default_rng(np.random.SeedSequence([spec.seed, index]))
    if spec.cell_draw == "randn":  # standard_normal < p_keep  <=>  Phi(standard_normal) < Phi(p_keep)
        draw = 0.5 * (1.0 + np.vectorize(math.erf)(rng.standard_normal(spec.grid) / math.sqrt(2.0)))
    else:
        draw = rng.random(spec.grid)
    shift = tuple(int(rng.integers(0, c)) for c in spec.cell)
    return draw, shift, float(rng.random())


class Proposal:
    """Cell keep probabilities of one stage's masks, from the exact integer map of the masks before it.

    Args:
        spec: the mask distribution.
        pilot: int64 ``sum_i round(rho_i w_i 2^20) * round(m_i 2^12)`` over the evaluated window ``(*size)``.
        total: ``sum_i round(rho_i w_i 2^20)``.
        start: the window's first voxel in the image.
    """

    def __init__(self, spec: MaskSpec, pilot: torch.Tensor, total: int, start: Sequence[int]) -> None:
        self.spec, self.start, self.p = spec, tuple(start), expected_keep(spec.cell_draw, spec.p_keep)
        ratio = pilot.double().cpu() / (MASK_SCALE * self.p * max(total, 1))
        if total > 0:
            spread = 1.4826 * float((ratio - ratio.median()).abs().median())
            excess = ratio - 1.0
            ratio = 1.0 + excess.sign() * (excess.abs() - THRESHOLD * spread).clamp_min(0)
        self.ratio = ratio.numpy() if total > 0 else np.ones(tuple(pilot.shape))

    def keep_probabilities(self, shift: Sequence[int]) -> np.ndarray:
        """``q`` per cell (shape ``grid``) for a mask with ``shift``: ``p`` times the map's ratio averaged over the
        cell's footprint in the window (interpolation weights), ``p`` for cells that do not reach the window."""
        num, den = self.ratio[None], np.ones((1, *self.ratio.shape))
        for axis, (n_in, n_up) in enumerate(zip(self.spec.grid, self.spec.upsampled)):
            rows = np.arange(self.ratio.shape[axis]) + self.start[axis] + shift[axis]
            weights = _interp_matrix(rows, n_in, n_up, self.spec.interpolation)  # (size, n_in)
            num, den = (np.tensordot(a, weights, axes=([1], [0])) for a in (num, den))
        ratio = np.where(den[0] > 1e-9, num[0] / np.maximum(den[0], 1e-300), 1.0)
        p = self.p
        return np.clip(p * ratio, p / 2.5, 1.0 - (1.0 - p) / 10.0)


def draw_adaptive(spec: MaskSpec, index: int, proposal: Proposal | None
                  ) -> tuple[np.ndarray, tuple[int, ...], float]:
    """Cells (float64, ``grid``), shift and importance weight ``rho`` of mask ``index``: RISE's own draw
    (:func:`draw_cells`, ``rho = 1``) without a proposal, else the defensive mixture of this module."""
    if proposal is None:
        cells, shift = draw_cells(spec, index)
        return cells, shift, 1.0
    draw, shift, component = _cell_draws(spec, index)
    p, q = proposal.p, proposal.keep_probabilities(shift)
    cells = (draw < (q if component < DEFENSIVE else p)).astype(np.float64)
    log_ratio = float(np.where(cells > 0, np.log(q / p), np.log((1.0 - q) / (1.0 - p))).sum())
    return cells, shift, 1.0 / ((1.0 - DEFENSIVE) + DEFENSIVE * math.exp(min(log_ratio, 700.0)))
