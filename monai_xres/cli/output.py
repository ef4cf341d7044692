"""What the command line prints after a run: the files written, the errors, a cohort's summary."""

from __future__ import annotations

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
    print("\nIn 3D Slicer: File > Add Data, pick the scan and the *_seg.nii.gz / saliency .nii.gz files; show a\n"
          "saliency volume as foreground (Volumes module: colour 'ColdToHotRainbow', opacity ~0.5) over the\n"
          "scan. The files carry the scan's own geometry, so they overlay without registration.")
    return 1 if writer.errors else 0


def report_cohort(total: dict | None, n_cases: int, output_dir: str, report: bool = True) -> int:
    """A cohort's summary (rank 0; other ranks print nothing) and, with ``report``, its ``report.html`` and
    ``cohort.csv`` (:mod:`monai_xres.report`); the exit status (1 when a case failed)."""
    if total is None:  # ranks other than 0: rank 0 reports for all
        return 0
    from monai_xres.cli.report import write_cohort_report

    write_cohort_report(output_dir, report)
    print(f"\nCohort of {n_cases} scans on {total['processes']} process(es): {total['done']} explained, "
          f"{total['skipped']} already done (skipped), {len(total['failed'])} failed, {total['seconds']:.1f} s.")
    for failure in total["failed"]:
        print(f"error: {failure['case']}: {'; '.join(failure['errors'])}", file=sys.stderr)
    print(f"Summary: {os.path.join(output_dir, 'cohort_summary.json')}")
    return 1 if total["failed"] else 0
