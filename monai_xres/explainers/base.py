"""The one template every explainer follows, and what they all share.

:meth:`Explainer.attribute` is the frame: check the input, one :class:`~monai_xres.regions.RegionTarget` per
sample, run the method's own step (:meth:`Explainer.explain`) with the model guarded
(:func:`preserved_model_state`), and attach the parameters for provenance. A method implements
``explain`` and ``params`` only (see :mod:`monai_xres.explainers.cam`, :mod:`monai_xres.explainers.rise`).
"""

from __future__ import annotations

import contextlib
import copy
import inspect
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import torch
from torch import nn

from monai_xres.networks import run_network
from monai_xres.regions.target import RegionTarget, as_target_list

__all__ = ["Explainer", "Explanation", "batched", "network_errors", "per_axis", "predict", "preserved_model_state"]

Target = RegionTarget | Sequence[RegionTarget] | int
T = TypeVar("T")


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


def batched(items: Iterable[T], size: int) -> Iterator[list[T]]:
    """``items`` in lists of ``size`` (the last may be shorter), lazily: one batch in memory at a time."""
    batch: list[T] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


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
    Inside the block no parameter requires grad: autograd records only what depends on a tensor the
    explainer marks (a target-layer activation, a probe input), never the weights, and no ``.grad`` is
    made. Buffers are restored anyway, in case a module updates them in eval mode too.
    """
    modes = [(m, m.training) for m in network.modules()]
    flags = [(p, p.requires_grad) for p in network.parameters()]
    buffers = [(b, b.detach().clone()) for b in network.buffers()]
    if eval_mode:
        network.eval()
    try:
        for param, _ in flags:
            param.requires_grad_(False)
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


def predict(network: nn.Module, x: torch.Tensor, inferer: Callable[..., Any] | None = None,
            eval_mode: bool = True) -> torch.Tensor:
    """The prediction ``(B, C, *spatial)`` for ``x``: ``network(x)`` (or ``inferer(x, network)``) under
    ``torch.no_grad()``, in eval mode, the network left as found; first head only, detached."""
    with preserved_model_state(network, eval_mode), torch.no_grad(), network_errors(x):
        return run_network(network, x, inferer).detach()


class Explainer:
    """Template of an explainer: ``explainer(x, target) -> (B, 1, *spatial)``.

    Subclasses implement :meth:`explain` (the method's own step, on a checked input with the model
    guarded) and :meth:`params` (its parameters, for provenance).

    Args:
        network: the segmentation network, ``(B, C_in, *spatial) -> (B, C, *spatial)``.
        eval_mode: run the network in eval mode during the explanation (restored afterwards).
    """

    def __init__(self, network: nn.Module, eval_mode: bool = True) -> None:
        if not isinstance(network, nn.Module):
            raise ValueError(f"network must be a torch.nn.Module, got {type(network).__name__}.")
        self.network = network
        self.eval_mode = eval_mode

    def __call__(self, x: torch.Tensor, target: Target) -> torch.Tensor:
        """Saliency map ``(B, 1, *spatial of x)``, float32, of ``target`` for input ``x`` ``(B, C_in, *spatial)``."""
        return self.attribute(x, target).saliency

    def attribute(self, x: torch.Tensor, target: Target, **options: Any) -> Explanation:
        """Explain ``target`` for ``x`` ``(B, C_in, *spatial)``: the whole :class:`Explanation`.

        ``options`` are the method's own (see its :meth:`explain`). The network is left exactly as
        found, hooks included, also when the method raises.
        """
        with torch.inference_mode(False):
            x, targets, affines = self.prepare(x, target)
            with preserved_model_state(self.network, self.eval_mode):
                explanation = self.explain(x, targets, affines, **options)
        explanation.info = {**self.params(), **explanation.info}
        return explanation

    def explain(self, x: torch.Tensor, targets: list[RegionTarget], affines: list[Any], **options: Any
                ) -> Explanation:
        """The method's step: ``x`` a plain float tensor, one target and affine (or None) per sample."""
        raise NotImplementedError

    def params(self) -> dict[str, Any]:
        """The method's parameters, JSON-friendly (for provenance sidecars)."""
        return {"method": type(self).__name__}

    fixed_params: tuple[str, ...] = ()  # parameters a preset sets itself (never passed by a surface)

    @classmethod
    def accepts(cls, name: str) -> bool:
        """Whether the constructor takes a keyword ``name`` (surfaces pass shared options only where taken).

        A constructor with ``**kwargs`` passes them on: the classes further up the MRO are asked."""
        if name in cls.fixed_params:
            return False
        for klass in cls.__mro__:
            init = klass.__dict__.get("__init__")
            if init is None:
                continue
            parameters = inspect.signature(init).parameters
            if name in parameters and name != "self" and parameters[name].kind in (
                    inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY):
                return True
            if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
                return False
        return False

    def with_inferer(self, inferer: Any) -> Explainer | None:
        """A copy of this explainer that explains ``inferer``'s stitched output, or None if the method cannot
        (adapters then use the inferer only to find the region)."""
        return None

    def replace(self, **changes: Any) -> Explainer:
        """A copy with some attributes changed; caches are the copy's own (nothing is shared but the network)."""
        clone = copy.copy(self)
        clone.__dict__.update(changes)
        clone.reset_caches()
        return clone

    def reset_caches(self) -> None:
        """Forget what was measured on earlier inputs (a subclass with caches empties them here)."""

    def forward(self, x: torch.Tensor, inferer: Callable[..., Any] | None = None) -> torch.Tensor:
        """The detached prediction for ``x`` through ``inferer`` (default: none), no autograd."""
        with torch.no_grad(), network_errors(x):
            return run_network(self.network, x, inferer).detach()

    @staticmethod
    def prepare(x: torch.Tensor, target: Target) -> tuple[torch.Tensor, list[RegionTarget], list[Any]]:
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
