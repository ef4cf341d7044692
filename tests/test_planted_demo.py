"""``monai-xres demo --planted``: the shipped pair on its documented test scene, through the CLI.

The numbers pinned here are those of the shipped weights on the demo scene (docs/groundtruth.md): the
shortcut model needs M and its default map puts a large share of its evidence on M; the control model needs
P and its map puts next to none on M. Bounds leave room for BLAS differences between machines (shares move
in the third decimal), not for another conclusion.
"""

from __future__ import annotations

import json

import matplotlib.image
import numpy as np
import pytest

from monai_xres.apps.planted_demo import comparison_centre
from monai_xres.cli import main


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("planted_demo")
    code = main(["demo", "--planted", "--output-dir", str(out)])
    return code, out


def _anatomy(out, model):
    (sidecar,) = sorted((out / model).rglob("*segxrescam*.json"))
    return json.loads(sidecar.read_text())["anatomy"]


def test_exit_status_and_files(demo):
    code, out = demo
    assert code == 0
    figure = matplotlib.image.imread(out / "planted_demo.png")
    assert figure.shape[0] > figure.shape[1] / 2  # two rows of three planes
    for model in ("shortcut", "control"):
        assert len(list((out / model).rglob("*_seg.nii.gz"))) == 1
        assert len(list((out / model).rglob("*segxrescam*.png"))) == 1
    for name in ("images", "labels", "structures"):
        assert (out / "scene" / name / "case_9100.nii.gz").is_file()


def test_the_default_map_shows_which_model_looks_at_the_marker(demo, capsys):
    _, out = demo
    shortcut, control = _anatomy(out, "shortcut"), _anatomy(out, "control")
    on_m, chance = shortcut["shares"]["marker M"], shortcut["chance"]["marker M"]
    assert on_m >= 0.05 and on_m >= 10 * chance, shortcut
    assert control["shares"]["marker M"] < on_m / 5, (control, shortcut)
    for record in (shortcut, control):  # "outside" completes the shares
        assert sum(record["shares"].values()) == pytest.approx(1.0, abs=1e-6)


def test_comparison_planes_cut_the_marker_and_the_target():
    structures = np.zeros((20, 20, 10), np.uint8)
    structures[2:8, 3:9, 2:8] = 1  # target
    structures[12:14, 5:7, 6:8] = 3  # M: its y and z extents overlap the target's, x does not
    centre = comparison_centre(structures)
    assert centre[0] in (12, 13) and 5 <= centre[1] <= 6 and 6 <= centre[2] <= 7
    for axis, index in enumerate(centre):
        plane = np.take(structures, index, axis=axis)
        assert (plane == 3).any()
    assert (structures[:, centre[1], :] == 1).any() and (structures[:, :, centre[2]] == 1).any()


def test_seed_needs_planted(tmp_path):
    assert main(["demo", "--seed", "3", "--output-dir", str(tmp_path / "out")]) == 2
