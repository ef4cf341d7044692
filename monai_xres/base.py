"""What every explainer shares: the result type, the input handling, and leaving the model as found."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from monai_xres.targets import RegionTarget, as_target_list

__all__ = ["Explainer", "Explanation", "network_errors", "per_axis", "preserved_model_state"]


@dataclass
class Explanation:
    """One explainer call on a batch.

    Attributes:
        saliency: float32 map ``(B, 1, *spatial)`` on the input grid.
        logits: the unperturbed network output ``(B, C, *spatial)``, detached.
        regions: per sample, the resolved bool region ``spatial`` on the output grid.
        scores: per sample, the region score of the unperturbed output.
        info: method-specific facts (layer name, masks used, ...), JSON-friendly.
    """

    saliency: torch.Tensor
    logits: torch.Tensor
    regions: list[torch.Tensor]
    scores: list[float]
    info: dict[str, Any] = field(default_factory=dict)


def per_axis(value: Any, n_dims: int, low: int = 1) -> tuple[int, ...] | None:
    """``value`` as one int per spatial axis (an int is repeated), or None if it is not ints >= ``low``."""
    values = (value,) * n_dims if isinstance(value, int) else tuple(value)
    ok = len(values) == n_dims and all(isinstance(v, int) and not isinstance(v, bool) and v >= low for v in values)
    return values if ok else None


@contextlib.contextmanager
def preserved_model_state(network: nn.Module, eval_mode: bool = True) -> Iterator[None]:
    """Leave ``network`` exactly as found: train/eval flags, buffers, ``requires_grad`` flags.

    With ``eval_mode`` the network runs in eval mode inside the block, so the explanation describes
    inference (no dropout, BatchNorm running statistics) and BatchNorm statistics are never updated.
    Buffers are restored anyway, in case a module updates them in eval mode too.
    """
    modes = [(m, m.training) for m in network.modules()]
    flags = [(p, p.requires_grad) for p in network.parameters()]
    buffers = [(b, b.detach().clone()) for b in network.buffers()]
    if eval_mode:
        network.eval()
    try:
        yield
    finally:
        for module, training in modes:
            module.training = training
        for param, requires_grad in flags:
            param.requires_grad_(requires_grad)
        with torch.no_grad():
            for buf, saved in buffers:
                if buf.shape == saved.shape:
                    buf.copy_(saved)


@contextlib.contextmanager
def network_errors(x: torch.Tensor) -> Iterator[None]:
    """Turn the network's own failure on ``x`` (a torch ``RuntimeError`` from deep inside) into a
    ``ValueError`` that says what to check."""
    try:
        yield
    except RuntimeError as e:
        first = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
        raise ValueError(
            f"The network failed on an input of shape {tuple(x.shape)}: {first}. Check the input channels and "
            "that each spatial size suits the network (a UNet with n stride-2 levels needs multiples of 2^n, "
            "UNETR its img_size): pad with MONAI's DivisiblePad, or give a SlidingWindowInferer."
        ) from e


class Explainer:
    """Template of an explainer: ``explainer(x, target) -> (B, 1, *spatial)``.

    Subclasses implement :meth:`attribute`, which returns an :class:`Explanation`.

    Args:
        network: the segmentation network, ``(B, C_in, *spatial) -> (B, C, *spatial)``.
        eval_mode: run the network in eval mode during the explanation (restored afterwards).
    """

    def __init__(self, network: nn.Module, eval_mode: bool = True) -> None:
        if not isinstance(network, nn.Module):
            raise ValueError(f"network must be a torch.nn.Module, got {type(network).__name__}.")
        self.network = network
        self.eval_mode = eval_mode

    def __call__(self, x: torch.Tensor, target: RegionTarget | Sequence[RegionTarget] | int) -> torch.Tensor:
        """Saliency map ``(B, 1, *spatial of x)``, float32, of ``target`` for input ``x`` ``(B, C_in, *spatial)``."""
        return self.attribute(x, target).saliency

    def attribute(self, x: torch.Tensor, target: RegionTarget | Sequence[RegionTarget] | int) -> Explanation:
        raise NotImplementedError

    def with_inferer(self, inferer: Any) -> Explainer | None:
        """A copy of this explainer that explains ``inferer``'s stitched output, or None if the method cannot
        (adapters then use the inferer only to find the region)."""
        return None

    @staticmethod
    def prepare(x: torch.Tensor, target: RegionTarget | Sequence[RegionTarget] | int
                ) -> tuple[torch.Tensor, list[RegionTarget], list[Any]]:
        """Check the input; plain tensor, one target per sample, and each sample's affine (or None)."""
        if not isinstance(x, torch.Tensor) or x.ndim not in (3, 4, 5):
            shape = tuple(x.shape) if hasattr(x, "shape") else type(x).__name__
            raise ValueError(f"Input must be a tensor (B, C, H, W) or (B, C, H, W, D), got {shape}: add the "
                             "batch and channel axes (e.g. x[None, None]).")
        if not x.is_floating_point():
            raise ValueError(f"Input must be floating point, got {x.dtype}: convert it with x.float().")
        if not bool(torch.isfinite(x).all()):
            bad = int((~torch.isfinite(x)).sum())
            raise ValueError(f"Input has {bad} NaN/Inf voxel(s): clean the scan first (e.g. torch.nan_to_num "
                             "or MONAI's ScaleIntensityRange with clip=True).")
        affines: list[Any] = [None] * x.shape[0]
        if hasattr(x, "affine") and hasattr(x, "as_tensor"):
            aff = x.affine
            affines = [aff[i] if aff.ndim == 3 else aff for i in range(x.shape[0])]
            x = x.as_tensor()
        if x.is_inference():
            x = x.clone()  # inference tensors cannot take part in autograd; a clone outside inference mode can
        return x, as_target_list(target, x.shape[0]), affines

    @staticmethod
    def resolve_regions(logits: torch.Tensor, targets: list[RegionTarget], affines: list[Any]
                        ) -> list[torch.Tensor]:
        """Each sample's region on the output grid."""
        return [t.region(logits[i].detach(), affines[i]) for i, t in enumerate(targets)]
