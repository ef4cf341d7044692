"""The faithfulness table that can tell good from bad: masking at equal retained volume (closed form),
sanity baselines (closed forms), the calibrated randomisation flag, the marks of methods that do not
beat the baselines, layer sweeps, and bundle cases as network inputs."""

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from test_metrics import SETUPS, _block_case

from monai_xres import RegionTarget
from monai_xres.apps.cases import bundle_cases, expand_layers
from monai_xres.apps.runner import bundle_network
from monai_xres.evaluation import Evaluation, EvaluationSettings, default_methods, evaluate, markdown_table
from monai_xres.evaluation.report import NOT_BETTER
from monai_xres.metrics.baselines import BASELINES, BaselineMap
from monai_xres.metrics.equal_volume import masking_top_k
from monai_xres.metrics.randomisation import randomisation_check
from monai_xres.regions.geometry import label_file_on_grid

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("dims", [2, 3])
def test_masking_at_equal_volume_keeps_the_prediction_once_enough_of_the_block_is_kept(dims):
    """BlockNet: class-1 logit 10 f - 1 with f the kept share of the block (1/8 of the voxels)."""
    net, x, ideal, target = _block_case(dims)
    n, block = ideal.numel(), int(ideal.sum())
    region = int(np.prod([e - s for s, e in zip(*SETUPS[dims][2])]))
    good = masking_top_k(net, x, ideal, target, verbose=False)
    kept = [max(1, round(p / 100 * n)) for p in good.percent]
    f = np.minimum(np.array(kept) / block, 1.0)
    np.testing.assert_allclose(good.retained, np.array(kept) / n)
    np.testing.assert_allclose(good.score, region * (10 * f - 1), rtol=1e-5, atol=1e-5)
    assert good.dice == [float(v > 0.1) for v in f]  # 1 % keeps under a tenth of the block: the class is lost
    worst = masking_top_k(net, x, 1 - ideal, target, verbose=False)  # the block ranked last: never kept
    assert worst.dice == [0.0] * 6
    np.testing.assert_allclose(worst.score, [-region] * 6, rtol=1e-6)
    with pytest.raises(ValueError, match=r"shares in \(0, 100\]"):
        masking_top_k(net, x, ideal, target, percents=(0,), verbose=False)


def _ramp(shape=(12, 12), spacing=(1.5, 2.0)):
    i, j = np.meshgrid(*(np.arange(s) for s in shape), indexing="ij")
    image = 3.0 * i * spacing[0] + 4.0 * j * spacing[1]  # gradient (3, 4) per mm: magnitude 5
    affine = torch.diag(torch.tensor([*spacing, 1.0], dtype=torch.float64))
    return MetaTensor(torch.from_numpy(image).float()[None, None], affine=affine)


def test_baselines_are_their_closed_forms(small_unet):
    net = small_unet(2)
    x = _ramp()
    region = torch.zeros(12, 12, dtype=torch.bool)
    region[4:8, 3:6] = True
    target = RegionTarget(1).frozen(region)
    maps = {k: BaselineMap(net, k, seed=3)(x, target)[0, 0].double() for k in BASELINES}
    torch.testing.assert_close(maps["intensity"], x[0, 0].as_tensor().double())
    torch.testing.assert_close(maps["edges"], torch.full((12, 12), 5.0, dtype=torch.float64), rtol=1e-5, atol=1e-4)
    again = BaselineMap(net, "random", seed=3)(x, target)[0, 0].double()
    assert torch.equal(maps["random"], again) and 0 <= maps["random"].min() and maps["random"].max() < 1
    assert not torch.equal(maps["random"], BaselineMap(net, "random", seed=4)(x, target)[0, 0].double())
    with torch.no_grad():
        predicted = net(x.as_tensor()).argmax(1)[0] == 1
    assert torch.equal(maps["mask"].bool(), predicted & region)  # the network's prediction within the area
    # minus the signed distance in mm: 2 mm columns, 1.5 mm rows
    assert maps["distance"][0, 4] == pytest.approx(-4 * 1.5)  # four rows above the region
    assert maps["distance"][5, 9] == pytest.approx(-4 * 2.0)  # four columns right of it
    assert maps["distance"][0, 0] == pytest.approx(-math.hypot(4 * 1.5, 3 * 2.0))
    assert maps["distance"][5, 4] == pytest.approx(2 * 1.5)  # inside: two rows to the nearest outside voxel
    with pytest.raises(ValueError, match="kind must be one of"):
        BaselineMap(net, "noise")


def test_only_the_network_dependent_baseline_changes_under_randomisation(small_unet):
    net = small_unet(2)
    x = torch.rand((1, 1, 16, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        region = net(x).argmax(1)[0] == 1
    target = RegionTarget(1).frozen(region)
    for kind in ("random", "intensity", "edges", "distance"):
        result = randomisation_check(BaselineMap(net, kind), x, target, 1, verbose=False)
        assert result.spearman == [pytest.approx(1.0, abs=1e-12)], kind  # made without the weights: unchanged
    assert randomisation_check(BaselineMap(net, "mask"), x, target, 1, verbose=False).spearman[0] < 1


def test_the_flag_is_calibrated_against_the_image_and_baselines_get_rows(small_unet):
    net = small_unet(3)
    cases = []
    for i in range(2):
        x = torch.rand((1, 1, 16, 16, 16), generator=torch.Generator().manual_seed(i))
        with torch.no_grad():
            cases.append((x, net(x).argmax(1), f"case{i}"))
    methods = default_methods(layers=["bottleneck", "decoder1"], methods=["hirescam"])
    assert list(methods) == ["HiResCAM @ bottleneck", "HiResCAM @ decoder1"]
    settings = EvaluationSettings(n_steps=2, dilations=(0,), distances=(0,), randomisation_steps=1, top_k=(10, 50),
                                  reference="HiResCAM @ bottleneck")
    result = evaluate(cases, net, methods, [{"class_index": 1, "region_key": "label", "label_value": 1}],
                      settings=settings, verbose=False)
    assert result.methods == list(methods) + list(BASELINES.values())
    assert result.baselines == list(BASELINES.values())
    for record in result.records:
        assert record["randomisation_flagged"] == float(record["randomisation_spearman"] >= record["image_spearman"])
        if record["method"] in ("baseline: image intensity", "baseline: image edges"):
            assert record["image_spearman"] == pytest.approx(1.0) and record["randomisation_flagged"] == 1.0
    table = markdown_table(result)
    assert "| baseline: random map | 2 |" in table and "beats all baselines" in table


def _evaluation(values: dict[str, float]) -> Evaluation:
    settings = EvaluationSettings(top_k=(10,), dilations=(0,), distances=(0,))
    metrics = ["masking_top10pct_dice", "deletion_auc", "locality_0mm"]
    records = [{"case": "a", "region": "r", "part": "whole", "method": name, "masking_top10pct_dice": dice,
                "deletion_auc": deletion, "locality_0mm": 0.5} for name, (dice, deletion) in values.items()]
    return Evaluation(list(values), metrics, settings, records, baselines=["baseline: x", "baseline: y"])


def test_a_method_that_does_not_beat_every_baseline_is_marked():
    evaluation = _evaluation({"good": (0.9, 0.1), "half": (0.9, 0.5), "tie": (0.7, 0.3),
                              "baseline: x": (0.7, 0.4), "baseline: y": (0.2, 0.3)})
    rows = {line.split(" | ")[0][2:]: line for line in markdown_table(evaluation).splitlines()[2:]}
    assert NOT_BETTER not in rows["good"] and rows["good"].endswith("| 2/2 |")
    assert "0.500 ± 0.000 ✗" in rows["half"] and "0.900 ± 0.000 |" in rows["half"] and rows["half"].endswith("1/2 |")
    assert rows["tie"].count(NOT_BETTER) == 2 and rows["tie"].endswith("| 0/2 |")  # equal is not better
    assert NOT_BETTER not in rows["baseline: x"]
    assert "locality" not in markdown_table(evaluation, columns=["deletion_auc"])


def test_sweep_layers_expand_and_bad_layers_are_refused():
    net, _ = bundle_network(ROOT / "bundles" / "ct_organs_unetr3d", weights=False)
    assert expand_layers(net, ["all"]) == ["encoder1", "encoder2", "encoder3", "encoder4", "bottleneck", "decoder5",
                                           "decoder4", "decoder3", "decoder2"]
    assert expand_layers(net, ["decoder3+decoder2", "vit.blocks.3"]) == ["decoder3+decoder2", "vit.blocks.3"]
    with pytest.raises(ValueError, match="No layer named 'decoder1' in UNETR"):
        expand_layers(net, ["decoder1"])


@pytest.mark.parametrize("bundle, window", [("ct_spleen_unet2d", (96, 96)), ("ct_organs_unetr3d", (80, 80, 32))])
def test_bundle_cases_are_one_network_input_holding_the_region(bundle, window):
    net, parser = bundle_network(ROOT / "bundles" / bundle)
    image, label = (str(ROOT / "sample_data" / kind / "case_0902.nii.gz") for kind in ("images", "labels"))
    preprocessing = parser.get_parsed_content("preprocessing")
    ((x, lab, name),) = bundle_cases(net, preprocessing, parser.get_parsed_content("inferer"), [image], [label], 1)
    assert tuple(x.shape) == (1, 1, *window) and tuple(lab.shape) == (1, *window)
    full = label_file_on_grid(label, preprocessing({"image": image})["image"])[0] == 1
    if len(window) == 2:  # a 2D network: the slice with the most spleen voxels
        index = int(full.sum((0, 1)).argmax())
        assert name == f"case_0902 slice {index}"
        full = full[..., index]
    assert int((lab[0] == 1).sum()) == int(full.sum()) > 0  # the window is centred on the region: all of it inside
    with torch.no_grad():
        assert net(x.as_tensor()).shape == (1, parser["network_def"]["out_channels"], *window)
    spacing = np.linalg.norm(np.asarray(x.affine, dtype=np.float64)[: len(window), : len(window)], axis=0)
    np.testing.assert_allclose(spacing, (1.5, 1.5) if len(window) == 2 else (2.0, 2.0, 4.0), rtol=1e-6)
