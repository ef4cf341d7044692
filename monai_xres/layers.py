"""Finding the layer to explain: by name (with close-name suggestions) or MONAI's usual bottleneck."""

from __future__ import annotations

import difflib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

__all__ = ["TargetLayer", "default_layer_name", "resolve_layer", "tokens_to_grid", "unwrap"]

# DistributedDataParallel / DataParallel add "module.", torch.compile adds "_orig_mod."
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")

Reshape = Callable[[torch.Tensor], torch.Tensor]


def _canonical(name: str) -> str:
    stripped = True
    while stripped:
        stripped = False
        for prefix in _WRAPPER_PREFIXES:
            if name.startswith(prefix):
                name, stripped = name[len(prefix):], True
    return name


def unwrap(network: nn.Module) -> nn.Module:
    """The user's network inside DDP/DataParallel (``.module``) and ``torch.compile`` (``._orig_mod``)."""
    while True:
        if isinstance(network, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            network = network.module
        elif hasattr(network, "_orig_mod") and isinstance(network._orig_mod, nn.Module):
            network = network._orig_mod
        else:
            return network


def tokens_to_grid(grid_size: Sequence[int]) -> Reshape:
    """Turn ViT tokens ``(B, N, K)`` into a feature map ``(B, K, *grid_size)``.

    Row-major token order, the layout of UNETR's own ``proj_feat`` (``view(B, *grid, K)`` then channels first).
    """
    grid = tuple(int(g) for g in grid_size)

    def reshape(tokens: torch.Tensor) -> torch.Tensor:
        b, n, k = tokens.shape
        if n != int(torch.tensor(grid).prod()):
            raise ValueError(f"{n} tokens do not fill a {grid} patch grid: pass the network's img_size // "
                             "patch_size as grid_size (the input must have the network's img_size).")
        return tokens.transpose(1, 2).reshape(b, k, *grid)

    return reshape


def default_layer_name(network: nn.Module) -> tuple[str, Reshape | None]:
    """The bottleneck of a MONAI segmentation network, and the token reshape it needs (if any).

    UNet: the bottom unit ``model(.1.submodule)*(len(channels)-1)``; UNETR: ``vit.norm`` (tokens reshaped
    to the patch grid); SwinUNETR: ``encoder10``; SegResNet: the last ``down_layers`` entry.

    Raises:
        ValueError: the network is none of these; the message asks for ``target_layer``.
    """
    from monai.networks.nets import UNETR, SegResNet, SwinUNETR, UNet

    net = unwrap(network)
    if isinstance(net, UNet):
        return "model" + ".1.submodule" * (len(net.channels) - 1), None
    if isinstance(net, UNETR):
        return "vit.norm", tokens_to_grid(net.feat_size)
    if isinstance(net, SwinUNETR):
        return "encoder10", None
    if isinstance(net, SegResNet):
        return f"down_layers.{len(net.down_layers) - 1}", None
    convs = [n for n, m in net.named_modules() if isinstance(m, (nn.Conv2d, nn.Conv3d))]
    raise ValueError(
        f"No default target layer for {type(net).__name__}: pass target_layer='<dotted name>'. "
        f"Convolutions near the end of the network: {convs[-5:]}"
    )


@dataclass
class TargetLayer:
    """A resolved target layer: its dotted name in the given network, the module, an optional reshape."""

    name: str
    module: nn.Module
    reshape: Reshape | None = None


def resolve_layer(network: nn.Module, target_layer: str | nn.Module | None = None,
                  reshape: Reshape | None = None) -> TargetLayer:
    """Resolve ``target_layer`` (dotted name, module, or None for the default) in ``network``.

    Names match with or without the ``module.``/``_orig_mod.`` prefixes of DDP and ``torch.compile``.

    Raises:
        ValueError: the name is unknown (the message lists the closest valid names), or the module is not
            part of the network.
    """
    modules = dict(network.named_modules())
    if isinstance(target_layer, nn.Module):
        for name, module in modules.items():
            if module is target_layer:
                return TargetLayer(name, module, reshape)
        raise ValueError(f"The given {type(target_layer).__name__} module is not part of the network: pass a "
                         "module of this network, or its dotted name.")
    if target_layer is None:
        target_layer, default_reshape = default_layer_name(network)
        reshape = reshape or default_reshape
    by_canonical = {_canonical(n): n for n in modules if n}
    name = by_canonical.get(_canonical(str(target_layer)))
    if name is None:
        close = difflib.get_close_matches(_canonical(str(target_layer)), list(by_canonical), n=5, cutoff=0.5)
        raise ValueError(f"No layer named {target_layer!r} in {type(unwrap(network)).__name__}. Closest "
                         f"names: {[by_canonical[c] for c in close] or 'none'}; list them all with "
                         "[n for n, _ in network.named_modules()].")
    return TargetLayer(name, modules[name], reshape)
