"""``explain --anatomy``: each map's evidence share per structure, measured on the scan's grid against the
written file (checked here independently with nibabel and numpy, float64: 1e-6), in every sidecar and the QC
table, one printed line per map; and the options' one-line errors before any work."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from monai_xres.apps.anatomy import AnatomySettings, anatomy_facts, summary_line
from monai_xres.cli import main

REPO = Path(__file__).resolve().parents[1]
CASE = REPO / "sample_data" / "images" / "case_0903.nii.gz"
LABEL = REPO / "sample_data" / "labels" / "case_0903.nii.gz"
NAMES = {"1": "spleen", "2": "right kidney", "3": "left kidney", "4": "liver"}


def _expected(map_path: Path) -> dict[str, float]:
    sal = np.clip(np.asarray(nib.load(map_path).dataobj, dtype=np.float64), 0, None)
    labels = np.asarray(nib.load(LABEL).dataobj)
    shares = {name: sal[labels == int(v)].sum() / sal.sum() for v, name in NAMES.items()}
    return {**shares, "outside": sal[labels == 0].sum() / sal.sum()}


@pytest.mark.timeout(900)
def test_explain_with_anatomy_writes_shares_per_structure_and_prints_where_the_evidence_lies(tmp_path, capsys):
    out = tmp_path / "out"
    names = tmp_path / "names.json"
    names.write_text(json.dumps(NAMES))
    args = ["explain", "--bundle", str(REPO / "bundles" / "ct_spleen_unet3d"), "--image", str(CASE), "--class", "1",
            "--method", "hirescam", "seggradcam", "--anatomy", str(LABEL), "--anatomy-names", str(names),
            "--instances", "--min-size", "50", "--output-dir", str(out)]
    assert main(args) == 0
    printed = capsys.readouterr().out
    case = out / "case_0903"
    sidecars = sorted(p for p in case.glob("*.json") if "instance" not in p.name)
    assert len(sidecars) == 2
    for sidecar in sidecars:
        record = json.loads(sidecar.read_text())
        anatomy = record["anatomy"]
        assert anatomy["labels"] == str(LABEL) and set(anatomy["shares"]) == {*NAMES.values(), "outside"}
        expected = _expected(sidecar.with_suffix("").with_suffix(".nii.gz"))
        assert anatomy["shares"] == pytest.approx(expected, abs=1e-6)
        labels = np.asarray(nib.load(LABEL).dataobj)
        assert anatomy["chance"]["liver"] == pytest.approx(float((labels == 4).mean()), abs=1e-12)
        line = summary_line(record)
        assert line in printed and "of the spleen's evidence lies in the" in line
    with open(case / "case_0903_instances.csv") as f:
        rows = list(csv.DictReader(f))
    assert rows and all(row["segxrescam-w1_anatomy_left-kidney"] != "" for row in rows)
    for row in rows:
        assert sum(float(row[f"seggradcam_anatomy_{n.replace(' ', '-')}"]) for n in [*NAMES.values(), "outside"]
                   ) == pytest.approx(1.0, abs=1e-6)


def test_anatomy_errors_are_one_line_before_any_work(tmp_path, capsys):
    bundle = str(REPO / "bundles" / "ct_spleen_unet3d")
    base = ["explain", "--bundle", bundle, "--image", str(CASE), "--class", "1"]
    cropped = tmp_path / "cropped.nii.gz"
    label = nib.load(LABEL)
    nib.save(nib.Nifti1Image(np.asarray(label.dataobj)[:100], label.affine), cropped)
    cases = [(["--anatomy", str(cropped)], "not on the scan's grid"),
             (["--anatomy", str(tmp_path / "missing.nii.gz")], "does not exist"),
             (["--anatomy", str(LABEL), "--anatomy-names", "{oops"], "is not JSON"),
             (["--anatomy", str(LABEL), "--anatomy-names", "{\"spleen\": 1}"], "map label values to names"),
             (["--anatomy-names", "{\"1\": \"spleen\"}"], "add --anatomy")]
    for extra, message in cases:
        out = tmp_path / "out"
        assert main([*base, *extra, "--output-dir", str(out)]) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1, err
        assert not out.exists() or not any(out.rglob("*.nii.gz"))


def test_the_handler_refuses_a_label_map_off_the_maps_grid(tmp_path):
    labels = np.zeros((4, 5, 6), dtype=np.uint8)
    labels[1:3, 1:3, 1:3] = 2
    path = tmp_path / "labels.nii.gz"
    nib.save(nib.Nifti1Image(labels, np.diag([2.0, 2.0, 3.0, 1.0])), path)

    class Writer:
        anatomy = AnatomySettings(labels=str(path), names={"2": "kidney"}, target="spleen")

    sal = torch.zeros(1, 4, 5, 6)
    sal[0, 1, 1, 1], sal[0, 0, 0, 0] = 3.0, 1.0
    facts = anatomy_facts(Writer(), {}, MetaTensor(sal, affine=torch.diag(torch.tensor([2.0, 2.0, 3.0, 1.0]))))
    assert facts["anatomy"]["shares"] == {"kidney": 0.75, "outside": 0.25}
    assert facts["anatomy"]["chance"]["kidney"] == pytest.approx(8 / 120)
    with pytest.raises(ValueError, match="not on the scan's grid"):
        anatomy_facts(Writer(), {}, MetaTensor(sal, affine=torch.eye(4)))
    with pytest.raises(ValueError, match="exactly one of labels"):
        AnatomySettings()


@pytest.mark.timeout(900)
def test_the_bundle_overlay_takes_anatomy_as_one_config_key(tmp_path):
    from monai.bundle import ConfigWorkflow

    bundle = REPO / "bundles" / "ct_spleen_unet3d"
    files = [str(bundle / "configs" / "inference.json"), str(bundle / "configs" / "explain.json")]
    workflow = ConfigWorkflow(config_file=files, meta_file=str(bundle / "configs" / "metadata.json"),
                              workflow_type="infer", bundle_root=str(bundle), datalist=[str(CASE)],
                              output_dir=str(tmp_path), explain_anatomy={"labels": str(LABEL), "names": NAMES},
                              explain_cams={"seggradcam": {"method": "seggradcam"}})
    workflow.initialize()
    workflow.run()
    workflow.finalize()
    sidecar = tmp_path / "case_0903" / "case_0903_seggradcam_class1.json"
    shares = json.loads(sidecar.read_text())["anatomy"]["shares"]
    assert shares == pytest.approx(_expected(sidecar.with_suffix("").with_suffix(".nii.gz")), abs=1e-6)
