"""Instances: components and TP/FP/FN matching, every instance explained with shared work (equal to
separate runs), and the context radius (dilation test) against an independent computation."""

import math

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.inferers import SlidingWindowInferer
from scipy import ndimage
from torch import nn

from monai_xres import RegionTarget, SegRISE, SegXResCAM
from monai_xres.explainers.instances import explain_regions
from monai_xres.metrics.context import context_radius
from monai_xres.regions.instances import find_instances, instance_label_map


def _blobs(shape, boxes) -> torch.Tensor:
    mask = torch.zeros(shape, dtype=torch.bool)
    for box in boxes:
        mask[tuple(slice(a, b) for a, b in box)] = True
    return mask


def test_true_false_positives_and_false_negatives():
    shape = (20, 20, 10)
    predicted = _blobs(shape, [((1, 5), (1, 5), (1, 5)), ((10, 14), (10, 14), (2, 6)), ((16, 18), (1, 3), (1, 2))])
    truth = _blobs(shape, [((3, 7), (3, 7), (3, 7)), ((1, 4), (15, 19), (5, 9))])
    found = find_instances(predicted, truth)
    assert [(i.id, i.kind, i.n_voxels) for i in found] == [(1, "TP", 64), (2, "FP", 64), (3, "FP", 4), (4, "FN", 48)]
    assert torch.equal(found[3].mask, _blobs(shape, [((1, 4), (15, 19), (5, 9))]))  # the missed ground truth
    assert [i.kind for i in find_instances(predicted, truth, min_voxels=5)] == ["TP", "FP", "FN"]
    labels = instance_label_map(found, shape)
    assert set(labels.unique().tolist()) == {0, 1, 2, 3, 4} and int((labels == 4).sum()) == 48
    assert [i.kind for i in find_instances(predicted)] == ["predicted"] * 3


def test_region_target_instances_with_a_label_map_and_a_minimum_volume():
    logits = torch.zeros(2, 20, 20, 10)
    logits[1][_blobs((20, 20, 10), [((1, 5), (1, 5), (1, 5)), ((16, 18), (1, 3), (1, 2))])] = 1.0
    truth = np.zeros((20, 20, 10), np.int16)
    truth[3:7, 3:7, 3:7] = 2
    truth[12:15, 12:15, 5:8] = 2
    affine = np.diag([2.0, 2.0, 2.0, 1.0])  # 8 mm^3 voxels: 4 voxels = 0.032 mL
    pairs = RegionTarget(1).instances(logits, truth, affine, truth_value=2, min_ml=0.033)
    assert [(i.kind, i.n_voxels) for i, _ in pairs] == [("TP", 64), ("FN", 27)]
    fn_target = pairs[1][1]  # explained on the ground truth's voxels, on the prediction's logits
    assert not fn_target.restrict_to_prediction and int(fn_target.region(logits).sum()) == 27
    with pytest.raises(ValueError, match="needs the grid's affine"):
        RegionTarget(1).instances(logits, min_ml=0.1)


def _many_instances(small_unet, shape=(64, 64, 32), n=20):
    net = small_unet(3, out_channels=3, seed=0)
    torch.manual_seed(0)
    x = torch.randn(1, 1, *shape)
    with torch.no_grad():
        logits = net(x)[0]
    pairs = RegionTarget(1).instances(logits)
    assert len(pairs) >= n, len(pairs)
    return net, x, [t for _, t in pairs[:n]]


def _state(net):
    return ({k: v.clone() for k, v in net.state_dict().items()}, net.training,
            [p.requires_grad for p in net.parameters()], torch.is_grad_enabled())


def _same_state(a, b):
    return all(torch.equal(a[0][k], b[0][k]) for k in a[0]) and a[1:] == b[1:]


@pytest.mark.parametrize("shape, n, sliding, against", [
    ((64, 64, 32), 20, False, False), ((48, 48, 24), 12, True, False),
    ((48, 48, 24), 6, False, True), ((48, 48, 24), 6, True, True)])
def test_cam_of_many_instances_in_one_pass_equals_separate_runs(small_unet, shape, n, sliding, against):
    """One forward and a batched backward (per window with a sliding inferer) give each instance's own map,
    counterfactual ones too. Tolerance: float32 rounding of the backward, 1e-5 of the map's range."""
    net, x, targets = _many_instances(small_unet, shape, n)
    inferer = SlidingWindowInferer((24, 24, 16), sw_batch_size=2, overlap=0.25, mode="gaussian") if sliding else None
    cam = SegXResCAM(net, pool_size=2, inferer=inferer, verbose=False, counterfactual=against)
    before = _state(net)
    shared = explain_regions(cam, x, targets)
    assert _same_state(before, _state(net))
    runs = [cam.attribute(x, t) for t in targets]
    separate = torch.cat([r.saliency for r in runs])
    assert shared.saliency.shape == separate.shape == (n, 1, *shape)
    scale = float(separate.abs().max())
    assert scale > 0
    torch.testing.assert_close(shared.saliency, separate, rtol=0, atol=1e-5 * scale)
    assert shared.scores == pytest.approx([r.scores[0] for r in runs], rel=1e-5)


def test_rise_of_20_instances_from_one_mask_stream_equals_separate_runs(small_unet):
    net, x, targets = _many_instances(small_unet, shape=(32, 32, 16))
    # one mask stream serves every target: the plain estimator on the whole image, whatever the crop default
    rise = SegRISE(net, n_masks=16, batch_size=8, grid_size=(6, 6, 3), verbose=False, estimator="plain",
                   context_margin=None)
    shared = explain_regions(rise, x, targets)
    separate = torch.cat([rise.attribute(x, t).saliency for t in targets])
    torch.testing.assert_close(shared.saliency, separate, rtol=1e-6, atol=1e-7)  # the same float64 sums
    default = explain_regions(SegRISE(net, n_masks=16, batch_size=8, grid_size=(6, 6, 3), verbose=False), x, targets)
    assert default.info["shared"] and default.info["estimator_used"] == "plain"
    torch.testing.assert_close(default.saliency, shared.saliency, rtol=1e-6, atol=1e-7)


def test_rise_scores_a_false_negative_by_its_logits(small_unet):
    net, x, targets = _many_instances(small_unet, shape=(32, 32, 16), n=2)
    with torch.no_grad():
        missed = net(x)[0].argmax(0) != 1
    fn = RegionTarget(1, mask=missed & (torch.rand(missed.shape) < 0.01), restrict_to_prediction=False)
    shared = explain_regions(SegRISE(net, n_masks=8, grid_size=(6, 6, 3), verbose=False), x, [targets[0], fn])
    assert shared.info["score"] == ["dice", "logit"]


class CubeNet(nn.Module):
    """Class 1 at a voxel iff the whole (2R+1)^3 cube around it is 1 (x in [0, 1]): the network needs R
    voxels of context around each voxel it predicts."""

    def __init__(self, radius: int) -> None:
        super().__init__()
        self.radius = radius
        self.weight = nn.Parameter(torch.ones(1, 1, *(2 * radius + 1,) * 3), requires_grad=False)

    def forward(self, x):
        total = nn.functional.conv3d(x, self.weight, padding=self.radius)
        return torch.cat([torch.zeros_like(total), total - (self.weight.numel() - 0.5)], 1)


@pytest.mark.parametrize("spacing", [1.0, 2.0])
def test_context_radius_against_an_independent_dilation_test(spacing):
    radius, radii = 2, [0.0, 1.0, 2.0, 3.0, 4.0, 6.0]
    radii_mm = [r * spacing for r in radii]
    x = torch.zeros(1, 1, 24, 24, 24)
    x[..., 4:20, 4:20, 4:20] = 1.0
    x = MetaTensor(x, affine=torch.diag(torch.tensor([spacing] * 3 + [1.0])))
    net = CubeNet(radius).eval()
    predicted = ndimage.minimum_filter(x[0, 0].numpy(), size=2 * radius + 1, mode="constant") == 1
    target = RegionTarget(1, mask=torch.from_numpy(predicted), restrict_to_prediction=False)
    got = context_radius(net, x, target, radii_mm, stop_early=False)
    distance = ndimage.distance_transform_edt(~predicted, sampling=(spacing,) * 3)
    expected = []
    for r in radii_mm:  # numpy: the minimum filter of the kept image, no torch
        kept = np.where(distance <= r, x[0, 0].numpy(), 0.0)
        new = ndimage.minimum_filter(kept, size=2 * radius + 1, mode="constant") == 1
        expected.append(2 * (new & predicted).sum() / (new.sum() + predicted.sum()))
    np.testing.assert_allclose(got.dice, expected, rtol=1e-12)
    first = next(r for r, d in zip(radii_mm, expected) if d > 0.9)
    assert got.radius == first and 0 < first < radii_mm[-1]
    assert got.dice[0] < 0.9 and got.dice[-1] == 1.0
    early = context_radius(net, x, target, radii_mm, batch_size=1)
    assert early.radius == first and math.isnan(early.dice[-1])


def test_context_radius_of_a_missed_region_is_nan_and_of_a_local_one_is_zero():
    x = torch.zeros(1, 1, 16, 16, 16)
    x[..., 4:12, 4:12, 4:12] = 1.0
    missed = RegionTarget(1, mask=torch.ones(16, 16, 16, dtype=torch.bool), restrict_to_prediction=False)
    assert math.isnan(context_radius(CubeNet(9).eval(), x, missed).radius)  # nothing is ever predicted
    assert context_radius(CubeNet(0).eval(), x, RegionTarget(1)).radius == 0.0  # a voxel needs only itself
    with pytest.raises(ValueError, match="increasing"):
        context_radius(CubeNet(0).eval(), x, RegionTarget(1), radii=(3.0, 1.0))
