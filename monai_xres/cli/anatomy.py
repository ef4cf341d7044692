"""``explain --anatomy LABELS [--anatomy-names JSON]``: each map's evidence share per structure of a label map.

Checked before any work: the label map is readable and on the scan's own grid
(:func:`~monai_xres.apps.checks.check_same_grid`), the names are ``{"1": "spleen", ...}``. Names default to the
bundle's class names (``metadata.json``'s ``channel_def``) when the label map is, say, its own multi-class
prediction. At the end, one line per map says where most of its evidence lies
(:func:`~monai_xres.apps.anatomy.summary_line`).
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Any

from monai_xres.apps import checks
from monai_xres.apps.anatomy import as_anatomy_settings
from monai_xres.apps.errors import UsageError

__all__ = ["add_arguments", "anatomy_plan"]


def add_arguments(group: argparse._ArgumentGroup) -> None:
    """``--anatomy`` and ``--anatomy-names`` (in ``explain``'s QC group)."""
    group.add_argument("--anatomy", metavar="LABELS", help="label map on the scan's grid (planted structures, a "
                       "TotalSegmentator output, the bundle's multi-class prediction): each map's share of evidence "
                       "per structure, in its sidecar and the QC table, and where most of it lies")
    group.add_argument("--anatomy-names", metavar="JSON", help="names of --anatomy's labels: a JSON file or text "
                       "{\"1\": \"spleen\", ...} (default: the bundle's class names, else 'label N')")


def _names(text: str | None, bundle: str | None) -> dict[str, str]:
    if text is None:
        from monai_xres.output.slicer import class_names

        try:
            return {str(k): v for k, v in class_names(bundle).items() if int(k) != 0} if bundle else {}
        except ValueError:
            return {}
    try:
        raw = open(text).read() if os.path.isfile(text) else text
        names = json.loads(raw)
    except (OSError, ValueError) as e:
        raise UsageError(f"--anatomy-names {text!r} is not JSON ({e}): give a file or text like "
                         "'{\"1\": \"spleen\"}'.") from e
    if not isinstance(names, dict) or not all(str(k).lstrip("-").isdigit() for k in names):
        raise UsageError(f"--anatomy-names must map label values to names, like '{{\"1\": \"spleen\"}}', got {raw!r}.")
    return {str(k): str(v) for k, v in names.items()}


def anatomy_plan(args: argparse.Namespace, scan: checks.ScanFacts) -> dict[str, Any] | None:
    """The ``SaliencyWriter`` anatomy settings of ``--anatomy`` (None without it), checked against ``scan``."""
    if args.anatomy is None:
        if args.anatomy_names is not None:
            raise UsageError("--anatomy-names names the labels of --anatomy: add --anatomy LABELS.")
        return None
    path = args.anatomy if os.path.exists(args.anatomy) else None
    if path is None:
        raise UsageError(f"--anatomy {args.anatomy!r} does not exist.")
    checks.check_same_grid(checks.check_scan(path), scan, "--anatomy")
    names = _names(args.anatomy_names, args.bundle)
    class_name = _names(None, args.bundle).get(str(args.class_index), f"class {args.class_index}")
    plan = {"labels": os.path.abspath(path), "names": names, "target": class_name}
    as_anatomy_settings(plan)
    return plan
