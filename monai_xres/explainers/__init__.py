"""Explainers: the one template (``base``), the method registry (``registry``) and the methods.

``cam`` (Seg-XRes-CAM, HiResCAM, Seg-Grad-CAM), ``cam_shared`` (several of them from one backward pass),
``sliding`` (exact CAMs of a sliding-window prediction), ``rise/`` (RISE for segmentation: masks, scoring,
streaming, estimators, crops, mask-parallel), ``receptive_field`` (region-restricted crops), ``maps``
(resizing and normalising maps).
"""

from monai_xres.explainers.base import Explainer, Explanation, predict, preserved_model_state
from monai_xres.explainers.cam import HiResCAM, SegGradCAM, SegXResCAM, pool_gradient
from monai_xres.explainers.cam_shared import SharedGradientCAM, explain_all
from monai_xres.explainers.maps import normalize, resize_linear
from monai_xres.explainers.registry import Method, build_explainer, get_method, method_names, register, tag_of
from monai_xres.explainers.rise import (
    BatchSettings,
    CropSettings,
    EstimatorSettings,
    MaskSettings,
    ScoreSettings,
    SegRISE,
)

__all__ = ["BatchSettings", "CropSettings", "EstimatorSettings", "Explainer", "Explanation", "HiResCAM",
           "MaskSettings", "Method", "ScoreSettings", "SegGradCAM", "SegRISE", "SegXResCAM", "SharedGradientCAM",
           "build_explainer", "explain_all", "get_method", "method_names", "normalize", "pool_gradient", "predict",
           "preserved_model_state", "register", "resize_linear", "tag_of"]
