"""Seg-XRes-CAM: gradient x activation at a target layer, the gradient pooled in windows.

One template, three presets: window 1 is HiResCAM, a window covering the whole feature map is
Seg-Grad-CAM, anything between is Seg-XRes-CAM (Hasany et al., 2023).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from monai.inferers import SlidingWindowInferer
from monai.utils import ensure_tuple
from torch import nn

from monai_xres.explainers.base import Explainer, Explanation, network_errors, preserved_model_state
from monai_xres.explainers.maps import resize_linear
from monai_xres.explainers.pooling import POOL_MODES, PoolSize, pool_gradient, window_of
from monai_xres.explainers.sliding import check_inferer, check_prediction, sliding_cam
from monai_xres.networks import Reshape, TargetLayer, first_head, resolve_layer
from monai_xres.regions.target import RegionTarget

__all__ = ["HiResCAM", "SegGradCAM", "SegXResCAM", "pool_gradient"]


class SegXResCAM(Explainer):
    """Seg-XRes-CAM of a region of a segmentation output.

    ``map = ReLU(sum_k pool(dS/dA)_k * A_k)``, linearly resized to the input, where ``S`` is the region
    score of :class:`~monai_xres.regions.RegionTarget` and ``A`` the target layer's output.

    Only ``dS/dA`` is computed: the network runs without autograd up to the target layer, and the
    backward pass stops there, with no weight gradients.

    Args:
        network: segmentation network ``(B, C_in, *spatial) -> (B, C, *spatial)``, 2D or 3D.
        target_layer: dotted module name or module; None takes the bottleneck of MONAI's UNet, UNETR,
            SwinUNETR or SegResNet (see :func:`~monai_xres.networks.default_layer_name`).
        pool_size: gradient window, an int, a per-axis tuple, or ``"global"``; 1 is HiResCAM. At most the
            feature grid per axis.
        pool_mode: ``"mean"`` (divide by the full window), ``"max"``, or ``"sum"`` (as the published
            Seg-Grad-CAM does over the whole map: the same normalised map as ``"mean"``, raw values
            scaled by the window size).
        reshape: maps the layer output to ``(B, K, *grid)`` (e.g. ViT tokens); UNETR's is automatic.
        eval_mode: explain the network in eval mode (restored afterwards).
        inferer: a ``SlidingWindowInferer``: explain the region of its stitched output, window by window
            (see :mod:`monai_xres.explainers.sliding`); memory then scales with the window, not the scan. An
            inferer with a ``stitched_cam`` method explains its own stitching (nnU-Net's windows, mirrors and
            folds: :mod:`monai_xres.explainers.nnunet_sliding`).
        amp: on CUDA, run the network under ``torch.autocast`` (the map is accumulated in float32).
        verbose: progress bar over windows (sliding-window mode), quiet when not on a TTY.
        counterfactual: explain what speaks *against* the class in the region: the gradient of ``-S``
            (the published code's ``negative_gradient``), so the ReLU keeps the evidence that lowers the score.

    Example::

        cam = SegXResCAM(net, pool_size=2)
        saliency = cam(image, RegionTarget(1, box=((10, 10, 4), (40, 40, 20))))  # (B, 1, H, W, D)
    """

    def __init__(self, network: nn.Module, target_layer: str | nn.Module | None = None,
                 pool_size: PoolSize = 1, pool_mode: str = "mean", reshape: Reshape | None = None,
                 eval_mode: bool = True, inferer: Any = None, amp: bool = True,
                 verbose: bool = True, counterfactual: bool = False) -> None:
        super().__init__(network, eval_mode)
        if not isinstance(counterfactual, bool):
            raise ValueError(f"counterfactual must be True or False, got {counterfactual!r}.")
        if pool_mode not in POOL_MODES:
            raise ValueError(f"pool_mode must be one of {POOL_MODES}, got {pool_mode!r}.")
        if pool_size != "global":
            window_of(pool_size, len(pool_size) if isinstance(pool_size, Sequence) else 1)
        self.layer: TargetLayer = resolve_layer(network, target_layer, reshape)
        self.pool_size = pool_size
        self.pool_mode = pool_mode
        self.inferer = None if inferer is None else check_inferer(inferer)
        self.amp = amp
        self.verbose = verbose
        self.counterfactual = counterfactual

    @property
    def score_sign(self) -> float:
        """-1 for a counterfactual explanation (the gradient of ``-S``), else 1."""
        return -1.0 if self.counterfactual else 1.0

    def with_inferer(self, inferer: Any) -> SegXResCAM | None:
        """This explainer on ``inferer``'s stitched output (a ``SlidingWindowInferer``, or an inferer with its own
        ``stitched_cam`` such as nnU-Net's), else None."""
        if not isinstance(inferer, SlidingWindowInferer) and not hasattr(inferer, "stitched_cam"):
            return None
        return self.replace(inferer=check_inferer(inferer))

    def params(self) -> dict:
        """The method's parameters, JSON-friendly (for provenance sidecars)."""
        size = self.pool_size if isinstance(self.pool_size, (int, str)) else list(self.pool_size)
        params = {**super().params(), "target_layer": self.layer.name, "pool_size": size, "pool_mode": self.pool_mode,
                  "counterfactual": self.counterfactual}
        if hasattr(self.inferer, "stitched_cam"):
            params["inferer"] = self.inferer.params()
        elif self.inferer is not None:
            params["inferer"] = {"roi_size": list(ensure_tuple(self.inferer.roi_size)),
                                 "overlap": self.inferer.overlap, "mode": str(self.inferer.mode.value)}
        return params

    def explain(self, x: torch.Tensor, targets: list[RegionTarget], affines: list[Any], relu: bool = True,
                upsample: bool = True, prediction: torch.Tensor | None = None) -> Explanation:
        """The map of each sample's target (called by :meth:`attribute`, which takes the same options).

        Args:
            relu: apply the ReLU (False gives the signed map, e.g. to check completeness).
            upsample: resize to the input grid (False keeps the feature grid ``(B, 1, *grid)``).
            prediction: with a ``SlidingWindowInferer``, its stitched logits of ``x`` ``(B, C, *spatial)`` if
                already computed (e.g. by the bundle's evaluator): the same map, one prediction fewer.
        """
        info: dict[str, Any] = {}
        check_prediction(self.inferer, prediction)
        with self._autocast(x):
            if self.inferer is not None:
                if not upsample:
                    raise ValueError("With a sliding-window inferer the map is built on the input grid: "
                                     "upsample=False is not available.")
                stitched = getattr(self.inferer, "stitched_cam", None)
                cam, logits, regions, scores, info = (
                    stitched(self, x, targets, affines, self.verbose) if stitched is not None
                    else sliding_cam(self, x, targets, affines, self.inferer, self.verbose, prediction=prediction))
            else:
                logits, activation = self._forward_from_layer(x)
                regions = self.resolve_regions(logits, targets, affines)
                grad, scores = self._score_gradient(logits, activation, targets, regions)
                cam = self.combine(activation.detach(), grad)
        if relu:
            cam = cam.relu()
        if upsample:
            cam = resize_linear(cam, x.shape[2:])
        return Explanation(cam.float(), logits.detach(), regions, scores, info)

    def check_input(self, x: torch.Tensor) -> tuple[int, ...]:
        """The target layer's feature grid for inputs like ``x`` ``(B, C_in, *spatial)`` (one forward, no
        backward), checked against the gradient window: a cheap test before a long run.

        Raises:
            ValueError: the layer does not run, gives no feature map, or is smaller than the window.
        """
        with preserved_model_state(self.network, self.eval_mode), torch.inference_mode(False):
            _, activation = self._forward_from_layer(x)
        if self.layer.reshape is not None:
            activation = self.layer.reshape(activation)
        grid = tuple(activation.shape[2:])
        if self.pool_size != "global":
            window = window_of(self.pool_size, len(grid))
            if any(w > n for w, n in zip(window, grid)):
                raise ValueError(f"the gradient window {window} is larger than the feature grid {grid} of layer "
                                 f"{self.layer.name!r} for inputs of size {tuple(x.shape[2:])}: use a window of at "
                                 "most the grid per axis, or Seg-Grad-CAM for the whole map.")
        return grid

    def window_map(self, x: torch.Tensor, upstream: torch.Tensor) -> torch.Tensor:
        """Signed map ``(B, 1, *grid)`` of inputs ``x`` given the gradient ``upstream`` ``(B, C, *out)`` of some
        score with respect to the network output (used per window by :mod:`monai_xres.explainers.sliding`)."""
        output, activation = self._forward_from_layer(x)
        self._check_connected(output)
        (grad,) = torch.autograd.grad(output, activation, grad_outputs=upstream.to(output.dtype))
        return self.combine(activation.detach(), grad)

    def combine(self, activation: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
        """Signed map on the feature grid, ``(B, 1, *grid)``: channel sum of pooled gradient x activation."""
        if self.layer.reshape is not None:
            activation, grad = self.layer.reshape(activation), self.layer.reshape(grad)
        if activation.ndim < 3:
            raise ValueError(f"Layer {self.layer.name!r} gives {tuple(activation.shape)}, not a feature map "
                             "(B, K, *grid): choose a convolutional layer or pass reshape=...")
        weights = pool_gradient(grad.float(), self.pool_size, self.pool_mode)
        return (weights * activation.float()).sum(1, keepdim=True)

    def _autocast(self, x: torch.Tensor):
        return torch.autocast("cuda") if self.amp and x.is_cuda else contextlib.nullcontext()

    def _forward_from_layer(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Network output and the captured target-layer leaf.

        Autograd records only from the layer on: no parameter requires grad inside the explainer's model
        guard and the input does not either, so the first tensor that does is the captured leaf."""
        with self._captured_activation() as captured, torch.enable_grad(), network_errors(x):
            output = self.network(x)
        if not captured:
            raise ValueError(f"Layer {self.layer.name!r} did not run in the forward pass: pick a layer the "
                             "network uses for this input.")
        return first_head(output), captured[0]

    def _check_connected(self, output: torch.Tensor) -> None:
        if not output.requires_grad:
            raise ValueError(f"The output does not depend on layer {self.layer.name!r}: choose a layer "
                             "between the input and the output.")

    def _score_gradient(self, logits: torch.Tensor, activation: torch.Tensor, targets: list[RegionTarget],
                        regions: list[torch.Tensor]) -> tuple[torch.Tensor, list[float]]:
        """dS/dA of the summed region scores, and each sample's score."""
        self._check_connected(logits)
        with torch.enable_grad():
            per_sample = [t.score(logits[i].float(), regions[i]) for i, t in enumerate(targets)]
        (grad,) = torch.autograd.grad(self.score_sign * torch.stack(per_sample).sum(), activation)
        return grad, [float(s.detach()) for s in per_sample]

    @contextlib.contextmanager
    def _captured_activation(self) -> Iterator[list[torch.Tensor]]:
        """Hook the target layer: its output becomes a leaf that requires grad, so the graph holds only what
        lies between the layer and the output. The hook is removed on exit, also when the forward raises."""
        captured: list[torch.Tensor] = []
        name = self.layer.name

        def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor:
            if not isinstance(output, torch.Tensor):
                raise ValueError(f"Layer {name!r} returns {type(output).__name__}, not a tensor: choose its "
                                 "sub-layer that returns the feature map (e.g. UNETR's 'vit.norm').")
            if captured:
                raise ValueError(f"Layer {name!r} runs more than once per forward pass: choose a layer "
                                 "that runs once.")
            leaf = output.detach().requires_grad_(True)
            captured.append(leaf)
            return leaf

        handle = self.layer.module.register_forward_hook(hook)
        try:
            yield captured
        finally:
            handle.remove()


class HiResCAM(SegXResCAM):
    """HiResCAM (Draelos and Carin): Seg-XRes-CAM with window 1, the gradient not pooled at all.

    Keyword arguments other than ``pool_size``/``pool_mode`` are those of :class:`SegXResCAM`.
    """

    fixed_params = ("pool_size", "pool_mode")

    def __init__(self, network: nn.Module, target_layer: str | nn.Module | None = None, **kwargs) -> None:
        super().__init__(network, target_layer, pool_size=1, pool_mode="mean", **kwargs)


class SegGradCAM(SegXResCAM):
    """Seg-Grad-CAM (Vinogradova et al.): Seg-XRes-CAM with the gradient pooled over the whole map.

    Args:
        reduction: ``"mean"`` (default) averages the gradient over the map; ``"sum"`` sums it, as the
            published Seg-Grad-CAM code does. The normalised maps are the same; raw values differ by the
            number of feature cells.

    Other keyword arguments (not ``pool_size``/``pool_mode``) are those of :class:`SegXResCAM`.
    """

    fixed_params = ("pool_size", "pool_mode")

    def __init__(self, network: nn.Module, target_layer: str | nn.Module | None = None, reduction: str = "mean",
                 **kwargs) -> None:
        if reduction not in ("mean", "sum"):
            raise ValueError(f"reduction must be 'mean' or 'sum' (the published code sums), got {reduction!r}.")
        super().__init__(network, target_layer, pool_size="global", pool_mode=reduction, **kwargs)
