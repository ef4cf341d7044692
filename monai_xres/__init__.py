"""monai_xres: Seg-XRes-CAM and RISE explanations of MONAI segmentation networks, aligned to the scan.

Read docs/architecture.md first: ``explainers`` compute, ``regions`` say what is explained,
``metrics``/``evaluation`` judge maps, ``output`` writes them; ``transforms``, ``handlers``, ``cli`` and
``apps`` are thin adapters around them.
"""

from monai_xres import _moved
from monai_xres.explainers import (
    Explainer,
    Explanation,
    HiResCAM,
    SegGradCAM,
    SegRISE,
    SegXResCAM,
    normalize,
    pool_gradient,
    preserved_model_state,
    resize_linear,
)
from monai_xres.networks import default_layer_name, resolve_layer, tokens_to_grid
from monai_xres.regions import RegionTarget

_moved.install()

__version__ = "0.1.0"

__all__ = [
    "Explainer", "Explanation", "HiResCAM", "RegionTarget", "SegGradCAM", "SegRISE", "SegXResCAM", "default_layer_name",
    "normalize", "pool_gradient", "preserved_model_state", "resize_linear", "resolve_layer", "tokens_to_grid",
]
