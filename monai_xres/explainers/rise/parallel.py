"""Mask-parallel RISE: one scan's masks split across the ranks of a ``torch.distributed`` group.

Each rank evaluates its own block of the same seeded mask sequence (mask ``i`` depends on ``(seed, i)``
only) and the float64 sums of :class:`~monai_xres.explainers.rise.stream.RiseSums` are added with
``all_reduce``: every rank returns the map one process would make.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.distributed as dist

from monai_xres import distributed
from monai_xres.explainers.rise.explainer import SegRISE
from monai_xres.explainers.rise.stream import RiseSums

__all__ = ["MaskParallelSegRISE"]


class MaskParallelSegRISE(SegRISE):
    """:class:`~monai_xres.explainers.rise.SegRISE` with the masks of one scan split across the ranks of a group.

    The mask batches ``[0, batch_size), [batch_size, 2 batch_size), ...`` of each stage of the seeded
    sequence (one stage for the plain estimator; the adaptive estimator's stages double in size, see
    :mod:`~monai_xres.explainers.rise.estimators`) are split into ``world_size`` contiguous blocks; rank ``r``
    evaluates block ``r``, so every batch is the very batch a single process would run. After each
    adaptive stage the ranks add their exact integer maps, so every rank draws the next stage's masks
    as one process would. The float64 sums are added with ``all_reduce(SUM)`` and every rank
    returns the same map. It equals the single-process map for the same seed up to the order of the
    float64 additions (relative differences ~1e-15). Every rank must explain the same input and target,
    as collectives require. With no initialised group it is :class:`SegRISE`.

    Args:
        group: the process group (default: the default group).
        args, kwargs: as :class:`~monai_xres.explainers.rise.SegRISE`; ``early_stop_tol`` is not supported
            (ranks would stop at different masks).
    """

    def __init__(self, *args: Any, group: Any = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.batching.early_stop_tol is not None:
            raise ValueError("MaskParallelSegRISE does not support early_stop_tol (each rank sees only its own "
                             "masks): set early_stop_tol=None, or use SegRISE in one process.")
        self.group = group

    def params(self) -> dict:
        """As :meth:`SegRISE.params`, with the number of processes sharing the masks."""
        return super().params() | {"processes": distributed.rank_and_world(self.group)[1]}

    def explain(self, x: torch.Tensor, targets: list, affines: list, masks: Any = None) -> Any:
        """As :meth:`SegRISE.explain`, with generated masks only."""
        if masks is not None:
            raise ValueError("MaskParallelSegRISE splits its own seeded masks across ranks: to use given masks, "
                             "use SegRISE (one process).")
        return super().explain(x, targets, affines)

    def _mask_indices(self, first: int, last: int) -> range:
        rank, world = distributed.rank_and_world(self.group)
        size = self.batching.batch_size
        n_batches = math.ceil((last - first) / size)
        low, high = rank * n_batches // world, (rank + 1) * n_batches // world
        return range(first + low * size, min(first + high * size, last))

    def _reduce_pilot(self, pilot: torch.Tensor, total: int) -> tuple[torch.Tensor, int]:
        if distributed.rank_and_world(self.group)[1] == 1:
            return pilot, total
        # integers: the sum is exact in any order, so every rank draws the next stage as one process would
        scalar = torch.tensor([total], dtype=torch.int64, device=pilot.device)
        for tensor in (pilot, scalar):
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM, group=self.group)
        return pilot, int(scalar.item())

    def _reduce_tensor(self, tensor: torch.Tensor) -> torch.Tensor:
        if distributed.rank_and_world(self.group)[1] > 1:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM, group=self.group)
        return tensor

    def _reduce(self, sums: RiseSums) -> RiseSums:
        if distributed.rank_and_world(self.group)[1] == 1:
            return sums
        scalars = torch.tensor([sums.n_used, sums.score_total, sums.mask_total], dtype=torch.float64,
                               device=sums.weighted.device)
        for tensor in (sums.weighted, sums.masks, scalars):
            if tensor is not None:
                dist.all_reduce(tensor, op=dist.ReduceOp.SUM, group=self.group)
        n_used, score_total, mask_total = scalars.tolist()
        return RiseSums(sums.weighted, sums.masks, int(round(n_used)), score_total, mask_total, scores=sums.scores)
