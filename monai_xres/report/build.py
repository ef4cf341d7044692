"""``write_report``: the cohort table and page of an ``explain`` output folder, checked, then written."""

from __future__ import annotations

import os
from pathlib import Path

from monai_xres.apps.errors import UsageError
from monai_xres.output.qc import write_table
from monai_xres.report.collect import COLUMNS, collect
from monai_xres.report.html import write_page
from monai_xres.report.measure import anatomy_available
from monai_xres.report.plots import write_plots

__all__ = ["CSV", "HTML", "check_report", "write_report"]

CSV, HTML = "cohort.csv", "report.html"


def check_report(output_dir: str | os.PathLike, label_dir: str | os.PathLike | None = None,
                 anatomy_dir: str | os.PathLike | None = None) -> Path:
    """The output folder, after checking it and the label and anatomy folders (before any work).

    Raises:
        UsageError: a folder is missing, or ``anatomy_dir`` is given and structure shares are not available.
    """
    for path, what in ((output_dir, "output folder"), (label_dir, "--label-dir"), (anatomy_dir, "--anatomy-dir")):
        if path is not None and not Path(path).is_dir():
            raise UsageError(f"{what} {os.fspath(path)!r} is not a folder: give the folder explain wrote to"
                             if what == "output folder" else f"{what} {os.fspath(path)!r} is not a folder of label "
                             "maps named like the scans.")
    if anatomy_dir is not None and not anatomy_available():
        raise UsageError("--anatomy-dir is not available in this version (no monai_xres.metrics.structures): drop "
                         "it, or update monai-xres.")
    return Path(output_dir)


def write_report(output_dir: str | os.PathLike, label_dir: str | os.PathLike | None = None,
                 anatomy_dir: str | os.PathLike | None = None) -> dict[str, str]:
    """Gather an ``explain`` output folder into ``cohort.csv`` and ``report.html`` (plus the plots' PNGs),
    each written atomically in ``output_dir``.

    Args:
        output_dir: the folder ``explain`` (``--datalist`` or ``--image``) wrote.
        label_dir: label maps named like the scans (value = class index), for Dice.
        anatomy_dir: anatomy label maps named like the scans, for structure shares where sidecars lack them.

    Returns:
        ``{"csv": path, "html": path, <plot kind>: path}``.
    """
    root = check_report(output_dir, label_dir, anatomy_dir)
    cases = collect(root, label_dir, anatomy_dir)
    rows = [r for c in cases for r in c["rows"]]
    written = {"csv": write_table(root / CSV, rows, COLUMNS)}
    plots = write_plots(rows, root)
    written.update({k: os.fspath(root / name) for k, name in plots.items()})
    written["html"] = write_page(root / HTML, cases, plots)
    return written
