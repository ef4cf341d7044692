"""Provenance: the JSON sidecar beside each map (method, region, model checksum, versions, input)."""

from __future__ import annotations

import hashlib
import json
import os
import platform
from collections.abc import Mapping
from datetime import datetime, timezone
from importlib import metadata
from typing import Any

__all__ = ["package_versions", "sha256_file", "sidecar"]

_PACKAGES = ("monai-xres", "monai", "torch", "numpy", "nibabel", "itk", "SimpleITK")


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file (e.g. the model weights), read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def package_versions() -> dict[str, str]:
    """Installed versions of the packages that shape an explanation, plus Python's."""
    versions = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            if name == "monai-xres":  # running from a source checkout
                from monai_xres import __version__

                versions[name] = f"{__version__} (not installed)"
    return versions


def sidecar(method: Mapping[str, Any], region: Mapping[str, Any], files: Mapping[str, str],
            input_path: str, model_sha256: str | None = None, model_file: str | None = None,
            extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The JSON-friendly provenance record written beside each saliency map.

    Args:
        method: the explainer's parameters (method name, layer, pool size, masks, ...).
        region: the class and region, as specified and as resolved (voxel box/point, markup, score).
        files: the files written for this map (NIfTI, overlay), by role.
        input_path: the scan the map belongs to.
        model_sha256, model_file: checksum and path of the network weights, when known.
        extra: anything else worth keeping (e.g. the preprocessing applied).
    """
    record: dict[str, Any] = {
        "input": input_path,
        "method": dict(method),
        "region": dict(region),
        "model": {"file": model_file, "sha256": model_sha256},
        "files": dict(files),
        "versions": package_versions(),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    if extra:
        record.update(extra)
    return json.loads(json.dumps(record, default=_jsonable))


def _jsonable(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return str(value)
