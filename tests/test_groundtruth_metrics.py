"""Ground-truth measures (monai_xres.metrics.groundtruth) and structure shares (monai_xres.metrics.structures)
against hand-computed cases, sklearn's ROC AUC, and properties. All in float64: exact equalities are exact up
to summation order (1e-12)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from monai_xres.metrics.groundtruth import (
    chance_level,
    contrast_auc,
    marker_zone,
    mass_share,
    pointing_game,
    rank_accuracy,
    scene_measures,
)
from monai_xres.metrics.structures import structure_shares, top_structure


def _scene() -> np.ndarray:
    """A 1 x 10 line: object (1) at 0-2, property (4) at 3, marker (3) at 7."""
    s = np.zeros((1, 10), dtype=np.uint8)
    s[0, :3], s[0, 3], s[0, 7] = 1, 4, 3
    return s


def test_marker_zone_uses_the_spacing_in_mm():
    s = _scene()
    # 2 mm voxels along the line: a 5 mm tolerance reaches 2 voxels either side (4 mm), not 3 (6 mm)
    zone = marker_zone(s, spacing=(1.0, 2.0), tolerance_mm=5.0)
    assert zone[0].nonzero()[0].tolist() == [5, 6, 7, 8, 9]
    assert marker_zone(s, spacing=(1.0, 1.0), tolerance_mm=0.0)[0].nonzero()[0].tolist() == [7]
    with pytest.raises(ValueError, match="no voxel of the marker"):
        marker_zone(np.zeros((4, 4)))


def test_hand_computed_scene():
    s = _scene()
    zone = marker_zone(s, spacing=(1.0, 1.0), tolerance_mm=1.0)  # voxels 6, 7, 8
    sal = np.array([[4.0, 0, 0, 0, 0, 0, 1, 3, -5, 2]])  # negative evidence does not count
    # positive mass 10; in the zone 1 + 3 = 4
    assert mass_share(sal, zone) == pytest.approx(0.4, abs=1e-12)
    assert chance_level(zone) == pytest.approx(0.3, abs=1e-12)
    # top 3 voxels: 0 (4), 7 (3), 9 (2): one in the zone
    assert rank_accuracy(sal, zone) == pytest.approx(1 / 3, abs=1e-12)
    assert pointing_game(sal, zone) == 0.0 and pointing_game(-sal, zone) == 1.0  # -sal peaks at 8 (5)
    m = scene_measures(torch.from_numpy(sal).float(), s, (1.0, 1.0), tolerance_mm=1.0)
    assert m["share_marker"] == pytest.approx(0.4) and m["enrichment_marker"] == pytest.approx(0.4 / 0.3)
    assert m["share_object"] == pytest.approx(0.4) and m["chance_object"] == pytest.approx(0.4)  # voxels 0-3


def test_ties_are_broken_by_flat_index_and_empty_maps_are_nan():
    zone = np.zeros(6, dtype=bool)
    zone[4:] = True
    flat = np.ones(6)
    assert rank_accuracy(flat, zone) == 0.0  # the two top slots go to voxels 0 and 1
    assert rank_accuracy(np.array([0.0, 0, 0, 0, 0, 2]), zone) == 0.5  # 5, then the first of the zeros: 0
    assert rank_accuracy(np.arange(6.0), zone) == 1.0
    assert math.isnan(mass_share(-flat, zone)) and math.isnan(mass_share(np.zeros(6), zone))
    # a constant offset: only what rises above zero counts
    assert mass_share(np.array([-1.0, -1, -1, -1, -1, 3]), zone) == 1.0


def test_contrast_auc_is_sklearns_with_ties_half():
    rng = np.random.default_rng(0)
    for trial in range(20):
        n = int(rng.integers(2, 12))
        a = rng.integers(0, 4, n) / 4.0  # coarse values: many ties
        b = rng.integers(0, 4, n) / 4.0
        if trial == 0:
            a, b = np.full(n, 0.5), np.full(n, 0.5)
        expected = roc_auc_score(np.r_[np.ones(n), np.zeros(n)], np.r_[a, b]) if trial else 0.5
        assert contrast_auc(a, b) == pytest.approx(expected, abs=1e-12)
    assert contrast_auc([0.9, 0.8], [0.1, 0.2]) == 1.0 and contrast_auc([0.1, 0.2], [0.9, 0.8]) == 0.0
    # NaN scenes are left out of both lists
    assert contrast_auc([0.9, math.nan, 0.1], [0.2, 0.5, math.nan]) == 1.0
    assert math.isnan(contrast_auc([math.nan], [0.1]))


def test_an_input_only_map_scores_exactly_half():
    """The same map for both models on every scene: the two lists of shares are equal, so U = n^2 / 2."""
    rng = np.random.default_rng(1)
    shares = rng.random(15)
    assert contrast_auc(shares, shares) == 0.5
    assert contrast_auc(np.round(shares, 1), np.round(shares, 1)) == 0.5


def test_structure_shares_sum_to_one_and_chance_is_the_volume_share():
    labels = np.zeros((4, 5, 3), dtype=np.int16)
    labels[:2, :, :] = 1
    labels[3, :2, 0] = 2
    labels[3, 4, 2] = 7  # a value without a name counts as outside
    sal = np.zeros(labels.shape)
    sal[0, 0, 0], sal[3, 0, 0], sal[2, 2, 2], sal[3, 4, 2] = 3.0, 1.0, 4.0, -9.0
    out = structure_shares(torch.from_numpy(sal)[None, None], labels, {"1": "spleen", 2: "kidney"})
    assert out["shares"] == pytest.approx({"spleen": 3 / 8, "kidney": 1 / 8, "outside": 4 / 8}, abs=1e-12)
    assert out["chance"] == pytest.approx({"spleen": 30 / 60, "kidney": 2 / 60, "outside": 28 / 60}, abs=1e-12)
    assert sum(out["shares"].values()) == pytest.approx(1.0) and sum(out["chance"].values()) == pytest.approx(1.0)
    assert top_structure(out) == ("spleen", pytest.approx(3 / 8), pytest.approx(0.5))
    empty = structure_shares(-np.abs(sal), labels, None)  # no positive mass: NaN shares, chance still defined
    assert all(math.isnan(v) for v in empty["shares"].values()) and top_structure(empty) is None
    assert set(empty["chance"]) == {"label 1", "label 2", "label 7", "outside"}
    with pytest.raises(ValueError, match="resample the label map"):
        structure_shares(sal, labels[:2], None)
    with pytest.raises(ValueError, match="non-integer"):
        structure_shares(sal, labels + 0.5, None)
