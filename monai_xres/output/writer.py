"""Writing files so that a reader never sees half of one: temporary name, then rename into place.

Every file is written under a temporary name in its destination folder and renamed into place with
``os.replace`` (atomic on POSIX and Windows within one file system): an interrupted run leaves either the
previous file or none, never a half-written one. Temporary names start with ``.`` and hold
``.partial-``, so a resume can recognise and remove them.
"""

from __future__ import annotations

import contextlib
import os
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["atomic_path", "atomic_write_text", "atomic_writer", "clean_partials", "map_path", "save_map"]

PARTIAL = ".partial-"


@contextlib.contextmanager
def atomic_path(final: str | os.PathLike, suffix: str = "") -> Iterator[str]:
    """Yield a temporary path beside ``final``; on success it replaces ``final``, on error it is removed.

    Args:
        final: the destination file.
        suffix: kept at the end of the temporary name, for writers that pick the format by extension
            (e.g. ``".nii.gz"``).
    """
    final = os.fspath(final)
    folder, name = os.path.split(final)
    if os.path.islink(folder or "."):
        raise ValueError(f"{folder} is a symbolic link: monai-xres does not write through links it did not "
                         "create; remove the link or choose another output folder.")
    os.makedirs(folder or ".", exist_ok=True)
    stem = name[: len(name) - len(suffix)] if suffix and name.endswith(suffix) else name
    tmp = os.path.join(folder, f".{stem}{PARTIAL}{uuid.uuid4().hex[:8]}{suffix}")
    try:
        yield tmp
        os.replace(tmp, final)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def clean_partials(folder: str | os.PathLike) -> list[str]:
    """Remove the temporary files an interrupted run left in ``folder`` (not below it); returns them."""
    folder = os.fspath(folder)
    if not os.path.isdir(folder) or os.path.islink(folder):
        return []
    left = [os.path.join(folder, n) for n in os.listdir(folder) if n.startswith(".") and PARTIAL in n]
    for path in left:
        if os.path.isfile(path) and not os.path.islink(path):
            os.remove(path)
    return left


_ATOMIC_WRITERS: dict[type, type] = {}


def atomic_writer(writer: type) -> type:
    """A subclass of a MONAI ``ImageWriter`` class whose ``write`` goes through :func:`atomic_path`.

    Given to a bundle's ``SaveImaged`` (``writer=``), it makes the bundle's own segmentation file appear
    whole or not at all, like every file monai_xres writes."""
    if writer not in _ATOMIC_WRITERS:
        def write(self, filename, verbose: bool = True, **kwargs):
            suffix = "".join(Path(os.fspath(filename)).suffixes[-2:])
            with atomic_path(filename, suffix) as tmp:
                return writer.write(self, tmp, verbose=verbose, **kwargs)

        _ATOMIC_WRITERS[writer] = type(f"Atomic{writer.__name__}", (writer,), {"write": write,
                                                                                "__module__": __name__})
    return _ATOMIC_WRITERS[writer]


def _saver(output_dir: str | os.PathLike, postfix: str, ext: str, separate_folder: bool,
           data_root_dir: str | os.PathLike, dtype: Any = np.float32) -> Any:
    from monai.transforms import SaveImage

    return SaveImage(os.fspath(output_dir), output_postfix=postfix, output_ext=ext, output_dtype=dtype,
                     resample=False, separate_folder=separate_folder, print_log=False, squeeze_end_dims=False,
                     data_root_dir=os.fspath(data_root_dir), writer="ITKWriter", channel_dim=None)


def map_path(meta: dict, output_dir: str | os.PathLike, postfix: str, ext: str = ".nii.gz",
             separate_folder: bool = True, data_root_dir: str | os.PathLike = "") -> str:
    """Where :func:`save_map` writes a map with image metadata ``meta`` (MONAI's ``SaveImage`` folder layout)."""
    from monai.data.folder_layout import default_name_formatter

    saver = _saver(output_dir, postfix, ext, separate_folder, data_root_dir)
    return os.fspath(saver.folder_layout.filename(**default_name_formatter(meta, saver)))


def save_map(saliency: Any, output_dir: str | os.PathLike, postfix: str, ext: str = ".nii.gz",
             separate_folder: bool = True, data_root_dir: str | os.PathLike = "", dtype: Any = np.float32) -> str:
    """Write a map ``MetaTensor`` ``(1, *spatial)`` as float32 (or ``dtype``, e.g. ``np.int16`` for a label
    map) in its own geometry, atomically; return the path.

    MONAI's ``SaveImage`` with the ITK writer names the file (``<case>_<postfix><ext>``, in a per-case folder
    with ``separate_folder``). The channel is dropped and trailing singleton axes kept, so a one-slice
    scan stays a 3D file with its z origin (``NibabelWriter`` would add a fourth axis).
    """
    saver = _saver(output_dir, postfix, ext, separate_folder, data_root_dir, dtype)
    final = map_path(saliency.meta, output_dir, postfix, ext, separate_folder, data_root_dir)
    with atomic_path(final, ext) as tmp, warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*SaveImage `channel_dim` is set to None")  # intended
        saver(saliency[0].cpu(), filename=tmp[: -len(ext)])
    return final
