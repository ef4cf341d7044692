"""The cohort report's table and flags against hand-made run folders with known answers
(:mod:`report_cohort`): every value of ``cohort.csv`` against the sidecars and an independent computation."""

from __future__ import annotations

import csv
import html
import itertools
import json
import math
from pathlib import Path

import numpy as np
import pytest
from report_cohort import AFFINE, REGION, SHAPE, maps, write_case, write_cohort, write_labels

from monai_xres.cli.commands import main
from monai_xres.report import FLAGS, LEGEND, row_flags, write_report
from monai_xres.report.flags import DICE_MIN, NEAR_COLUMN, NEAR_SHARE_MIN, OUTSIDE_COLUMN

RTOL = 1e-5  # the CSV keeps 6 significant digits


def _rows(root: Path) -> list[dict[str, str]]:
    with open(root / "cohort.csv", newline="") as f:
        return list(csv.DictReader(f))


def _brute_shares(saliency: np.ndarray, region: np.ndarray, near_mm: float = 10.0) -> tuple[float, float]:
    """Inside and within-``near_mm`` shares of the positive mass, distances by brute force over every voxel
    pair (no distance transform)."""
    positive = np.clip(saliency, 0, None)
    points = np.argwhere(region) * np.diag(AFFINE)[:3]
    near = np.zeros(SHAPE, bool)
    for index in itertools.product(*map(range, SHAPE)):
        near[index] = np.sqrt(((points - np.asarray(index) * np.diag(AFFINE)[:3]) ** 2).sum(1)).min() <= near_mm
    return positive[region].sum() / positive.sum(), positive[near].sum() / positive.sum()


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    root = write_cohort(tmp_path_factory.mktemp("run"))
    labels = write_labels(tmp_path_factory.mktemp("labels"), {"case_a": True, "case_c": False})
    return root, labels, write_report(root, labels)


def test_csv_matches_the_sidecars_and_an_independent_computation(cohort):
    root, _, written = cohort
    rows = {(r["case"], r["method"]): r for r in _rows(root)}
    region = np.zeros(SHAPE, bool)
    region[REGION] = True
    expected = {"case_a": maps()["near"], "case_c": maps()["far"]}
    for path in sorted(root.glob("*/*.json")):
        record = json.loads(path.read_text())
        row = rows[(path.parent.name, record["method"]["name"])]
        assert row["layer"] == record["method"]["target_layer"] and row["region"] == "class1" and row["class"] == "1"
        assert float(row["seconds"]) == record["run"]["seconds"]
        assert row["model_sha256"] == record["model"]["sha256"] and row["input"] == record["input"]
        assert (root / row["map"]).is_file() and (root / row["overlay"]).suffix == ".png"
        predicted = 0.0 if row["case"] == "case_d" else region.sum() * 16 / 1000  # 2 x 2 x 4 mm voxels
        assert float(row["predicted_ml"]) == pytest.approx(predicted, rel=RTOL)
        if row["case"] in expected:
            inside, near = _brute_shares(expected[row["case"]], region)
            assert float(row["share_inside"]) == pytest.approx(inside, rel=RTOL)
            assert float(row[NEAR_COLUMN]) == pytest.approx(near, rel=RTOL)
            assert float(row[OUTSIDE_COLUMN]) == pytest.approx(1 - near, rel=RTOL, abs=1e-6)
    assert float(rows[("case_a", "alpha")]["dice"]) == 1.0 and float(rows[("case_c", "beta")]["dice"]) == 0.0
    assert rows[("case_b", "alpha")]["dice"] == "nan"  # no label: no Dice
    assert float(rows[("case_c", "alpha")]["anatomy_liver"]) == 0.8
    assert set(written) == {"csv", "html", "share", "dice"} and not list(root.rglob("*.partial-*"))


def test_flags_of_the_hand_made_cohort(cohort):
    root, _, _ = cohort
    flags = {r["case"]: r["flags"] for r in _rows(root)}
    assert flags == {"case_a": "", "case_b": "zero_map", "case_c": "away_from_region;low_dice;other_structure",
                     "case_d": "empty_prediction", "case_f": "failed"}
    failed = [r for r in _rows(root) if r["case"] == "case_f"]
    assert len(failed) == 1 and failed[0]["error"] == "alpha class1: Case case_f: cannot read the scan"  # one line
    page = (root / "report.html").read_text()
    assert all(html.escape(t) in page for t in LEGEND.values()) and "http" not in page  # no network; thresholds


def test_measured_from_the_files_when_the_sidecars_say_nothing(cohort, tmp_path):
    root, labels, _ = cohort
    for name, kind in (("case_a", "near"), ("case_c", "far"), ("case_d", "near")):
        write_case(tmp_path, name, kind, predicted=name != "case_d", locality=False)
    write_report(tmp_path, labels)
    measured = {(r["case"], r["method"]): r for r in _rows(tmp_path)}
    recorded = {(r["case"], r["method"]): r for r in _rows(root)}
    columns = ("predicted_ml", "dice", "share_inside", NEAR_COLUMN, OUTSIDE_COLUMN, "map_max")
    for key, row in measured.items():
        assert {c: row[c] for c in columns} == {c: recorded[key][c] for c in columns}


@pytest.mark.parametrize("row, flags", [
    ({NEAR_COLUMN: NEAR_SHARE_MIN}, []), ({NEAR_COLUMN: NEAR_SHARE_MIN - 1e-9}, ["away_from_region"]),
    ({"dice": DICE_MIN}, []), ({"dice": DICE_MIN - 1e-9}, ["low_dice"]), ({"dice": math.nan}, []),
    ({"predicted_ml": 0.0, "map_max": 0.0}, ["empty_prediction", "zero_map"]), ({"predicted_ml": 1e-3}, []),
    ({"map_max": -1.0}, ["zero_map"]), ({"error": "Case x: boom"}, ["failed"]), ({}, []),
])
def test_flag_thresholds(row, flags):
    assert row_flags(row) == flags


def test_other_structure_spares_the_region_own_structure():
    shares = {"label 1": 0.7, "liver": 0.2, "outside": 0.1}
    assert row_flags({}, shares, {"label 1"}) == [] and row_flags({}, shares, {"spleen"}) == ["other_structure"]
    assert row_flags({}, {"outside": 0.9}, set()) == []  # evidence outside every structure is not "another"
    assert set(LEGEND) == set(FLAGS)


def test_report_usage_errors(tmp_path, capsys):
    assert main(["report", str(tmp_path / "missing")]) == 2
    assert main(["report", str(tmp_path), "--label-dir", str(tmp_path / "none")]) == 2
    assert "is not a folder" in capsys.readouterr().err


def test_anatomy_dir_measures_structure_shares(tmp_path, capsys):
    import nibabel as nib

    write_case(tmp_path / "run", "case_a", "far")
    anatomy = write_labels(tmp_path / "anatomy", {"case_a": True})
    assert main(["report", str(tmp_path / "run"), "--anatomy-dir", str(anatomy)]) == 0
    rows = _rows(tmp_path / "run")
    assert float(rows[0]["anatomy_label 1"]) == pytest.approx(0.1 / 16.1, rel=RTOL)
    assert rows[0]["flags"] == "away_from_region"  # label 1 is the class's own structure
    labels = np.asarray(nib.load(anatomy / "case_a.nii.gz").dataobj)
    labels[14:16, 14:16, 6:8] = 2  # the far evidence lies in structure 2
    nib.save(nib.Nifti1Image(labels, AFFINE), str(anatomy / "case_a.nii.gz"))
    names = tmp_path / "names.json"
    names.write_text(json.dumps({"1": "spleen", "2": "liver"}))
    assert main(["report", str(tmp_path / "run"), "--anatomy-dir", str(anatomy), "--anatomy-names", str(names)]) == 0
    (row, _) = _rows(tmp_path / "run")
    assert float(row["anatomy_liver"]) == pytest.approx(16 / 16.1, rel=RTOL)
    assert row["flags"] == "away_from_region;other_structure"
    names.write_text(json.dumps({"spleen": 1}))
    assert main(["report", str(tmp_path / "run"), "--anatomy-dir", str(anatomy), "--anatomy-names", str(names)]) == 2
    assert "{label value: name}" in capsys.readouterr().err

def test_map_locality_of_degenerate_maps_is_strict_json():
    from monai_xres.output.qc import map_locality

    region = np.zeros(SHAPE, bool)
    region[REGION] = True
    broken = maps()["near"].copy()
    broken[0, 0, 1] = np.nan
    for saliency, mask in ((maps()["zero"], region), (maps()["near"], ~region & False), (broken, region)):
        facts = map_locality(saliency, mask, AFFINE)
        json.dumps(facts, allow_nan=False)  # no NaN in a sidecar
        assert facts["inside"] is None and facts["near"] is None and facts["outside"] is None
    assert map_locality(maps()["near"], ~region & False, AFFINE)["region_ml"] == 0.0


def test_cases_in_sub_folders_are_found(tmp_path):
    """With a data_root_dir, explain keeps the inputs' sub-folders: the report finds the cases there."""
    write_case(tmp_path / "sub" / "site1", "case_a", "near")
    write_report(tmp_path)
    (row, _) = _rows(tmp_path)
    assert row["case"] == "case_a" and row["map"].startswith("sub/site1/case_a/") and row["flags"] == ""
    assert 'id="case-case_a"' in (tmp_path / "report.html").read_text()
