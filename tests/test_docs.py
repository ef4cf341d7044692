"""The documentation: README stays a short front door with the demo's picture and links that resolve; the MkDocs
site under ``docs/`` builds with ``--strict`` (every page in the nav, every link and anchor resolving, nothing
fetched from the network) and carries README's set-up commands and the API reference from the docstrings."""

from __future__ import annotations

import html as html_module
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
README_MAX_LINES = 250
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def _mkdocs(config: Path, site: Path) -> subprocess.CompletedProcess:
    pytest.importorskip("mkdocs")  # in the test and docs extras
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    return subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(config), "-d", str(site)],
                          capture_output=True, text=True, cwd=config.parent, env=env, timeout=300)


def _nav_pages(nav) -> list[str]:
    if isinstance(nav, str):
        return [nav]
    if isinstance(nav, dict):
        return [p for value in nav.values() for p in _nav_pages(value)]
    return [p for item in nav for p in _nav_pages(item)]


def _config() -> dict:
    return yaml.safe_load((ROOT / "mkdocs.yml").read_text())


def test_readme_is_short_and_shows_the_demo_picture():
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= README_MAX_LINES
    images = [target for target in re.findall(r"!\[[^\]]*\]\(([^)\s]+)\)", text)]
    assert images and images[0].startswith("docs/images/")
    png = ROOT / images[0]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert text.index(images[0]) < text.index("```bash")  # the picture comes before the set-up commands


def test_every_relative_link_in_readme_and_contributing_resolves():
    checked = 0
    for page in ("README.md", "CONTRIBUTING.md"):
        for target in LINK.findall((ROOT / page).read_text()):
            if re.match(r"[a-z]+:", target) or target.startswith("#"):
                continue
            path = ROOT / target.split("#", 1)[0]
            assert path.exists(), f"{page} links to {target}, which does not exist"
            checked += 1
    assert checked >= 10  # README links into the docs


def test_every_docs_page_is_in_the_nav_once():
    pages = _nav_pages(_config()["nav"])
    on_disk = sorted(str(p.relative_to(ROOT / "docs")) for p in (ROOT / "docs").rglob("*.md"))
    assert sorted(pages) == on_disk and len(set(pages)) == len(pages)


def test_the_site_builds_strict_offline_with_readme_commands_and_the_api(tmp_path):
    run = _mkdocs(ROOT / "mkdocs.yml", tmp_path / "site")
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    html = {p: p.read_text() for p in (tmp_path / "site").rglob("*.html")}
    assert not any("fonts.googleapis" in text or "fonts.gstatic" in text for text in html.values())
    install = (tmp_path / "site" / "installation" / "index.html").read_text()
    install = html_module.unescape(re.sub(r"<[^>]+>", "", install))  # the text, without the highlighting's spans
    block = (ROOT / "README.md").read_text().split("```bash", 1)[1].split("```", 1)[0]
    commands = [line.strip() for line in block.splitlines() if line.strip()]
    assert len(commands) >= 2 and all(line in install for line in commands)  # README's block, as a snippet
    api = (tmp_path / "site" / "api" / "index.html").read_text()
    for name in ("explainers.cam.SegXResCAM", "explainers.rise.SegRISE", "regions.target.RegionTarget",
                 "handlers.SaliencyWriter", "apps.nnunet.NnUNetExplainer"):  # rendered from the docstrings
        assert f'id="monai_xres.{name}"' in api, name
    assert (tmp_path / "site" / "images" / "demo_segxrescam-w2.png").is_file()


def test_strict_build_refuses_a_page_left_out_of_the_nav_and_a_broken_link(tmp_path):
    """The validation settings of mkdocs.yml are what makes these errors: the same settings on a tiny site."""
    config = {key: _config()[key] for key in ("strict", "validation")}
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "index.md").write_text("# Home\n\n[fine](other.md)\n")
    (tmp_path / "docs" / "other.md").write_text("# Other\n")
    (tmp_path / "mkdocs.yml").write_text(yaml.safe_dump({"site_name": "t", **config, "nav": ["index.md", "other.md"]}))
    assert _mkdocs(tmp_path / "mkdocs.yml", tmp_path / "site").returncode == 0
    (tmp_path / "docs" / "orphan.md").write_text("# Orphan\n")
    run = _mkdocs(tmp_path / "mkdocs.yml", tmp_path / "site")
    assert run.returncode != 0 and "orphan.md" in run.stderr
    (tmp_path / "docs" / "orphan.md").unlink()
    (tmp_path / "docs" / "index.md").write_text("# Home\n\n[gone](missing.md) [anchor](other.md#nowhere)\n")
    run = _mkdocs(tmp_path / "mkdocs.yml", tmp_path / "site")
    assert run.returncode != 0 and "missing.md" in run.stderr and "nowhere" in run.stderr
