"""``monai-xres report OUT_DIR``: gather what ``explain`` wrote into ``cohort.csv`` and ``report.html``."""

from __future__ import annotations

import argparse
import os
import sys

from monai_xres.apps.errors import UsageError

__all__ = ["add_parser", "run", "write_cohort_report"]


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """The ``report`` subcommand's parser."""
    parser = subparsers.add_parser("report", help="one page and one table of a cohort's explanations (report.html, "
                                   "cohort.csv) from what explain wrote")
    parser.add_argument("output_dir", metavar="OUT_DIR", help="the folder explain wrote (--output-dir)")
    parser.add_argument("--label-dir", help="label maps named like the scans (value = the class), for Dice")
    parser.add_argument("--anatomy-dir", help="anatomy label maps named like the scans, for structure shares")
    parser.add_argument("--anatomy-names", help='JSON file naming the anatomy labels, {"1": "spleen", ...} (default: '
                        "'label <value>')")
    return parser


def _print(written: dict[str, str]) -> None:
    print(f"Report: {written['html']}\nTable: {written['csv']}")


def run(args: argparse.Namespace) -> int:
    """Write the report of ``args.output_dir``; exit status 0 (2 for a usage error, raised)."""
    from monai_xres.apps.checks import read_json
    from monai_xres.output.lock import output_lock
    from monai_xres.report import check_report, write_report

    names = None if args.anatomy_names is None else read_json(args.anatomy_names, "--anatomy-names file")
    check_report(args.output_dir, args.label_dir, args.anatomy_dir, names)
    try:
        with output_lock(args.output_dir):
            written = write_report(args.output_dir, args.label_dir, args.anatomy_dir, names)
    except ValueError as e:
        raise UsageError(str(e)) from e
    _print(written)
    return 0


def write_cohort_report(output_dir: str | os.PathLike, enabled: bool = True) -> None:
    """After ``explain --datalist`` (rank 0): write the report unless ``--no-report``; a failure to write it
    is printed, not raised (the explanations are written)."""
    if not enabled:
        return
    from monai_xres.report import write_report

    try:
        _print(write_report(output_dir))
    except (OSError, ValueError, UsageError) as e:
        print(f"monai-xres: warning: the cohort report was not written: {e}", file=sys.stderr)
