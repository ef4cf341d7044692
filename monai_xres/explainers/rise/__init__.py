"""RISE for segmentation: the explainer and its parts.

``explainer`` (:class:`SegRISE`, the template step), ``masks`` (the random masks, drawn per batch),
``scoring`` (the region's score of a masked prediction), ``stream`` (masks and float64 sums batch by
batch), ``regression`` (the default estimator) and ``estimators`` (plain and adaptive), ``crop`` and
``windows`` (what a masked prediction needs to cover), ``parallel`` (one scan's masks split over
``torch.distributed`` ranks).
"""

from monai_xres.explainers.rise.crop import CropSettings
from monai_xres.explainers.rise.estimators import EstimatorSettings
from monai_xres.explainers.rise.explainer import SegRISE
from monai_xres.explainers.rise.masks import MaskSettings
from monai_xres.explainers.rise.scoring import ScoreSettings
from monai_xres.explainers.rise.stream import BatchSettings

__all__ = ["BatchSettings", "CropSettings", "EstimatorSettings", "MaskSettings", "ScoreSettings", "SegRISE"]
