"""RISE's regression estimator: the same i.i.d. masks as the published one, with a control variate.

The plain estimator ``S(v) = sum_i w_i m_i(v) / (N p)`` is noisy mostly because each mask adds its whole
pattern times its score: the mean score times the mask's noise, and every other area's effect on the score
times this area's noise. A linear model of the score in what the mask keeps of each block of the evaluated
window, ``h = a + beta . (f - p)`` with ``f_j`` the mask's mean over block ``j`` (the window cut into ``grid``
blocks per axis), removes both. Its expectation against the mask is known in closed form:

    E[(f_j - p) m(v)] = p (1 - p) prod_axes Psi_axis(j, v),   Psi(j, v) = E_shift[ sum_g B_jg(shift) phi_g(v; shift) ],

with ``phi_g(v; shift)`` the interpolation weights of the cells (rows summing to 1), ``B(shift)`` their block means
and the cells independent with keep probability ``p``; the shift is uniform per axis, so ``Psi`` is one small
matrix per axis. So

    S_reg(v) = ( sum_i (w_i - h_i) m_i(v) + sum_i E[h_i m(v)] ) / (N p)

has RISE's expectation for any fixed ``(a, beta)``, and its noise is that of the residuals ``w - h``.

Cross-fitting keeps it exactly unbiased: mask ``i`` falls in fold ``i mod 10``, and ``h_i`` uses the ridge
least-squares fit of the other folds' masks only, which are independent of mask ``i``; the ridge (or the
mean score alone, plain centring, when the blocks do not predict the score) is the one whose fits predict
best across those other folds (nested cross-validation), so few masks or a score the mask does not explain
cost little. At most ``MAX_FEATURES`` blocks (else the mean alone).

Mask ``i`` is a function of ``(seed, i)``: the features come from its cells and shift (no mask is made for the
fit), and the masks are made again for the residual sum, so memory stays one batch of masks.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

from monai_xres.explainers.rise.masks import MaskSpec, _interp_matrix, draw_cells, expected_keep, masks_from_cells

__all__ = ["FOLDS", "MaskRegression", "regression_sum"]

FOLDS = 10
RIDGES = (None, 10.0, 1.0, 0.1, 0.01, 0.001)
MAX_FEATURES = 1024  # beyond, the fit's sums (folds x features^2) outgrow a batch of masks: the mean alone


def _block_means(n_rows: int, n_blocks: int) -> np.ndarray:
    """``(n_blocks, n_rows)``: the mean over each of ``n_blocks`` near-equal consecutive blocks of rows."""
    edges = np.linspace(0, n_rows, n_blocks + 1).round().astype(int)
    out = np.zeros((n_blocks, n_rows))
    for j, (lo, hi) in enumerate(zip(edges[:-1], edges[1:])):
        out[j, lo:hi] = 1.0 / (hi - lo)
    return out


class MaskRegression:
    """Cross-fitted least squares of the mask weights on the mask's block means over the window.

    Args:
        spec: the mask distribution.
        start, size: the evaluated window.
        reduce: adds a float64 tensor over processes (identity in one process).
    """

    def __init__(self, spec: MaskSpec, start: Sequence[int], size: Sequence[int],
                 reduce: Callable[[torch.Tensor], torch.Tensor] = lambda t: t) -> None:
        self.spec, self.start, self.size, self.reduce = spec, tuple(start), tuple(size), reduce
        self.p = expected_keep(spec.cell_draw, spec.p_keep)
        blocks = [min(g, n) for g, n in zip(spec.grid, self.size)]
        self.blocks = blocks if int(np.prod(blocks)) <= MAX_FEATURES else [0] * len(blocks)
        self.means = [_block_means(n, b) for n, b in zip(self.size, self.blocks)]
        k = int(np.prod(self.blocks)) + 1
        self.gram, self.moment = np.zeros((FOLDS, k, k)), np.zeros((FOLDS, k))
        self.count, self.square = np.zeros(FOLDS), np.zeros(FOLDS)

    def _rows(self, axis: int, shift: int) -> np.ndarray:
        rows = np.arange(self.size[axis]) + self.start[axis] + shift
        return _interp_matrix(rows, self.spec.grid[axis], self.spec.upsampled[axis], self.spec.interpolation)

    def features(self, draws: Sequence[tuple[np.ndarray, Sequence[int]]]) -> np.ndarray:
        """``(n, 1 + blocks)``: 1 and the centred block means of the masks with ``(cells, shift)`` ``draws``."""
        out = np.ones((len(draws), 1 + int(np.prod(self.blocks))))
        if self.blocks[0] == 0:
            return out[:, :1]
        for i, (cells, shift) in enumerate(draws):
            f = cells
            for axis, mean in enumerate(self.means):  # contract each cell axis, append the block axis
                f = np.tensordot(f, mean @ self._rows(axis, shift[axis]), axes=([0], [1]))
            out[i, 1:] = f.ravel() - self.p
        return out

    def add(self, indices: Sequence[int], draws: Sequence[tuple[np.ndarray, Sequence[int]]],
            weights: Sequence[float]) -> None:
        """Add masks ``indices`` (their ``(cells, shift)`` draws and weights) to their folds' sums."""
        x, w, folds = self.features(draws), np.asarray(weights, dtype=np.float64), np.asarray(indices) % FOLDS
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
        """``(FOLDS, 1 + blocks)``: each fold's ``(a, beta)``, fitted on the other folds (after the reduce),
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
        out = np.full(self.size, self.p * theta_total[0])
        if self.blocks[0] == 0:
            return torch.as_tensor(out, dtype=dtype, device=device)
        beta = theta_total[1:].reshape(self.blocks)
        for axis, mean in enumerate(self.means):
            cell = self.spec.cell[axis]
            psi = sum(self._rows(axis, s) @ (mean @ self._rows(axis, s)).T for s in range(cell)) / cell
            beta = np.tensordot(beta, psi, axes=([0], [1]))  # block axis out, window axis appended
        return torch.as_tensor(out + self.p * (1.0 - self.p) * beta, dtype=dtype, device=device)


def regression_sum(spec: MaskSpec, indices: Sequence[int], weights: Sequence[float], start: Sequence[int],
                   size: Sequence[int], batch_size: int, device: torch.device | str = "cpu",
                   reduce: Callable[[torch.Tensor], torch.Tensor] = lambda t: t) -> tuple[torch.Tensor, dict]:
    """``N p S_reg(v)`` over the window ``(*size)``, float64, from masks ``indices`` (this process's) and their
    weights, and the facts for the sidecar. The masks are made again here (two passes over the cells)."""
    regression = MaskRegression(spec, start, size, reduce)
    chunk = max(batch_size, 256)  # the fit's sums in large blocks: fewer, larger products
    for first in range(0, len(indices), chunk):
        part = indices[first:first + chunk]
        regression.add(part, [draw_cells(spec, int(i)) for i in part], weights[first:first + chunk])
    theta = regression.coefficients()
    total = torch.zeros(tuple(size), dtype=torch.float64, device=device)
    theta_total = np.zeros(theta.shape[1])
    for first in range(0, len(indices), batch_size):
        part = [int(i) for i in indices[first:first + batch_size]]
        draws = [draw_cells(spec, i) for i in part]
        folds = np.asarray(part) % FOLDS
        control = np.einsum("nk,nk->n", regression.features(draws), theta[folds])
        residual = np.asarray(weights[first:first + batch_size], dtype=np.float64) - control
        batch = masks_from_cells(spec, draws, start, size, device)[:, 0]  # float32, as the masked inputs had
        for m, r in zip(batch, residual.tolist()):  # one mask at a time into float64, as RiseSums: no float64 batch
            total.add_(m, alpha=r)
        theta_total += theta[folds].sum(0)
    total = reduce(total + regression.expected(theta_total, device))
    facts = {"features": theta.shape[1] - 1, "folds": FOLDS,
             "ridges": ["mean only" if r is None else r for r in regression.ridges]}
    return total, facts
