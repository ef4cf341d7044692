"""One run per output folder: an advisory lock, so a second process is told instead of mixing files.

The lock is ``fcntl.flock`` on ``<folder>/.monai-xres.lock``: the operating system releases it when the
holding process ends, however it ends, so a killed run never leaves a stale lock. The file records the
holder (host, process id, start time) for the message the second process prints.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

__all__ = ["LOCK_NAME", "FolderInUse", "job_lock", "output_lock"]

LOCK_NAME = ".monai-xres.lock"


class FolderInUse(RuntimeError):
    """Another process holds the output folder's lock."""


@contextlib.contextmanager
def output_lock(folder: str | os.PathLike) -> Iterator[Path]:
    """Hold the lock of ``folder`` (created if needed) for the block.

    Raises:
        FolderInUse: another process holds it; the message names the process and the fix.
    """
    try:
        import fcntl
    except ImportError:  # no flock (Windows): runs are not serialised there
        yield Path(folder)
        return
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 4096, 0).decode("utf-8", "replace").strip() or "another process"
            raise FolderInUse(f"output folder {folder} is in use by {holder}: wait for that run to finish, or "
                              "choose another --output-dir.") from None
        record = {"host": socket.gethostname(), "pid": os.getpid(), "since": time.strftime("%Y-%m-%d %H:%M:%S")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(record).encode(), 0)
        yield folder
    finally:
        os.close(fd)  # closing releases the lock


@contextlib.contextmanager
def job_lock(folder: str | os.PathLike, rank: int = 0) -> Iterator[None]:
    """:func:`output_lock` for a job of several ``torch.distributed`` ranks: rank 0 holds the lock for the
    whole job and every rank learns whether it got it (one collective).

    Raises:
        FolderInUse: on every rank, before anything is written, when another job holds the folder."""
    from monai_xres.distributed import gather_objects

    with contextlib.ExitStack() as stack:
        error = None
        if rank == 0:
            try:
                stack.enter_context(output_lock(folder))
            except FolderInUse as e:
                error = str(e)
        errors = [e for e in gather_objects(error) if e]
        if errors:
            raise FolderInUse(errors[0])
        yield
