"""The one command behind the docs' "Faithfulness" tables runs and writes its section between the markers."""

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _tool():
    spec = importlib.util.spec_from_file_location("faithfulness_tables", ROOT / "tools" / "faithfulness_tables.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_page_command_writes_the_sweep_and_the_table_between_the_markers(tmp_path):
    tool = _tool()
    page = tmp_path / "faithfulness.md"
    page.write_text(f"# x\n\nbefore\n\n{tool.BEGIN}\nold\n{tool.END}\n\nafter\n")
    assert tool.main(["--quick", "--bundles", "ct_spleen_unet2d", "--output-dir", str(tmp_path / "out"),
                      "--page", str(page), "--note", "a note"]) == 0
    text = page.read_text()
    assert text.startswith("# x\n\nbefore\n\n") and text.endswith("\n\nafter\n") and "old" not in text
    assert "**a note**" in text and "ct_spleen_unet2d (UNet), sample cases: layer sweep" in text
    assert "- UNet (ct_spleen_unet2d): `" in text and "pinned default `encoder1`" in text
    for row in ("HiResCAM @ bottleneck", "Seg-XRes-CAM mean w2 @ decoder3+decoder2+decoder1", "RISE centred",
                "baseline: image intensity", "Seg-XRes-CAM max w4 @ encoder1"):
        assert f"| {row} |" in text, row
    (result,) = json.loads((tmp_path / "out" / "ranking.json").read_text())
    assert result["default"] == "encoder1" and set(result["ranking"]) == {  # every level, in data-flow order
        "encoder1", "encoder2", "encoder3", "encoder4", "bottleneck", "decoder3", "decoder2", "decoder1", "head-input"}
    assert (tmp_path / "out" / "ct_spleen_unet2d" / "sample_cases" / "faithfulness.md").is_file()
    page.write_text("no markers")  # refused before any work: no new output
    assert tool.main(["--quick", "--bundles", "ct_spleen_unet2d", "--output-dir", str(tmp_path / "again"),
                      "--page", str(page)]) == 2
    assert not (tmp_path / "again").exists()


def test_the_docs_page_has_the_markers_and_readme_is_a_deprecated_alias_of_page(tmp_path):
    tool = _tool()
    text = (ROOT / "docs" / "faithfulness.md").read_text()
    assert text.count(tool.BEGIN) == 1 and text.index(tool.BEGIN) < text.index(tool.END)
    page = tmp_path / "README.md"
    page.write_text("x")
    with pytest.warns(DeprecationWarning, match="--page"):
        args = tool._parse(["--quick", "--readme", str(page)])
    assert args.page == str(page)
    with pytest.raises(SystemExit):  # one or the other, not both
        tool._parse(["--readme", str(page), "--page", str(page)])
    with pytest.warns(DeprecationWarning):  # the old form still refuses a file without markers, before any work
        assert tool.main(["--quick", "--output-dir", str(tmp_path / "out"), "--readme", str(page)]) == 2
    assert not (tmp_path / "out").exists()


def test_a_reduced_sweep_applies_to_the_bundles_named_and_says_so():
    tool = _tool()
    args = tool.argparse.Namespace(quick=False, cases=2, steps=5, rise_masks=32, reduced_for=["ct_organs_unetr3d"])
    assert tool._sweep_size(args, "ct_organs_unetr3d") == (2, 5, 32, True)
    assert tool._sweep_size(args, "ct_spleen_unet3d") == (None, 10, 100, False)
    args.reduced_for = None  # without --reduced-for the reduction is for every bundle
    assert tool._sweep_size(args, "ct_spleen_unet3d") == (2, 5, 32, True)
    args.cases, args.steps, args.rise_masks = None, 10, 100
    assert tool._sweep_size(args, "ct_spleen_unet3d") == (None, 10, 100, False)


def test_a_network_type_scores_its_bundles_mean_and_a_tie_goes_to_the_coarser_level():
    """The evidence line for a pinned default: mean over the bundles of each level's mean rank on the sample cases
    (the real CT is left out); equal means, here 22/9 in floating point, go to the level nearer the bottleneck."""
    tool = _tool()
    def result(bundle, cases, ranking):
        return {"network": "UNet", "bundle": bundle, "cases": cases, "default": "decoder3", "ranking": ranking}
    results = [result("a", "sample cases", {"bottleneck": 43 / 9, "decoder3": 25 / 9, "decoder1": 11 / 9}),
               result("a", "real CT", {"bottleneck": 1.0, "decoder3": 3.0, "decoder1": 2.0}),
               result("b", "sample cases", {"bottleneck": 40 / 9, "decoder3": 19 / 9, "decoder1": 33 / 9})]
    (line,) = tool._type_choice(results)
    assert line == ("- UNet (a, b): `decoder3` 2.44, `decoder1` 2.44, `bottleneck` 4.61; most faithful `decoder3`, "
                    "pinned default `decoder3`.")
    # equal but for floating-point rounding of the mean ranks (0.1 + 0.2 > 0.3): still a tie
    results = [result("a", "sample cases", {"bottleneck": 4.0, "decoder3": 0.1 + 0.2, "decoder1": 0.3})]
    assert "most faithful `decoder3`" in tool._type_choice(results)[0]
    results[0]["ranking"]["decoder1"] = 0.29  # no longer a tie: the finer level wins
    assert "most faithful `decoder1`" in tool._type_choice(results)[0]
