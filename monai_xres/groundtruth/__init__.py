"""The ground-truth benchmark (``monai-xres groundtruth``): maps of two models whose evidence is known by design.

``scenes`` (the planted test scenes through each bundle's preprocessing), ``run`` (reliance verified by
intervention, every method and baseline on both models, the measures of :mod:`monai_xres.metrics.groundtruth`),
``table`` (``groundtruth.csv``, ``.md`` and a PNG plot).
"""

from monai_xres.groundtruth.run import DEFAULT_SEEDS, GroundTruth, GroundTruthSettings, run_groundtruth
from monai_xres.groundtruth.table import summarise, write_tables

__all__ = ["DEFAULT_SEEDS", "GroundTruth", "GroundTruthSettings", "run_groundtruth", "summarise", "write_tables"]
