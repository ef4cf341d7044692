"""``explain --datalist`` writes the cohort report at the end, a resumed run rewrites it with every case, a
failed case is listed with its one-line reason, ``--no-report`` turns it off; ``monai-xres report`` rewrites
it. One sample case through the 3D UNet bundle (once per module) and a scan that cannot be read."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from monai_xres.cli.commands import main
from monai_xres.report.flags import NEAR_COLUMN
from monai_xres.report.measure import CaseVolumes

ROOT = Path(__file__).resolve().parents[1]
SCAN = ROOT / "sample_data" / "images" / "case_0900.nii.gz"


def _rows(folder: Path) -> list[dict[str, str]]:
    with open(folder / "cohort.csv", newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A first run (one case explained, one failed), then a resumed run of the same list."""
    tmp = tmp_path_factory.mktemp("cohort")
    (tmp / "broken.nii.gz").write_bytes(b"not a scan")
    datalist = tmp / "cases.json"
    datalist.write_text(json.dumps([str(SCAN), str(tmp / "broken.nii.gz")]))
    out = tmp / "out"
    argv = ["explain", "--bundle", str(ROOT / "bundles" / "ct_spleen_unet3d"), "--datalist", str(datalist),
            "--class", "1", "--output-dir", str(out)]
    first = main(argv)
    first_rows = _rows(out)
    (out / "report.html").unlink()
    resumed = main(argv)
    return argv, out, (first, first_rows), (resumed, _rows(out))


def test_a_cohort_run_writes_its_report_with_the_failed_case(runs):
    _, out, (status, rows), _ = runs
    assert status == 1  # a case failed
    failed = [r for r in rows if r["case"] == "broken"]
    assert len(failed) == 1 and failed[0]["flags"] == "failed" and "\n" not in failed[0]["error"]
    assert failed[0]["error"] and failed[0]["input"].endswith("broken.nii.gz")
    (done,) = [r for r in rows if r["case"] == "case_0900"]
    assert (out / done["map"]).is_file() and (out / done["overlay"]).is_file() and float(done["seconds"]) > 0


def test_a_resumed_run_rewrites_the_report_with_every_case(runs):
    _, out, (_, first), (status, resumed) = runs
    summary = json.loads((out / "cohort_summary.json").read_text())
    assert status == 1 and summary["skipped"] == 1 and summary["done"] == 0  # case_0900 was resumed, not redone
    assert (out / "report.html").is_file()  # removed after the first run, written again
    assert {r["case"] for r in resumed} == {"case_0900", "broken"}
    assert [r for r in resumed if r["case"] == "case_0900"] == [r for r in first if r["case"] == "case_0900"]


def test_the_sidecar_locality_agrees_with_the_files(runs):
    """What explain records (the explained region, inverted to the scan) against what the report measures from
    the files (the bundle's segmentation after its post-processing): the same map, regions that differ by the
    bundle's largest-component step, hence the tolerances."""
    _, out, _, (_, rows) = runs
    (row,) = [r for r in rows if r["case"] == "case_0900"]
    record = json.loads((out / row["map"]).with_name(Path(row["map"]).name.replace(".nii.gz", ".json")).read_text())
    measured = CaseVolumes(out / "case_0900", "case_0900", str(SCAN)).locality(out / row["map"], record["region"])
    assert float(row["predicted_ml"]) == pytest.approx(measured["region_ml"], rel=0.05)
    assert float(row[NEAR_COLUMN]) == pytest.approx(measured["near"], abs=0.02)
    assert float(row["map_max"]) == pytest.approx(measured["max"], rel=1e-5)


def test_no_report_and_the_report_command(runs, capsys):
    argv, out, _, _ = runs
    (out / "report.html").unlink()
    assert main([*argv, "--no-report"]) == 1 and not (out / "report.html").exists()
    labels = ROOT / "sample_data" / "labels"
    assert main(["report", str(out), "--label-dir", str(labels)]) == 0
    assert "report.html" in capsys.readouterr().out and (out / "report.html").is_file()
    (row,) = [r for r in _rows(out) if r["case"] == "case_0900"]
    assert 0.8 < float(row["dice"]) <= 1.0  # the bundle's spleen Dice on this case is about 0.95
