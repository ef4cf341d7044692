"""Region-restricted RISE: only the sliding windows that reach the region run (exact for any network), the
receptive-field crop by default, the whole image when the network is not translation-equivariant; the
facts recorded; the map inside the evaluated box equal to whole-scan RISE, also through the CLI."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser
from monai.inferers import SimpleInferer, SlidingWindowInferer
from monai.networks.nets import UNet
from scipy.ndimage import binary_erosion
from torch import nn

from monai_xres import RegionTarget
from monai_xres.explainers.receptive_field import receptive_field_radius
from monai_xres.explainers.rise import SegRISE

REPO = Path(__file__).resolve().parents[1]


class _Counter:
    """Counts the inputs a module's forward sees."""

    def __init__(self, module: nn.Module) -> None:
        self.module, self.inputs = module, 0

    def __enter__(self) -> _Counter:
        self.handle = self.module.register_forward_hook(lambda m, a, o: setattr(self, "inputs",
                                                                                 self.inputs + a[0].shape[0]))
        return self

    def __exit__(self, *exc) -> None:
        self.handle.remove()


def _inside(result) -> tuple[slice, ...]:
    start, size = result.info["windows"][0]
    return (0, 0) + tuple(slice(s, s + n) for s, n in zip(start, size))


@pytest.mark.parametrize("norm", ["instance", "batch"])
def test_sliding_windows_that_reach_the_region_give_the_whole_scan_map(norm):
    # instance normalisation: no receptive-field crop could be exact, the window selection still is, because
    # every window runs exactly as in MONAI's whole-scan inference. Float32 rounding of the network: rtol 1e-5
    torch.manual_seed(0)
    net = UNet(2, 1, 2, (4, 8, 16), (2, 2), num_res_units=1, norm=norm).eval()
    x = torch.randn(1, 1, 80, 64, generator=torch.Generator().manual_seed(0))
    inferer = SlidingWindowInferer((32, 32), sw_batch_size=4, overlap=0.25, mode="gaussian")
    target = RegionTarget(1, box=((6, 8), (14, 15)), restrict_to_prediction=False)
    kwargs = dict(n_masks=24, grid_size=(5, 5), batch_size=6, score="logit", inferer=inferer, verbose=False)
    for center in (False, True):
        whole = SegRISE(net, context_margin=None, center_scores=center, **kwargs)
        with _Counter(net) as all_windows:
            full = whole.attribute(x, target)
        with _Counter(net) as few:
            part = SegRISE(net, center_scores=center, **kwargs).attribute(x, target)  # context_margin="auto"
        facts = part.info["crop"][0]
        assert facts["mode"] == "windows" and 1 <= facts["windows_run"] < facts["windows_total"]
        assert full.info["crop"][0]["mode"] == "whole image"
        # one whole-scan prediction, then per mask only the windows that reach the box
        assert few.inputs == facts["windows_total"] + 24 * facts["windows_run"]
        assert all_windows.inputs == facts["windows_total"] * 25
        window = _inside(part)
        assert part.info["windows"][0][1] != list(x.shape[2:])
        scale = float(full.saliency.abs().max())
        torch.testing.assert_close(part.saliency[window], full.saliency[window], rtol=1e-5, atol=1e-5 * scale)
        torch.testing.assert_close(part.logits, full.logits, rtol=0, atol=0)


def test_windows_padded_on_an_axis_thinner_than_the_window():
    # the scan is thinner than the window along the last axis: MONAI pads it, and so does the window selection
    torch.manual_seed(0)
    net = UNet(3, 1, 2, (4, 8), (2,), num_res_units=1, norm="instance").eval()
    x = torch.randn(1, 1, 40, 30, 10, generator=torch.Generator().manual_seed(3))
    inferer = SlidingWindowInferer((16, 16, 16), sw_batch_size=2, overlap=0.25, mode="constant", padding_mode="reflect")
    target = RegionTarget(1, box=((30, 2, 2), (38, 10, 8)), restrict_to_prediction=False)
    kwargs = dict(n_masks=12, grid_size=(4, 3, 2), batch_size=4, score="logit", inferer=inferer, verbose=False)
    full = SegRISE(net, context_margin=None, **kwargs).attribute(x, target)
    part = SegRISE(net, **kwargs).attribute(x, target)
    window = _inside(part)
    assert part.info["windows"][0][1][2] == 10 and part.info["windows"][0][1][0] < 40
    torch.testing.assert_close(part.saliency[window], full.saliency[window], rtol=1e-5,
                               atol=1e-5 * float(full.saliency.abs().max()))


def test_a_network_whose_field_stays_put_is_explained_on_the_whole_image():
    class Fixed(nn.Module):  # every output voxel reads the same input block: local, not translation-equivariant
        def forward(self, x):
            value = x[:, :, 2:6, 2:6].mean((2, 3), keepdim=True).expand(-1, 1, *x.shape[2:])
            return torch.cat([torch.zeros_like(value), value], 1)

    x = torch.rand(1, 1, 40, 40)
    assert receptive_field_radius(Fixed(), x) != (40, 40), "the field alone looks local"
    assert receptive_field_radius(Fixed(), x, shift=(4, 4)) == (40, 40), "but it does not move with its voxel"
    result = SegRISE(Fixed(), n_masks=4, score="logit", verbose=False).attribute(
        x, RegionTarget(1, box=((30, 30), (36, 36)), restrict_to_prediction=False))
    assert result.info["crop"][0]["mode"] == "whole image"
    assert "translation-equivariant" in result.info["crop"][0]["reason"]


def test_whole_image_reasons_and_cost_log(caplog):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 2, 3, padding=1)).eval()
    x, target = torch.randn(1, 1, 32, 32), RegionTarget(1, box=((4, 4), (10, 10)), restrict_to_prediction=False)
    kwargs = dict(n_masks=6, grid_size=4, batch_size=3, score="logit", verbose=False)
    with caplog.at_level(logging.INFO, logger="monai_xres.rise"):
        crop = SegRISE(net, **kwargs).attribute(x, target)
    assert crop.info["crop"][0] == {"mode": "receptive field", "margin": [2, 2], "multiple": [1, 1]}
    assert crop.info["windows"] == [[[2, 2], [10, 10]]]
    messages = " ".join(r.getMessage() for r in caplog.records)
    assert "6 masks, each one prediction of the 10x10 crop" in messages and "about" in messages
    other = SegRISE(net, inferer=SimpleInferer(), **kwargs).attribute(x, target)
    assert other.info["crop"][0]["mode"] == "whole image" and "SimpleInferer" in other.info["crop"][0]["reason"]
    with pytest.raises(ValueError, match="context_margin needs the output on the input grid"):
        SegRISE(nn.Conv2d(1, 2, 2, stride=2), context_margin=2, **kwargs).attribute(x, target)
    coarse = SegRISE(nn.Conv2d(1, 2, 2, stride=2), **kwargs).attribute(x, RegionTarget(1, restrict_to_prediction=False))
    assert "not the input grid" in coarse.info["crop"][0]["reason"]


def _tiny_bundle(root: Path) -> Path:
    """The shipped 3D UNet bundle's configs with a small instance-norm network and seeded random weights."""
    bundle = root / "bundle"
    (bundle / "models").mkdir(parents=True)
    shutil.copytree(REPO / "bundles" / "ct_spleen_unet3d" / "configs", bundle / "configs")
    config = json.loads((bundle / "configs" / "inference.json").read_text())
    config["network_def"].update(channels=[4, 8, 16], strides=[2, 2], norm="instance")
    config["inferer"]["roi_size"] = [32, 32, 16]
    (bundle / "configs" / "inference.json").write_text(json.dumps(config))
    torch.manual_seed(0)
    torch.save(ConfigParser(config).get_parsed_content("network_def").state_dict(), bundle / "models" / "model.pt")
    return bundle


def test_cli_rise_on_the_windows_of_the_region_equals_whole_scan_rise(tmp_path):
    from monai_xres.apps.runner import run_bundle
    from monai_xres.cli import main

    bundle, image = _tiny_bundle(tmp_path), REPO / "sample_data" / "images" / "case_0900.nii.gz"
    box = ["20", "20", "10", "36", "34", "20"]
    args = ["explain", "--bundle", str(bundle), "--image", str(image), "--class", "1", "--box", *box,
            "--method", "segrise", "--n-masks", "12", "--output-dir", str(tmp_path / "cli")]
    assert main(args) == 0
    config = {"method": "segrise", "n_masks": 12, "p_keep": 0.5, "batch_size": 8, "score": "dice", "seed": 0,
              "context_margin": None}
    region = {"class_index": 1, "box": [[20, 20, 10], [36, 34, 20]], "box_in_mm": False}
    run_bundle(bundle, str(image), str(tmp_path / "whole"), {"segrise": config}, region)
    name = "case_0900/case_0900_segrise_box"
    sidecar = json.loads((tmp_path / "cli" / f"{name}.json").read_text())
    facts = sidecar["run"]["crop"][0]
    assert facts["mode"] == "windows" and facts["windows_run"] < facts["windows_total"]
    assert json.loads((tmp_path / "whole" / f"{name}.json").read_text())["run"]["crop"][0]["mode"] == "whole image"
    part = nib.load(tmp_path / "cli" / f"{name}.nii.gz").get_fdata()
    full = nib.load(tmp_path / "whole" / f"{name}.nii.gz").get_fdata()
    # the evaluated box, mapped back onto the scan: where the part map is not its constant outside value
    outside = np.median(part)
    inside = np.abs(part - outside) > 1e-6 * np.abs(part).max()
    assert 0.05 < inside.mean() < 0.9, inside.mean()
    # the same masked predictions in the box; Invertd resamples both maps alike (float32: rtol 1e-4). Its
    # linear interpolation mixes the box's edge with the constant outside it: compare the box's core (the
    # preprocessed voxels are 1.5 x 1.5 x 3 mm, the scan's are finer: 4 scan voxels inward)
    core = binary_erosion(inside, iterations=4)
    assert core.sum() > 1000
    np.testing.assert_allclose(part[core], full[core], rtol=1e-4, atol=1e-4 * np.abs(full).max())
