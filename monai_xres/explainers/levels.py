"""Several target layers in one pass: capturing their outputs, and combining their maps.

One forward and one backward serve every layer. The first captured layer to run becomes an autograd
leaf (nothing before it is recorded); a later captured layer whose output depends on it stays in the
graph, so the gradient of the region score with respect to it is still the whole ``dS/dA`` (every path
from that layer to the output, skip connections included); a later layer that does not depend on an
earlier one becomes a leaf of its own. Each level's map is then exactly the single-layer map of that
layer, and :func:`combine_levels` brings the levels, resized to the input grid, to one map.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch
from torch import nn

from monai_xres.networks import TargetLayer

__all__ = ["COMBINE_RULES", "captured_outputs", "check_layers", "combine_levels"]

# "mean": each level's map divided by its own maximum absolute value (per sample), then averaged over the
# levels, so that every level counts alike whatever its scale; "sum": the raw maps added (each level is
# in units of the region score: HiResCAM's sums to about the score at every level, so deeper levels with
# larger sums weigh more).
COMBINE_RULES = ("mean", "sum")


def check_layers(layers: Sequence[TargetLayer], combine: str) -> None:
    """Reject a layer given twice (e.g. an alias and its dotted name) and an unknown combination rule."""
    if combine not in COMBINE_RULES:
        raise ValueError(f"combine must be one of {list(COMBINE_RULES)}, got {combine!r}.")
    names = [layer.name for layer in layers]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ValueError(f"Target layer(s) {repeated} given more than once (an alias and its name are the same "
                         "layer): give each layer once.")


def combine_levels(maps: torch.Tensor, rule: str = "mean") -> torch.Tensor:
    """One map ``(B, 1, *spatial)`` from the per-level maps ``(B, L, *spatial)`` on one grid (see
    :data:`COMBINE_RULES`); a level that is zero everywhere adds zero."""
    if rule == "sum":
        return maps.sum(1, keepdim=True)
    top = maps.abs().amax(tuple(range(2, maps.ndim)), keepdim=True)
    scaled = torch.where(top > 0, maps / top.clamp_min(torch.finfo(maps.dtype).tiny), torch.zeros_like(maps))
    return scaled.mean(1, keepdim=True)


@contextlib.contextmanager
def captured_outputs(layers: Sequence[TargetLayer]) -> Iterator[list[torch.Tensor | None]]:
    """Hook ``layers``; during a forward pass (of an input that does not require grad, with no parameter
    that does) slot ``i`` receives layer ``i``'s output, made a leaf that requires grad unless it already
    depends on an earlier captured one. Hooks are removed on exit, also when the forward raises.

    Raises (from the forward):
        ValueError: a layer returns no tensor, or runs more than once per forward pass.
    """
    captured: list[torch.Tensor | None] = [None] * len(layers)
    versions: list[int] = [0] * len(layers)

    def hook_for(i: int, name: str):
        def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor | None:
            if not isinstance(output, torch.Tensor):
                raise ValueError(f"Layer {name!r} returns {type(output).__name__}, not a tensor: choose its "
                                 "sub-layer that returns the feature map (e.g. UNETR's 'vit.norm').")
            if captured[i] is not None:
                raise ValueError(f"Layer {name!r} runs more than once per forward pass: choose a layer "
                                 "that runs once.")
            if output.requires_grad:  # downstream of an earlier captured layer: keep the path through it
                captured[i], versions[i] = output, output._version
                return None
            captured[i] = output.detach().requires_grad_(True)
            return captured[i]

        return hook

    handles = [layer.module.register_forward_hook(hook_for(i, layer.name)) for i, layer in enumerate(layers)]
    try:
        yield captured
    finally:
        for handle in handles:
            handle.remove()
    for i, tensor in enumerate(captured):
        if tensor is not None and not tensor.is_leaf and tensor._version != versions[i]:
            raise ValueError(f"The output of layer {layers[i].name!r} is changed in place by the layer after it "
                             "(an in-place activation): choose that activation, or a layer after it.")
