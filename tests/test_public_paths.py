"""Every path users and configs name keeps working: bundle ``_target_``s and ``$import``s, dotted names in
README and docs, the package's exported names, the console script, ``python -m`` entry points, and the
module paths of the families regrouped into subpackages (with a deprecation warning)."""

from __future__ import annotations

import configparser
import importlib
import json
import re
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

import monai_xres
from monai_xres._moved import MOVED

ROOT = Path(__file__).resolve().parents[1]
DOTTED = re.compile(r"\bmonai_xres(?:\.[A-Za-z_][A-Za-z0-9_]*)+")


def resolve(dotted: str):
    """Import the longest module prefix of ``dotted`` and walk the rest as attributes."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ModuleNotFoundError:
            continue
        for name in parts[cut:]:
            obj = getattr(obj, name)
        return obj
    raise ModuleNotFoundError(dotted)


def _config_strings(node):
    if isinstance(node, dict):
        for value in node.values():
            yield from _config_strings(value)
    elif isinstance(node, list):
        for value in node:
            yield from _config_strings(value)
    elif isinstance(node, str):
        yield node


def _configs() -> list[Path]:
    return sorted([*ROOT.glob("bundles/*/configs/*.json"), *ROOT.glob("monai_xres/configs/*.json")])


def test_every_config_target_and_import_resolves():
    names = set()
    for path in _configs():
        for text in _config_strings(json.loads(path.read_text())):
            names.update(m for m in DOTTED.findall(text))
    assert {"monai_xres.handlers.SaliencyWriter", "monai_xres.sample_data"} <= names
    for name in sorted(names):
        resolve(name)


def test_every_dotted_name_in_readme_and_docs_resolves():
    pages = [ROOT / "README.md", ROOT / "CONTRIBUTING.md", *ROOT.glob("docs/**/*.md"),
             *ROOT.glob("bundles/*/docs/*.md")]
    names = {m for page in pages for m in DOTTED.findall(page.read_text())}
    assert "monai_xres.apps.nnunet" in names or "monai_xres.sample_data" in names
    code = "".join(f.read_text() for f in (ROOT / "monai_xres").rglob("*.py"))
    loggers = set(re.findall(r'getLogger\("([^"]+)"\)', code))
    missing = []
    for name in sorted(names - loggers):
        try:
            resolve(name)
        except (ImportError, AttributeError):
            missing.append(name)
    assert missing == []


def test_package_names_and_entry_points():
    for name in monai_xres.__all__:
        assert getattr(monai_xres, name) is not None
    from monai_xres.apps.nnunet import NnUNetExplainer  # README's nnU-Net example
    from monai_xres.explainers.rise import SegRISE
    assert NnUNetExplainer.__module__ == "monai_xres.apps.nnunet.explainer" and SegRISE is monai_xres.SegRISE
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    (script,) = [line for line in cfg["options.entry_points"]["console_scripts"].splitlines() if line.strip()]
    module, func = script.split("=")[1].strip().split(":")
    assert callable(getattr(importlib.import_module(module), func))


@pytest.mark.parametrize("module", ["monai_xres", "monai_xres.sample_data"])
def test_python_dash_m_entry_points(module):
    run = subprocess.run([sys.executable, "-m", module, "--help"], capture_output=True, text=True, cwd=ROOT)
    assert run.returncode == 0 and "usage" in run.stdout, run.stderr[-500:]


@pytest.mark.parametrize("old", sorted(MOVED))
def test_moved_module_paths_import_with_a_deprecation_warning(old):
    sys.modules.pop(old, None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        module = importlib.import_module(old)
    assert module is importlib.import_module(MOVED[old])
    assert any(issubclass(w.category, DeprecationWarning) and MOVED[old] in str(w.message) for w in caught)
