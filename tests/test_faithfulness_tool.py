"""The one command behind README's "Faithfulness" tables runs and writes its section between the markers."""

import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _tool():
    spec = importlib.util.spec_from_file_location("faithfulness_tables", ROOT / "tools" / "faithfulness_tables.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_readme_command_writes_the_sweep_and_the_table_between_the_markers(tmp_path):
    tool = _tool()
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n\nbefore\n\n{tool.BEGIN}\nold\n{tool.END}\n\nafter\n")
    assert tool.main(["--quick", "--bundles", "ct_spleen_unet2d", "--output-dir", str(tmp_path / "out"),
                      "--readme", str(readme), "--note", "a note"]) == 0
    text = readme.read_text()
    assert text.startswith("# x\n\nbefore\n\n") and text.endswith("\n\nafter\n") and "old" not in text
    assert "**a note**" in text and "ct_spleen_unet2d (UNet), sample cases: layer sweep" in text
    assert "- UNet (ct_spleen_unet2d): `" in text and "pinned default `decoder2`" in text
    for row in ("HiResCAM @ bottleneck", "Seg-XRes-CAM mean w2 @ decoder3+decoder2+decoder1", "RISE",
                "baseline: image intensity", "Seg-XRes-CAM max w4 @ decoder2"):
        assert f"| {row} |" in text, row
    (result,) = json.loads((tmp_path / "out" / "ranking.json").read_text())
    assert result["default"] == "decoder2" and set(result["ranking"]) == {
        "bottleneck", "decoder3", "decoder2", "decoder1", "head-input"}
    assert (tmp_path / "out" / "ct_spleen_unet2d" / "sample_cases" / "faithfulness.md").is_file()
    readme.write_text("no markers")  # refused before any work: no new output
    assert tool.main(["--quick", "--bundles", "ct_spleen_unet2d", "--output-dir", str(tmp_path / "again"),
                      "--readme", str(readme)]) == 2
    assert not (tmp_path / "again").exists()


def test_a_reduced_sweep_applies_to_the_bundles_named_and_says_so():
    tool = _tool()
    args = tool.argparse.Namespace(quick=False, cases=2, steps=5, rise_masks=32, reduced_for=["ct_organs_unetr3d"])
    assert tool._sweep_size(args, "ct_organs_unetr3d") == (2, 5, 32, True)
    assert tool._sweep_size(args, "ct_spleen_unet3d") == (None, 10, 100, False)
    args.reduced_for = None  # without --reduced-for the reduction is for every bundle
    assert tool._sweep_size(args, "ct_spleen_unet3d") == (2, 5, 32, True)
    args.cases, args.steps, args.rise_masks = None, 10, 100
    assert tool._sweep_size(args, "ct_spleen_unet3d") == (None, 10, 100, False)
