"""The house rules that keep the package easy to live in: no import cycle, short modules, families as
subpackages, one registry, and a wheel that carries what the demo needs."""

from __future__ import annotations

import ast
import collections
import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from monai_xres.explainers.registry import get_method, method_names

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "monai_xres"


def _modules() -> dict[str, Path]:
    return {".".join(f.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__"): f
            for f in PACKAGE.rglob("*.py") if "_shipped" not in f.parts}


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The package modules ``name`` imports, at any depth of the file (lazy imports count too)."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            for alias in node.names:
                candidate = f"{base}.{alias.name}"
                found.add(candidate if candidate in known else base)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {m for m in found if m in known and m != name}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_the_import_graph_has_no_cycle():
    modules = _modules()
    # package __init__ files re-export their modules; edges through them would be import-order artefacts
    hubs = {m for m, f in modules.items() if f.name == "__init__.py"}
    graph = {m: _imports(m, f, set(modules)) - hubs for m, f in modules.items() if m not in hubs}
    assert _cycles(graph) == []
    assert _cycles({"a": {"b"}, "b": {"a"}, "c": set()}) == [["a", "b"]]  # the check itself can fail


def test_no_module_is_longer_than_300_lines():
    long = {m: n for m, f in _modules().items() if (n := len(f.read_text().splitlines())) > 300}
    assert long == {}


def _prefix_families(folders: list[Path], root: Path) -> dict[str, int]:
    """``folder/prefix_*`` -> count, for every folder with three or more sibling modules sharing a prefix."""
    found = {}
    for folder in folders:
        stems = [f.stem for f in folder.glob("*.py") if "_" in f.stem.strip("_")]
        for prefix, count in collections.Counter(s.split("_")[0] for s in stems).items():
            if count >= 3:
                found[f"{folder.relative_to(root)}/{prefix}_*"] = count
    return found


def test_a_family_of_modules_is_a_subpackage(tmp_path):
    folders = [PACKAGE, *(d for d in PACKAGE.rglob("*") if d.is_dir() and d.name != "__pycache__")]
    assert _prefix_families([d for d in folders if "_shipped" not in d.parts], ROOT) == {}
    for name in ("rise_masks", "rise_stream", "rise_crop", "cam_shared", "cam"):  # the check itself can fail
        (tmp_path / "explainers" / f"{name}.py").parent.mkdir(exist_ok=True)
        (tmp_path / "explainers" / f"{name}.py").write_text("")
    assert _prefix_families([tmp_path / "explainers"], tmp_path) == {"explainers/rise_*": 3}


def _string_constants(tree: ast.AST) -> list[str]:
    """String literals that are not docstrings."""
    docstrings = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                docstrings.add(id(first.value))
    return [n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)
            and id(n) not in docstrings]


def test_only_the_registry_names_a_method():
    names = {n for m in method_names() for n in (m, *get_method(m).aliases)}
    offenders = {}
    for module, path in _modules().items():
        if module == "monai_xres.explainers.registry":
            continue
        hits = [s for s in _string_constants(ast.parse(path.read_text()))
                if s in names or any(s.startswith(f"{n}-") for n in names)]
        if hits:
            offenders[module] = hits
    assert offenders == {}


# Runs the CLI with every installed distribution the wheel does not require hidden, as a bare environment would
# have it (MONAI imports many optional packages when they are there, and skips them when they are not).
_BARE = """
import importlib.abc, json, os, sys
hidden = set(json.loads(os.environ["MONAI_XRES_TEST_HIDDEN"]))
class Hide(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in hidden:
            raise ModuleNotFoundError(f"No module named {name!r} (not required by the wheel)", name=name)
sys.meta_path.insert(0, Hide())
from monai_xres.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _declared_closure(wheel: Path) -> set[str]:
    """The distributions the wheel's core requirements pull in (no extras), transitively, canonical names."""
    import zipfile
    from email.parser import Parser
    from importlib import metadata

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    with zipfile.ZipFile(wheel) as archive:
        (name,) = [n for n in archive.namelist() if n.endswith(".dist-info/METADATA")]
        requirements = Parser().parsestr(archive.read(name).decode()).get_all("Requires-Dist") or []
    seen: set[str] = set()
    while requirements:
        requirement = Requirement(requirements.pop())
        dist = canonicalize_name(requirement.name)
        if dist in seen or (requirement.marker and not requirement.marker.evaluate({"extra": ""})):
            continue
        seen.add(dist)
        with contextlib.suppress(metadata.PackageNotFoundError):
            requirements += metadata.requires(dist) or []
    return seen


@pytest.mark.timeout(600)
def test_demo_runs_from_the_wheel_outside_the_checkout_on_declared_dependencies_only(tmp_path):
    """Build the wheel, unpack it into a folder of its own and run ``monai-xres demo`` from a folder outside the
    checkout with that folder first on the path and every installed distribution the wheel's core requirements
    do not pull in hidden: the wheel must carry every file the demo and the shipped bundles read, and
    ``setup.cfg`` must declare every package they import (scikit-image for MONAI's connected components, say).
    This is a bare environment without installing one (torch again) into a fresh virtual environment; CI's
    first README command does that too."""
    from importlib import metadata

    from packaging.utils import canonicalize_name

    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", str(ROOT),
                    "-w", str(wheels)], check=True, cwd=tmp_path, capture_output=True)
    (wheel,) = wheels.glob("monai_xres-*.whl")
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-compile", "-q", "--target", str(site),
                    str(wheel)], check=True, cwd=tmp_path, capture_output=True)
    allowed = _declared_closure(wheel) | {"monai-xres"}
    hidden = sorted(m for m, dists in metadata.packages_distributions().items()
                    if m not in sys.stdlib_module_names and not {canonicalize_name(d) for d in dists} & allowed)
    assert "nnunetv2" in hidden and "captum" in hidden and "torch" not in hidden  # extras are hidden, core is not
    env = {**{k: v for k, v in os.environ.items() if k != "PYTHONUSERBASE"}, "PYTHONPATH": str(site),
           "MONAI_XRES_TEST_HIDDEN": json.dumps(hidden)}
    out = tmp_path / "elsewhere" / "demo"
    out.parent.mkdir()
    seen = subprocess.run([sys.executable, "-c", "import monai_xres; print(monai_xres.__file__)"], cwd=out.parent,
                          env=env, check=True, capture_output=True, text=True).stdout.strip()
    assert Path(seen).is_relative_to(site) and not Path(seen).is_relative_to(ROOT), seen
    run = subprocess.run([sys.executable, "-c", _BARE, "demo", "--output-dir", str(out), "--rise-masks", "8"],
                         cwd=out.parent, env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]
    written = sorted(p.name for p in (out / "case_0900").glob("*.nii.gz"))
    assert "case_0900_seg.nii.gz" in written and len(written) == 1 + len(method_names(optional=False)), written
    assert "Warning" not in run.stderr and "look first" in run.stdout, run.stderr[-2000:]
