"""Read what ``explain`` wrote into a cohort's rows: one per case x region x method (x layer), plus failures.

Sources, all written by ``explain``: each map's JSON sidecar (:func:`monai_xres.output.provenance.sidecar`:
method, layer, region, model checksum, versions, input, files, run time, and the locality of
:func:`monai_xres.output.qc.map_locality`), the cases that failed in ``cohort_summary.json``
(:mod:`monai_xres.apps.cohort`, its case names by :func:`monai_xres.apps.resume.case_stem`), the instance QC
tables (context radius). What a sidecar lacks (an older run, an instance map) is measured from the files
(:mod:`monai_xres.report.measure`).
"""

from __future__ import annotations

import csv
import functools
import math
import os
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from monai_xres.apps.checks import read_json
from monai_xres.apps.cohort import SUMMARY
from monai_xres.apps.errors import UsageError
from monai_xres.apps.resume import case_stem
from monai_xres.report.flags import NEAR_COLUMN, OUTSIDE_COLUMN, row_flags
from monai_xres.report.measure import CaseVolumes

__all__ = ["COLUMNS", "collect"]

COLUMNS = ("case", "class", "region", "method", "layer", "predicted_ml", "dice", "share_inside", NEAR_COLUMN,
           OUTSIDE_COLUMN, "map_max", "context_radius_mm", "seconds", "model_sha256", "flags", "error", "input",
           "map", "overlay")
_CASE_FILES = ("*_seg.nii.gz", "*.seg.nrrd", "*_instances*.nii.gz", "*_instances*.csv", "*.ctbl")


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def failures(output_dir: Path) -> dict[str, dict[str, str]]:
    """``{case: {"input": scan, "error": one line}}`` of the cases the last run's summary lists as failed."""
    path = output_dir / SUMMARY
    if not path.is_file():
        return {}
    summary = read_json(path, "cohort summary")
    out = {}
    for failure in summary.get("failed", []) if isinstance(summary, Mapping) else []:
        image = str(failure.get("case", ""))
        out[case_stem(image)] = {"input": image, "error": _one_line("; ".join(failure.get("errors", [])) or "failed")}
    return out


def _sidecar(path: Path) -> dict[str, Any] | None:
    """A map's sidecar, None for other JSON files; an unreadable one as ``{"error": ...}``."""
    try:
        record = read_json(path, "sidecar")
    except UsageError as e:
        return {"error": _one_line(e)}
    return record if isinstance(record, dict) and {"method", "region", "files"} <= set(record) else None


@functools.lru_cache(maxsize=64)
def _class_names(model_file: str) -> dict[int, str]:
    """Class names of the bundle holding ``model_file`` (``<bundle>/models/model.pt``), empty when unknown."""
    from monai_xres.output.slicer import class_names

    try:
        return class_names(Path(model_file).parent.parent)
    except (ValueError, OSError):
        return {}


def _own_structures(record: Mapping[str, Any]) -> set[str]:
    """Names a structure of the region's own class may carry: ``label <c>`` and the bundle's class name."""
    c = record.get("region", {}).get("class_index")
    if c is None:
        return set()
    model = (record.get("model") or {}).get("file")
    return {f"label {c}"} | ({_class_names(str(model)).get(int(c))} - {None} if model else set())


def _context_radii(folder: Path) -> dict[int, float]:
    """``{instance id: context radius (mm)}`` from the case's instance QC tables."""
    radii = {}
    for table in sorted(folder.glob("*_instances*.csv")):
        with open(table, newline="", encoding="utf-8") as f:
            for row in csv.DictReader(f):
                if row.get("id") and row.get("context_radius_mm") not in (None, ""):
                    radii[int(row["id"])] = float(row["context_radius_mm"])
    return radii


def _layer(method: Mapping[str, Any]) -> str:
    layer = method.get("target_layer", "")
    return "+".join(map(str, layer)) if isinstance(layer, (list, tuple)) else str(layer or "")


def _relative(path: Path, root: Path) -> str:
    return Path(os.path.relpath(path, root)).as_posix()


def _row(root: Path, path: Path, record: Mapping[str, Any], volumes: CaseVolumes,
         radii: Mapping[int, float]) -> dict[str, Any]:
    """The report row of one map's sidecar."""
    method, region, files = record["method"], record["region"], record["files"]
    c = region.get("class_index")
    nifti = path.parent / str(files.get("saliency", ""))
    local = {k: math.nan if v is None else v for k, v in (record.get("locality") or volumes.locality(nifti, region)
                                                          or {}).items()}
    anatomy = record.get("anatomy") or (volumes.anatomy(nifti) if volumes.anatomy_dir else None) or {}
    name = str(region.get("name", ""))
    instance = region.get("instance")
    row = {"case": volumes.stem, "class": c, "region": name if instance is None else f"{name}-instance{instance:03d}",
           "method": str(method.get("name", "")), "layer": _layer(method),
           "predicted_ml": local["region_ml"] if "region_ml" in local else volumes.predicted_ml(c),
           "dice": volumes.dice(c) if volumes.label_dir and c is not None else math.nan,
           "share_inside": local.get("inside", math.nan), NEAR_COLUMN: local.get("near", math.nan),
           OUTSIDE_COLUMN: local.get("outside", math.nan), "map_max": local.get("max", math.nan),
           "context_radius_mm": radii.get(instance, math.nan) if instance is not None else math.nan,
           "seconds": (record.get("run") or {}).get("seconds", math.nan),
           "model_sha256": (record.get("model") or {}).get("sha256") or "",
           "error": "" if nifti.is_file() else f"map file {nifti.name} is missing",
           "input": record.get("input", ""), "map": _relative(nifti, root)}
    overlay = files.get("overlay")
    row["overlay"] = _relative(path.parent / overlay, root) if overlay else ""
    row.update({f"anatomy_{k}": v for k, v in anatomy.get("shares", {}).items()})
    row["flags"] = ";".join(row_flags(row, anatomy.get("shares"), _own_structures(record)))
    return row


def _case(root: Path, name: str, failure: Mapping[str, str] | None, label_dir: Any, anatomy: tuple) -> dict:
    """One case: its rows, its files and the facts of its first sidecar (for its card)."""
    folder = root / name
    records = [(p, r) for p in sorted(folder.glob("*.json")) if (r := _sidecar(p)) is not None]
    good = [(p, r) for p, r in records if "error" not in r]
    first = good[0][1] if good else {}
    image = first.get("input") or (failure or {}).get("input", name)
    volumes = CaseVolumes(folder, folder.name, image, label_dir, *anatomy)
    radii = _context_radii(folder) if folder.is_dir() else {}
    rows = [_row(root, p, r, volumes, radii) for p, r in good]
    errors = [(f"{p.name}: {r['error']}", p) for p, r in records if "error" in r]
    if failure:
        errors.append((failure["error"], None))
    for error, _ in errors:
        rows.append({"case": folder.name, "error": error, "flags": "failed", "input": image})
    files = sorted({_relative(p, root) for pattern in _CASE_FILES for p in folder.glob(pattern)})
    return {"name": name, "stem": folder.name, "input": image, "rows": rows, "files": files,
            "versions": first.get("versions", {}), "model": first.get("model", {}), "created": first.get("created", ""),
            "error": "; ".join(e for e, _ in errors)}


def collect(output_dir: str | os.PathLike, label_dir: str | os.PathLike | None = None,
            anatomy_dir: str | os.PathLike | None = None, anatomy_names: Mapping[Any, str] | None = None
            ) -> list[dict[str, Any]]:
    """Every case of an ``explain`` output folder, in name order: ``{"name" (its folder, relative), "stem" (its
    file prefix), "input", "rows", "files", "versions", "model", "created", "error"}``; each row has the
    :data:`COLUMNS` (and ``anatomy_<name>``)."""
    root = Path(output_dir)
    failed = failures(root)
    # case folders hold sidecars; with a data_root_dir they sit in the inputs' sub-folders (links not followed)
    folders = {p.parent.relative_to(root).as_posix() for p in root.rglob("*.json") if p.parent != root}
    names = sorted(folders | set(failed))
    # reading a case is mostly decompressing NIfTI files (zlib lets go of the GIL): cases in threads
    with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
        return list(pool.map(lambda name: _case(root, name, failed.get(name), label_dir,
                                                (anatomy_dir, anatomy_names)), names))
