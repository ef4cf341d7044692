"""Cohort explanations: many scans through a bundle, split across ``torchrun`` ranks, resumable.

Each rank explains its shard of the datalist (:func:`~monai_xres.distributed.shard`), one bundle run per
case, and writes only its own cases' files: file names are per case and case names are checked unique,
so no two ranks write the same path. A case that fails is logged and counted; the rank goes on. A case
whose saliency files and JSON sidecars all exist is skipped unless ``overwrite`` (the writer saves each
file atomically and the sidecar last, so an existing sidecar means a complete map). Rank 0 gathers a
summary (cases done, skipped, failed, time) and writes ``<output_dir>/cohort_summary.json``.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from monai_xres.apps.resume import (
    CaseOutputs,
    bundle_outputs,
    case_complete,
    case_outputs,
    case_stem,
    outputs_complete,
    prepare_outputs,
)
from monai_xres.apps.runner import run_bundle, segmentation_files
from monai_xres.distributed import gather_objects, process_group, rank_and_world, rank_device, shard
from monai_xres.output.lock import job_lock
from monai_xres.output.writer import atomic_write_text
from monai_xres.regions.spec import as_region_spec

__all__ = ["bundle_report", "case_outputs", "explain_cohort", "pending_cases", "read_datalist", "run_cases",
           "run_cohort", "summarise"]

logger = logging.getLogger(__name__)
SUMMARY = "cohort_summary.json"


def read_datalist(path: str | os.PathLike, key: str = "testing") -> list[dict[str, str]]:
    """Cases ``[{"image": path[, "label": path]}, ...]`` from a datalist file.

    Accepted: a JSON list of scan paths or of ``{"image": ...}`` dicts; a Decathlon-style JSON dict, read
    with MONAI's ``load_decathlon_datalist`` under ``key``; or a text file with one scan path per line.
    Relative paths are taken from the datalist's folder.

    Raises:
        ValueError: a missing or malformed file (named with the line), a JSON value that is not a list of
            scans, an entry without an ``image`` path, no scans, or two scans writing the same files.
    """
    from monai.data import load_decathlon_datalist

    from monai_xres.apps.checks import read_json

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"datalist {str(path)!r} does not exist: give a JSON or text file listing the scans.")
    base = path.resolve().parent
    if path.suffix == ".json":
        content = read_json(path, "datalist")
        entries = content.get(key) if isinstance(content, Mapping) else content
        if isinstance(content, Mapping) and key not in content:
            raise ValueError(f"datalist {str(path)!r} has no {key!r} list (keys: {sorted(content)}): add it, "
                             "or give a JSON list of scans.")
        if not isinstance(entries, list):
            raise ValueError(f"datalist {str(path)!r} holds a JSON {type(entries).__name__}, not a list of scans: "
                             'write ["scan1.nii.gz", ...] or {"testing": [{"image": "scan1.nii.gz"}, ...]}.')
        _check_entries(entries, path)
        cases = load_decathlon_datalist(str(path), True, key, str(base)) if isinstance(content, Mapping) else \
            [c if isinstance(c, Mapping) else {"image": c} for c in entries]
    else:
        cases = [{"image": line.strip()} for line in path.read_text().splitlines() if line.strip()]
    out = [{k: str(base / v) if k in ("image", "label") else v for k, v in case.items()} for case in cases]
    if not out:
        raise ValueError(f"datalist {str(path)!r} lists no scans.")
    _check_unique(out)
    return out


def _check_entries(entries: list, path: Path) -> None:
    for i, case in enumerate(entries):
        image = case if isinstance(case, str) else case.get("image") if isinstance(case, Mapping) else None
        if not isinstance(image, str) or not image:
            raise ValueError(f"datalist {str(path)!r} entry {i} has no 'image' path: {case!r}; give each entry as "
                             '"scan.nii.gz" or {"image": "scan.nii.gz"}.')


def _check_unique(cases: Sequence[Mapping[str, str]]) -> None:
    seen: dict[str, str] = {}
    for case in cases:
        stem, image = case_stem(case["image"]), case["image"]
        if stem in seen and seen[stem] != image:
            raise ValueError(f"{seen[stem]!r} and {image!r} would write the same output files ({stem}/...): rename "
                             "one, or explain them in separate output folders.")
        seen[stem] = image


def explain_cohort(cases: Sequence[Mapping[str, str]], output_dir: str | os.PathLike, methods: Sequence[str],
                   regions: Sequence[str], explain_case: Callable[[Mapping[str, str]], Sequence[Mapping]],
                   overwrite: bool = False, segmentations: Sequence[str] = ("seg.nii.gz",),
                   outputs: Callable[[str], CaseOutputs] | None = None) -> dict[str, Any]:
    """Explain this rank's shard of ``cases``; returns this rank's summary.

    Args:
        cases: the whole cohort (every rank passes the same list).
        output_dir, methods, regions: where and under which names the files go (to find finished cases).
        explain_case: explains and writes one case; returns the writer's errors (empty when all went well).
        overwrite: explain finished cases again.
        segmentations: ``<postfix><ext>`` of the bundle's own segmentation files, part of a finished case.
        outputs: ``image -> CaseOutputs``, the files of a finished case; default: a bundle run's
            (:func:`~monai_xres.apps.resume.bundle_outputs`); the nnU-Net adapter gives its own.

    A case is finished when :func:`~monai_xres.apps.resume.outputs_complete` says so; before a case is
    explained, what an interrupted run left in its folder is removed.
    """
    rank, world = rank_and_world()
    summary: dict[str, Any] = {"rank": rank, "done": [], "skipped": [], "failed": []}
    start = time.perf_counter()
    expected = outputs or (lambda image: bundle_outputs(output_dir, image, methods, regions, segmentations))
    for case in tqdm(shard(cases, rank, world), desc=f"rank {rank}", unit="case", position=rank, disable=None):
        image = case["image"]
        try:
            files = expected(image)
            prepare_outputs(files)  # whatever a killed run left is removed, done or not
            if not overwrite and outputs_complete(files):
                summary["skipped"].append(image)
                continue
            errors = [f"{e['method']} {e['region']}: {e['error']}" for e in explain_case(case)]
        except Exception as e:  # one bad case (unreadable scan, network error) must not stop the rank
            logger.exception("rank %d: case %s failed", rank, image)
            errors = [f"{type(e).__name__}: {e}"]
        if errors:
            summary["failed"].append({"case": image, "errors": errors})
        else:
            summary["done"].append(image)
    summary["seconds"] = time.perf_counter() - start
    return summary


def summarise(per_rank: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """One summary from the ranks' summaries (wall time is the slowest rank's)."""
    seconds = max((s["seconds"] for s in per_rank), default=0.0)
    done = sum(len(s["done"]) for s in per_rank)
    return {"processes": len(per_rank), "done": done, "skipped": sum(len(s["skipped"]) for s in per_rank),
            "failed": [f for s in per_rank for f in s["failed"]], "seconds": seconds,
            "cases_per_second": done / seconds if seconds > 0 else None,
            "per_rank": [{"rank": s["rank"], "done": [case_stem(c) for c in s["done"]], "skipped": len(s["skipped"]),
                          "failed": len(s["failed"]), "seconds": s["seconds"]} for s in per_rank]}


def _write_summary(total: dict[str, Any], output_dir: str | os.PathLike) -> dict[str, Any]:
    os.makedirs(output_dir, exist_ok=True)
    atomic_write_text(Path(output_dir) / SUMMARY, json.dumps(total, indent=2))
    return total


def pending_cases(cases: Sequence[Mapping[str, str]], output_dir: str | os.PathLike, methods: Sequence[str],
                  region: Mapping[str, Any], overwrite: bool = False) -> list[Mapping[str, str]]:
    """The cases still to explain (all with ``overwrite``), for a bundle overlay's ``dataset#data``."""
    _check_unique(cases)
    labels = [as_region_spec(dict(region)).label]
    return [c for c in cases if overwrite or not case_complete(output_dir, c["image"], list(methods), labels)]


def bundle_report(writer: Any, cases: Sequence[Mapping[str, str]], n_cases: int, output_dir: str | os.PathLike,
                  started: float) -> dict[str, Any] | None:
    """Summary of a bundle run with ``configs/multi_gpu_explain.json``, gathered and written by rank 0.

    Args:
        writer: the rank's ``SaliencyWriter``; cases: the rank's cases; n_cases: the cohort's size
            (cases not in any rank's share were already done); started: ``time.time()`` at initialize.
    """
    rank, _ = rank_and_world()
    failed = {e["case"] for e in writer.errors}
    local = {"rank": rank, "done": [c["image"] for c in cases if c["image"] not in failed], "skipped": [],
             "failed": [{"case": case, "errors": [f"{e['method']} {e['region']}: {e['error']}" for e in writer.errors
                                                  if e["case"] == case]} for case in sorted(failed)],
             "seconds": time.time() - started}
    per_rank = gather_objects(local)
    if rank != 0:
        return None
    total = summarise(per_rank)
    total["skipped"] = n_cases - sum(len(s["done"]) + len(s["failed"]) for s in per_rank)
    return _write_summary(total, output_dir)


def run_cohort(bundle: str | os.PathLike, cases: Sequence[Mapping[str, str]], output_dir: str | os.PathLike,
               methods: Mapping[str, Mapping], region: Mapping[str, Any], overwrite: bool = False
               ) -> dict[str, Any] | None:
    """Explain a cohort with a bundle, on every rank of a ``torchrun`` launch (or in one process).

    Returns the gathered summary on rank 0 (also written to ``<output_dir>/cohort_summary.json``) and
    None on the other ranks.
    """
    _check_unique(cases)
    labels = [as_region_spec(dict(region)).label]
    device = rank_device()
    # the bundle's own device choice ('cuda:0') would put every rank on the first GPU
    overrides = {"device": f"$torch.device('{device}')"} if device.type == "cuda" else {}

    def explain_case(case: Mapping[str, str]) -> list[dict]:
        writer = run_bundle(bundle, case["image"], str(output_dir), dict(methods), dict(region), case.get("label"),
                            overrides=overrides)
        return list(writer.errors)

    segmentations = segmentation_files(bundle)
    return run_cases(cases, output_dir, list(methods), labels, explain_case, overwrite,
                     lambda image: bundle_outputs(output_dir, image, list(methods), labels, segmentations))


def run_cases(cases: Sequence[Mapping[str, str]], output_dir: str | os.PathLike, methods: Sequence[str],
              regions: Sequence[str], explain_case: Callable[[Mapping[str, str]], Sequence[Mapping]],
              overwrite: bool = False, outputs: Callable[[str], CaseOutputs] | None = None) -> dict[str, Any] | None:
    """:func:`explain_cohort` on every rank of a ``torchrun`` launch (or one process), the output folder locked
    for the job; the gathered summary on rank 0 (also written to ``<output_dir>/cohort_summary.json``), None
    on the other ranks."""
    with process_group() as (rank, _), job_lock(output_dir, rank):
        local = explain_cohort(cases, output_dir, methods, regions, explain_case, overwrite, outputs=outputs)
        per_rank = gather_objects(local)
    return _write_summary(summarise(per_rank), output_dir) if rank == 0 else None
