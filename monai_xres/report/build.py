"""``write_report``: the cohort table and page of an ``explain`` output folder, checked, then written."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from monai_xres.apps.errors import UsageError
from monai_xres.output.qc import write_table
from monai_xres.report.collect import COLUMNS, collect
from monai_xres.report.html import write_page
from monai_xres.report.plots import write_plots

__all__ = ["CSV", "HTML", "check_report", "write_report"]

CSV, HTML = "cohort.csv", "report.html"


def check_report(output_dir: str | os.PathLike, label_dir: str | os.PathLike | None = None,
                 anatomy_dir: str | os.PathLike | None = None, anatomy_names: Any = None) -> Path:
    """The output folder, after checking it, the label and anatomy folders and the structure names (before any
    work).

    Raises:
        UsageError: a folder is missing, or the names are not ``{label value: name}``.
    """
    for path, what in ((output_dir, "output folder"), (label_dir, "--label-dir"), (anatomy_dir, "--anatomy-dir")):
        if path is not None and not Path(path).is_dir():
            raise UsageError(f"{what} {os.fspath(path)!r} is not a folder: give the folder explain wrote to"
                             if what == "output folder" else f"{what} {os.fspath(path)!r} is not a folder of label "
                             "maps named like the scans.")
    if anatomy_names is not None and not (isinstance(anatomy_names, Mapping) and all(
            str(k).lstrip("-").isdigit() and isinstance(v, str) for k, v in anatomy_names.items())):
        raise UsageError('the anatomy names are not {label value: name}, e.g. {"1": "spleen", "6": "liver"}: fix '
                         "the file.")
    return Path(output_dir)


def write_report(output_dir: str | os.PathLike, label_dir: str | os.PathLike | None = None,
                 anatomy_dir: str | os.PathLike | None = None, anatomy_names: Mapping[Any, str] | None = None
                 ) -> dict[str, str]:
    """Gather an ``explain`` output folder into ``cohort.csv`` and ``report.html`` (plus the plots' PNGs),
    each written atomically in ``output_dir``.

    Args:
        output_dir: the folder ``explain`` (``--datalist`` or ``--image``) wrote.
        label_dir: label maps named like the scans (value = class index), for Dice.
        anatomy_dir: anatomy label maps named like the scans, for structure shares where sidecars lack them.
        anatomy_names: ``{label value: name}`` of the anatomy label maps (default: ``label <v>``).

    Returns:
        ``{"csv": path, "html": path, <plot kind>: path}``.
    """
    root = check_report(output_dir, label_dir, anatomy_dir, anatomy_names)
    cases = collect(root, label_dir, anatomy_dir, anatomy_names)
    rows = [r for c in cases for r in c["rows"]]
    written = {"csv": write_table(root / CSV, rows, COLUMNS)}
    plots = write_plots(rows, root)
    written.update({k: os.fspath(root / name) for k, name in plots.items()})
    written["html"] = write_page(root / HTML, cases, plots)
    return written
