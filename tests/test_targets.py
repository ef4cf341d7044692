"""RegionTarget: regions resolved on the output grid, scores, and the errors users meet."""

import numpy as np
import pytest
import torch

from monai_xres import RegionTarget
from monai_xres.regions import as_target_list


def _logits(shape=(3, 8, 8, 6), hot=((2, 6), (2, 6), (1, 5))) -> torch.Tensor:
    """Class 1 wins inside a block, class 0 elsewhere; class 2 never wins."""
    logits = torch.zeros(shape)
    logits[0] = 1.0
    block = tuple(slice(a, b) for a, b in hot[: len(shape) - 1])
    logits[(1, *block)] = 2.0
    return logits


def test_whole_class_is_the_predicted_class():
    logits = _logits()
    region = RegionTarget(1).region(logits)
    assert torch.equal(region, logits.argmax(0) == 1)


def test_box_is_intersected_with_prediction_unless_told_not_to():
    logits = _logits()
    box = ((0, 0, 0), (4, 4, 3))  # end exclusive
    region = RegionTarget(1, box=box).region(logits)
    assert int(region.sum()) == 2 * 2 * 2  # block starts at (2, 2, 1)
    raw = RegionTarget(1, box=box, restrict_to_prediction=False).region(logits)
    assert int(raw.sum()) == 4 * 4 * 3


def test_mask_label_map_and_point_regions():
    logits = _logits()
    mask = np.zeros((8, 8, 6), bool)
    mask[3, 3, 2] = True
    assert int(RegionTarget(1, mask=mask).region(logits).sum()) == 1
    assert int(RegionTarget(1, mask=torch.from_numpy(mask)[None]).region(logits).sum()) == 1
    labels = np.zeros((8, 8, 6), np.int16)
    labels[2:4, 2:4, 1:3] = 7
    assert int(RegionTarget(1, label_map=labels, label_value=7).region(logits).sum()) == 8
    assert RegionTarget(1, point=(3, 4, 2)).region(logits)[3, 4, 2]
    component = RegionTarget(1, point=(3, 4, 2), connected=True).region(logits)
    assert torch.equal(component, logits.argmax(0) == 1)


def test_point_in_mm_uses_the_affine():
    logits = _logits()
    affine = np.diag([2.0, 2.0, 3.0, 1.0])
    affine[:3, 3] = (-10.0, 5.0, 100.0)
    world = affine @ np.array([3, 4, 2, 1.0])
    region = RegionTarget(1, point=world[:3], affine=affine).region(logits)
    assert region[3, 4, 2] and int(region.sum()) == 1
    # the affine may instead come from the input (MetaTensor), passed at resolve time
    region = RegionTarget(1, point=world[:3], point_in_mm=True).region(logits, affine=torch.tensor(affine))
    assert region[3, 4, 2]


def test_score_is_region_sum_of_raw_logits_or_softmax():
    logits = torch.randn(3, 5, 5)
    region = torch.zeros(5, 5, dtype=torch.bool)
    region[1:3, 2:4] = True
    target = RegionTarget(2, restrict_to_prediction=False)
    assert torch.allclose(target.score(logits, region), logits[2, 1:3, 2:4].sum())
    soft = RegionTarget(2, softmax=True).score(logits, region)
    assert torch.allclose(soft, logits.softmax(0)[2, 1:3, 2:4].sum())


def test_single_channel_output_means_sigmoid_prediction():
    logits = torch.full((1, 4, 4), -1.0)
    logits[0, :2] = 3.0
    assert int(RegionTarget(0).region(logits).sum()) == 8


@pytest.mark.parametrize(
    "target, match",
    [
        (RegionTarget(3), "not an output channel"),
        (RegionTarget(2), "no voxel is predicted as class 2"),
        (RegionTarget(1, box=((0, 0, 0), (2, 2, 1))), "does not overlap"),
        (RegionTarget(1, box=((0, 0, 0), (9, 4, 4))), "outside the output grid"),
        (RegionTarget(1, box=((0, 0), (4, 4))), "must give 3 start and end"),
        (RegionTarget(1, mask=np.ones((8, 8))), r"shape \(8, 8\) but the network output grid is \(8, 8, 6\)"),
        (RegionTarget(1, point=(8, 0, 0)), "outside the output grid"),
        (RegionTarget(1, point=(1.0, 2.0, 3.0), point_in_mm=True), "no affine is known"),
        (RegionTarget(1, point=(0, 0, 0), connected=True), "not predicted as class 1"),
    ],
)
def test_bad_regions_raise_clear_errors(target, match):
    with pytest.raises(ValueError, match=match):
        target.region(_logits())


def test_bad_construction_and_batching():
    with pytest.raises(ValueError, match="Give one region"):
        RegionTarget(1, box=((0,), (1,)), point=(0,))
    with pytest.raises(ValueError, match="integer output channel"):
        RegionTarget(1.5)
    with pytest.raises(ValueError, match="one per sample"):
        as_target_list([RegionTarget(1)], batch_size=2)
    assert [t.class_index for t in as_target_list(2, 3)] == [2, 2, 2]


@pytest.mark.parametrize("channels", [2, 3, 5])
def test_predicted_mask_equals_argmax_including_ties(channels):
    from monai_xres.regions import predicted_class_mask

    logits = torch.randint(0, 3, (channels, 6, 7, 5)).float()  # many exact ties
    for c in range(channels):
        assert torch.equal(predicted_class_mask(logits, c), logits.argmax(0) == c)
