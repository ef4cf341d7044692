"""torch.distributed for explanations: the process group from ``torchrun``'s environment, mask-parallel RISE.

Launched by ``torchrun`` (``WORLD_SIZE`` set), :func:`process_group` joins the group through
``init_method="env://"`` (torchrun's rendezvous, on one machine or several) with ``nccl`` when CUDA is
available and ``gloo`` otherwise, puts each rank on its own GPU (``LOCAL_RANK``) and destroys the group at
the end. Not launched by torchrun, everything runs in the one process, with no group.

:class:`MaskParallelSegRISE` splits one scan's RISE masks across the ranks: each rank evaluates its
own block of the same seeded mask sequence and the float64 partial sums are added with ``all_reduce``.
"""

from __future__ import annotations

import contextlib
import datetime
import math
import os
from collections.abc import Iterator, Sequence
from typing import Any

import torch
import torch.distributed as dist

from monai_xres.rise import SegRISE

__all__ = ["MaskParallelSegRISE", "backend", "gather_objects", "launched_by_torchrun", "process_group",
           "rank_and_world", "rank_device", "shard"]

# ranks finish their shards at different times and then wait in the final gather: the default
# collective timeout (30 min) would fail a long, unevenly split cohort
DEFAULT_TIMEOUT = datetime.timedelta(hours=24)


def launched_by_torchrun() -> bool:
    """True when the process was started by ``torchrun`` (or another launcher setting ``WORLD_SIZE``)."""
    return "WORLD_SIZE" in os.environ


def backend() -> str:
    """``"nccl"`` when CUDA (and NCCL) is available, else ``"gloo"``."""
    return "nccl" if torch.cuda.is_available() and dist.is_nccl_available() else "gloo"


def rank_and_world(group: Any = None) -> tuple[int, int]:
    """``(rank, world_size)`` in ``group`` (default group); ``(0, 1)`` with no initialised group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(group), dist.get_world_size(group)
    return 0, 1


def rank_device() -> torch.device:
    """This rank's device: ``cuda:LOCAL_RANK`` when CUDA is available, else the CPU."""
    if torch.cuda.is_available():
        return torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}")
    return torch.device("cpu")


@contextlib.contextmanager
def process_group(timeout: datetime.timedelta = DEFAULT_TIMEOUT) -> Iterator[tuple[int, int]]:
    """Join torchrun's process group for the block; yields ``(rank, world_size)``.

    Outside torchrun, or when a group already exists (e.g. made by a bundle's ``initialize``), nothing is
    created or destroyed: only a group created here is destroyed on exit.
    """
    created = False
    if launched_by_torchrun() and dist.is_available() and not dist.is_initialized():
        if torch.cuda.is_available():
            torch.cuda.set_device(rank_device())
        dist.init_process_group(backend(), init_method="env://", timeout=timeout)
        created = True
    try:
        yield rank_and_world()
    finally:
        if created and dist.is_initialized():
            dist.destroy_process_group()


def shard(items: Sequence[Any], rank: int | None = None, world_size: int | None = None) -> list[Any]:
    """This rank's part of ``items``: MONAI's ``partition_dataset``, strided and not padded (every item on
    exactly one rank; shard sizes differ by at most one)."""
    from monai.data import partition_dataset

    if rank is None or world_size is None:
        rank, world_size = rank_and_world()
    if len(items) < world_size:  # partition_dataset refuses fewer items than ranks; some ranks get none
        return list(items[rank:rank + 1])
    return list(partition_dataset(list(items), num_partitions=world_size, shuffle=False,
                                  even_divisible=False)[rank])


def gather_objects(obj: Any) -> list[Any]:
    """``obj`` of every rank, in rank order (``all_gather_object``); ``[obj]`` with no group."""
    _, world = rank_and_world()
    if world == 1:
        return [obj]
    gathered: list[Any] = [None] * world
    dist.all_gather_object(gathered, obj)
    return gathered


class MaskParallelSegRISE(SegRISE):
    """:class:`~monai_xres.rise.SegRISE` with the masks of one scan split across the ranks of a group.

    The mask batches ``[0, batch_size), [batch_size, 2 batch_size), ...`` of the seeded sequence (mask
    ``i`` depends on ``(seed, i)`` only) are split into ``world_size`` contiguous blocks; rank ``r``
    evaluates block ``r``, so every batch is the very batch a single process would run. The float64
    sums (``sum score_i m_i``, ``sum score_i``, counts) are added with ``all_reduce(SUM)`` and every rank
    returns the same map. It equals the single-process map for the same seed up to the order of the
    float64 additions (relative differences ~1e-15). Every rank must explain the same input and target,
    as collectives require. With no initialised group it is :class:`SegRISE`.

    Args:
        group: the process group (default: the default group).
        args, kwargs: as :class:`~monai_xres.rise.SegRISE`; ``early_stop_tol`` is not supported (ranks
            would stop at different masks).
    """

    def __init__(self, *args: Any, group: Any = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.early_stop_tol is not None:
            raise ValueError("MaskParallelSegRISE does not support early_stop_tol (each rank sees only its own "
                             "masks): set early_stop_tol=None, or use SegRISE in one process.")
        self.group = group

    def params(self) -> dict:
        """As :meth:`SegRISE.params`, with the number of processes sharing the masks."""
        return super().params() | {"processes": rank_and_world(self.group)[1]}

    def attribute(self, x: torch.Tensor, target: Any, masks: Any = None) -> Any:
        """As :meth:`SegRISE.attribute`, with generated masks only."""
        if masks is not None:
            raise ValueError("MaskParallelSegRISE splits its own seeded masks across ranks: to use given masks, "
                             "use SegRISE (one process).")
        return super().attribute(x, target)

    def _mask_indices(self) -> range:
        rank, world = rank_and_world(self.group)
        n_batches = math.ceil(self.n_masks / self.batch_size)
        first, last = rank * n_batches // world, (rank + 1) * n_batches // world
        return range(first * self.batch_size, min(last * self.batch_size, self.n_masks))

    def _reduce_sums(self, sums: dict) -> dict:
        if rank_and_world(self.group)[1] == 1:
            return sums
        sm = sums["sm"]
        scalars = torch.tensor([sums["n_used"], sums["sum_score"], sums["mask_total"]], dtype=torch.float64,
                               device=sm.device)
        for tensor in (sm, sums["m"], scalars):
            if tensor is not None:
                dist.all_reduce(tensor, op=dist.ReduceOp.SUM, group=self.group)
        n_used, sum_score, mask_total = scalars.tolist()
        return sums | {"n_used": int(round(n_used)), "sum_score": sum_score, "mask_total": mask_total}


def mask_parallel_methods(methods: dict[str, Any]) -> dict[str, Any]:
    """``SaliencyWriter`` explainer configs with every ``segrise`` config made a bundle-config component of
    :class:`MaskParallelSegRISE` on the bundle's ``@network`` (the other methods unchanged)."""
    out: dict[str, Any] = {}
    for name, config in methods.items():
        if isinstance(config, dict) and str(config.get("method", "")).lower() == "segrise":
            params = {k: v for k, v in config.items() if k != "method"}
            config = {"_target_": "monai_xres.distributed.MaskParallelSegRISE", "network": "@network", **params}
        out[name] = config
    return out
