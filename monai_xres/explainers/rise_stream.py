"""Streaming masks through the network for SegRISE: float64 sums, one batch of masks in memory.

The sums depend only on the masks and their scores, never on how the masks are batched or which
process evaluated them: each mask is added on its own, in index order, so mask-parallel RISE
(:mod:`monai_xres.explainers.rise_parallel`) reproduces one process's map by adding the processes' sums.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from monai_xres.explainers.rise_masks import MaskSpec, mask_windows

__all__ = ["BatchSettings", "Masks", "RiseSums", "mask_batches", "stream_masks"]

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
    """What SegRISE accumulates over its masks, in float64.

    Attributes:
        weighted: ``sum_i score_i * m_i`` over the evaluated window.
        masks: ``sum_i m_i`` (kept only for centred scores), else None.
        n_used: masks evaluated.
        score_total: ``sum_i score_i``.
        mask_total: ``sum_i sum_v m_i(v)`` over the window voxels (sets the map outside a crop).
    """

    weighted: torch.Tensor
    masks: torch.Tensor | None
    n_used: int = 0
    score_total: float = 0.0
    mask_total: float = 0.0

    def add(self, batch: torch.Tensor, scores: Sequence[float], with_totals: bool) -> None:
        """Add a batch of masks ``(b, 1, *window)`` with their scores, one mask at a time, in order."""
        totals = batch.flatten(1).sum(1).tolist() if with_totals else [0.0] * len(scores)
        for m, s, total in zip(batch[:, 0], scores, totals):
            self.weighted.add_(m, alpha=s)
            if self.masks is not None:
                self.masks.add_(m)
            self.score_total, self.mask_total = self.score_total + s, self.mask_total + total
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


def mask_batches(spec: MaskSpec, indices: Sequence[int], start: tuple[int, ...], size: tuple[int, ...],
                 like: torch.Tensor, batch_size: int, masks: Masks | None) -> Iterator[torch.Tensor]:
    """Mask batches ``(b, 1, *size)`` on ``like``'s device and dtype: generated masks ``indices``, or the
    window of supplied ``masks`` (a tensor ``(N, [1,] *spatial)`` or an iterable of such batches)."""
    if masks is None:
        for first in range(0, len(indices), batch_size):
            yield mask_windows(spec, indices[first:first + batch_size], start, size, like.device, like.dtype)
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
            yield batch[first:first + batch_size][window].to(like.device, like.dtype)


def stream_masks(batches: Iterable[torch.Tensor], predict_scores: Callable[[torch.Tensor], list[float]],
                 sums: RiseSums, batching: BatchSettings, cropped: bool, total: int | None,
                 verbose: bool) -> RiseSums:
    """Score every batch of masks (``predict_scores(batch) -> one score per mask``) into ``sums``."""
    snapshot, n_batches = None, 0
    with tqdm(total=total, desc="SegRISE", unit="mask", disable=None if verbose else True, leave=False) as bar:
        for batch in batches:
            scores = predict_scores(batch)
            sums.add(batch, scores, with_totals=cropped)
            n_batches += 1
            bar.update(len(scores))
            if batching.early_stop_tol is not None and n_batches % batching.early_stop_k == 0:
                current = sums.current_map()
                change = (current - snapshot).norm() / current.norm().clamp_min(1e-300) if snapshot is not None \
                    else None
                if change is not None and float(change) < batching.early_stop_tol:
                    break
                snapshot = current
    return sums
