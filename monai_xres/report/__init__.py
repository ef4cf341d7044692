"""The cohort report: ``cohort.csv`` and ``report.html`` gathered from what ``explain`` wrote.

:func:`~monai_xres.report.build.write_report` reads the sidecars, failures and QC tables of an output
folder (:mod:`~monai_xres.report.collect`), measures what they lack (:mod:`~monai_xres.report.measure`),
flags what a reviewer should look at (:mod:`~monai_xres.report.flags`) and writes the table, the plots
(:mod:`~monai_xres.report.plots`) and the page (:mod:`~monai_xres.report.html`).
"""

from monai_xres.report.build import CSV, HTML, check_report, write_report
from monai_xres.report.flags import FLAGS, LEGEND, row_flags

__all__ = ["CSV", "FLAGS", "HTML", "LEGEND", "check_report", "row_flags", "write_report"]
