"""Cost of ``monai-xres report`` on a large cohort: 500 cases x 3 methods made of copies of real outputs.

The source is a real ``explain --datalist`` output folder (``--source``; default: the shipped 3D UNet bundle
on the sample case 900 with Seg-XRes-CAM, Seg-Grad-CAM and Seg-RISE, 16 masks, written to a temporary folder).
Its case folders are copied round-robin into ``--cases`` cases named ``case_0000``...: each sidecar is
rewritten for its new case (input, file names), the maps, segmentations and PNG overlays are hard links to
the source's files (``--copy``: real copies; the report reads the sidecars and links the rest), and
``cohort_summary.json`` lists one failed case. Then ``write_report`` runs once without and once with
``--label-dir`` (Dice from one label map per case), each timed (wall clock, one process); the page's size
is printed. The machine may be shared: the figures are of this run only.

Usage: ``python benchmarks/bench_report.py [--source OUT_DIR] [--cases 500] [--work DIR] [--copy]``
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _source(work: Path) -> Path:
    """Explain the sample case 900 with three methods (the real outputs to copy)."""
    from monai_xres.cli.commands import main
    from monai_xres.explainers.registry import method_choices

    out, datalist = work / "source", work / "source.json"
    datalist.write_text(json.dumps([str(ROOT / "sample_data" / "images" / "case_0900.nii.gz")]))
    methods = [m for m in ("segxrescam", "seggradcam", "segrise") if m in method_choices()]
    main(["explain", "--bundle", str(ROOT / "bundles" / "ct_spleen_unet3d"), "--datalist", str(datalist), "--class",
          "1", "--method", *methods, "--n-masks", "16", "--output-dir", str(out), "--no-report"])
    return out


def _copy_case(source: Path, target: Path, copy: bool) -> None:
    old, new = source.name, target.name
    target.mkdir(parents=True)
    for path in source.iterdir():
        name = path.name.replace(old, new, 1)
        if path.suffix == ".json":
            record = json.loads(path.read_text())
            record["input"] = str(Path(record.get("input", "")).with_name(f"{new}.nii.gz"))
            record["files"] = {k: v.replace(old, new, 1) for k, v in record.get("files", {}).items()}
            (target / name).write_text(json.dumps(record, indent=2))
        elif copy:
            shutil.copy2(path, target / name)
        else:
            os.link(path, target / name)


def make_cohort(source: Path, out: Path, labels: Path, n: int, copy: bool) -> None:
    """``n`` cases copied round-robin from ``source``'s case folders, a label map per case, one failure."""
    cases = sorted(d for d in source.iterdir() if d.is_dir() and any(d.glob("*.json")))
    labels.mkdir(parents=True)
    for i in range(n):
        case = cases[i % len(cases)]
        _copy_case(case, out / f"case_{i:04d}", copy)
        label = ROOT / "sample_data" / "labels" / f"{case.name}.nii.gz"
        if label.is_file():
            os.link(label, labels / f"case_{i:04d}.nii.gz")
    failed = [{"case": "/data/case_broken.nii.gz", "errors": ["segxrescam class1: Case case_broken: unreadable"]}]
    (out / "cohort_summary.json").write_text(json.dumps({"processes": 1, "done": n, "skipped": 0, "failed": failed,
                                                         "seconds": 0.0}))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", help="an explain --datalist output folder (default: explain case 900 now)")
    parser.add_argument("--cases", type=int, default=500)
    parser.add_argument("--work", help="working folder (default: a temporary one, removed)")
    parser.add_argument("--copy", action="store_true", help="copy the maps and PNGs instead of hard-linking them")
    args = parser.parse_args(argv)
    from monai_xres.report import write_report

    with tempfile.TemporaryDirectory(dir=args.work) as tmp:
        work = Path(tmp)
        source = Path(args.source) if args.source else _source(work)
        out, labels = work / "cohort", work / "labels"
        make_cohort(source, out, labels, args.cases, args.copy)
        n_maps = sum(1 for _ in out.glob("*/*.json"))
        print(f"cohort: {args.cases} cases, {n_maps} maps (from {source}); cpus: {os.cpu_count()}, "
              f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}")
        for label_dir in (None, labels):
            start = time.perf_counter()
            written = write_report(out, label_dir)
            seconds = time.perf_counter() - start
            html, table = Path(written["html"]).stat().st_size, Path(written["csv"]).stat().st_size
            print(f"report{' --label-dir' if label_dir else ''}: {seconds:.2f} s; report.html {html / 1e6:.2f} MB "
                  f"(limit 2 MB); cohort.csv {table / 1e6:.2f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
