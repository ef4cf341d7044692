"""The faithfulness table on a tiny setup: every method and every metric, the files, skipped regions."""

import copy
import csv
import math

import pytest
import torch
from monai.data import MetaTensor

from monai_xres import RegionTarget
from monai_xres.evaluation import EvaluationSettings, default_methods, evaluate, metric_names
from monai_xres.evaluation.run import _half
from monai_xres.metrics.baselines import BASELINES

SETTINGS = EvaluationSettings(n_steps=3, dilations=(0, 2), distances=(0, 3), randomisation_steps=2, batch_size=4)


def _cases(net):
    cases = []
    for i in range(2):
        x = torch.rand((1, 1, 16, 16, 16), generator=torch.Generator().manual_seed(i))
        with torch.no_grad():
            label = net(x).argmax(1)  # (1, *spatial): the prediction itself, so every class region is predicted
        if i == 1:
            x = MetaTensor(x, affine=torch.diag(torch.tensor([1.5, 1.5, 3.0, 1.0])))
        cases.append((x, label, f"case{i}"))
    return cases


def test_evaluate_writes_a_table_with_every_method_and_metric(small_unet, tmp_path):
    net = small_unet(3)
    before = copy.deepcopy(net.state_dict())
    methods = default_methods(rise_masks=8, rise_grid=4, rise_batch_size=4)
    result = evaluate(_cases(net), net, methods, output_dir=tmp_path, settings=SETTINGS, verbose=False)
    metrics = metric_names(SETTINGS)
    assert result.methods == ["Seg-Grad-CAM", "HiResCAM", "Seg-XRes-CAM mean w2", "Seg-XRes-CAM max w2",
                              "Seg-XRes-CAM mean w4", "Seg-XRes-CAM max w4", "RISE", "RISE centred",
                              *BASELINES.values()]
    assert result.metrics == metrics and len(metrics) == 22 and metrics[-1] == "context_radius_mm"
    assert len(result.records) == 2 * 2 * (len(methods) + len(BASELINES))  # cases x classes 1, 2 x rows
    for record in result.records:
        undefined = {"spearman_vs_reference"} if record["method"] == SETTINGS.reference else set()
        undefined.add("context_radius_mm")  # inf when no tested margin suffices (checked below)
        assert all(math.isfinite(record[m]) for m in metrics if m not in undefined), record
    for case, region in {(r["case"], r["region"]) for r in result.records}:
        radii = {r["context_radius_mm"] for r in result.records if (r["case"], r["region"]) == (case, region)}
        assert len(radii) == 1 and next(iter(radii)) >= 0  # one value per region, the same for every method
    for row in result.summary():
        assert row["n"] == 4 and set(metrics) <= set(row)

    with open(tmp_path / "faithfulness.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["method"] for r in rows] == result.methods and {r["regions"] for r in rows} == {"whole"}
    assert set(rows[0]) == {"regions", "method", "n"} | {f"{m}_{k}" for m in metrics for k in ("mean", "std")}
    with open(tmp_path / "faithfulness_cases.csv", newline="") as f:
        assert len(list(csv.DictReader(f))) == len(result.records)
    table = (tmp_path / "faithfulness.md").read_text()
    header = next(line for line in table.splitlines() if line.startswith("| method"))
    assert header.count("|") == len(metrics) + 4  # method, n, one column per metric, beats all baselines
    assert all(f"| {m} |" in table for m in result.methods)
    for name in ("deletion_insertion", "masking", "randomisation", "locality"):
        assert (tmp_path / f"faithfulness_{name}.png").stat().st_size > 10_000
    assert (tmp_path / "faithfulness_curves.json").exists()
    for key, value in net.state_dict().items():
        assert torch.equal(value, before[key])


def test_regions_that_miss_the_prediction_are_skipped_and_halves_get_their_own_rows(small_unet, tmp_path):
    net = small_unet(3)
    cases = _cases(net)[:1]
    regions = [{"class_index": 1, "region_key": "label", "label_value": 1, "name": "organ"},
               {"class_index": 2, "region_key": "label", "label_value": 1, "name": "wrong"}]  # class 2 in label 1
    methods = {k: v for k, v in default_methods().items() if k in ("Seg-Grad-CAM", "HiResCAM")}
    settings = EvaluationSettings(n_steps=2, dilations=(0,), distances=(0,), randomisation_steps=1,
                                  randomise=["HiResCAM"], reference="HiResCAM", halves=True, baselines=False)
    result = evaluate(cases, net, methods, regions, tmp_path, settings, verbose=False)
    assert {(r["region"], r["part"]) for r in result.records} == {("organ", "whole"), ("organ half", "half")}
    assert result.parts == ["whole", "half"] and [row["n"] for row in result.summary("half")] == [1, 1]
    table = (tmp_path / "faithfulness.md").read_text()
    assert "## Whole regions" in table and "## Half regions" in table
    assert [(s["case"], s["region"]) for s in result.skipped] == [("case0", "wrong")]
    assert "skipped case0 / wrong" in table
    grad_cam = next(r for r in result.records if r["method"] == "Seg-Grad-CAM")
    assert math.isnan(grad_cam["randomisation_spearman"])  # not in settings.randomise
    assert math.isfinite(grad_cam["spearman_vs_reference"])


def test_bad_cases_give_clear_errors(small_unet):
    net = small_unet(3)
    x = torch.rand((1, 1, 16, 16, 16))
    with pytest.raises(ValueError, match="one preprocessed sample"):
        evaluate([(x.repeat(2, 1, 1, 1, 1), None, "a")], net, verbose=False)
    with pytest.raises(ValueError, match="label has shape"):
        evaluate([(x, torch.zeros(8, 8, 8), "a")], net, verbose=False)


def test_half_region_is_the_first_half_along_the_longest_extent_in_mm():
    logits = torch.zeros((2, 10, 10, 10))
    logits[1, 2:8, 1:9, 3:7] = 1.0  # class 1: 6 x 8 x 4 voxels
    target = RegionTarget(1)
    half = _half(target, logits, (1.0, 1.0, 1.0)).region(logits)
    expected = torch.zeros((10, 10, 10), dtype=torch.bool)
    expected[2:8, 1:5, 3:7] = True  # longest axis 1 (8 voxels), cut at its middle
    assert torch.equal(half, expected)
    half_mm = _half(target, logits, (1.0, 1.0, 3.0)).region(logits)  # axis 2: 4 voxels of 3 mm = 12 mm
    expected = torch.zeros((10, 10, 10), dtype=torch.bool)
    expected[2:8, 1:9, 3:5] = True
    assert torch.equal(half_mm, expected)


def test_evaluate_is_deterministic(small_unet):
    net = small_unet(3)
    methods = {k: v for k, v in default_methods(rise_masks=4, rise_grid=4).items() if k in ("HiResCAM", "RISE")}
    settings = EvaluationSettings(n_steps=2, dilations=(0,), distances=(0,), randomisation_steps=1, reference="RISE")
    runs = [evaluate(_cases(net)[:1], net, methods, settings=settings, verbose=False).records for _ in range(2)]
    assert len(runs[0]) == 2 * (2 + len(BASELINES))
    for a, b in zip(*runs):
        assert a.keys() == b.keys()
        assert all(a[k] == b[k] or (isinstance(a[k], float) and math.isnan(a[k]) and math.isnan(b[k])) for k in a)
