"""The faithfulness table: ``run`` (every method on cases and regions), ``results`` (what was measured),
``report`` (Markdown, CSV, curves, PNG plots)."""

from monai_xres.evaluation.report import markdown_table, write_report
from monai_xres.evaluation.results import Evaluation, EvaluationSettings, metric_names
from monai_xres.evaluation.run import Case, default_methods, evaluate

__all__ = ["Case", "Evaluation", "EvaluationSettings", "default_methods", "evaluate", "markdown_table", "metric_names",
           "write_report"]
