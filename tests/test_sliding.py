"""Seg-XRes-CAM of a SlidingWindowInferer's stitched output."""

import pytest
import torch
from monai.inferers import SlidingWindowInferer
from monai.networks.nets import UNet
from torch import nn

from monai_xres import HiResCAM, RegionTarget, SegRISE, SegXResCAM
from monai_xres.explainers.sliding import sliding_cam


def _pointwise() -> nn.Module:
    """Only 1x1x1 convolutions: every window computes the same output at a voxel as the whole volume."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv3d(1, 6, 1), nn.Tanh(), nn.Conv3d(6, 5, 1), nn.ReLU(), nn.Conv3d(5, 3, 1)).eval()


@pytest.mark.parametrize("overlap", [0.0, 0.25, 0.5])
@pytest.mark.parametrize("mode", ["constant", "gaussian"])
def test_pointwise_network_stitched_map_equals_whole_volume_map(overlap, mode):
    net = _pointwise()
    x = torch.randn(1, 1, 21, 17, 6)  # not a multiple of the window; the last axis is smaller than it (padding)
    target = RegionTarget(2, box=((3, 2, 1), (15, 12, 5)), restrict_to_prediction=False)
    inferer = SlidingWindowInferer((8, 8, 8), sw_batch_size=3, overlap=overlap, mode=mode)
    direct = HiResCAM(net, "2").attribute(x, target, relu=False)
    stitched = HiResCAM(net, "2", inferer=inferer).attribute(x, target, relu=False)
    torch.testing.assert_close(stitched.logits, direct.logits, rtol=1e-5, atol=1e-6)
    # per voxel, a sum over windows of w_i / sum(w) * the same value: float32 rounding only
    torch.testing.assert_close(stitched.saliency, direct.saliency, rtol=1e-4, atol=1e-6)
    assert stitched.info["windows_total"] > 1


class _LinearHead(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv3d(1, 4, 3, padding=1), nn.Tanh(), nn.Conv3d(4, 4, 3, padding=1))
        self.head = nn.Conv3d(4, 2, 1)

    def forward(self, x):
        return self.head(self.features(x))


@pytest.mark.parametrize("mode", ["constant", "gaussian"])
def test_completeness_of_the_stitched_map(mode):
    torch.manual_seed(1)
    net = _LinearHead().eval()
    x = torch.randn(1, 1, 20, 18, 12)
    target = RegionTarget(1, box=((2, 3, 1), (14, 16, 10)), restrict_to_prediction=False)
    inferer = SlidingWindowInferer((8, 8, 8), sw_batch_size=2, overlap=0.25, mode=mode)
    expl = HiResCAM(net, "features", inferer=inferer).attribute(x, target, relu=False)
    bias_part = float(net.head.bias.detach()[1]) * int(expl.regions[0].sum())
    # the region score of the stitched output, minus the bias: float32 sums over a few thousand voxels
    assert float(expl.saliency.double().sum()) == pytest.approx(expl.scores[0] - bias_part, rel=1e-4, abs=1e-3)


def test_a_single_window_gives_the_plain_result():
    torch.manual_seed(2)
    net = UNet(3, 1, 3, (4, 8, 16), (2, 2), num_res_units=1).eval()
    x = torch.randn(1, 1, 16, 16, 8)
    target = RegionTarget(1, box=((2, 2, 1), (10, 12, 6)), restrict_to_prediction=False)
    inferer = SlidingWindowInferer((16, 16, 8), sw_batch_size=1, overlap=0.25)
    # signed maps: the plain path applies its ReLU on the feature grid before resizing (as published), the
    # stitched map after the sum of the windows, on the input grid; without the ReLU both are the same map
    plain = SegXResCAM(net, pool_size=2).attribute(x, target, relu=False)
    windowed = SegXResCAM(net, pool_size=2, inferer=inferer).attribute(x, target, relu=False)
    assert windowed.info["windows_total"] == 1
    torch.testing.assert_close(windowed.saliency, plain.saliency, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(windowed.logits, plain.logits)


def test_skipped_windows_change_nothing():
    torch.manual_seed(3)
    net = UNet(3, 1, 3, (4, 8, 16), (2, 2), num_res_units=1).eval()
    x = torch.randn(2, 1, 32, 24, 16)
    targets = [RegionTarget(1, box=((1, 1, 1), (6, 6, 5)), restrict_to_prediction=False),
               RegionTarget(2, box=((20, 14, 8), (30, 22, 15)), restrict_to_prediction=False)]
    inferer = SlidingWindowInferer((16, 16, 8), sw_batch_size=4, overlap=0.25, mode="gaussian")
    cam = SegXResCAM(net, pool_size=2, inferer=inferer)
    x_, targets_, affines = cam.prepare(x, targets)
    skipped = sliding_cam(cam, x_, targets_, affines, inferer, verbose=False)
    full = sliding_cam(cam, x_, targets_, affines, inferer, verbose=False, skip_empty=False)
    assert skipped[4]["windows_skipped"] > 0 and full[4]["windows_skipped"] == 0
    torch.testing.assert_close(skipped[0], full[0])
    assert skipped[0][0].abs().sum() > 0 and skipped[0][1].abs().sum() > 0


def test_bad_inferer_is_refused():
    net = _pointwise()
    with pytest.raises(ValueError, match="SlidingWindowInferer"):
        HiResCAM(net, "2", inferer=object())
    with pytest.raises(ValueError, match="buffer_steps"):
        HiResCAM(net, "2", inferer=SlidingWindowInferer((8, 8, 8), buffer_steps=2))


def test_rise_through_the_inferer_equals_rise_on_the_whole_volume_for_a_pointwise_network():
    net = _pointwise()
    x = torch.randn(1, 1, 21, 17, 6)
    target = RegionTarget(2, box=((3, 2, 1), (15, 12, 5)), restrict_to_prediction=False)
    inferer = SlidingWindowInferer((8, 8, 8), sw_batch_size=4, overlap=0.25, mode="gaussian")
    plain = SegRISE(net, n_masks=24, grid_size=(4, 4, 2), batch_size=8, score="logit", context_margin=None,
                    verbose=False)
    windowed = plain.with_inferer(inferer)
    assert plain.inferer is None and windowed.params()["inferer"] == "SlidingWindowInferer"
    a, b = plain.attribute(x, target), windowed.attribute(x, target)
    torch.testing.assert_close(b.logits, a.logits, rtol=1e-5, atol=1e-6)
    # the same masks; the stitched outputs differ from the direct ones by float32 rounding of the blending
    torch.testing.assert_close(b.saliency, a.saliency, rtol=1e-4, atol=1e-4 * float(a.saliency.abs().max()))


class _Calls(nn.Module):
    """Counts the windows a network is run on."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net, self.windows = net, 0

    def forward(self, x):
        self.windows += x.shape[0]
        return self.net(x)


@pytest.mark.parametrize("spatial, roi, overlap", [((37, 29, 11), (16, 16, 8), 0.25), ((16, 40, 9), (16, 16, 8), 0.5),
                                                    ((10, 20, 6), (16, 16, 8), 0.25), ((47, 47, 20), (24, 24, 16),
                                                                                       (0.5, 0.25, 0.0))])
def test_the_window_layout_is_the_one_monai_runs(spatial, roi, overlap):
    from monai_xres.explainers.sliding import forward_recording, window_layout

    inferer = SlidingWindowInferer(roi, sw_batch_size=3, overlap=overlap)
    _, recorded = forward_recording(_pointwise(), torch.randn(2, 1, *spatial), inferer, roi)
    assert window_layout(2, spatial, inferer, roi) == recorded


def test_a_known_prediction_gives_the_same_map_without_predicting_again():
    torch.manual_seed(4)
    net = _Calls(UNet(3, 1, 3, (4, 8, 16), (2, 2), num_res_units=1).eval())
    x = torch.randn(1, 1, 40, 28, 12)
    target = RegionTarget(1, box=((2, 2, 1), (14, 12, 6)))
    inferer = SlidingWindowInferer((16, 16, 8), sw_batch_size=2, overlap=0.25, mode="gaussian")
    cam = SegXResCAM(net, "net.model.1.submodule", pool_size=2, inferer=inferer, verbose=False)
    with torch.no_grad():
        prediction = inferer(x, net)
    run = net.windows
    net.windows = 0
    again = cam.attribute(x, target)
    predicted_too = net.windows
    net.windows = 0
    known = cam.attribute(x, target, prediction=prediction)
    assert torch.equal(known.saliency, again.saliency) and known.scores == again.scores
    assert torch.equal(known.regions[0], again.regions[0]) and known.saliency.abs().sum() > 0
    needed = again.info["windows_total"] - again.info["windows_skipped"]
    assert 0 < needed < run and predicted_too == run + needed and net.windows == needed
    with pytest.raises(ValueError, match="not the inferer's output"):
        cam.attribute(x, target, prediction=prediction[..., :-1])
    with pytest.raises(ValueError, match="stitched output of a SlidingWindowInferer"):
        SegXResCAM(net, "net.model.1.submodule").attribute(x[..., :16, :16, :8], target, prediction=prediction)


def test_rise_given_the_prediction_gives_the_same_map_without_predicting_it_again():
    torch.manual_seed(5)
    net = _Calls(UNet(3, 1, 3, (4, 8, 16), (2, 2), num_res_units=1).eval())
    x = torch.randn(1, 1, 40, 28, 12)
    target = RegionTarget(1, box=((2, 2, 1), (14, 12, 6)), restrict_to_prediction=False)
    inferer = SlidingWindowInferer((16, 16, 8), sw_batch_size=2, overlap=0.25, mode="gaussian")
    rise = SegRISE(net, n_masks=8, grid_size=(4, 4, 2), batch_size=4, seed=3, inferer=inferer, verbose=False)
    with torch.no_grad():
        prediction = inferer(x, net)
    windows, net.windows = net.windows, 0
    again = rise.attribute(x, target)
    predicted_too, net.windows = net.windows, 0
    known = rise.attribute(x, target, prediction=prediction)
    assert torch.equal(known.saliency, again.saliency) and known.saliency.abs().sum() > 0
    assert known.info["crop"] == again.info["crop"] and predicted_too == net.windows + windows
