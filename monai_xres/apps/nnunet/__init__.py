"""Trained nnU-Net v2 model folders (the optional ``nnunet`` extra), explained with nnU-Net's own code.

``explainer`` (:class:`NnUNetExplainer`: a case in, maps in the scan's geometry out), ``folder`` (what a
model folder holds, checked before any work), ``loader`` (checkpoints loaded with ``weights_only=True``),
``inferer`` (nnU-Net's Gaussian windows, mirroring and fold ensemble), ``geometry`` (regions in, maps out
through nnU-Net's preprocessing and export), ``run`` (the ``explain --nnunet`` command), ``sample`` (a small
model folder made with nnU-Net's own planner and trainer, for tests and benchmarks).
"""

from monai_xres.apps.nnunet.explainer import CaseResult, NnUNetExplainer
from monai_xres.apps.nnunet.loader import NnUNetModel, load_model

__all__ = ["CaseResult", "NnUNetExplainer", "NnUNetModel", "load_model"]
