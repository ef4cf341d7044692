"""Streaming masks through the network for SegRISE: float64 sums, one batch of masks in memory.

The sums depend only on the masks and their scores, never on how the masks are batched or which
process evaluated them: each mask is added on its own, in index order, so mask-parallel RISE
(:mod:`monai_xres.explainers.rise.parallel`) reproduces one process's map by adding the processes' sums.
The cost is logged before the first mask (logger ``monai_xres.rise``, INFO) and estimated after the
first batch; a tqdm bar shows progress on a terminal.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from monai_xres.explainers.rise.estimators import MASK_SCALE, WEIGHT_SCALE, Proposal, draw_adaptive
from monai_xres.explainers.rise.masks import MaskSpec, mask_windows, masks_from_cells

__all__ = ["BatchSettings", "Masks", "RiseSums", "Stream", "mask_batches"]

logger = logging.getLogger("monai_xres.rise")

Masks = torch.Tensor | Iterable[torch.Tensor]


@dataclass(frozen=True)
class BatchSettings:
    """How many masks go through the network at once, and when to stop early.

    Args:
        batch_size: masked inputs per forward pass.
        early_stop_tol: None runs all masks; else stop once the map's relative L2 change over the last
            ``early_stop_k`` batches is below this (checked every ``early_stop_k`` batches).
        early_stop_k: batches between checks.
    """

    batch_size: int = 16
    early_stop_tol: float | None = None
    early_stop_k: int = 4

    def __post_init__(self) -> None:
        for name in ("batch_size", "early_stop_k"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}.")
        tol = self.early_stop_tol
        if tol is not None and (not isinstance(tol, (int, float)) or not math.isfinite(tol) or not tol > 0):
            raise ValueError(f"early_stop_tol must be > 0 or None, got {tol!r}.")


@dataclass
class RiseSums:
    """What SegRISE accumulates over its masks, in float64 (each mask counted with its importance weight
    ``rho``, 1 for the plain estimator).

    Attributes:
        weighted: ``sum_i rho_i score_i * m_i`` over the evaluated window.
        masks: ``sum_i rho_i m_i`` (kept only for centred scores), else None.
        n_used: masks evaluated.
        score_total: ``sum_i rho_i score_i``.
        mask_total: ``sum_i rho_i sum_v m_i(v)`` over the window voxels (sets the map outside a crop).
        pilot: the adaptive estimator's exact map, int64 ``sum_i round(rho_i score_i 2^20) round(m_i 2^12)``
            (:mod:`~monai_xres.explainers.rise.estimators`), else None.
        pilot_total: ``sum_i round(rho_i score_i 2^20)``.
        scores: every mask's weight in order (kept for the regression estimator), else None.
        regression: the regression estimator's facts once it has run, else None.
    """

    weighted: torch.Tensor
    masks: torch.Tensor | None
    n_used: int = 0
    score_total: float = 0.0
    mask_total: float = 0.0
    pilot: torch.Tensor | None = None
    pilot_total: int = 0
    scores: list[float] | None = None
    regression: dict | None = None

    def add(self, batch: torch.Tensor, scores: Sequence[float], with_totals: bool,
            weights: Sequence[float] | None = None) -> None:
        """Add a batch of masks ``(b, 1, *window)`` with their scores (and weights), one mask at a time, in order."""
        totals = batch.flatten(1).sum(1).tolist() if with_totals else [0.0] * len(scores)
        if self.scores is not None:
            self.scores.extend(float(s) for s in scores)
        for m, s, rho, total in zip(batch[:, 0], scores, weights or [1.0] * len(scores), totals):
            weighted = s * rho
            self.weighted.add_(m, alpha=weighted)
            if self.masks is not None:
                self.masks.add_(m, alpha=rho)
            self.score_total, self.mask_total = self.score_total + weighted, self.mask_total + rho * total
            if self.pilot is not None:
                quantum = round(weighted * WEIGHT_SCALE)
                if quantum:
                    self.pilot.add_(torch.round(m.double() * MASK_SCALE).long(), alpha=quantum)
                self.pilot_total += quantum
        self.n_used += len(scores)

    def current_map(self) -> torch.Tensor:
        """The map's shape so far (for early stopping): mean weighted mask, centred when kept."""
        if self.masks is None:
            return self.weighted / self.n_used
        return (self.weighted - self.masks * (self.score_total / self.n_used)) / self.n_used

    @property
    def mean_score(self) -> float:
        return self.score_total / self.n_used

    @property
    def mask_mean(self) -> float:
        """Mean mask value over the masks and window voxels."""
        return self.mask_total / (self.n_used * self.weighted.numel())


Batch = tuple[torch.Tensor, "list[float] | None"]


def mask_batches(spec: MaskSpec, indices: Sequence[int], start: tuple[int, ...], size: tuple[int, ...],
                 like: torch.Tensor, batch_size: int, masks: Masks | None, proposal: Proposal | None = None
                 ) -> Iterator[Batch]:
    """Mask batches ``(b, 1, *size)`` on ``like``'s device and dtype with their importance weights (None: all
    1): generated masks ``indices`` (drawn from ``proposal`` when given), or the window of supplied ``masks``
    (a tensor ``(N, [1,] *spatial)`` or an iterable of such batches)."""
    if masks is None:
        for first in range(0, len(indices), batch_size):
            part = indices[first:first + batch_size]
            if proposal is None:
                yield mask_windows(spec, part, start, size, like.device, like.dtype), None
                continue
            draws = [draw_adaptive(spec, int(i), proposal) for i in part]
            batch = masks_from_cells(spec, [(c, s) for c, s, _ in draws], start, size, like.device, like.dtype)
            yield batch, [rho for _, _, rho in draws]
        return
    window = (slice(None), slice(None)) + tuple(slice(s, s + n) for s, n in zip(start, size))
    for batch in ([masks] if isinstance(masks, torch.Tensor) else masks):
        batch = torch.as_tensor(batch)
        if batch.ndim == len(size) + 1:
            batch = batch[:, None]
        if batch.ndim != len(size) + 2 or batch.shape[1] != 1 or tuple(batch.shape[2:]) != spec.image_size:
            raise ValueError(f"Masks must be (N, 1, *spatial) or (N, *spatial) with spatial "
                             f"{spec.image_size} (the input grid), got {tuple(batch.shape)}.")
        for first in range(0, batch.shape[0], batch_size):
            yield batch[first:first + batch_size][window].to(like.device, like.dtype), None


class Stream:
    """One pass of masks through the network: progress bar, early stop and the cost estimate, over stages.

    Args:
        batching: batch size and early stopping.
        total: masks to run (None if unknown), for the progress bar and the cost estimate.
        verbose: show the progress bar (never when stderr is not a terminal).
        what: what one masked prediction is (logged with the cost estimate).
    """

    def __init__(self, batching: BatchSettings, total: int | None, verbose: bool, what: str) -> None:
        self.batching, self.total, self.what = batching, total, what
        self.bar = tqdm(total=total, desc="SegRISE", unit="mask", disable=None if verbose else True, leave=False)
        self.snapshot: torch.Tensor | None = None
        self.n_batches, self.stopped, self.started = 0, False, None
        if total is not None:
            logger.info("SegRISE: %d masks, each one prediction of %s", total, what)

    def run(self, batches: Iterable[Batch], predict_scores: Callable[[torch.Tensor], list[float]], sums: RiseSums,
            cropped: bool) -> None:
        """Score every batch (``predict_scores(batch) -> one score per mask``) into ``sums``, until an early stop."""
        for batch, weights in batches:
            if self.stopped:
                return
            first = self.started is None
            self.started = time.perf_counter() if first else self.started
            scores = predict_scores(batch)
            sums.add(batch, scores, cropped, weights)
            self.n_batches += 1
            self.bar.update(len(scores))
            if first and self.total:
                took = time.perf_counter() - self.started
                logger.info("SegRISE: the first %d masks took %.2f s: about %.0f s for all %d (%s each)",
                            len(scores), took, took * self.total / len(scores), self.total, self.what)
            self._check(sums)

    def _check(self, sums: RiseSums) -> None:
        tol, k = self.batching.early_stop_tol, self.batching.early_stop_k
        if tol is None or self.n_batches % k:
            return
        current = sums.current_map()
        if self.snapshot is not None:
            change = (current - self.snapshot).norm() / current.norm().clamp_min(1e-300)
            self.stopped = float(change) < tol
        self.snapshot = current

    def close(self) -> None:
        self.bar.close()
