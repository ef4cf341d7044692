"""Exact at every feature-grid size: the pooling against the published code's own libraries (skimage
``block_reduce`` + ``resize(order=0)`` in float64) on every grid from 1 to 512 cells and every window from 1
to 16, a CAM map at a realistic grid against a float64 route, Seg-Grad-CAM's sum, and counterfactuals."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from skimage.measure import block_reduce
from skimage.transform import resize
from torch import nn

from monai_xres import HiResCAM, RegionTarget, SegGradCAM, SegRISE, SegXResCAM, pool_gradient
from monai_xres.explainers.rise.masks import mask_windows

FUNCS = {"mean": np.mean, "max": np.max, "sum": np.sum}


def _published(grad: np.ndarray, window: tuple[int, ...], mode: str) -> np.ndarray:
    """The published code's pooling, per (sample, channel): skimage with its defaults, float64."""
    out = np.empty_like(grad)
    for b in range(grad.shape[0]):
        for k in range(grad.shape[1]):
            pooled = block_reduce(grad[b, k], window, func=FUNCS[mode], cval=0.0)
            out[b, k] = resize(pooled, grad.shape[2:], order=0)
    return out


def _check(grad: np.ndarray, window: tuple[int, ...], mode: str) -> None:
    ours = pool_gradient(torch.from_numpy(grad), window, mode).numpy()
    ref = _published(grad, window, mode)
    # gathers of float64 block reductions: only the summation order differs (1e-6 relative is the bar)
    np.testing.assert_allclose(ours, ref, rtol=1e-6, atol=1e-12 * np.abs(ref).max())


@pytest.mark.parametrize("mode", ["mean", "max"])
def test_every_grid_from_1_to_512_and_every_window_from_1_to_16(mode):
    rng = np.random.default_rng(0)
    for n in range(1, 513):
        grad = rng.normal(size=(1, 1, n, 5))  # the swept axis, and a fixed axis pooled by 2 (5 is not divisible)
        for w in range(1, 17):  # windows longer than the grid too: the published padding applies
            _check(grad, (w, 2), mode)


@pytest.mark.parametrize("n", [7, 37, 47, 63, 64, 65, 100, 127, 255, 256, 511, 512])
def test_square_2d_grids_with_every_window(n):
    grad = np.random.default_rng(n).normal(size=(1, 2, n, n))
    for w in range(1, min(16, n) + 1):
        for mode in ("mean", "max", "sum"):
            _check(grad, (w, w), mode)


@pytest.mark.parametrize("grid, window", [((37, 47, 13), (7, 2, 3)), ((47, 47, 47), (8, 8, 8)),
                                          ((61, 55, 9), (16, 14, 9)), ((5, 6, 7), (4, 1, 2))])
@pytest.mark.parametrize("mode", ["mean", "max", "sum"])
def test_3d_grids(grid, window, mode):
    _check(np.random.default_rng(1).normal(size=(2, 3, *grid)), window, mode)


def test_the_sweep_catches_float32_tie_breaking():
    """The torch float32 ``nearest-exact`` of earlier versions differs from the published code on a 37-cell
    grid with window 7: the sweep's reference can tell them apart."""
    grad = np.random.default_rng(2).normal(size=(1, 1, 37, 1))
    pooled = torch.from_numpy(block_reduce(grad[0, 0], (7, 1), func=np.mean, cval=0.0))[None, None]
    old = F.interpolate(pooled, size=(37, 1), mode="nearest-exact")[0, 0].numpy()
    assert not np.allclose(old, _published(grad, (7, 1), "mean")[0, 0])


def test_a_window_far_larger_than_the_grid_never_allocates_its_padding():
    """A window of 1000 on a 4 x 4 x 2 grid: the published code would pad to 1000^3 cells (64 GB here);
    the same values come from the grid alone (one block per axis, the padded zeros counted, never stored)."""
    grad = torch.from_numpy(np.random.default_rng(3).normal(size=(2, 3, 4, 4, 2)))
    for mode in ("mean", "max", "sum"):
        big = pool_gradient(grad, 1000, mode)
        small = torch.from_numpy(_published(grad.numpy(), (5, 5, 3), mode))  # also one block per axis
        scale = {"mean": 5 * 5 * 3 / 1000**3, "max": 1.0, "sum": 1.0}[mode]
        torch.testing.assert_close(big, small * scale, rtol=1e-12, atol=0)


class _Strided(nn.Module):
    """A 2D network whose feature map has 47 x 47 cells (94 px input, one stride-2 layer)."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 8, 3, stride=2, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1))
        self.head = nn.Sequential(nn.ReLU(), nn.Upsample(scale_factor=2, mode="bilinear"),
                                  nn.Conv2d(8, 3, 3, padding=1))

    def forward(self, x):
        return self.head(self.features(x))


def _strided(seed: int) -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(seed)
    return _Strided().eval(), torch.randn(1, 1, 94, 94)


def _float64_route(net, x, target, window, mode, sign=1.0, reduce="pool"):
    """Independent route in float64: full autograd through a float64 copy, skimage pooling, ReLU, resize."""
    net64 = _Strided().double()
    net64.load_state_dict(net.state_dict())
    store = {}
    net64.features.register_forward_hook(lambda m, i, o: store.update(a=o) or o.retain_grad())
    logits = net64(x.double())
    region = target.region(logits[0].detach().float(), None).double()
    (sign * (logits[0, target.class_index] * region).sum()).backward()
    a, g = store["a"].detach().numpy(), store["a"].grad.numpy()
    weights = g.sum((2, 3), keepdims=True) if reduce == "sum" else _published(g, window, mode)
    cam = np.maximum((weights * a).sum(1, keepdims=True), 0)
    return F.interpolate(torch.from_numpy(cam), size=x.shape[2:], mode="bilinear", align_corners=False)


@pytest.mark.parametrize("window, mode", [(2, "mean"), (7, "mean"), (3, "max"), (16, "max")])
def test_map_at_a_47_cell_grid_equals_a_float64_route(window, mode):
    net, x = _strided(0)
    target = RegionTarget(1, box=((20, 30), (70, 80)), restrict_to_prediction=False)
    ours = SegXResCAM(net, "features", pool_size=window, pool_mode=mode)(x, target)
    ref = _float64_route(net, x, target, (window, window), mode)
    # float32 network against float64: relative 1e-4 of the map's range is float32 rounding of the sums
    torch.testing.assert_close(ours.double(), ref, rtol=0, atol=1e-4 * float(ref.max()))


def test_seg_grad_cam_sums_as_published_and_normalises_like_the_mean():
    net, x = _strided(1)
    target = RegionTarget(2, restrict_to_prediction=False)
    summed = SegGradCAM(net, "features", reduction="sum").attribute(x, target, upsample=False).saliency
    mean = SegGradCAM(net, "features").attribute(x, target, upsample=False).saliency
    torch.testing.assert_close(summed, mean * 47 * 47, rtol=1e-5, atol=1e-6 * float(summed.abs().max()))
    ref = _float64_route(net, x, target, None, None, reduce="sum")
    ours = SegGradCAM(net, "features", reduction="sum")(x, target)
    torch.testing.assert_close(ours.double(), ref, rtol=0, atol=1e-4 * float(ref.max()))
    with pytest.raises(ValueError, match="reduction"):
        SegGradCAM(net, "features", reduction="max")


@pytest.mark.parametrize("cls, kwargs", [(SegXResCAM, {"pool_size": 4}), (HiResCAM, {}), (SegGradCAM, {})])
def test_counterfactual_cam_is_the_published_negative_gradient(cls, kwargs):
    net, x = _strided(2)
    target = RegionTarget(1, box=((10, 10), (50, 60)), restrict_to_prediction=False)
    factual = cls(net, "features", **kwargs).attribute(x, target, relu=False).saliency
    against = cls(net, "features", counterfactual=True, **kwargs).attribute(x, target, relu=False).saliency
    torch.testing.assert_close(against, -factual)  # the signed map of -S
    window = kwargs.get("pool_size", 1)
    if cls is not SegGradCAM:
        ref = _float64_route(net, x, target, (window, window), "mean", sign=-1.0)
        ours = cls(net, "features", counterfactual=True, **kwargs)(x, target)
        torch.testing.assert_close(ours.double(), ref, rtol=0, atol=1e-4 * float(ref.max()))


def test_counterfactual_rise_weights_masks_by_one_minus_the_score():
    net, x = _strided(3)
    target = RegionTarget(1, restrict_to_prediction=False)
    common = {"n_masks": 24, "grid_size": 6, "batch_size": 8, "verbose": False, "score": "logit",
              "estimator": "plain", "center_scores": False}  # the published map (centred, the sum would be 0)
    plain = SegRISE(net, **common)(x, target).double()
    against = SegRISE(net, counterfactual=True, **common)(x, target).double()
    # same seeded masks: sum_i (1 - s_i) m_i + sum_i s_i m_i = sum_i m_i, so the maps add up to the mask
    # sum over N p_keep; the maps are float32, hence a tolerance of float32 rounding of the larger map
    spec = SegRISE(net, **common).masks.spec(x.shape[2:])
    mask_sum = mask_windows(spec, range(24), (0, 0), (94, 94), dtype=torch.float64).sum(0)[None]
    scale = float(max(plain.abs().max(), against.abs().max()))
    torch.testing.assert_close(plain + against, mask_sum / (24 * 0.5), rtol=0, atol=4e-7 * scale)


def test_window_volume_is_what_mean_divides_by():
    grad = torch.ones(1, 1, 5, 5, dtype=torch.float64)
    pooled = pool_gradient(grad, 4, "mean")
    assert pooled[0, 0, 0, 0] == 1.0 and pooled[0, 0, 4, 4] == pytest.approx(1 / 16)  # 1 real cell of 16
    assert math.isclose(float(pool_gradient(grad, 4, "sum")[0, 0, 0, 0]), 16.0)
