"""Seg-XRes-CAM against independent computations: numpy pooling, plain autograd, and completeness."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from monai.networks.nets import UNet
from skimage.measure import block_reduce
from skimage.transform import resize
from torch import nn

from monai_xres import HiResCAM, RegionTarget, SegGradCAM, SegXResCAM, normalize, pool_gradient, resolve_layer


def _reference_pool(grad: np.ndarray, window, mode: str) -> np.ndarray:
    """The published semantics with skimage: pad the end with zeros, pool, half-pixel nearest back."""
    out = np.empty_like(grad)
    func = np.mean if mode == "mean" else np.max
    for b in range(grad.shape[0]):
        for k in range(grad.shape[1]):
            pooled = block_reduce(grad[b, k], tuple(window), func=func, cval=0.0)
            out[b, k] = resize(pooled, grad.shape[2:], order=0, preserve_range=True, anti_aliasing=False,
                               mode="edge")
    return out


@pytest.mark.parametrize("grid", [(7, 7), (5, 6, 7)])
@pytest.mark.parametrize("window", [2, 4])
@pytest.mark.parametrize("mode", ["mean", "max"])
def test_pooling_matches_skimage_on_sizes_not_divisible(grid, window, mode):
    # negative values matter: max must see the padded zeros, mean must divide by the full window
    grad = np.random.default_rng(0).normal(size=(2, 3, *grid))
    ours = pool_gradient(torch.from_numpy(grad), window, mode).numpy()
    np.testing.assert_allclose(ours, _reference_pool(grad, (window,) * len(grid), mode), rtol=0, atol=1e-12)


def test_pooling_per_axis_window_and_global():
    grad = np.random.default_rng(1).normal(size=(1, 2, 5, 6, 7))
    ours = pool_gradient(torch.from_numpy(grad), (1, 2, 4), "mean").numpy()
    np.testing.assert_allclose(ours, _reference_pool(grad, (1, 2, 4), "mean"), atol=1e-12)
    whole = pool_gradient(torch.from_numpy(grad), "global", "mean").numpy()
    np.testing.assert_allclose(whole, np.broadcast_to(grad.mean((2, 3, 4), keepdims=True), grad.shape))


def _unet(dims: int) -> nn.Module:
    torch.manual_seed(0)
    return UNet(dims, 1, 3, (4, 8, 16), (2, 2), num_res_units=1).eval()


def _plain_autograd_map(net, layer, x, cls, box, window):
    """Independent route: full autograd (weights included), hooks, numpy pooling, torch resize."""
    store = {}
    handle = layer.register_forward_hook(lambda m, i, o: store.update(a=o) or o.retain_grad())
    logits = net(x)
    handle.remove()
    region = torch.zeros_like(logits[:, cls])
    region[(slice(None), *(slice(s, e) for s, e in zip(*box)))] = 1
    (logits[:, cls] * region).sum().backward()
    a, g = store["a"].detach().numpy(), store["a"].grad.numpy()
    pooled = _reference_pool(g, (window,) * (x.ndim - 2), "mean")
    cam = np.maximum((pooled * a).sum(1, keepdims=True), 0)
    mode = "bilinear" if x.ndim == 4 else "trilinear"
    return F.interpolate(torch.from_numpy(cam), size=x.shape[2:], mode=mode, align_corners=False)


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("window", [1, 2])
@pytest.mark.parametrize("layer", ["bottleneck", "decoder1", "head-input"])
def test_map_equals_plain_autograd_route(dims, window, layer):
    net = _unet(dims)
    x = torch.randn(1, 1, *(20, 24, 12)[:dims])
    box = ((4, 6, 2)[:dims], (12, 16, 8)[:dims])
    target = RegionTarget(2, box=box, restrict_to_prediction=False)
    ours = SegXResCAM(net, layer, pool_size=window)(x, target)
    ref = _plain_autograd_map(net, net.get_submodule(resolve_layer(net, layer).name), x, 2, box, window)
    # float32 network, float64 reference pooling: agreement to float32 rounding of the sums
    torch.testing.assert_close(ours, ref.float(), rtol=1e-4, atol=1e-6 * float(ref.abs().max()))


class _LinearHead(nn.Module):
    """Features, then a 1x1(x1) convolution: the output is linear in the target layer."""

    def __init__(self, dims: int, classes: int = 3):
        super().__init__()
        conv = nn.Conv2d if dims == 2 else nn.Conv3d
        self.features = nn.Sequential(conv(1, 6, 3, padding=1), nn.ReLU(), conv(6, 5, 3, padding=1), nn.Tanh())
        self.head = conv(5, classes, 1)

    def forward(self, x):
        return self.head(self.features(x))


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("restrict", [False, True])
def test_completeness_on_a_linear_head(dims, restrict):
    torch.manual_seed(dims)
    net = _LinearHead(dims)
    x = torch.randn(1, 1, *(12, 10, 8)[:dims])
    target = RegionTarget(1, box=((2, 1, 0)[:dims], (9, 8, 6)[:dims]), restrict_to_prediction=restrict)
    if restrict:  # make sure class 1 is predicted somewhere in the box
        with torch.no_grad():
            net.head.bias[1] = 5.0
    expl = HiResCAM(net, "features").attribute(x, target, relu=False, upsample=False)
    region = expl.regions[0]
    bias_part = float(net.head.bias.detach()[1]) * int(region.sum())
    total = float(expl.saliency.double().sum())
    # sums of a few hundred float32 products: relative 1e-5 is float32 accumulation noise
    assert total == pytest.approx(expl.scores[0] - bias_part, rel=1e-5, abs=1e-4)


def test_seg_grad_cam_is_global_mean_weighting():
    net = _unet(2)
    x = torch.randn(1, 1, 16, 16)
    target = RegionTarget(1, restrict_to_prediction=False)
    a = SegGradCAM(net, "bottleneck")(x, target)
    b = SegXResCAM(net, "bottleneck", pool_size=(4, 4))(x, target)  # the bottleneck grid is 4x4: one window is global
    torch.testing.assert_close(a, b)
    assert SegGradCAM(net).params()["pool_size"] == "global"
    assert HiResCAM(net).params()["pool_size"] == 1


def test_batch_with_a_target_per_sample_equals_separate_calls():
    net = _unet(3)
    x = torch.randn(2, 1, 16, 16, 8)
    targets = [RegionTarget(1, box=((0, 0, 0), (8, 8, 4)), restrict_to_prediction=False),
               RegionTarget(2, restrict_to_prediction=False)]
    cam = SegXResCAM(net, pool_size=2)
    batch = cam(x, targets)
    for i in range(2):
        # batched float32 convolutions may take other kernels: equal to their last bits, relative to the map
        torch.testing.assert_close(batch[i : i + 1], cam(x[i : i + 1], targets[i]), rtol=1e-5,
                                   atol=1e-5 * float(batch.abs().max()))


def test_same_map_under_no_grad_and_inference_mode():
    net = _unet(2)
    x = torch.randn(1, 1, 16, 16)
    target = RegionTarget(1, restrict_to_prediction=False)
    cam = HiResCAM(net)
    ref = cam(x, target)
    with torch.no_grad():
        torch.testing.assert_close(cam(x, target), ref)
        assert not torch.is_grad_enabled()  # the caller's mode is restored
    with torch.inference_mode():
        torch.testing.assert_close(cam(x, target), ref)


def test_normalize_is_safe_on_constant_maps():
    maps = torch.stack([torch.zeros(1, 4, 4), torch.full((1, 4, 4), 3.0), torch.arange(16.0).reshape(1, 4, 4)])
    out = normalize(maps)
    assert torch.isfinite(out).all()
    assert out[0].abs().sum() == 0 and out[1].abs().sum() == 0
    assert out[2].min() == 0 and out[2].max() == 1
