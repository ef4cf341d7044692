"""The real abdominal CT beside the checkout (``../shared/data``, never copied into the project): its paths,
and the mark that skips a test where it is absent (CI has it); shared by the tests that read it."""

from __future__ import annotations

from pathlib import Path

import pytest

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
CT, LABELS = DATA / "ct_abdomen_3mm.nii.gz", DATA / "ct_abdomen_3mm_labels.nii.gz"

needs_real_ct = pytest.mark.skipif(
    not (CT.is_file() and LABELS.is_file()),
    reason=f"real CT not found: {CT} and {LABELS.name} (CI has ../shared/data beside the checkout)")
