"""The dotted module names of each supported network type's levels, ``net -> {alias: name}``.

In the order data flows: ``encoder1`` .. ``encoderN`` where a type names its encoder levels (``encoder1``
nearest the input), the bottleneck, ``decoderN`` .. ``decoder1`` (towards the head), ``head-input``; the aliases
and how a target layer is resolved are in :mod:`monai_xres.networks` (its ``NETWORK_TYPES`` table names
these functions).
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

__all__ = ["dynunet_levels", "nnunet_levels", "numbered", "segresnet_levels", "unet_levels", "unetr_levels"]


def unet_levels(net: nn.Module) -> dict[str, str]:
    """MONAI UNet: ``model`` is (down, SkipConnection(submodule), up) recursively; the up block of depth
    ``d`` is ``model(.1.submodule)*d.2`` and depth 0's up block makes the output (it is the head)."""
    depth = len(net.channels) - 1
    # the down block of depth d is model(.1.submodule)*d.0: its output, before any skip joins the decoder,
    # still holds each input location's features at that location (the planted-cue benchmark's finding)
    levels = {f"encoder{d + 1}": "model" + ".1.submodule" * d + ".0" for d in range(depth)}
    levels["bottleneck"] = "model" + ".1.submodule" * depth
    levels.update({f"decoder{d}": "model" + ".1.submodule" * d + ".2" for d in range(depth - 1, 0, -1)})
    # the head: a transposed conv (+ with residual units, one unit whose last conv has no norm/act: linear in
    # its input with one unit, num_res_units=1; with more, the unit's first convs have norm/act)
    levels["head-input"] = "model.2.0" if net.num_res_units > 0 else "model.1"
    return levels


def numbered(bottleneck: str, decoders: Sequence[str], head_input: str, first: int = 1) -> dict[str, str]:
    """Levels from a bottleneck name, the decoder names from the bottleneck towards the head, the head input."""
    levels = {"bottleneck": bottleneck}
    levels.update({f"decoder{first + len(decoders) - 1 - i}": name for i, name in enumerate(decoders)})
    levels["head-input"] = head_input
    return levels


def unetr_levels(net: nn.Module) -> dict[str, str]:
    """MONAI UNETR, in its own block names: ``encoder1`` is a convolution block on the input (full resolution);
    ``encoder2`` .. ``encoder4`` turn the ViT's hidden states 3, 6 and 9 into maps at 1/2, 1/4 and 1/8 of it
    (transposed convolutions of each patch's token); the bottleneck is the ViT's last tokens (``vit.norm``);
    ``decoder5`` .. ``decoder2`` join them towards the head, a 1x1 convolution of ``decoder2``."""
    levels = {f"encoder{k}": f"encoder{k}" for k in range(1, 5)}
    levels.update(numbered("vit.norm", [f"decoder{k}" for k in (5, 4, 3, 2)], "decoder2", 2))
    return levels


def segresnet_levels(net: nn.Module) -> dict[str, str]:
    ups = [f"up_layers.{i}" for i in range(len(net.up_layers))]
    # conv_final is (norm, act_mod, 1x1 conv): the shared act_mod module is registered as "act_mod"
    head_input = "act_mod" if net.use_conv_final else ups[-1]
    return numbered(f"down_layers.{len(net.down_layers) - 1}", ups, head_input)


def dynunet_levels(net: nn.Module) -> dict[str, str]:
    ups = [f"upsamples.{i}" for i in range(len(net.upsamples))]  # upsamples.0 is the deepest
    return numbered("bottleneck", ups, ups[-1])


def nnunet_levels(net: nn.Module) -> dict[str, str]:
    """nnU-Net v2 ``PlainConvUNet``/``ResidualEncoderUNet``: ``decoder.stages.0`` is the deepest decoder stage;
    the head is ``decoder.seg_layers[-1]``, a 1x1 convolution of the last stage's output (linear)."""
    stages = [f"decoder.stages.{i}" for i in range(len(net.decoder.stages))]
    return numbered(f"encoder.stages.{len(net.encoder.stages) - 1}", stages, stages[-1])
