"""What the command line prints after a run: the files written, the errors, a cohort's summary."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

__all__ = ["report_cohort", "report_demo", "report_planted_demo", "report_written"]

SLICER_HOWTO = ("In 3D Slicer: File > Add Data, pick the scan and the *_seg.nii.gz / saliency .nii.gz files; show a\n"
                "saliency volume as foreground (Volumes module: colour 'ColdToHotRainbow', opacity ~0.5) over the\n"
                "scan. The files carry the scan's own geometry, so they overlay without registration.")


def report_written(writer: Any, output_dir: str) -> int:
    """List the files a run wrote and its errors; the exit status (1 when a case failed)."""
    segmentations = sorted(str(p) for p in Path(output_dir).rglob("*_seg.nii.gz"))
    print(f"\nWrote under {os.path.abspath(output_dir)}:")
    for path in segmentations + list(writer.written):
        sides = [path[: -len(".nii.gz")] + ext for ext in (".png", ".json")] if path.endswith(".nii.gz") else []
        for written in [path, *sides]:
            if os.path.exists(written):
                print(f"  {written}")
    _errors(writer)
    _report_anatomy(writer.written)
    print("\n" + SLICER_HOWTO)
    return 1 if writer.errors else 0


def _errors(writer: Any) -> None:
    for err in writer.errors:
        print(f"error: {err['case']} {err['method']} {err['region']}: {err['error']}", file=sys.stderr)


def report_demo(writer: Any, output_dir: str, first_tag: str, dice: float | None, scan: str) -> int:
    """What the demo wrote, for a person: the PNG to look at first (``first_tag``'s map), the maps, the
    segmentation and its Dice, how to open them in 3D Slicer; the exit status (1 when a map failed)."""
    _errors(writer)
    here = os.path.abspath(output_dir)
    maps = [os.path.relpath(m, here) for m in writer.written]
    first = next((m for m in maps if f"_{first_tag}_" in os.path.basename(m)), maps[0] if maps else None)
    print(f"\nWritten under {here}:")
    if first is not None:
        print(f"  look first:    {first[: -len('.nii.gz')]}.png")
    print(f"  saliency maps: {len(maps)} NIfTI volumes on the scan's grid, each with a .png preview and a .json "
          "record beside it")
    for path in maps:
        print(f"                 {path}")
    for seg in sorted(Path(here).rglob("*_seg.nii.gz")):
        score = f" (spleen Dice {dice:.3f} against the case's sample label)" if dice is not None else ""
        print(f"  segmentation:  {os.path.relpath(seg, here)}{score}")
    print(f"  the scan:      {scan}")
    print("\n" + SLICER_HOWTO)
    return 1 if writer.errors else 0


def report_planted_demo(demo: Any, output_dir: str) -> int:
    """What ``demo --planted`` showed, for a person: which cue each model needs (by intervention), where each
    map puts its evidence, the picture to look at; the exit status (1 when a map failed)."""
    for writer in demo.writers.values():
        _errors(writer)
    dice = demo.reliance["dice"]
    print("\nWhat each model needs (Dice of its segmentation of the target; a cue removed = filled with the "
          "tissue around it):")
    for model, scores in dice.items():
        print(f"  {model:8s} intact {scores['intact']:.2f}   without M {scores['no_marker']:.2f}   "
              f"without P {scores['no_property']:.2f}")
    if not demo.reliance["verified"]:
        print("  (on this scene the interventions do not single out one cue per model: try another --seed)")
    print("\nWhere each map puts its evidence (share of its positive mass, and how many times the structure's "
          "share of the scene):")
    for model, record in demo.sidecars.items():
        anatomy = record["anatomy"]
        parts = [f"{name} {anatomy['shares'][name]:.1%} ({anatomy['shares'][name] / anatomy['chance'][name]:.0f}x)"
                 for name in ("marker M", "property P", "target object", "other object")]
        if model in demo.zone:
            share, chance = demo.zone[model]
            parts.insert(0, f"within 5 mm of M {share:.1%} ({share / chance:.0f}x)")
        print(f"  {model:8s} {record.get('method', {}).get('name', 'map')}: " + ", ".join(parts))
    here = os.path.abspath(output_dir)
    print(f"\nWritten under {here}:")
    if os.path.isfile(demo.figure):
        print(f"  look first:    {os.path.relpath(demo.figure, here)} (both maps on the same planes, through M)")
    for model, path in demo.maps.items():
        print(f"  {model + ' map:':14s} {os.path.relpath(path, here)} (.png and .json beside it)")
    print(f"  the scene:     {os.path.relpath(demo.scene['image'], here)}, its structures "
          f"{os.path.relpath(demo.scene['structures'], here)}")
    print("\n" + SLICER_HOWTO)
    return 1 if any(w.errors for w in demo.writers.values()) or len(demo.maps) < len(demo.writers) else 0


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
