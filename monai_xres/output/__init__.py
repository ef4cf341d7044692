"""Outputs: ``writer`` (atomic files, saliency NIfTI), ``overlay`` (PNG previews), ``provenance`` (sidecars)."""

from monai_xres.output.overlay import overlay_centre, save_overlay
from monai_xres.output.provenance import package_versions, sha256_file, sidecar
from monai_xres.output.writer import atomic_path, atomic_write_text

__all__ = ["atomic_path", "atomic_write_text", "overlay_centre", "package_versions", "save_overlay", "sha256_file",
           "sidecar"]
