"""Ignite handlers (MONAI's layout: one module per handler, each with ``attach(engine)``).

``saliency_writer`` (:class:`SaliencyWriter`: explain each evaluated case and save the maps on the scan),
``prediction`` (:func:`keep_prediction`: the evaluator's raw prediction, kept for the writer).
"""

from monai_xres.explainers.registry import build_explainer
from monai_xres.handlers.prediction import PREDICTION, keep_prediction
from monai_xres.handlers.saliency_writer import SaliencyWriter

__all__ = ["PREDICTION", "SaliencyWriter", "build_explainer", "keep_prediction"]
