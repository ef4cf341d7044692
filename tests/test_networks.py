"""Default layers of MONAI networks, layer names, and leaving the model exactly as found."""

import pytest
import torch
from monai.networks.nets import UNETR, DynUNet, SegResNet, SwinUNETR, UNet
from torch import nn

from monai_xres import RegionTarget, SegXResCAM, resolve_layer, tokens_to_grid


def _unetr() -> UNETR:
    return UNETR(1, 3, (32, 32, 32), feature_size=8, hidden_size=96, mlp_dim=192, num_heads=4)


def test_unetr_token_reshape_matches_proj_feat():
    net = _unetr()
    tokens = torch.randn(2, 8, 96)  # (B, (32/16)^3, hidden)
    torch.testing.assert_close(tokens_to_grid(net.feat_size)(tokens), net.proj_feat(tokens))
    with pytest.raises(ValueError, match="do not fill"):
        tokens_to_grid((3, 3, 3))(tokens)


@pytest.mark.parametrize(
    "make, layer",
    [
        (lambda: UNet(3, 1, 3, (4, 8, 16, 32), (2, 2, 2), num_res_units=1), "model.0"),  # encoder1
        (_unetr, "decoder4"),
        (lambda: SwinUNETR(in_channels=1, out_channels=3, feature_size=12, spatial_dims=3), "decoder5"),
        (lambda: SegResNet(3, 8, 1, 3, blocks_down=(1, 1, 1), blocks_up=(1, 1)), "up_layers.0"),
        (lambda: DynUNet(3, 1, 3, [3, 3, 3], [1, 2, 2], [2, 2]), "upsamples.0"),
    ],
    ids=["UNet", "UNETR", "SwinUNETR", "SegResNet", "DynUNet"],
)
def test_default_layer_gives_a_finite_nontrivial_map(make, layer):
    torch.manual_seed(0)
    net = make().eval()
    cam = SegXResCAM(net, pool_size=2)
    assert cam.layer.name == layer
    size = 64 if isinstance(net, SwinUNETR) else 32  # SwinUNETR's bottleneck needs more than one voxel
    x = torch.randn(1, 1, size, size, size)
    saliency = cam(x, RegionTarget(1, box=((8, 8, 8), (24, 24, 24)), restrict_to_prediction=False))
    assert saliency.shape == (1, 1, size, size, size)
    assert torch.isfinite(saliency).all() and saliency.max() > 0 and saliency.std() > 0


def test_wrapped_networks_resolve_with_or_without_prefixes():
    net = UNet(2, 1, 2, (4, 8), (2,), num_res_units=0).eval()
    wrapped = nn.DataParallel(net)  # names gain "module." like DDP
    assert resolve_layer(wrapped, None).name == "module.model.0"  # the default: encoder1
    assert resolve_layer(wrapped, "model.1.submodule").module is net.model[1].submodule
    assert resolve_layer(net, "module.model.1.submodule").module is net.model[1].submodule
    compiled = torch.compile(net)  # only the names are looked at: nothing is compiled
    assert resolve_layer(compiled, None).name == "_orig_mod.model.0"
    x = torch.randn(1, 1, 16, 16)
    target = RegionTarget(1, restrict_to_prediction=False)
    torch.testing.assert_close(SegXResCAM(wrapped)(x, target), SegXResCAM(net)(x, target))


def test_wrong_layer_name_lists_close_names():
    net = UNet(2, 1, 2, (4, 8), (2,), num_res_units=0)
    with pytest.raises(ValueError, match=r"No layer named 'model.1.submodle'.*'model.1.submodule'"):
        SegXResCAM(net, "model.1.submodle")
    with pytest.raises(ValueError, match="No default target layer for Sequential"):
        SegXResCAM(nn.Sequential(nn.Conv2d(1, 2, 1)))
    with pytest.raises(ValueError, match="not part of the network"):
        SegXResCAM(net, nn.Conv2d(1, 1, 1))


def test_bad_explainer_arguments():
    net = UNet(2, 1, 2, (4, 8), (2,), num_res_units=0)
    with pytest.raises(ValueError, match="pool_mode"):
        SegXResCAM(net, pool_mode="median")
    with pytest.raises(ValueError, match="pool_size"):
        SegXResCAM(net, pool_size=0)
    cam = SegXResCAM(net, pool_size=(2, 2, 2))
    with pytest.raises(ValueError, match=r"2 positive ints for a 2D feature map, got \(2, 2, 2\)"):
        cam(torch.randn(1, 1, 8, 8), RegionTarget(1, restrict_to_prediction=False))
    with pytest.raises(ValueError, match="NaN/Inf"):
        SegXResCAM(net)(torch.full((1, 1, 8, 8), float("nan")), RegionTarget(1))
    with pytest.raises(ValueError, match=r"add the batch and channel axes"):
        SegXResCAM(net)(torch.randn(8, 8), RegionTarget(1))
    with pytest.raises(ValueError, match="returns tuple"):
        SegXResCAM(_unetr(), "vit")(torch.randn(1, 1, 32, 32, 32), RegionTarget(1, restrict_to_prediction=False))


def _state(net: nn.Module):
    return ({k: v.clone() for k, v in net.state_dict().items()},
            [m.training for m in net.modules()], [p.requires_grad for p in net.parameters()])


def _hook_count(net: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._backward_hooks) + len(m._forward_pre_hooks) for m in net.modules())


@pytest.mark.parametrize("training", [True, False])
def test_model_is_left_exactly_as_found(training):
    torch.manual_seed(0)
    net = UNet(3, 1, 3, (4, 8, 16), (2, 2), num_res_units=1, norm="batch", dropout=0.2)
    net.train(training)
    net.model[0].requires_grad_(False)  # a partly frozen model stays partly frozen
    before = _state(net)
    x = torch.randn(2, 1, 16, 16, 8)
    SegXResCAM(net, pool_size=2)(x, RegionTarget(1, restrict_to_prediction=False))
    after = _state(net)
    assert all(torch.equal(before[0][k], after[0][k]) for k in before[0])  # BatchNorm statistics untouched
    assert before[1:] == after[1:]
    assert all(p.grad is None for p in net.parameters())  # no weight gradients were computed
    assert _hook_count(net) == 0


class _FrozenNorm(nn.BatchNorm3d):
    """A norm that stays in eval mode whatever train() says (as frozen-BN fine-tuning code does)."""

    def __init__(self, channels: int) -> None:
        super().__init__(channels)
        self.train_calls = 0

    def train(self, mode: bool = True):
        self.train_calls += 1
        return super().train(False)


def test_guard_runs_a_module_own_train_and_restores_mixed_flags_and_shared_weights():
    from monai_xres.explainers.base import preserved_model_state

    net = nn.Sequential(nn.Conv3d(1, 4, 3, padding=1), _FrozenNorm(4), nn.Dropout(0.5), nn.Conv3d(4, 2, 1))
    net.append(net[0])  # a module (and its weights) reached twice
    net[2].train(True)
    net[1].train_calls = 0
    net[3].weight.requires_grad_(False)
    before = _state(net)
    with preserved_model_state(net):
        assert net[1].train_calls == 1  # its own train() ran, not a bare flag write
        assert not any(m.training for m in net.modules())
        assert not any(p.requires_grad for p in net.parameters())
    assert _state(net)[1:] == before[1:]
    with pytest.raises(RuntimeError), preserved_model_state(net, eval_mode=False):
        assert net[2].training
        raise RuntimeError("inside")
    assert _state(net)[1:] == before[1:]


def test_hooks_removed_and_state_restored_when_it_raises():
    net = UNet(2, 1, 3, (4, 8), (2,), num_res_units=0, norm="batch").train()
    before = _state(net)
    with pytest.raises(ValueError, match="class_index 5 is not an output channel"):  # raised after the forward
        SegXResCAM(net)(torch.zeros(1, 1, 8, 8), RegionTarget(5))
    after = _state(net)
    assert _hook_count(net) == 0 and before[1:] == after[1:]
    assert all(torch.equal(before[0][k], after[0][k]) for k in before[0])


def test_network_failure_becomes_a_clear_error():
    net = UNet(3, 1, 2, (4, 8, 16), (2, 2), num_res_units=1)
    with pytest.raises(ValueError, match=r"network failed on an input of shape \(1, 1, 10, 12, 9\).*DivisiblePad"):
        SegXResCAM(net)(torch.randn(1, 1, 10, 12, 9), RegionTarget(1))
    with pytest.raises(ValueError, match="network failed on an input of shape"):
        SegXResCAM(net)(torch.randn(1, 2, 16, 16, 8), RegionTarget(1))  # wrong channel count
