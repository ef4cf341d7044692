"""What the command line prints after a run: the files written, the errors, a cohort's summary."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

__all__ = ["report_cohort", "report_written"]


def report_written(writer: Any, output_dir: str) -> int:
    """List the files a run wrote and its errors; the exit status (1 when a case failed)."""
    segmentations = sorted(str(p) for p in Path(output_dir).rglob("*_seg.nii.gz"))
    print(f"\nWrote under {os.path.abspath(output_dir)}:")
    for path in segmentations + list(writer.written):
        sides = [path[: -len(".nii.gz")] + ext for ext in (".png", ".json")] if path.endswith(".nii.gz") else []
        for written in [path, *sides]:
            if os.path.exists(written):
                print(f"  {written}")
    for err in writer.errors:
        print(f"error: {err['case']} {err['method']} {err['region']}: {err['error']}", file=sys.stderr)
    _report_anatomy(writer.written)
    print("\nIn 3D Slicer: File > Add Data, pick the scan and the *_seg.nii.gz / saliency .nii.gz files; show a\n"
          "saliency volume as foreground (Volumes module: colour 'ColdToHotRainbow', opacity ~0.5) over the\n"
          "scan. The files carry the scan's own geometry, so they overlay without registration.")
    return 1 if writer.errors else 0


def _report_anatomy(written: list[str]) -> None:
    """One line per map measured against --anatomy: where most of its evidence lies."""
    from monai_xres.apps.anatomy import summary_line

    lines = []
    for path in written:
        sidecar = Path(path[: -len(".nii.gz")] + ".json") if path.endswith(".nii.gz") else None
        if sidecar is not None and sidecar.is_file():
            line = summary_line(json.loads(sidecar.read_text()))
            lines += [f"  {line}"] if line else []
    if lines:
        print("\nWhere the evidence lies (--anatomy):", *lines, sep="\n")


def report_cohort(total: dict | None, n_cases: int, output_dir: str) -> int:
    """A cohort's summary (rank 0; other ranks print nothing); the exit status (1 when a case failed)."""
    if total is None:  # ranks other than 0: rank 0 reports for all
        return 0
    print(f"\nCohort of {n_cases} scans on {total['processes']} process(es): {total['done']} explained, "
          f"{total['skipped']} already done (skipped), {len(total['failed'])} failed, {total['seconds']:.1f} s.")
    for failure in total["failed"]:
        print(f"error: {failure['case']}: {'; '.join(failure['errors'])}", file=sys.stderr)
    print(f"Summary: {os.path.join(output_dir, 'cohort_summary.json')}")
    return 1 if total["failed"] else 0
