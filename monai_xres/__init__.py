"""monai_xres: Seg-XRes-CAM and RISE explanations of MONAI segmentation networks, aligned to the scan."""

from monai_xres.base import Explainer, Explanation, preserved_model_state
from monai_xres.cam import HiResCAM, SegGradCAM, SegXResCAM, pool_gradient
from monai_xres.layers import default_layer_name, resolve_layer, tokens_to_grid
from monai_xres.maps import normalize, resize_linear
from monai_xres.rise import SegRISE
from monai_xres.targets import RegionTarget

__version__ = "0.1.0"

__all__ = [
    "Explainer", "Explanation", "HiResCAM", "RegionTarget", "SegGradCAM", "SegRISE", "SegXResCAM", "default_layer_name",
    "normalize", "pool_gradient", "preserved_model_state", "resize_linear", "resolve_layer", "tokens_to_grid",
]
