"""Faithfulness metrics: does a map show what the network used?

``faithfulness`` (masking test, deletion/insertion, locality), ``randomisation`` (cascading model
randomisation), ``similarity`` (Spearman, SSIM, agreement between methods), ``reliance`` (which evidence a
model used, verified by removing planted cues).
"""

from monai_xres.metrics.faithfulness import (
    MaskingCurve,
    PerturbationCurve,
    RegionReference,
    auc,
    deletion_insertion,
    locality,
    masking_curve,
    saliency_order,
    spacing_of,
)
from monai_xres.metrics.randomisation import RandomisationResult, cascade_layers, randomisation_check
from monai_xres.metrics.similarity import agreement, map_ssim, rank_correlation

__all__ = ["MaskingCurve", "PerturbationCurve", "RandomisationResult", "RegionReference", "agreement", "auc",
           "cascade_layers", "deletion_insertion", "locality", "map_ssim", "masking_curve", "randomisation_check",
           "rank_correlation", "saliency_order", "spacing_of"]
