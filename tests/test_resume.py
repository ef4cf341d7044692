"""Nothing lost, nothing half-written: an ``--overwrite`` cohort run killed at several moments, then resumed,
completes every case with files that load; a resume trusts only complete outputs, never a link it did not
create, and removes the temporary files a killed run left."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from monai_xres.apps.resume import case_complete, case_outputs
from monai_xres.cli import main

REPO = Path(__file__).resolve().parents[1]
CASES = [str(REPO / "sample_data" / "images" / f"case_090{i}.nii.gz") for i in (0, 1)]
TAG = "seggradcam"
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from test_distributed import _tiny_bundle

    root = tmp_path_factory.mktemp("resume")
    bundle = _tiny_bundle(root)
    datalist = root / "cases.txt"
    datalist.write_text("\n".join(CASES) + "\n")
    setup = {"root": root, "bundle": bundle, "datalist": datalist}
    assert main(_args(setup, root / "done")) == 0  # a finished run, copied for each test
    return setup


def _finished(setup, tmp_path: Path) -> Path:
    out = tmp_path / "out"
    shutil.copytree(setup["root"] / "done", out, symlinks=True)
    return out


def _args(setup, out: Path, *extra: str) -> list[str]:
    return ["explain", "--bundle", str(setup["bundle"]), "--datalist", str(setup["datalist"]), "--class", "1",
            "--method", TAG, "--output-dir", str(out), *extra]


def _killed_run(setup, out: Path, rename: int, before: bool) -> int:
    """The CLI in a child process that dies (as with SIGKILL) at its ``rename``-th atomic rename, just before
    the rename (its temporary file written) or just after."""
    script = textwrap.dedent(f"""
        import os, sys
        real, count = os.replace, [0]
        def replace(src, dst):
            count[0] += 1
            if count[0] == {rename} and {before}:
                os._exit(137)
            real(src, dst)
            if count[0] == {rename}:
                os._exit(137)
        os.replace = replace
        from monai_xres.cli import main
        sys.exit(main({_args(setup, out, "--overwrite")!r}))
        """)
    return subprocess.run([sys.executable, "-c", script], env=ENV, capture_output=True, timeout=600).returncode


def _assert_every_case_complete(out: Path) -> None:
    for image in CASES:
        assert case_complete(out, image, [TAG], ["class1"]), image
        stem = Path(image).name[: -len(".nii.gz")]
        for name in (f"{stem}_seg.nii.gz", f"{stem}_{TAG}_class1.nii.gz"):
            loaded = nib.load(out / stem / name)
            assert loaded.shape == nib.load(image).shape and np.isfinite(loaded.get_fdata()).all()
    assert not [p for p in out.rglob("*") if ".partial-" in p.name], "no temporary file is left"


@pytest.mark.parametrize("rename, before", [(1, True), (3, False), (6, True)])
def test_killed_overwrite_run_is_completed_by_a_resume(setup, tmp_path, rename, before, capsys):
    out = _finished(setup, tmp_path)
    assert _killed_run(setup, out, rename, before) == 137
    if before:
        assert [p for p in out.rglob("*") if ".partial-" in p.name], "the kill left a temporary file behind"
    assert main(_args(setup, out)) == 0, capsys.readouterr().err
    _assert_every_case_complete(out)


def test_resume_redoes_an_empty_segmentation_and_never_writes_through_a_link(setup, tmp_path, capsys):
    out = _finished(setup, tmp_path)
    first, second = (Path(case_outputs(out, image, [TAG], ["class1"])[0]) for image in CASES)
    seg = first.parent / first.name.replace(f"_{TAG}_class1", "_seg")
    seg.write_bytes(b"")  # what a killed non-atomic writer left before this project wrote atomically
    elsewhere = tmp_path / "precious.nii.gz"
    elsewhere.write_bytes(b"not ours")
    second.unlink()
    second.symlink_to(elsewhere)
    assert not case_complete(out, CASES[0], [TAG], ["class1"]) and not case_complete(out, CASES[1], [TAG], ["class1"])
    assert main(_args(setup, out)) == 0
    out_text = capsys.readouterr().out
    assert "2 explained, 0 already done" in out_text, out_text
    assert elsewhere.read_bytes() == b"not ours" and not second.is_symlink()
    _assert_every_case_complete(out)
    assert main(_args(setup, out)) == 0 and "0 explained, 2 already done" in capsys.readouterr().out
