"""The shipped explain overlays: by default the three CAMs, from one forward and one backward pass per window,
at ``explain_layer``; one override (``explain_rise``) adds RISE; every overlay file says the same."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from monai.bundle import ConfigParser, ConfigWorkflow

REPO = Path(__file__).resolve().parents[1]
OVERLAYS = [REPO / "monai_xres" / "configs" / "explain.json",
            *sorted((REPO / "bundles").glob("*/configs/explain.json"))]


@pytest.mark.parametrize("overlay", OVERLAYS, ids=lambda p: p.parts[-3])
def test_every_overlay_has_rise_off_by_default_and_one_switch_for_it(overlay):
    config = json.loads(overlay.read_text())
    assert config["explain_rise"] is False and set(config["explain_cams"]) == {"segxrescam-w1", "segxrescam-w2",
                                                                               "seggradcam"}
    # one layer for every CAM (default: the network type's), never for RISE
    assert config["explain_layer"] == "$None"
    assert all(cam["target_layer"] == "@explain_layer" for cam in config["explain_cams"].values())
    assert all("target_layer" not in rise for rise in config["explain_rise_methods"].values())
    cams, everything = ["segxrescam-w1", "segxrescam-w2", "seggradcam"], ["segxrescam-w1", "segxrescam-w2",
                                                                          "seggradcam", "segrise"]
    # the bundle CLI (fire) passes --explain_rise True as a bool, --explain_rise true as a string
    for switch, expected in ((False, cams), (True, everything), ("true", everything), ("false", cams)):
        parser = ConfigParser({k: v for k, v in config.items() if k.startswith("explain_") and k != "explain_writer"
                               and k != "explain_inferer"} | {"output_dir": "out", "explain_rise": switch})
        assert list(parser.get_parsed_content("explain_methods")) == expected


def test_shipped_overlay_runs_the_cams_with_one_backward_and_rise_when_switched_on(tmp_path):
    bundle = REPO / "bundles" / "ct_spleen_unet3d"
    image = str(REPO / "sample_data" / "images" / "case_0901.nii.gz")
    calls: list[int] = []

    def run(out: Path, **override) -> None:
        files = [str(bundle / "configs" / "inference.json"), str(bundle / "configs" / "explain.json")]
        workflow = ConfigWorkflow(config_file=files, meta_file=str(bundle / "configs" / "metadata.json"),
                                  workflow_type="infer", bundle_root=str(bundle), datalist=[image],
                                  output_dir=str(out), **override)
        workflow.initialize()
        network = workflow.parser.get_parsed_content("network")
        handle = network.register_forward_hook(lambda m, a, o: calls.append(a[0].shape[0]))
        try:
            workflow.run()
        finally:
            handle.remove()
        workflow.finalize()

    run(tmp_path / "cams")
    written = sorted(p.name for p in (tmp_path / "cams" / "case_0901").glob("*.nii.gz"))
    assert written == ["case_0901_seg.nii.gz", "case_0901_seggradcam_class1.nii.gz",
                       "case_0901_segxrescam-w1_class1.nii.gz", "case_0901_segxrescam-w2_class1.nii.gz"]
    sidecar = json.loads((tmp_path / "cams" / "case_0901" / "case_0901_seggradcam_class1.json").read_text())
    assert sidecar["shared_gradient"] == ["segxrescam-w1", "segxrescam-w2", "seggradcam"]
    run_info = sidecar["run"]
    windows = run_info["windows_total"]
    # the bundle's own inference (the CAMs resolve the region on it: no second prediction), then one
    # forward and backward per window that reaches the region, for the three CAMs together
    assert sum(calls) == windows + (windows - run_info["windows_skipped"])
    calls.clear()
    run(tmp_path / "rise", explain_rise=True, explain_rise_masks=4)
    rise = json.loads((tmp_path / "rise" / "case_0901" / "case_0901_segrise_class1.json").read_text())
    assert rise["method"]["estimator"] == "regression" and rise["run"]["estimator_used"] == "regression"
    assert rise["method"]["center_scores"] is True and len(rise["run"]["offset"]) == 1  # centred, offset recorded
    assert rise["run"]["n_masks_used"] == [4] and rise["run"]["crop"][0]["mode"] == "windows"
