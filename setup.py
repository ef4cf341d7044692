"""Build hook: the wheel carries the shipped example bundles and sample cases as package data.

The repository keeps one copy of them, in ``bundles/`` and ``sample_data/`` at its top level. A wheel
build copies them into ``monai_xres/_shipped/`` of the built package, where ``monai_xres.apps.demo``
finds them with ``importlib.resources``; an editable install reads them from the checkout instead.
Everything else about the package is in ``setup.cfg``.
"""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

SHIPPED = ("bundles", "sample_data")
LEFT_OUT = shutil.ignore_patterns("eval", "__pycache__", "*.pyc", ".*")


class BuildWithShipped(build_py):
    """``build_py`` that also copies the shipped folders into the built package."""

    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):
            return  # an editable install reads them from the checkout
        root = Path(__file__).resolve().parent
        target = Path(self.build_lib) / "monai_xres" / "_shipped"
        for name in SHIPPED:
            if (root / name).is_dir():  # an sdist holds them too (MANIFEST.in)
                shutil.copytree(root / name, target / name, dirs_exist_ok=True, ignore=LEFT_OUT)


setup(cmdclass={"build_py": BuildWithShipped})
