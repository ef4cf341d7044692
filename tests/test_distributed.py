"""Cohort explanations and mask-parallel RISE on torch.distributed (gloo, 2 CPU processes via torchrun)."""

from __future__ import annotations

import json
import os
import runpy
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

import monai_xres.distributed as xdist
from monai_xres.apps.cohort import case_outputs, explain_cohort, read_datalist, run_cohort
from monai_xres.distributed import shard
from monai_xres.explainers.rise import SegRISE
from monai_xres.explainers.rise.parallel import MaskParallelSegRISE
from monai_xres.regions import RegionTarget

REPO = Path(__file__).resolve().parents[1]
CASES = sorted(str(p) for p in (REPO / "sample_data" / "images").glob("*.nii.gz"))
METHOD = "segxrescam-w2"
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def _torchrun(*args: str, nproc: int = 2) -> list[str]:
    # --standalone: rendezvous on a free local port, so parallel test runs do not collide
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", *args]


def _tiny_bundle(root: Path) -> Path:
    """The shipped 3D UNet bundle's configs with a small network and seeded random weights."""
    from monai.bundle import ConfigParser

    bundle = root / "bundle"
    (bundle / "models").mkdir(parents=True)
    shutil.copytree(REPO / "bundles" / "ct_spleen_unet3d" / "configs", bundle / "configs")
    config = json.loads((bundle / "configs" / "inference.json").read_text())
    config["network_def"].update(channels=[4, 8, 16], strides=[2, 2])
    config["inferer"]["roi_size"] = [32, 32, 16]
    (bundle / "configs" / "inference.json").write_text(json.dumps(config))
    torch.manual_seed(0)
    torch.save(ConfigParser(config).get_parsed_content("network_def").state_dict(), bundle / "models" / "model.pt")
    return bundle


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    """A tiny bundle, a datalist of the 4 sample cases, and their single-process explanations."""
    root = tmp_path_factory.mktemp("cohort")
    bundle = _tiny_bundle(root)
    datalist = root / "datalist.json"
    datalist.write_text(json.dumps(CASES))
    methods = {METHOD: {"method": "segxrescam", "pool_size": 2}}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as torchrun's workers, so the float32 convolutions are the same
    try:
        total = run_cohort(bundle, read_datalist(datalist), root / "single", methods, {"class_index": 1})
    finally:
        torch.set_num_threads(threads)
    assert total["done"] == 4 and not total["failed"], total
    return {"root": root, "bundle": bundle, "datalist": datalist, "single": root / "single"}


def _saliency(out: Path, image: str) -> Path:
    return Path(case_outputs(out, image, [METHOD], ["class1"])[0])


def _assert_matches_single(out: Path, single: Path) -> None:
    for image in CASES:
        path, ref = nib.load(_saliency(out, image)), nib.load(_saliency(single, image))
        scan = nib.load(image)
        assert path.shape == scan.shape and np.allclose(path.affine, scan.affine, atol=1e-5), "on the scan's grid"
        # the same float32 computation on the same inputs, one thread each: bit-identical
        np.testing.assert_array_equal(path.get_fdata(), ref.get_fdata())


def _explain_args(cohort, out: Path) -> list[str]:
    return ["-m", "monai_xres", "explain", "--bundle", str(cohort["bundle"]), "--class", "1", "--output-dir",
            str(out), "--datalist"]


def test_shard_puts_every_case_on_exactly_one_rank():
    for n in range(8):
        items = [f"case{i}" for i in range(n)]
        for world in range(1, 5):
            shards = [shard(items, r, world) for r in range(world)]
            assert sorted(x for s in shards for x in s) == items
            assert max(map(len, shards)) - min(map(len, shards)) <= 1


def test_mask_blocks_split_the_seeded_sequence_at_batch_boundaries(monkeypatch):
    net = torch.nn.Conv3d(1, 2, 1)
    for n_masks, batch, world in [(30, 4, 2), (3, 4, 2), (17, 5, 3), (8, 8, 4), (1, 1, 2)]:
        rise = MaskParallelSegRISE(net, n_masks=n_masks, batch_size=batch, verbose=False)
        blocks = []
        for rank in range(world):
            monkeypatch.setattr(xdist, "rank_and_world", lambda group=None, r=rank, w=world: (r, w))
            blocks.append(rise._mask_indices(0, n_masks))
        assert [i for b in blocks for i in b] == list(range(n_masks)), "contiguous, disjoint, complete, in order"
        assert all(b.start % batch == 0 for b in blocks if len(b)), "each rank runs the single process's batches"
    # a stage of the adaptive estimator: its batches start at the stage's first mask
    blocks = []
    for rank in range(3):
        monkeypatch.setattr(xdist, "rank_and_world", lambda group=None, r=rank: (r, 3))
        blocks.append(MaskParallelSegRISE(net, batch_size=10, verbose=False)._mask_indices(64, 128))
    assert [i for b in blocks for i in b] == list(range(64, 128))
    assert all((b.start - 64) % 10 == 0 for b in blocks if len(b))


def test_mask_parallel_rise_alone_is_segrise_and_rejects_what_it_cannot_split(small_unet):
    net, x = small_unet(3, 2), torch.rand(1, 1, 16, 16, 8)
    target = RegionTarget(1, box=((4, 4, 2), (12, 12, 6)))
    kwargs = dict(n_masks=10, grid_size=(4, 4, 2), batch_size=3, score="logit", seed=5, verbose=False)
    np.testing.assert_array_equal(MaskParallelSegRISE(net, **kwargs)(x, target), SegRISE(net, **kwargs)(x, target))
    with pytest.raises(ValueError, match="early_stop_tol"):
        MaskParallelSegRISE(net, early_stop_tol=1e-3)
    with pytest.raises(ValueError, match="use SegRISE"):
        MaskParallelSegRISE(net, **kwargs).attribute(x, target, masks=torch.ones(2, 1, 16, 16, 8))


def test_mask_parallel_methods_builds_the_rise_on_the_bundle_network():
    from monai.bundle import ConfigParser

    from monai_xres.apps.runner import mask_parallel_methods

    methods = {"segrise": {"method": "segrise", "n_masks": 7, "seed": 2}, "x": {"method": "segxrescam"}}
    converted = mask_parallel_methods(methods)
    assert converted["x"] == methods["x"]
    parser = ConfigParser({"network": {"_target_": "torch.nn.Conv3d", "in_channels": 1, "out_channels": 2,
                                       "kernel_size": 1}, "explain_methods": converted})
    rise = parser.get_parsed_content("explain_methods")["segrise"]
    assert isinstance(rise, MaskParallelSegRISE) and rise.network is parser.get_parsed_content("network")
    assert (rise.n_masks, rise.seed) == (7, 2)


RISE_SCRIPT = """
import sys, torch
from monai.networks.nets import UNet
from monai_xres.distributed import process_group
from monai_xres.explainers.rise.parallel import MaskParallelSegRISE
from monai_xres.regions import RegionTarget
from monai_xres.explainers.rise import SegRISE

torch.set_num_threads(1)  # as torchrun's workers: the same float32 convolutions in every process
torch.manual_seed(0)
net = UNet(3, 1, 2, (4, 8, 16), (2, 2), num_res_units=1).eval()
x = torch.rand(1, 1, 16, 16, 8, generator=torch.Generator().manual_seed(1))
target = RegionTarget(1, box=((4, 4, 2), (12, 12, 6)))
CONFIGS = [dict(n_masks=22, batch_size=4), dict(n_masks=3, batch_size=4),  # rank 1 has no mask at all
           dict(n_masks=13, batch_size=2, center_scores=True, context_margin=2, crop_multiple=4),
           # the regression estimator with enough masks to fit the cells: the fit's sums are added over the ranks
           dict(n_masks=150, batch_size=12, center_scores=False),
           # the adaptive estimator: stages [0, 64), [64, 128), [128, 150), each split across the ranks
           dict(n_masks=150, batch_size=12, score="dice", estimator="adaptive"),
           dict(n_masks=140, batch_size=16, score="dice", center_scores=True, context_margin=2, estimator="adaptive")]
explainer = MaskParallelSegRISE if sys.argv[2] == "parallel" else SegRISE
with process_group() as (rank, world):
    maps = [explainer(net, grid_size=(4, 4, 2), seed=3, verbose=False, **{"score": "logit", **c}).attribute(x, target)
            for c in CONFIGS]
    assert [m.info["estimator_used"] for m in maps] == ["regression"] * 4 + ["adaptive"] * 2
    assert maps[3].info["regression"][0]["ridges"][0] != "mean only"
    torch.save([(e.saliency, e.info["n_masks_used"], e.info["mean_score"]) for e in maps],
               f"{sys.argv[1]}/{sys.argv[2]}_{rank}_of_{world}.pt")
"""


def test_mask_parallel_rise_on_two_ranks_equals_single_process(tmp_path, monkeypatch):
    script = tmp_path / "rise.py"
    script.write_text(textwrap.dedent(RISE_SCRIPT))
    monkeypatch.setattr(sys, "argv", [str(script), str(tmp_path), "single"])
    threads = torch.get_num_threads()
    try:
        runpy.run_path(str(script), run_name="__main__")  # the reference: plain SegRISE in this process
    finally:
        torch.set_num_threads(threads)
    subprocess.run(_torchrun(str(script), str(tmp_path), "parallel"), env=ENV, check=True, timeout=300,
                   capture_output=True)
    single = torch.load(tmp_path / "single_0_of_1.pt")
    for rank in (0, 1):
        parallel = torch.load(tmp_path / f"parallel_{rank}_of_2.pt")
        for (ref, ref_n, ref_mean), (got, n, mean) in zip(single, parallel):
            assert n == ref_n and mean == pytest.approx(ref_mean, rel=1e-12)
            # the float64 sums differ only in the order of additions (~1e-15 relative); the float32 maps
            # are then equal or one float32 rounding step apart
            torch.testing.assert_close(got, ref, rtol=2.5e-7, atol=2.5e-7 * float(ref.abs().max()))


def _write_complete_case(out: Path, image: str, name: str) -> None:
    """What the bundle and SaliencyWriter leave for a finished case: segmentation, map, sidecar with checksums."""
    from monai_xres.output.provenance import sha256_file

    stem = Path(image).name[: -len(".nii.gz")]
    folder = out / stem
    folder.mkdir(parents=True, exist_ok=True)
    for suffix in ("seg", name):
        nib.save(nib.Nifti1Image(np.zeros((4, 4, 4), np.float32), np.eye(4)), folder / f"{stem}_{suffix}.nii.gz")
    nifti = folder / f"{stem}_{name}.nii.gz"
    record = {"checksums": {"saliency": {"bytes": nifti.stat().st_size, "sha256": sha256_file(nifti)}}}
    (folder / f"{stem}_{name}.json").write_text(json.dumps(record))


def test_explain_cohort_logs_a_failed_case_goes_on_and_resumes(tmp_path):
    cases = [{"image": f"/data/case{i}.nii.gz"} for i in range(4)]
    calls: list[str] = []

    def explain_case(case):
        calls.append(Path(case["image"]).name)
        if case["image"].endswith("case1.nii.gz"):
            raise RuntimeError("unreadable scan")
        if case["image"].endswith("case2.nii.gz"):
            return [{"method": "m", "region": "class1", "error": "no voxel predicted"}]
        _write_complete_case(tmp_path, case["image"], "m_class1")
        return []

    first = explain_cohort(cases, tmp_path, ["m"], ["class1"], explain_case)
    assert first["done"] == ["/data/case0.nii.gz", "/data/case3.nii.gz"] and not first["skipped"]
    assert [f["case"] for f in first["failed"]] == ["/data/case1.nii.gz", "/data/case2.nii.gz"]
    assert "unreadable scan" in first["failed"][0]["errors"][0] and calls == [f"case{i}.nii.gz" for i in range(4)]
    calls.clear()
    again = explain_cohort(cases, tmp_path, ["m"], ["class1"], explain_case)
    assert calls == ["case1.nii.gz", "case2.nii.gz"], "finished cases are not redone"
    assert again["skipped"] == ["/data/case0.nii.gz", "/data/case3.nii.gz"]
    calls.clear()
    explain_cohort(cases, tmp_path, ["m"], ["class1"], explain_case, overwrite=True)
    assert len(calls) == 4


def test_read_datalist_forms_and_errors(tmp_path):
    (tmp_path / "a.nii.gz").touch()
    (tmp_path / "list.json").write_text(json.dumps(["a.nii.gz", {"image": "/x/b.nii.gz", "label": "b_seg.nii.gz"}]))
    assert read_datalist(tmp_path / "list.json") == [{"image": str(tmp_path / "a.nii.gz")},
                                                     {"image": "/x/b.nii.gz", "label": str(tmp_path / "b_seg.nii.gz")}]
    (tmp_path / "list.txt").write_text("a.nii.gz\n\n/x/b.nii.gz\n")
    assert [c["image"] for c in read_datalist(tmp_path / "list.txt")] == [str(tmp_path / "a.nii.gz"), "/x/b.nii.gz"]
    (tmp_path / "decathlon.json").write_text(json.dumps({"testing": [{"image": "a.nii.gz"}]}))
    assert read_datalist(tmp_path / "decathlon.json") == [{"image": str(tmp_path / "a.nii.gz")}]
    bad = {"missing.json": None, "empty.json": [], "noimage.json": [{"label": "x"}],
           "dup.json": ["/p/case.nii.gz", "/q/case.nii.gz"], "nokey.json": {"training": []}}
    messages = {"missing.json": "does not exist", "empty.json": "lists no scans", "noimage.json": "no 'image'",
                "dup.json": "same output files", "nokey.json": "no 'testing' list"}
    for name, content in bad.items():
        if content is not None:
            (tmp_path / name).write_text(json.dumps(content))
        with pytest.raises(ValueError, match=messages[name]):
            read_datalist(tmp_path / name)


def test_cohort_on_two_ranks_writes_each_case_once_as_one_process_does(cohort, tmp_path):
    broken = tmp_path / "broken.nii.gz"
    broken.write_bytes(b"not a scan")
    datalist = tmp_path / "list.json"
    datalist.write_text(json.dumps([*CASES, str(broken)]))
    out = tmp_path / "out"
    run = subprocess.run(_torchrun(*_explain_args(cohort, out), str(datalist)), env=ENV, capture_output=True,
                         text=True, timeout=500)
    assert run.returncode == 1, "a failed case makes the exit status 1"
    assert "4 explained, 0 already done (skipped), 1 failed" in run.stdout, run.stdout + run.stderr[-3000:]
    summary = json.loads((out / "cohort_summary.json").read_text())
    per_rank = [set(r["done"]) for r in summary["per_rank"]]
    assert [r["rank"] for r in summary["per_rank"]] == [0, 1] and all(per_rank)
    assert not per_rank[0] & per_rank[1] and per_rank[0] | per_rank[1] == {Path(c).name[:-7] for c in CASES}
    assert summary["failed"][0]["case"] == str(broken)
    for image in CASES:  # each case's folder holds its files only, written once
        stem = Path(image).name[: -len(".nii.gz")]
        assert sorted(p.name for p in (out / stem).iterdir()) == sorted(
            f"{stem}_{s}" for s in ("seg.nii.gz", f"{METHOD}_class1.nii.gz", f"{METHOD}_class1.png",
                                    f"{METHOD}_class1.json"))
    _assert_matches_single(out, cohort["single"])


def test_killed_cohort_resumed_finishes_without_redoing_finished_cases(cohort, tmp_path):
    out = tmp_path / "out"
    args = _torchrun(*_explain_args(cohort, out), str(cohort["datalist"]))
    proc = subprocess.Popen(args, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 300
        while not list(out.glob(f"*/*_{METHOD}_class1.json")) and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        proc.send_signal(signal.SIGTERM)  # as a scheduler pre-empting the job: torchrun stops its workers
        proc.wait(timeout=120)

    def complete(image):
        return all(os.path.isfile(p) for p in case_outputs(out, image, [METHOD], ["class1"]))

    finished = {image: _saliency(out, image).stat().st_mtime_ns for image in CASES if complete(image)}
    assert 1 <= len(finished) < len(CASES), f"the kill should land mid-run: {len(finished)} cases finished"
    run = subprocess.run(args, env=ENV, capture_output=True, text=True, timeout=500)
    assert run.returncode == 0, run.stderr[-3000:]
    summary = json.loads((out / "cohort_summary.json").read_text())
    assert summary["skipped"] == len(finished) and summary["done"] == len(CASES) - len(finished)
    assert {image: _saliency(out, image).stat().st_mtime_ns for image in finished} == finished, "not rewritten"
    _assert_matches_single(out, cohort["single"])


def test_multi_gpu_explain_overlay_on_two_ranks(cohort, tmp_path):
    bundle, out = cohort["bundle"], tmp_path / "out"
    configs = [str(bundle / "configs" / f) for f in ("inference.json", "explain.json", "multi_gpu_explain.json")]
    args = _torchrun("-m", "monai.bundle", "run", "--config_file", repr(configs), "--bundle_root", str(bundle),
                     "--output_dir", str(out), "--dataset_dir", str(REPO / "sample_data"),
                     "--explain_methods", repr({METHOD: {"method": "segxrescam", "pool_size": 2}}))
    run = subprocess.run(args, env=ENV, capture_output=True, text=True, timeout=500)
    assert run.returncode == 0, run.stderr[-3000:]
    summary = json.loads((out / "cohort_summary.json").read_text())
    assert summary["done"] == 4 and summary["processes"] == 2 and not summary["failed"]
    assert sorted(len(r["done"]) for r in summary["per_rank"]) == [2, 2]
    _assert_matches_single(out, cohort["single"])
