"""The evaluator's own prediction, kept for :class:`~monai_xres.handlers.SaliencyWriter` so a bundle's
prediction is explained without being predicted again."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

import torch
from monai.data import MetaTensor
from monai.utils import CommonKeys

if TYPE_CHECKING:
    from ignite.engine import Engine

__all__ = ["PREDICTION", "keep_prediction"]

PREDICTION = "monai_xres_prediction"  # engine.state attribute: (iteration, its raw stitched logits)


def keep_prediction(engine: Engine) -> None:
    """On ``IterationEvents.FORWARD_COMPLETED`` (before the evaluator's postprocessing): keep the inferer's raw
    output ``(B, C, *spatial)`` on ``engine.state`` for :class:`~monai_xres.handlers.SaliencyWriter`, which
    explains that very prediction without running it again (the state lives on the engine, one iteration long)."""
    output = engine.state.output
    pred = output.get(CommonKeys.PRED) if isinstance(output, Mapping) else None
    if isinstance(pred, MetaTensor):
        pred = pred.as_tensor()
    kept = pred.detach() if isinstance(pred, torch.Tensor) else None
    setattr(engine.state, PREDICTION, (engine.state.iteration, kept))  # the iteration it belongs to
