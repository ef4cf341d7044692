"""SegRISE's regression estimator and centring, against the exact RISE map of a tiny network.

On a 6x6 image with a 2x2 grid (cells of 3 voxels, 3x3 shifts) every mask of RISE's distribution is one of
16 cell patterns times 9 shifts, so the exact map ``E[w m(v)] / p`` is a finite float64 sum.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from monai_xres import RegionTarget
from monai_xres.explainers.rise import SegRISE
from monai_xres.explainers.rise.masks import MaskSpec, masks_from_cells
from monai_xres.explainers.rise.regression import MaskRegression

SIZE, GRID, P = (6, 6), (2, 2), 0.4
TARGET = RegionTarget(1, box=((1, 1), (4, 5)), restrict_to_prediction=False)


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.Tanh(), nn.Conv2d(4, 2, 3, padding=1)).eval()


def _every_mask() -> tuple[list, np.ndarray, torch.Tensor]:
    """Every (cells, shift) of the distribution, its probability, and the masks ``(M, 1, *SIZE)`` (float64)."""
    spec = MaskSpec(SIZE, GRID, P)
    draws, prob = [], []
    for bits in itertools.product((0.0, 1.0), repeat=4):
        cells = np.array(bits).reshape(GRID)
        for shift in itertools.product(range(spec.cell[0]), range(spec.cell[1])):
            draws.append((cells, shift))
            prob.append(P ** cells.sum() * (1 - P) ** (4 - cells.sum()) / (spec.cell[0] * spec.cell[1]))
    return draws, np.array(prob), masks_from_cells(spec, draws, (0, 0), SIZE, "cpu", torch.float64)


@pytest.fixture(scope="module")
def exact():
    """The exact published map, the exact expected score, and the setting (network, input, masks, scores)."""
    net, x = _net(), torch.randn(1, 1, *SIZE, generator=torch.Generator().manual_seed(1))
    draws, prob, masks = _every_mask()
    rise = SegRISE(net, estimator="plain", center_scores=False, score="logit", context_margin=None, grid_size=GRID,
                   p_keep=P, verbose=False)
    # one supplied mask at a time: the uncentred plain map of one mask is w m / p, so its score is read back
    scores = np.array([rise.attribute(x, TARGET, masks=m[None].float()).info["mean_score"][0] for m in masks])
    weights = torch.as_tensor(prob * scores)
    published = torch.tensordot(weights, masks[:, 0], dims=1) / P
    return published, float(prob @ scores), dict(net=net, x=x, draws=draws, prob=prob, masks=masks, scores=scores)


def test_the_control_variate_expectation_is_closed_form(exact):
    # E[(a + beta . (f - p)) m(v)] (f: the mask's block means) by enumeration equals MaskRegression.expected
    *_, s = exact
    regression = MaskRegression(MaskSpec(SIZE, GRID, P), (0, 0), SIZE)
    theta = np.random.default_rng(0).normal(size=1 + int(np.prod(regression.blocks)))
    h = regression.features(s["draws"]) @ theta
    enumerated = torch.tensordot(torch.as_tensor(s["prob"] * h), s["masks"][:, 0], dims=1)
    torch.testing.assert_close(regression.expected(theta, "cpu"), enumerated, rtol=1e-12, atol=1e-12)


def test_every_mask_voxel_has_mean_p_so_centring_removes_a_constant(exact):
    # E[m(v)] = p at every voxel, edges included: the centred map is the published map minus E[w] exactly
    published, mean_score, s = exact
    torch.testing.assert_close(torch.tensordot(torch.as_tensor(s["prob"]), s["masks"][:, 0], dims=1),
                               torch.full(SIZE, P, dtype=torch.float64), rtol=0, atol=1e-12)
    centred = torch.tensordot(torch.as_tensor(s["prob"] * (s["scores"] - mean_score)), s["masks"][:, 0], dims=1) / P
    torch.testing.assert_close(centred, published - mean_score, rtol=0, atol=1e-12)


def test_regression_estimator_is_unbiased_for_the_published_map(exact):
    # 24 seeds of 120 masks: the mean of the (uncentred) regression maps is the exact map within 4 standard
    # errors per voxel (plus 1e-9); a biased estimator (e.g. an in-sample fit) would be caught only if its
    # bias exceeded that, so also: at 3000 masks it is within 1% of the map's range of the exact map
    published, _, s = exact
    maps = torch.stack([SegRISE(s["net"], n_masks=120, seed=seed, score="logit", center_scores=False,
                                context_margin=None, grid_size=GRID, p_keep=P, batch_size=60,
                                verbose=False)(s["x"], TARGET)[0, 0].double() for seed in range(24)])
    error = maps.mean(0) - published
    standard_error = maps.std(0) / np.sqrt(len(maps))
    assert bool((error.abs() <= 4 * standard_error + 1e-9).all()), (error.abs() / standard_error).max()
    big = SegRISE(s["net"], n_masks=3000, seed=99, score="logit", center_scores=False, context_margin=None,
                  grid_size=GRID, p_keep=P, batch_size=500, verbose=False)
    result = big.attribute(s["x"], TARGET)
    assert result.info["estimator_used"] == "regression" and result.info["regression"][0]["features"] == 4
    span = float(published.max() - published.min())
    assert float((result.saliency[0, 0].double() - published).abs().max()) < 0.01 * span


def test_regression_has_less_noise_than_plain_on_the_same_masks(exact):
    # same seeds, same masks and scores: the squared error against the exact map falls (measured: 20x+ here,
    # where the score is nearly linear in the cells); bound: 3x
    published, _, s = exact
    errors = {}
    for estimator in ("plain", "regression"):
        maps = [SegRISE(s["net"], n_masks=200, seed=seed, score="logit", center_scores=False, context_margin=None,
                        grid_size=GRID, p_keep=P, estimator=estimator, batch_size=100,
                        verbose=False)(s["x"], TARGET)[0, 0].double() for seed in range(6)]
        errors[estimator] = float(np.mean([((m - published) ** 2).mean() for m in maps]))
    assert errors["regression"] < errors["plain"] / 3, errors


@pytest.mark.parametrize("estimator", ["regression", "plain", "adaptive"])
def test_centring_removes_exactly_the_offset_and_records_it(exact, estimator):
    # same seed, same masks: regression centred = uncentred - w_bar (a constant); plain and adaptive
    # centred = uncentred - w_bar * sum_i m_i / (N p) (the control variate of the mean score); offset recorded
    *_, s = exact
    kwargs = dict(n_masks=150, seed=3, score="soft_dice" if estimator == "adaptive" else "logit", grid_size=GRID,
                  p_keep=P, estimator=estimator, context_margin=None, verbose=False)
    target = RegionTarget(1) if estimator == "adaptive" else TARGET
    centred = SegRISE(s["net"], **kwargs).attribute(s["x"], target)
    published = SegRISE(s["net"], center_scores=False, **kwargs).attribute(s["x"], target)
    offset = centred.info["offset"][0]
    assert offset == pytest.approx(published.info["mean_score"][0], rel=1e-12) and published.info["offset"] == [0.0]
    assert centred.info["center_scores"] and not published.info["center_scores"]
    if estimator == "regression":
        expected = published.saliency - offset
    else:
        given = centred.info["estimator_used"] == "plain"
        masks = masks_from_cells(MaskSpec(SIZE, GRID, P, 3), [_draw(i) for i in range(150)], (0, 0), SIZE)
        expected = published.saliency - offset * masks.sum(0) / (150 * P) if given else None
    if expected is not None:
        torch.testing.assert_close(centred.saliency, expected.float(), rtol=0, atol=1e-5)


def _draw(index: int):
    from monai_xres.explainers.rise.masks import draw_cells

    return draw_cells(MaskSpec(SIZE, GRID, P, 3), index)


def test_old_keywords_and_defaults():
    net, x = _net(), torch.randn(1, 1, 12, 12)
    for estimator in ("regression", "adaptive", "plain"):
        result = SegRISE(net, n_masks=70, grid_size=3, batch_size=9, seed=2, estimator=estimator,
                         verbose=False).attribute(x, 1)
        assert result.info["estimator"] == estimator and result.info["n_masks"] == 70
        assert result.info["grid_size"] == 3 and result.info["seed"] == 2 and result.info["batch_size"] == 9
    defaults = SegRISE(net).params()
    assert defaults["estimator"] == "regression" and defaults["center_scores"] is True
    with pytest.raises(ValueError, match="estimator must be one of"):
        SegRISE(net, estimator="sobol")


def test_sidecar_records_the_estimator_the_fit_and_the_offset(tmp_path, small_unet):
    import nibabel as nib
    from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged

    from monai_xres.handlers import SaliencyWriter

    net = small_unet(3, out_channels=2)
    nib.save(nib.Nifti1Image(np.random.default_rng(0).normal(size=(12, 12, 8)).astype(np.float32), np.eye(4)),
             tmp_path / "scan.nii.gz")
    pre = Compose([LoadImaged("image"), EnsureChannelFirstd("image")])
    data = pre({"image": str(tmp_path / "scan.nii.gz")})
    rise = {"method": "SegRISE", "n_masks": 60, "grid_size": 3, "batch_size": 20, "score": "logit", "verbose": False}
    writer = SaliencyWriter({"rise": rise}, {"box": {"class_index": 1, "box": ((4, 4, 2), (8, 8, 6)),
                                                     "restrict_to_prediction": False}},
                            output_dir=tmp_path / "out", transform=pre, network=net, raise_errors=True)
    (path,) = writer.write_case(data)
    record = json.loads(Path(path.replace(".nii.gz", ".json")).read_text())
    text = json.dumps(record)
    assert record["method"]["estimator"] == "regression" and record["method"]["center_scores"] is True
    for key in ('"estimator_used": "regression"', '"offset"', '"ridges"'):
        assert key in text, key
    written = np.asarray(nib.load(path).dataobj)
    assert written.min() < 0 < written.max()  # the centred map is signed: no constant wash


def test_png_of_a_centred_map_shows_the_region_not_a_wash(tmp_path):
    # the published map of a structure: a constant offset (0.6, the mean score) plus a bump (0.12) -- every
    # pixel is above 5% of the maximum, a red wash; centred, only the bump is drawn, and the bar says so
    from monai_xres.output.overlay import save_overlay

    yy, xx = np.mgrid[:40, :40]
    bump = 0.12 * np.exp(-((yy - 20) ** 2 + (xx - 12) ** 2) / 20.0)
    scan = np.zeros((40, 40), dtype=np.float32)
    shown = {}
    for name, saliency in (("published", 0.6 + bump), ("centred", bump - bump.mean())):
        fig = save_overlay(tmp_path / f"{name}.png", scan, saliency.astype(np.float32), None)
        heat = fig.axes[0].get_images()[1].get_array()
        shown[name] = float(1.0 - np.ma.getmaskarray(heat).mean())
        label = fig.axes[-1].get_ylabel()
        assert ("positive part" in label) == (name == "centred"), label
    assert shown["published"] == 1.0 and shown["centred"] < 0.1, shown


def test_receptive_field_is_measured_once_per_network_and_shape(monkeypatch):
    # SegRISE's only pilot: a fresh explainer of the same network and input shape does not measure again
    from monai_xres.explainers.rise import crop

    calls = []
    real = crop.receptive_field_radius
    monkeypatch.setattr(crop, "receptive_field_radius", lambda *a, **k: calls.append(1) or real(*a, **k))
    net, target = _net(), RegionTarget(1, box=((2, 2), (6, 6)), restrict_to_prediction=False)
    for size in (24, 24, 32):
        SegRISE(net, n_masks=8, grid_size=3, score="logit", verbose=False).attribute(torch.randn(1, 1, size, size),
                                                                                     target)
    assert len(calls) == 2
    crop.forget_radius(net)
    SegRISE(net, n_masks=8, grid_size=3, score="logit", verbose=False).attribute(torch.randn(1, 1, 24, 24), target)
    assert len(calls) == 3
