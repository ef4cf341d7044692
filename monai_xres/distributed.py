"""torch.distributed for explanations: the process group from ``torchrun``'s environment, mask-parallel RISE.

Launched by ``torchrun`` (``WORLD_SIZE`` set), :func:`process_group` joins the group through
``init_method="env://"`` (torchrun's rendezvous, on one machine or several) with ``nccl`` when CUDA is
available and ``gloo`` otherwise, puts each rank on its own GPU (``LOCAL_RANK``) and destroys the group at
the end. Not launched by torchrun, everything runs in the one process, with no group.

Mask-parallel RISE (one scan's masks split across the ranks) is
:class:`monai_xres.explainers.rise.parallel.MaskParallelSegRISE`.
"""

from __future__ import annotations

import contextlib
import datetime
import os
from collections.abc import Iterator, Sequence
from typing import Any

import torch
import torch.distributed as dist

__all__ = ["backend", "gather_objects", "launched_by_torchrun", "process_group",
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
