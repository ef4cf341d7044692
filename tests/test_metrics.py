"""Faithfulness metrics on closed-form cases: a network that uses one known block of voxels, maps whose
ranking is known, a linear network whose exact per-voxel contributions are known, and peers (scipy,
scikit-image) for the map comparisons."""

import copy

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.networks.nets import UNet
from scipy import stats
from skimage.metrics import structural_similarity
from torch import nn

from monai_xres import HiResCAM, RegionTarget, SegXResCAM
from monai_xres.explainers.base import Explainer, Explanation
from monai_xres.metrics import (
    agreement,
    auc,
    deletion_insertion,
    locality,
    map_ssim,
    masking_curve,
    rank_correlation,
    saliency_order,
)
from monai_xres.metrics.randomisation import cascade_layers, randomisation_check

W, B = 10.0, 1.0  # BlockNet: class-1 logit = W * mean(x over the block) - B at every voxel


class BlockNet(nn.Module):
    """Two classes; the class-1 logit, the same at every voxel, is ``W * mean(x[block]) - B``; class 0 is 0.

    With ``x = 1`` every voxel is class 1 (logit 9); removing a fraction ``f`` of the block gives
    ``10 (1 - f) - 1``, so the rescaled region score is exactly ``1 - f``. Nothing outside the block matters.
    """

    def __init__(self, block: tuple[slice, ...]) -> None:
        super().__init__()
        self.block = block
        self.weight = nn.Parameter(torch.tensor(W))
        self.bias = nn.Parameter(torch.tensor(B))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        inside = x[(slice(None), slice(None), *self.block)]
        logit = self.weight * inside.mean(tuple(range(1, x.ndim))) - self.bias
        one = logit.reshape(-1, 1, *[1] * (x.ndim - 2)).expand(-1, 1, *x.shape[2:])
        return torch.cat([torch.zeros_like(one), one], 1)


# (spatial, block, region box): the block is 1/8 of the voxels, the region elsewhere
SETUPS = {
    2: ((16, 16), (slice(0, 8), slice(0, 4)), ((12, 12), (16, 16))),
    3: ((8, 8, 8), (slice(0, 4), slice(0, 4), slice(0, 4)), ((6, 6, 6), (8, 8, 8))),
}


def _block_case(dims: int):
    spatial, block, box = SETUPS[dims]
    x = torch.ones((1, 1, *spatial))
    ideal = torch.zeros(spatial)
    ideal[block] = 1.0
    return BlockNet(block).eval(), x, ideal, RegionTarget(1, box=box)


@pytest.mark.parametrize("dims", [2, 3])
def test_deletion_and_insertion_of_the_used_block_act_at_once(dims):
    net, x, ideal, target = _block_case(dims)
    curves = deletion_insertion(net, x, ideal, target, n_steps=16, batch_size=5, verbose=False)
    k = np.arange(17)
    block_removed = np.minimum(k / 2, 1.0)  # the block is 2 of the 16 steps
    dele, ins = curves["deletion"], curves["insertion"]
    np.testing.assert_allclose(dele.fraction, k / 16)
    np.testing.assert_allclose(dele.score, 1 - block_removed, atol=1e-6)
    np.testing.assert_allclose(ins.score, block_removed, atol=1e-6)
    np.testing.assert_allclose(dele.raw_score[1] / dele.raw_score[0], 4 / 9, rtol=1e-6)  # 10 * 0.5 - 1 over 9
    assert dele.dice == [1.0, 1.0] + [0.0] * 15  # logit 4 > 0 keeps class 1; logit -1 loses it
    assert ins.dice == [0.0] + [1.0] * 16
    assert dele.auc_score == pytest.approx(1 / 16, abs=1e-6)
    assert ins.auc_score == pytest.approx(15 / 16, abs=1e-6)
    # the block ranked last: nothing happens until the last two steps
    worst = deletion_insertion(net, x, 1 - ideal, target, n_steps=16, verbose=False)
    assert worst["deletion"].auc_score == pytest.approx(15 / 16, abs=1e-6)
    assert worst["insertion"].auc_score == pytest.approx(1 / 16, abs=1e-6)


def test_curves_do_not_depend_on_batching_and_are_deterministic():
    torch.manual_seed(0)
    net = UNet(2, 1, 3, (4, 8), (2,), num_res_units=0).eval()
    x = torch.rand((1, 1, 16, 16))
    sal = torch.rand((1, 1, 16, 16)).round()  # two values: ties everywhere, broken by the seed
    target = RegionTarget(1, restrict_to_prediction=False)
    a = deletion_insertion(net, x, sal, target, n_steps=6, batch_size=1, verbose=False)
    b = deletion_insertion(net, x, sal, target, n_steps=6, batch_size=7, verbose=False)
    for name in ("deletion", "insertion"):
        np.testing.assert_allclose(a[name].raw_score, b[name].raw_score, rtol=1e-5)
        assert a[name].dice == b[name].dice


def test_ties_are_broken_by_seed_not_scan_order():
    flat = torch.zeros((6, 7))
    r0, r0_again, r1 = saliency_order(flat, 0), saliency_order(flat, 0), saliency_order(flat, 1)
    assert sorted(r0.flatten().tolist()) == list(range(42))
    assert torch.equal(r0, r0_again) and not torch.equal(r0, r1)
    assert not torch.equal(r0.flatten(), torch.arange(42))
    ranked = torch.arange(42.0).reshape(6, 7)
    assert torch.equal(saliency_order(ranked, 3).flatten(), torch.arange(41, -1, -1))


@pytest.mark.parametrize("dims", [2, 3])
def test_masking_keeps_the_prediction_with_only_the_block(dims):
    net, x, ideal, target = _block_case(dims)
    n = ideal.numel()
    good = masking_curve(net, x, ideal, target, dilations=(0, 1), verbose=False)
    # one-voxel Euclidean dilation of a block in the image corner adds one face per axis
    faces = sum(int(ideal.sum()) // s.stop for s in SETUPS[dims][1])
    assert good.dice == [1.0, 1.0]
    np.testing.assert_allclose(good.retained, [1 / 8, (ideal.sum().item() + faces) / n])
    bad = masking_curve(net, x, 1 - ideal, target, verbose=False)
    assert bad.dice == [0.0] and bad.retained == [7 / 8]
    n_region = int(np.prod([e - s for s, e in zip(*SETUPS[dims][2])]))
    assert bad.score == [pytest.approx(-B * n_region, rel=1e-6)]  # logit -1 on each region voxel


def test_masking_threshold_is_strict_and_dilation_uses_mm():
    net, x, ideal, target = _block_case(3)
    sal = ideal * 0.2
    sal[7, 0, 0] = 1.0  # sets the normalisation range to [0, 1]: the block sits exactly at the threshold
    assert masking_curve(net, x, sal, target, verbose=False).dice == [0.0]
    assert masking_curve(net, x, sal + ideal * 1e-3, target, verbose=False).dice == [1.0]
    # spacing 2 mm along the first axis: a 1 mm dilation grows the block along the other two axes only
    meta = MetaTensor(x, affine=torch.diag(torch.tensor([2.0, 1.0, 1.0, 1.0])))
    explicit = masking_curve(net, x, ideal, target, dilations=(1,), spacing=(2, 1, 1), verbose=False)
    from_affine = masking_curve(net, meta, ideal, target, dilations=(1,), verbose=False)
    assert explicit.retained == from_affine.retained == [(64 + 2 * 16) / 512]


def test_locality_shares_in_closed_form():
    region = torch.zeros((12, 4, 4), dtype=torch.bool)
    region[8:] = True
    sal = torch.zeros((12, 4, 4))
    for i in range(4):
        sal[i] = i + 1.0  # slice i lies 8 - i voxels from the region; its normalised mass is (i + 1) / 4 each
    out = locality(sal, region, distances=(0, 4, 5, 6, 8))
    np.testing.assert_allclose(out["share"], [0, 0, 4 / 10, 7 / 10, 1.0], atol=1e-12)
    np.testing.assert_allclose(out["uniform"], [4 / 12, 8 / 12, 9 / 12, 10 / 12, 1.0])
    doubled = locality(sal, region, distances=(10, 12), spacing=(2, 1, 1))
    np.testing.assert_allclose(doubled["share"], [4 / 10, 7 / 10], atol=1e-12)


def test_map_comparisons_against_scipy_and_skimage():
    rng = np.random.default_rng(0)
    for shape in ((20, 24), (9, 10, 11)):
        a, b = rng.random(shape), rng.random(shape)
        b = 0.5 * a + 0.5 * b
        scaled = [(v - v.min()) / np.ptp(v) for v in (a, b)]
        ref = structural_similarity(*scaled, data_range=1.0, win_size=7, use_sample_covariance=False)
        assert map_ssim(torch.from_numpy(a), torch.from_numpy(b)) == pytest.approx(ref, abs=1e-5)
        assert rank_correlation(torch.from_numpy(a), torch.from_numpy(b)) == pytest.approx(
            stats.spearmanr(a.ravel(), b.ravel()).statistic, abs=1e-12)
    m = torch.from_numpy(rng.random((5, 6)))
    assert rank_correlation(m, m ** 3) == pytest.approx(1.0)
    assert rank_correlation(torch.zeros(5, 6), torch.zeros(5, 6)) == 1.0
    assert rank_correlation(m, torch.zeros(5, 6)) == 0.0
    maps = {"ref": m, "same": 2 * m + 1, "reversed": -m}
    assert agreement(maps, "ref") == pytest.approx({"same": 1.0, "reversed": -1.0})


class LinearNet(nn.Module):
    """Class-1 logit ``sum_v w_v x_v + b`` at every voxel, class 0 is 0: voxel ``v`` contributes ``w_v x_v``."""

    def __init__(self, spatial: tuple[int, ...]) -> None:
        super().__init__()
        self.spatial = spatial
        self.linear = nn.Linear(int(np.prod(spatial)), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        one = self.linear(x.flatten(1)).reshape(-1, 1, *[1] * len(self.spatial)).expand(-1, 1, *self.spatial)
        return torch.cat([torch.zeros_like(one), one], 1)


class Contributions(Explainer):
    """The exact, faithful map of a :class:`LinearNet`: each voxel's contribution ``w_v x_v``."""

    def attribute(self, x, target):
        x, targets, _ = self.prepare(x, target)
        saliency = (self.network.linear.weight.reshape(x.shape[2:]) * x[:, :1]).detach()
        return Explanation(saliency, self.network(x).detach(), [], [], {})


class FixedNoise(Explainer):
    """A map that ignores the weights: seeded noise of the input's shape."""

    def attribute(self, x, target):
        g = torch.Generator().manual_seed(7)
        return Explanation(torch.rand((x.shape[0], 1, *x.shape[2:]), generator=g), x, [], [], {})


def test_randomisation_passes_a_faithful_map_and_flags_a_weight_independent_one():
    torch.manual_seed(0)
    spatial = (8, 8, 8)
    net = LinearNet(spatial).eval()
    x = torch.rand((1, 1, *spatial)) + 0.5
    with torch.no_grad():
        net.linear.bias.fill_(1000.0)  # class 1 everywhere, whatever the weights
    before = copy.deepcopy(net.state_dict())
    faithful = randomisation_check(Contributions(net), x, RegionTarget(1), seed=3, verbose=False)
    # independent route: the same re-initialisation on a separate copy, then scipy
    twin = copy.deepcopy(net)
    torch.manual_seed(3)
    twin.linear.reset_parameters()
    expected = stats.spearmanr((net.linear.weight.reshape(spatial) * x[0, 0]).detach().ravel(),
                               (twin.linear.weight.reshape(spatial) * x[0, 0]).detach().ravel()).statistic
    assert faithful.layers == ["linear"] and faithful.n_randomised == [1]
    assert faithful.spearman[0] == pytest.approx(expected, abs=1e-9)
    assert abs(expected) < 0.2 and not faithful.flagged
    noise = randomisation_check(FixedNoise(net), x, RegionTarget(1), verbose=False)
    assert noise.spearman == [1.0] and noise.ssim == [pytest.approx(1.0)] and noise.flagged
    for key, value in net.state_dict().items():  # the user's network is never touched
        assert torch.equal(value, before[key])


class Scale(nn.Module):
    """Voxel-wise weights, with no ``reset_parameters``: re-initialised by a normal draw."""

    def __init__(self, spatial: tuple[int, ...]) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(spatial))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.weight


class ScaledContributions(Explainer):
    """A map that depends on the first layer's weights only: ``scale_v x_v``."""

    def attribute(self, x, target):
        x, _, _ = self.prepare(x, target)
        return Explanation((self.network[0].weight * x[:, :1]).detach(), x, [], [], {})


def test_randomisation_cascades_from_the_output_side():
    torch.manual_seed(0)
    spatial = (6, 6, 6)
    net = nn.Sequential(Scale(spatial), LinearNet(spatial)).eval()
    with torch.no_grad():
        net[1].linear.bias.fill_(1000.0)
    x = torch.rand((1, 1, *spatial)) + 0.5
    # seed 5, not the construction's 0: a redraw with the same seed would repeat the same numbers
    result = randomisation_check(ScaledContributions(net), x, RegionTarget(1), seed=5, verbose=False)
    assert result.layers == ["1.linear", "0"] and result.n_randomised == [1, 2]
    assert result.spearman[0] == pytest.approx(1.0)  # only the head is random: this map has not changed
    assert abs(result.spearman[1]) < 0.3 and not result.flagged  # the scale is redrawn too


@pytest.mark.parametrize("explainer", [lambda n: HiResCAM(n, "bottleneck"),
                                       lambda n: SegXResCAM(n, "bottleneck", pool_size=2)])
def test_randomisation_cascade_on_a_unet_changes_the_cam(small_unet, explainer):
    net = small_unet(3)
    x = torch.rand((1, 1, 16, 16, 16), generator=torch.Generator().manual_seed(0))
    target = RegionTarget(1, box=((4, 4, 4), (12, 12, 12)))
    before = copy.deepcopy(net.state_dict())
    layers = cascade_layers(net, x)
    assert layers[0].startswith("model.0") and layers[-1].startswith("model.2")  # input side first, head last
    result = randomisation_check(explainer(net), x, target, n_steps=3, verbose=False)
    assert result.n_randomised[-1] == len(layers) and len(result.n_randomised) == 3
    assert result.layers[-1] == layers[0] and result.spearman[-1] < 0.5 and not result.flagged
    for key, value in net.state_dict().items():
        assert torch.equal(value, before[key])


def test_metrics_leave_the_network_as_found():
    torch.manual_seed(0)
    net = UNet(2, 1, 3, (4, 8), (2,), num_res_units=1, norm="batch").train()
    before = copy.deepcopy(net.state_dict())
    x, sal = torch.rand((1, 1, 16, 16)), torch.rand((1, 1, 16, 16))
    target = RegionTarget(1, restrict_to_prediction=False)
    masking_curve(net, x, sal, target, dilations=(0, 2), verbose=False)
    deletion_insertion(net, x, sal, target, n_steps=3, verbose=False)
    assert net.training and all(m.training for m in net.modules())
    for key, value in net.state_dict().items():
        assert torch.equal(value, before[key])


def test_bad_input_gives_clear_errors():
    net, x, ideal, target = _block_case(3)
    with pytest.raises(ValueError, match="one sample"):
        deletion_insertion(net, x.repeat(2, 1, 1, 1, 1), ideal, target, verbose=False)
    with pytest.raises(ValueError, match="input grid"):
        masking_curve(net, x, ideal[:4], target, verbose=False)
    with pytest.raises(ValueError, match="n_steps"):
        deletion_insertion(net, x, ideal, target, n_steps=0, verbose=False)
    with pytest.raises(ValueError, match="dilations"):
        masking_curve(net, x, ideal, target, dilations=(-1,), verbose=False)
    with pytest.raises(ValueError, match="spacing"):
        masking_curve(net, x, ideal, target, dilations=(1,), spacing=(1, 1), verbose=False)
    with pytest.raises(ValueError, match="region is empty"):
        locality(ideal, torch.zeros(8, 8, 8, dtype=torch.bool))
    assert auc([0, 0.5, 1], [1, 1, 0]) == pytest.approx(0.75)
