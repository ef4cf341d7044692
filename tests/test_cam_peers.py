"""Side-by-side tests: our CAMs against pytorch-grad-cam, Captum and medcam on the same network and region.

Each peer is driven to compute the same quantity: the score is the sum of the class-``c`` logits over a
region mask (pytorch-grad-cam's ``SemanticSegmentationTarget``; a region-sum forward function for Captum;
a gradient mask on the logits for medcam), and our ``RegionTarget`` gets the same mask with
``restrict_to_prediction=False``, or the peer gets our resolved region when it is restricted.

Tolerances. Captum runs the same torch float32 operations as we do, so it must agree to float32
rounding of the channel sum (1e-6 of the map's largest value). pytorch-grad-cam and medcam compute the
channel sum in numpy or in a different order, and normalise to [0, 1]: 1e-5 absolute on [0, 1] maps,
about 100 float32 ulps, far below any difference of method (pooling windows of 2 or "global" instead of 1,
or the reverse, move these maps by 0.97 to 1.0; measured on the 2D case).
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from captum.attr import LayerGradCam, LayerGradientXActivation
from medcam import medcam
from scipy import ndimage

from monai_xres import HiResCAM, RegionTarget, SegGradCAM, SegXResCAM, normalize, resize_linear

LAYER = "model.1.submodule.1.submodule"  # bottleneck of the conftest UNet: a quarter of the input per axis
SIZES = {2: (40, 36), 3: (24, 20, 16)}
CLASS = 1
ATOL_NORMALISED = 1e-5


def _inputs(dims: int) -> tuple[torch.Tensor, np.ndarray]:
    """A batch of two inputs and one box mask per sample (different boxes), float32 ``(2, *spatial)``."""
    size = SIZES[dims]
    x = torch.randn(2, 1, *size, generator=torch.Generator().manual_seed(dims))
    masks = np.zeros((2, *size), np.float32)
    masks[(0, *(slice(s // 4, s // 2 + 2) for s in size))] = 1
    masks[(1, *(slice(s // 2, s - 1) for s in size))] = 1
    return x, masks


def _targets(masks: np.ndarray) -> list[RegionTarget]:
    return [RegionTarget(CLASS, mask=m, restrict_to_prediction=False) for m in masks]


def _assert_structured(maps: torch.Tensor) -> None:
    """Guard against vacuous agreement: each normalised map must vary, not be flat or all zero."""
    spread = normalize(maps).flatten(1).std(1)
    assert bool((spread > 0.05).all()), f"degenerate test maps (std per sample {spread.tolist()})"


def _peer_cam(pgc, method: str, net, masks, x, feature_grid=None) -> torch.Tensor:
    """pytorch-grad-cam's HiResCAM or GradCAM with one SemanticSegmentationTarget per sample.

    ``feature_grid`` makes its output size the feature grid itself (scipy zoom by exactly 1, the
    identity), to compare 3D maps without its cubic, corner-aligned resize.
    """
    base = getattr(pgc, method)
    if feature_grid is not None:
        base = type("AtFeatureGrid", (base,), {"get_target_width_height": lambda self, t: feature_grid[::-1]})
    targets = [pgc.utils.model_targets.SemanticSegmentationTarget(CLASS, m) for m in masks]
    with base(net, [net.get_submodule(LAYER)]) as cam:
        return torch.from_numpy(cam(x, targets))[:, None]


OURS = {"HiResCAM": lambda net: SegXResCAM(net, LAYER, pool_size=1),
        "GradCAM": lambda net: SegXResCAM(net, LAYER, pool_size="global")}


@pytest.mark.parametrize("method", ["HiResCAM", "GradCAM"])
def test_2d_equals_pytorch_grad_cam(pytorch_grad_cam, small_unet, method):
    # in 2D it resizes with cv2 bilinear, half-pixel centres like ours: compare on the input grid
    net = small_unet(2)
    x, masks = _inputs(2)
    ours = normalize(OURS[method](net).attribute(x, _targets(masks)).saliency)
    peer = _peer_cam(pytorch_grad_cam, method, net, masks, x)
    _assert_structured(ours)
    torch.testing.assert_close(ours, peer, rtol=0, atol=ATOL_NORMALISED)


def test_2d_restricted_region_equals_pytorch_grad_cam_on_that_region(pytorch_grad_cam, small_unet):
    # the default target is argmax == c inside the box; grad-cam is given that resolved region as its mask
    net = small_unet(2)
    x, masks = _inputs(2)
    expl = HiResCAM(net, LAYER).attribute(x, [RegionTarget(CLASS, mask=m) for m in masks])
    regions = np.stack([r.numpy().astype(np.float32) for r in expl.regions])
    assert 0 < regions.sum() < masks.sum()  # the restriction really removed voxels
    peer = _peer_cam(pytorch_grad_cam, "HiResCAM", net, regions, x)
    torch.testing.assert_close(normalize(expl.saliency), peer, rtol=0, atol=ATOL_NORMALISED)


@pytest.mark.parametrize("method", ["HiResCAM", "GradCAM"])
def test_3d_equals_pytorch_grad_cam(pytorch_grad_cam, small_unet, method):
    net = small_unet(3)
    x, masks = _inputs(3)
    feature = OURS[method](net).attribute(x, _targets(masks), upsample=False).saliency
    _assert_structured(feature)
    grid = tuple(feature.shape[2:])
    at_grid = _peer_cam(pytorch_grad_cam, method, net, masks, x, feature_grid=grid)
    torch.testing.assert_close(normalize(feature), at_grid, rtol=0, atol=ATOL_NORMALISED)
    # On the input grid it resizes with scipy's cubic, corner-aligned zoom (ours: linear, half-pixel), which
    # moves these maps by up to ~0.3 of their range; the full pipeline equals ours followed by that zoom,
    # a clip of the cubic undershoot at 0 and a second normalisation.
    factors = [s / g for s, g in zip(SIZES[3], grid)]
    zoomed = torch.stack([torch.from_numpy(ndimage.zoom(m[0].numpy(), factors)) for m in normalize(feature)])
    full = _peer_cam(pytorch_grad_cam, method, net, masks, x)
    torch.testing.assert_close(normalize(zoomed[:, None].clamp_min(0)), full, rtol=0, atol=ATOL_NORMALISED)
    ours_full = normalize(resize_linear(feature, SIZES[3]))
    assert float((ours_full - full).abs().max()) > 0.05  # why 3D is compared on the feature grid


def _region_sum(net, masks: np.ndarray):
    """Captum's forward function: per sample, the sum of class-``c`` logits over that sample's mask, ``(B,)``."""
    weight = torch.from_numpy(masks)
    return lambda inputs: (net(inputs)[:, CLASS] * weight).flatten(1).sum(1)


@pytest.mark.parametrize("dims", [2, 3])
def test_equals_captum_layer_grad_cam_and_gradient_x_activation(small_unet, dims):
    # LayerGradCam: spatial mean of the gradient x activation, channel sum, no ReLU unless asked
    net = small_unet(dims)
    x, masks = _inputs(dims)
    layer, forward = net.get_submodule(LAYER), _region_sum(net, masks)
    targets = _targets(masks)
    for relu in (False, True):
        ours = SegGradCAM(net, LAYER).attribute(x, targets, relu=relu, upsample=False).saliency
        theirs = LayerGradCam(forward, layer).attribute(x, relu_attributions=relu)
        torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-6 * float(ours.abs().max()))
    # HiResCAM before ReLU is the channel sum of Captum's per-channel gradient x activation
    ours = HiResCAM(net, LAYER).attribute(x, targets, relu=False, upsample=False).saliency
    _assert_structured(ours.relu())
    theirs = LayerGradientXActivation(forward, layer).attribute(x).sum(1, keepdim=True)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-6 * float(ours.abs().max()))


@pytest.mark.parametrize("dims", [2, 3])
def test_equals_medcam_grad_cam_with_a_region_gradient_mask(small_unet, dims):
    # medcam's `label` may be a function of the output giving the gradient fed to logits.backward(): a mask
    # that is 1 on class c inside the region makes its Grad-CAM a region Grad-CAM. Its map is ReLU'd and
    # normalised on the feature grid, then resized (linear, half-pixel): so it equals resize(normalize(ours)).
    net = small_unet(dims)
    x, masks = _inputs(dims)
    grad_mask = torch.zeros(2, 3, *SIZES[dims])
    grad_mask[:, CLASS] = torch.from_numpy(masks)
    injected = medcam.inject(copy.deepcopy(net), layer=LAYER, label=lambda out: grad_mask, return_attention=True)
    _, theirs = injected(x)
    feature = SegGradCAM(net, LAYER).attribute(x, _targets(masks), upsample=False).saliency
    _assert_structured(feature)
    at_grid = torch.from_numpy(injected.get_attention_map())
    torch.testing.assert_close(normalize(feature), at_grid, rtol=0, atol=ATOL_NORMALISED)
    torch.testing.assert_close(resize_linear(normalize(feature), SIZES[dims]), theirs, rtol=0,
                               atol=ATOL_NORMALISED)
