"""RISE's regression estimator: the same i.i.d. masks as the published one, with a control variate on the cells.

The plain estimator ``S(v) = sum_i w_i m_i(v) / (N p)`` is noisy mostly because each mask adds its whole
pattern times its score: the mean score times the mask's noise, and every other cell's effect on the score
times this cell's noise. A linear model of the score in the mask's cells, ``h(c) = a + beta . (c - p)``,
removes both: with ``m(v) = sum_g phi_g(v; shift) c_g`` (the interpolation weights, rows summing to 1),

    E[h(c) m(v)] = p a + p (1 - p) sum_g beta_g Phi_g(v),    Phi_g(v) = E_shift[phi_g(v; shift)],

known in closed form (``Phi`` is the shift-averaged interpolation matrix, one small matrix per axis). So

    S_reg(v) = ( sum_i (w_i - h_i) m_i(v) + sum_i E[h_i m(v)] ) / (N p)

has RISE's expectation for any fixed ``(a, beta)``, and its noise is that of the residuals ``w - h``.

Cross-fitting keeps it exactly unbiased: mask ``i`` falls in fold ``i mod 10``, and ``h_i`` uses the ridge
least-squares fit of the other folds' masks only, which are independent of mask ``i``; the ridge (or the
mean score alone, plain centring, when the cells do not predict the score) is the one whose fits predict
best across those other folds (nested cross-validation), so few masks or a score the cells do not explain
cost little. Only the cells that reach the evaluated window are features (the others cannot change the score),
at most ``MAX_FEATURES``.

Mask ``i`` is a function of ``(seed, i)``: the masks are made again for the second sum, after the fit,
so memory stays one batch of masks; the fit's sums are small (features squared per fold).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

from monai_xres.explainers.rise.masks import MaskSpec, _interp_matrix, draw_cells, expected_keep, masks_from_cells

__all__ = ["FOLDS", "CellRegression", "expected_footprints", "regression_sum"]

FOLDS = 10
RIDGES = (None, 10.0, 1.0, 0.1, 0.01)
MAX_FEATURES = 1024  # beyond, the fit's sums (folds x features^2) outgrow a batch of masks: the mean alone


def expected_footprints(spec: MaskSpec, start: Sequence[int], size: Sequence[int]) -> list[np.ndarray]:
    """Per axis, ``Phi`` ``(size, grid)``: the interpolation weights of the window's voxels averaged over the
    mask's random shift (uniform in ``[0, cell)``, as :func:`~monai_xres.explainers.rise.masks.draw_cells`)."""
    out = []
    for axis, (n_in, n_up, cell) in enumerate(zip(spec.grid, spec.upsampled, spec.cell)):
        rows = np.arange(size[axis]) + start[axis]
        out.append(sum(_interp_matrix(rows + s, n_in, n_up, spec.interpolation) for s in range(cell)) / cell)
    return out


def _reach(spec: MaskSpec, start: Sequence[int], size: Sequence[int]) -> np.ndarray:
    """Bool ``grid``: the cells whose value reaches the window for some shift."""
    out = np.ones((), dtype=bool)
    for phi in expected_footprints(spec, start, size):
        out = np.multiply.outer(out, (phi > 0).any(0))
    return out


class CellRegression:
    """Cross-fitted least squares of the mask weights on the cells that reach the window.

    Args:
        spec: the mask distribution.
        start, size: the evaluated window.
        reduce: adds a float64 tensor over processes (identity in one process).
    """

    def __init__(self, spec: MaskSpec, start: Sequence[int], size: Sequence[int],
                 reduce: Callable[[torch.Tensor], torch.Tensor] = lambda t: t) -> None:
        self.spec, self.start, self.size, self.reduce = spec, tuple(start), tuple(size), reduce
        self.p = expected_keep(spec.cell_draw, spec.p_keep)
        self.active = _reach(spec, start, size)
        if self.active.sum() > MAX_FEATURES:
            self.active = np.zeros_like(self.active)
        k = int(self.active.sum()) + 1
        self.gram, self.moment = np.zeros((FOLDS, k, k)), np.zeros((FOLDS, k))
        self.count, self.square = np.zeros(FOLDS), np.zeros(FOLDS)

    def features(self, cells: np.ndarray) -> np.ndarray:
        """``(n, 1 + active cells)``: 1 and the centred active cells of masks ``cells`` ``(n, *grid)``."""
        return np.concatenate([np.ones((len(cells), 1)), cells[:, self.active] - self.p], axis=1)

    def add(self, indices: Sequence[int], cells: np.ndarray, weights: Sequence[float]) -> None:
        """Add masks ``indices`` (their ``cells`` ``(n, *grid)`` and weights) to their folds' sums."""
        x, w, folds = self.features(cells), np.asarray(weights, dtype=np.float64), np.asarray(indices) % FOLDS
        for fold in np.unique(folds):
            rows = folds == fold
            self.gram[fold] += x[rows].T @ x[rows]
            self.moment[fold] += x[rows].T @ w[rows]
            self.count[fold] += rows.sum()
            self.square[fold] += w[rows] @ w[rows]

    def _fit(self, stats: tuple[np.ndarray, ...], out: Sequence[int], ridge: float | None) -> np.ndarray:
        """``(a, beta)`` from every fold but ``out``: least squares with a ridge ``ridge n p (1 - p)`` on ``beta``, or
        the mean alone (``ridge`` None, or fewer masks than features)."""
        gram, moment, count = (total - a[list(out)].sum(0) for a, total in zip(stats[:3], self.totals))
        theta = np.zeros(gram.shape[0])
        if ridge is None or count < gram.shape[0]:
            theta[0] = moment[0] / max(count, 1.0)
            return theta
        penalty = np.full(gram.shape[0], ridge * count * self.p * (1.0 - self.p))
        penalty[0] = 0.0
        return np.linalg.solve(gram + np.diag(penalty), moment)

    def coefficients(self) -> np.ndarray:
        """``(FOLDS, 1 + active cells)``: each fold's ``(a, beta)``, fitted on the other folds (after the reduce),
        with the ridge of ``RIDGES`` (None: the mean alone) that predicts best across those folds."""
        k = self.gram.shape[1]
        flat = torch.cat([torch.from_numpy(np.ascontiguousarray(a).ravel())
                          for a in (self.gram, self.moment, self.count, self.square)])
        flat = self.reduce(flat.clone()).numpy()
        cut = np.cumsum([FOLDS * k * k, FOLDS * k, FOLDS])
        stats = (flat[:cut[0]].reshape(FOLDS, k, k), flat[cut[0]:cut[1]].reshape(FOLDS, k),
                 flat[cut[1]:cut[2]], flat[cut[2]:])
        gram, moment, _, square = stats
        self.totals = [a.sum(0) for a in stats[:3]]

        def error(fold: int, ridge: float | None) -> float:  # out-of-fold squared residuals, without ``fold``
            total = 0.0
            for held in set(range(FOLDS)) - {fold}:
                theta = self._fit(stats, (fold, held), ridge)
                total += square[held] - 2.0 * theta @ moment[held] + theta @ gram[held] @ theta
            return total

        theta, self.ridges = np.zeros((FOLDS, k)), []
        for fold in range(FOLDS):
            best = min(RIDGES, key=lambda ridge: error(fold, ridge)) if stats[2].sum() >= 2 * k else None
            theta[fold] = self._fit(stats, (fold,), best)
            self.ridges.append(best)
        return theta

    def expected(self, theta_total: np.ndarray, device, dtype=torch.float64) -> torch.Tensor:
        """``sum_i E[h_i m(v)]`` over the window, given ``sum_i theta_fold(i)``."""
        beta = np.zeros(self.spec.grid)
        beta[self.active] = theta_total[1:]
        out = beta
        for phi in expected_footprints(self.spec, self.start, self.size):
            out = np.tensordot(out, phi, axes=([0], [1]))  # cell axis out, window axis appended
        out = self.p * theta_total[0] + self.p * (1.0 - self.p) * out
        return torch.as_tensor(out, dtype=dtype, device=device)


def regression_sum(spec: MaskSpec, indices: Sequence[int], weights: Sequence[float], start: Sequence[int],
                   size: Sequence[int], batch_size: int, device: torch.device | str = "cpu",
                   reduce: Callable[[torch.Tensor], torch.Tensor] = lambda t: t) -> tuple[torch.Tensor, dict]:
    """``N p S_reg(v)`` over the window ``(*size)``, float64, from masks ``indices`` (this process's) and their
    weights, and the facts for the sidecar. The masks are made again here (two passes over the cells)."""
    regression = CellRegression(spec, start, size, reduce)
    chunk = max(batch_size, 256)  # the fit's sums in large blocks: fewer, larger products
    for first in range(0, len(indices), chunk):
        part = indices[first:first + chunk]
        regression.add(part, np.stack([draw_cells(spec, int(i))[0] for i in part]), weights[first:first + chunk])
    theta = regression.coefficients()
    total = torch.zeros(tuple(size), dtype=torch.float64, device=device)
    theta_total = np.zeros(theta.shape[1])
    for first in range(0, len(indices), batch_size):
        part = [int(i) for i in indices[first:first + batch_size]]
        draws = [draw_cells(spec, i) for i in part]
        folds = np.asarray(part) % FOLDS
        control = np.einsum("nk,nk->n", regression.features(np.stack([c for c, _ in draws])), theta[folds])
        residual = np.asarray(weights[first:first + batch_size], dtype=np.float64) - control
        batch = masks_from_cells(spec, draws, start, size, device)[:, 0]  # float32, as the masked inputs had
        total += torch.tensordot(torch.as_tensor(residual, device=device), batch.double(), dims=1)
        theta_total += theta[folds].sum(0)
    total = reduce(total + regression.expected(theta_total, device))
    facts = {"features": theta.shape[1] - 1, "folds": FOLDS,
             "ridges": ["mean only" if r is None else r for r in regression.ridges]}
    return total, facts
