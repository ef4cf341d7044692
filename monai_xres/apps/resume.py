"""What a resumed run trusts: only complete outputs, checked, never through links it did not create.

A case counts as done when its segmentation file(s) load and every saliency map named by its sidecar
is there with the size and SHA-256 the sidecar recorded (the writer saves each file atomically and the
sidecar last). Anything else is explained again, after the case's leftover temporary files are removed.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from monai_xres.output.provenance import sha256_file
from monai_xres.output.writer import clean_partials

__all__ = ["CaseOutputs", "bundle_outputs", "case_complete", "case_folder", "case_outputs", "case_stem",
           "outputs_complete", "prepare_case", "prepare_outputs"]


def case_stem(image: str | os.PathLike) -> str:
    """The per-case folder and file prefix MONAI's ``SaveImage`` uses for ``image``."""
    from monai.data.folder_layout import FolderLayout

    return Path(FolderLayout("", extension="").filename(subject=os.fspath(image).rstrip("/"))).name


def case_folder(output_dir: str | os.PathLike, image: str | os.PathLike) -> Path:
    return Path(output_dir) / case_stem(image)


def case_outputs(output_dir: str | os.PathLike, image: str, methods: Sequence[str], regions: Sequence[str],
                 ext: str = ".nii.gz") -> list[str]:
    """The saliency files and JSON sidecars that ``SaliencyWriter`` writes for one case."""
    stem, folder = case_stem(image), case_folder(output_dir, image)
    return [str(folder / f"{stem}_{m}_{r}{suffix}") for m in methods for r in regions for suffix in (ext, ".json")]


def _plain_file(path: Path) -> bool:
    return path.is_file() and not path.is_symlink()


def _loads(path: Path) -> bool:
    import SimpleITK as sitk

    try:
        sitk.ReadImage(str(path))
    except RuntimeError:
        return False
    return True


def _map_intact(nifti: Path, sidecar: Path) -> bool:
    """The map and its sidecar are whole: the sidecar parses and records the map's size and checksum."""
    if not (_plain_file(nifti) and _plain_file(sidecar)):
        return False
    try:
        record = json.loads(sidecar.read_text(encoding="utf-8"))
        expected = record["checksums"]["saliency"]
    except (OSError, ValueError, KeyError, TypeError):
        return False
    return nifti.stat().st_size == expected.get("bytes") and sha256_file(nifti) == expected.get("sha256")


@dataclass
class CaseOutputs:
    """The files of one finished case: its folder, segmentation files, and (map, sidecar) pairs."""

    folder: Path
    segmentations: list[Path]
    maps: list[tuple[Path, Path]]


def bundle_outputs(output_dir: str | os.PathLike, image: str, methods: Sequence[str], regions: Sequence[str],
                   segmentations: Sequence[str] = ("seg.nii.gz",), ext: str = ".nii.gz") -> CaseOutputs:
    """What a bundle run with ``SaliencyWriter`` leaves for ``image``.

    Args:
        segmentations: ``<postfix><ext>`` of the bundle's own segmentation files (``seg.nii.gz``).
    """
    folder, stem = case_folder(output_dir, image), case_stem(image)
    files = case_outputs(output_dir, image, methods, regions, ext)
    return CaseOutputs(folder, [folder / f"{stem}_{s}" for s in segmentations],
                       [(Path(files[i]), Path(files[i + 1])) for i in range(0, len(files), 2)])


def outputs_complete(outputs: CaseOutputs) -> bool:
    """Whether every output is there, whole (segmentations load, maps match their sidecars), none a link."""
    if outputs.folder.is_symlink() or not outputs.folder.is_dir():
        return False
    if not all(_plain_file(s) and _loads(s) for s in outputs.segmentations):
        return False
    return all(_map_intact(nifti, sidecar) for nifti, sidecar in outputs.maps)


def prepare_outputs(outputs: CaseOutputs) -> None:
    """Before (re-)explaining a case: remove what an interrupted run left, refuse a linked case folder."""
    if outputs.folder.is_symlink():
        raise ValueError(f"{outputs.folder} is a symbolic link that monai-xres did not create: remove it, then run "
                         "again.")
    clean_partials(outputs.folder)


def case_complete(output_dir: str | os.PathLike, image: str, methods: Sequence[str], regions: Sequence[str],
                  segmentations: Sequence[str] = ("seg.nii.gz",), ext: str = ".nii.gz") -> bool:
    """:func:`outputs_complete` of a bundle case (:func:`bundle_outputs`)."""
    return outputs_complete(bundle_outputs(output_dir, image, methods, regions, segmentations, ext))


def prepare_case(output_dir: str | os.PathLike, image: str) -> None:
    """:func:`prepare_outputs` of a bundle case's folder."""
    prepare_outputs(CaseOutputs(case_folder(output_dir, image), [], []))
