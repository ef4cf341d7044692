"""Border, rim, contrastive and signed-weight targets: regions against brute-force geometry, scores and every
method against closed forms."""

import itertools

import numpy as np
import pytest
import torch
from torch import nn

from monai_xres import HiResCAM, RegionTarget, SegRISE, SegXResCAM
from monai_xres.explainers.rise.scoring import region_scorer
from monai_xres.regions import RegionSpec


def _two_blocks(shape=(12, 10, 8)) -> torch.Tensor:
    """Logits: class 1 (A) in x < 6, class 2 (B) in x >= 6 inside a slab; background elsewhere."""
    logits = torch.zeros(3, *shape)
    logits[0] = 1.0
    logits[1, 2:6, 2:8, 1:7] = 3.0
    logits[2, 6:10, 2:8, 1:7] = 3.0
    return logits


def _brute_distance(a: np.ndarray, b: np.ndarray, spacing) -> np.ndarray:
    """Distance (mm) from every voxel to the nearest voxel of ``b``, by brute force over all pairs."""
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in a.shape], indexing="ij"), -1).reshape(-1, a.ndim)
    others = np.argwhere(b)
    d = np.sqrt((((grid[:, None, :] - others[None]) * np.asarray(spacing)) ** 2).sum(-1)).min(1)
    return d.reshape(a.shape)


def test_border_is_the_class_voxels_touching_the_other_class():
    logits = _two_blocks()
    a, b = (logits.argmax(0) == 1).numpy(), (logits.argmax(0) == 2).numpy()
    touching = np.zeros_like(a)
    for axis, step in itertools.product(range(3), (-1, 1)):  # face neighbours, independently of scipy
        shifted = np.zeros_like(b)
        src = [slice(None)] * 3
        dst = [slice(None)] * 3
        src[axis], dst[axis] = (slice(1, None), slice(None, -1)) if step == 1 else (slice(None, -1), slice(1, None))
        shifted[tuple(dst)] = b[tuple(src)]
        touching |= shifted
    region = RegionTarget(1, border_class=2).region(logits)
    np.testing.assert_array_equal(region.numpy(), a & touching)
    assert int(region.sum()) == 6 * 6  # the x = 5 face of A


@pytest.mark.parametrize("width", [1.0, 2.5])
def test_border_and_rims_with_a_width_in_mm_match_brute_force_distances(width):
    logits, spacing = _two_blocks(), (1.5, 1.0, 2.0)
    affine = np.diag([*spacing, 1.0])
    a, b = (logits.argmax(0) == 1).numpy(), (logits.argmax(0) == 2).numpy()
    unit = (1, 1, 1)  # in voxel units, a face neighbour is at distance 1 exactly: the touching layer
    border = RegionTarget(1, border_class=2, border_mm=width, affine=affine).region(logits).numpy()
    np.testing.assert_array_equal(border, a & ((_brute_distance(a, b, spacing) <= width)
                                               | (_brute_distance(a, b, unit) <= 1)))
    outer = RegionTarget(1, rim="outer", rim_mm=width, affine=affine).region(logits).numpy()
    np.testing.assert_array_equal(outer, ~a & ((_brute_distance(a, a, spacing) <= width)
                                               | (_brute_distance(a, a, unit) <= 1)))
    inner = RegionTarget(1, rim="inner", rim_mm=width).region(logits, torch.tensor(affine)).numpy()
    outside = np.pad(~a, 1, constant_values=True)  # the grid's edge counts as outside
    depth = _brute_distance(np.pad(a, 1), outside, spacing)[1:-1, 1:-1, 1:-1]
    layer = a & (_brute_distance(a, ~a, (1, 1, 1)) <= 1)  # the outermost layer is always in
    np.testing.assert_array_equal(inner, a & ((depth <= width) | layer))


def test_border_score_area_is_the_band_on_both_sides():
    logits = _two_blocks()
    area = RegionTarget(1, border_class=2).score_area(logits).numpy()
    expected = np.zeros(area.shape, bool)
    expected[5:7, 2:8, 1:7] = True  # A's face at x = 5 and B's at x = 6
    np.testing.assert_array_equal(area, expected)


def test_contrast_score_and_decision():
    logits = torch.randn(3, 6, 5)
    region = torch.zeros(6, 5, dtype=torch.bool)
    region[1:4, 1:3] = True
    target = RegionTarget(1, contrast_class=2, restrict_to_prediction=False)
    assert torch.allclose(target.score(logits, region), (logits[1] - logits[2])[region].sum())
    soft = RegionTarget(1, contrast_class=2, softmax=True, restrict_to_prediction=False)
    probs = logits.softmax(0)
    assert torch.allclose(soft.score(logits, region), (probs[1] - probs[2])[region].sum())
    # Dice scores count a voxel as A where A beats B, whatever the third class says
    assert torch.equal(target.decision(logits[None])[0], logits[1] > logits[2])
    assert torch.allclose(target.decision(logits[None], soft=True)[0], (logits[1] - logits[2]).sigmoid())


def test_contrastive_dice_counts_voxels_where_a_beats_b():
    out = torch.zeros(1, 3, 4, 4)
    out[0, 1, :2] = 2.0           # A beats B on the top half
    out[0, 0] = 5.0               # background wins everywhere: argmax never says A
    target = RegionTarget(1, contrast_class=2, restrict_to_prediction=False)
    area = torch.ones(4, 4, dtype=torch.bool)
    reference = torch.zeros(4, 4, dtype=torch.bool)
    reference[:1] = True          # the unmasked A-vs-B decision: the first row
    score = region_scorer("dice", target, area, area, reference)(out)
    assert float(score) == pytest.approx(2 * 4 / (4 + 8))


def _signed_weights(shape, seed=1) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


class LinearHead(nn.Module):
    """body (3x3 conv, then tanh: the layer ``act``) and a 1x1 conv head: the output is linear in ``act``."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Conv3d(1, 4, 3, padding=1)
        self.act = nn.Tanh()
        self.head = nn.Conv3d(4, 3, 1)

    def forward(self, x):
        return self.head(self.act(self.body(x)))


@pytest.mark.parametrize("contrast", [None, 2])
def test_hirescam_completeness_with_signed_weights_and_contrast(contrast):
    """HiResCAM's guarantee with signed weights: the pre-ReLU map summed over space equals the region score
    less the bias part, ``sum_v w(v) (z_A - z_B)(v) - sum_v w(v) (b_A - b_B)`` (the head is a 1x1 conv of the
    layer), computed here in float64 from the network's own output."""
    net = LinearHead().eval()
    x = torch.randn(1, 1, 20, 18, 12)
    weights = _signed_weights((20, 18, 12))
    target = RegionTarget(1, weights=weights, contrast_class=contrast, restrict_to_prediction=False)
    explanation = HiResCAM(net, "act").attribute(x, target, relu=False, upsample=False)
    with torch.no_grad():
        z = net(x)[0].double()
    w, bias = weights.double(), net.head.bias.double()
    other = 0 if contrast is None else z[contrast]
    score = float((w * (z[1] - other)).sum())
    bias_part = float((w * (bias[1] - (0 if contrast is None else bias[contrast]))).sum())
    assert explanation.scores[0] == pytest.approx(score, rel=1e-5)
    # float32 network and map: 1e-4 of the score's scale
    tolerance = 1e-4 * float(w.abs().sum())
    assert float(explanation.saliency.double().sum()) == pytest.approx(score - bias_part, abs=tolerance)


class IdentityClass(nn.Module):
    """Class 1's logit is the input itself, class 2's is twice it, class 0 is 0: every score is linear in x."""

    def forward(self, x):
        return torch.cat([torch.zeros_like(x), x, 2 * x], 1)


@pytest.mark.parametrize("contrast", [None, 2])
def test_every_method_takes_signed_weights_against_the_closed_form(contrast):
    """With S = sum_v w(v) (z_1 - z_B)(v) linear in x: the CAM at the input layer (identity) is w (1 - k) x per
    voxel (k = 2 for the contrast), RISE with the logit score is M^T (M (c w x)) / (N p) in float64."""
    torch.manual_seed(0)
    shape = (16, 14, 10)
    x = torch.rand(1, 1, *shape) + 0.5
    w = _signed_weights(shape)
    k = 2.0 if contrast else 0.0
    target = RegionTarget(1, weights=w, contrast_class=contrast, restrict_to_prediction=False)

    class Wrapped(nn.Module):
        def __init__(self):
            super().__init__()
            self.inp = nn.Identity()
            self.net = IdentityClass()

        def forward(self, v):
            return self.net(self.inp(v))

    net = Wrapped().eval()
    cam = SegXResCAM(net, "inp", pool_size=1).attribute(x, target, relu=False)
    np.testing.assert_allclose(cam.saliency[0, 0].double().numpy(), ((1 - k) * w * x[0, 0]).double().numpy(),
                               rtol=1e-5, atol=1e-6)
    masks = torch.rand(64, 1, *shape, generator=torch.Generator().manual_seed(3))
    rise = SegRISE(net, n_masks=64, score="logit", p_keep=0.5, batch_size=16, verbose=False, estimator="plain",
                   center_scores=False)  # the published estimator and map
    got = rise.attribute(x, target, masks=masks).saliency[0, 0].double()
    m = masks.reshape(64, -1).double()
    scores = m @ ((1 - k) * w * x[0, 0]).reshape(-1).double()
    expected = (m.T @ scores / (64 * 0.5)).reshape(shape)
    np.testing.assert_allclose(got.numpy(), expected.numpy(), rtol=1e-5)


def test_weighted_targets_refuse_dice_scores():
    target = RegionTarget(2, weights=torch.ones(6, 6), restrict_to_prediction=False)
    with pytest.raises(ValueError, match="signed region weights"):
        SegRISE(IdentityClass(), n_masks=2, grid_size=3, verbose=False)(torch.rand(1, 1, 6, 6), target)


def test_rise_dice_on_a_border_target_sees_the_border_move():
    """The Dice of a border target compares class A inside the band around the A/B interface."""
    logits = _two_blocks()
    target = RegionTarget(1, border_class=2)
    area = target.score_area(logits)
    reference = target.decision(logits[None])[0] & area
    scorer = region_scorer("dice", target, target.region(logits), area, reference)
    assert float(scorer(logits[None])) == 1.0
    moved = logits.clone()
    moved[1, 6, 2:8, 1:7] = 4.0  # A takes B's first layer: the border moves by one voxel
    assert float(scorer(moved[None])) == pytest.approx(2 * 36 / (36 + 72))


@pytest.mark.parametrize("fields, match", [
    ({"border_class": 1}, "explained class itself"), ({"rim": "inner"}, "both its side and its width"),
    ({"rim": "middle", "rim_mm": 2.0}, "'inner' or 'outer'"), ({"border_mm": 2.0}, "give border_class"),
    ({"border_class": 2, "rim": "inner", "rim_mm": 1.0}, "not both"), ({"rim": "inner", "rim_mm": -1.0}, "> 0"),
])
def test_bad_border_fields_raise_one_sentence(fields, match):
    with pytest.raises(ValueError, match=match):
        RegionTarget(1, **fields)


def test_widths_in_mm_need_an_affine_and_region_specs_pass_it():
    logits = _two_blocks()
    with pytest.raises(ValueError, match="needs the grid's affine"):
        RegionTarget(1, rim="inner", rim_mm=2.0).region(logits)
    from monai.data import MetaTensor

    image = MetaTensor(torch.zeros(1, *logits.shape[1:]), affine=torch.diag(torch.tensor([2.0, 2.0, 2.0, 1.0])))
    spec = RegionSpec(1, point=(3, 4, 3), connected=True, rim="outer", rim_mm=2.0)
    target, _ = spec.resolve({}, image)
    assert spec.label == "point-rim-outer2mm"
    region = target.region(logits)
    a = (logits.argmax(0) == 1).numpy()
    np.testing.assert_array_equal(region.numpy(), ~a & (_brute_distance(a, a, (2, 2, 2)) <= 2.0))
    assert int(region.sum()) > 0
