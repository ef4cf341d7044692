"""PNG overlays: every plane shown as radiologists and 3D Slicer show it, in true millimetre proportions,
with the region outlined and a colour bar giving the map's values."""

import matplotlib.image
import numpy as np
import pytest

from monai_xres.output.overlay import save_overlay


def _marker_position(ax) -> tuple[float, float]:
    """Where the bright voxel is on screen: (share across from the left, share up from the bottom)."""
    image = np.asarray(ax.images[0].get_array())
    row, col = np.unravel_index(int(np.argmax(image)), image.shape)
    return (col + 0.5) / image.shape[1], (row + 0.5) / image.shape[0]  # origin="lower": row 0 is the bottom


@pytest.mark.parametrize("space", ["RAS", "LPS"])
@pytest.mark.parametrize("flip", [(1, 1, 1), (-1, -1, 1), (-1, 1, -1)])
def test_planes_are_oriented_by_the_world_and_keep_the_voxel_proportions(tmp_path, space, flip):
    shape, spacing = (20, 16, 10), np.array([1.0, 1.5, 3.0])
    affine = np.diag([*(np.array(flip) * spacing), 1.0])  # voxel axes along x, y, z, some reversed
    if space == "LPS":
        affine = np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine  # the same grid, its world written in LPS
    # a voxel at the patient's left (RAS x < 0), anterior (y > 0) and superior (z > 0): index from the signs
    voxel = tuple(int(n - 3) if f * s > 0 else 2 for n, f, s in zip(shape, flip, (-1, 1, 1)))
    scan = np.zeros(shape, np.float32)
    scan[voxel] = 1.0
    region = np.zeros(shape, bool)
    region[tuple(slice(max(v - 2, 0), v + 2) for v in voxel)] = True
    fig = save_overlay(tmp_path / "o.png", scan, scan, region, affine, voxel, "t", space)
    sagittal, coronal, axial, bar = fig.axes
    # axial and coronal: the patient's left on the right; axial: anterior up; coronal: superior up
    right_of_centre, up = _marker_position(axial)
    assert right_of_centre > 0.5 and up > 0.5
    right_of_centre, up = _marker_position(coronal)
    assert right_of_centre > 0.5 and up > 0.5
    right_of_centre, up = _marker_position(sagittal)  # anterior on the left, superior up (as 3D Slicer)
    assert right_of_centre < 0.5 and up > 0.5
    # square millimetres: pixel height / width = voxel size up / voxel size across
    assert axial.get_aspect() == pytest.approx(1.5 / 1.0)
    assert coronal.get_aspect() == pytest.approx(3.0 / 1.0)
    assert sagittal.get_aspect() == pytest.approx(3.0 / 1.5)
    assert [ax.get_title().split()[0] for ax in (sagittal, coronal, axial)] == ["sagittal", "coronal", "axial"]
    assert "saliency" in bar.get_ylabel() and bar.get_ylim() == pytest.approx((0.0, 1.0))
    assert len(axial.collections) >= 1  # the region's outline
    assert matplotlib.image.imread(tmp_path / "o.png").shape[2] == 4


def test_a_2d_map_keeps_its_grid_and_proportions(tmp_path):
    scan = np.random.default_rng(0).random((12, 30)).astype(np.float32)
    fig = save_overlay(tmp_path / "o.png", scan, scan, None, np.diag([2.0, 0.5, 1.0]))
    (ax, bar) = fig.axes
    assert np.asarray(ax.images[0].get_array()).shape == (30, 12) and ax.get_aspect() == pytest.approx(0.25)
