"""Old module paths of regrouped families keep importing, with a deprecation warning.

The families of prefixed modules became subpackages (``explainers/rise_masks.py`` is now
``explainers/rise/masks.py``, ...). Users' code that imports an old path gets the new module itself, so
classes and functions are the same objects, and a ``DeprecationWarning`` names the path to use.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import warnings

_FAMILIES = {
    "monai_xres.explainers.rise_": ("monai_xres.explainers.rise.", ("masks", "scoring", "stream", "crop", "windows",
                                                                     "parallel")),
    "monai_xres.apps.nnunet_": ("monai_xres.apps.nnunet.", ("folder", "geometry", "inferer", "loader", "run",
                                                           "sample")),
    "monai_xres.cli_": ("monai_xres.cli.", ("parser", "output")),
    "monai_xres.sample_": ("monai_xres.sample_data.", ("anatomy", "render")),
}
MOVED = {old + name: new + name for old, (new, names) in _FAMILIES.items() for name in names}
MOVED["monai_xres.explainers.rise_adaptive"] = "monai_xres.explainers.rise.estimators"


class _MovedModules(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds an old path and hands back the module at its new path."""

    def find_spec(self, fullname, path=None, target=None):
        return importlib.util.spec_from_loader(fullname, self) if fullname in MOVED else None

    def create_module(self, spec):
        warnings.warn(f"{spec.name} moved to {MOVED[spec.name]}: import that instead.", DeprecationWarning,
                      stacklevel=2)
        return importlib.import_module(MOVED[spec.name])

    def exec_module(self, module) -> None:
        """The new module is already executed."""


def install() -> None:
    """Put the finder on ``sys.meta_path`` once."""
    if not any(isinstance(f, _MovedModules) for f in sys.meta_path):
        sys.meta_path.append(_MovedModules())
