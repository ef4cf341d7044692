"""The "Faithfulness" docs page: the layer sweep and the faithfulness table with sanity baselines, for every
shipped bundle on the sample cases and on a real CT, written by one command into ``docs/faithfulness.md``.

For each bundle: every level of its network (``encoder1`` .. ``encoderN`` where the type names them,
``bottleneck``, ``decoderN`` .. ``decoder1``, ``head-input``;
:func:`monai_xres.networks.network_levels`) and the multi-layer map of all decoder levels (``combine="mean"``),
each with HiResCAM, Seg-XRes-CAM (mean, window 2) and Seg-Grad-CAM; the other Seg-XRes-CAM variants at the
network's default layer; RISE; the five sanity baselines (in both tables). Cases are the bundle's
network inputs (:func:`monai_xres.apps.cases.bundle_cases`), the region is the spleen (class 1 within label 1).

Layer ranking (what the default layers are chosen by): for each CAM method of the sweep and each of
deletion AUC (lower is better), insertion AUC and the mean over k of the top-k masking Dice (higher is
better), the single layers are ranked on the mean over the cases (1 = best, ties share their mean rank); a
layer's score is its mean rank over those 9 (method, metric) pairs; the lowest score is the most faithful. A
network type's score is the mean of its bundles' scores; equal scores (to 1e-9) go to the level nearer the
bottleneck, the coarser map, since the finer levels buy part of their score by resembling the region.

Usage (from the repository root)::

    python tools/faithfulness_tables.py --real-ct ../shared/data/ct_abdomen_3mm.nii.gz \\
        --real-labels ../shared/data/ct_abdomen_3mm_labels.nii.gz --page docs/faithfulness.md [--note TEXT]

writes ``outputs/faithfulness/<bundle>/<cases>/`` (each evaluation's full report), ``readme_section.md``
and ``ranking.json`` there, and with ``--page`` replaces the page's text between the two ``faithfulness``
markers (``--readme FILE``, from when the tables were in README, is a deprecated alias of ``--page FILE``).
``--quick``: 1 case, 3 steps, 8 RISE masks (checks that it runs; numbers mean nothing);
``--cases N --steps S --rise-masks M``: a reduced sweep (say so wherever its numbers are used); with
``--reduced-for BUNDLE ...`` only those bundles are reduced (the others get the full sweep). Each bundle's
heading in the section states its cases, steps and RISE masks.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from scipy.stats import rankdata

from monai_xres.apps.cases import bundle_cases, expand_layers
from monai_xres.apps.demo import sample_cases, shipped_bundle
from monai_xres.apps.runner import bundle_network
from monai_xres.evaluation import Evaluation, EvaluationSettings, evaluate, markdown_table, write_report
from monai_xres.explainers.registry import get_method
from monai_xres.networks import default_layer_name, network_levels, network_type, resolve_layer
from monai_xres.output.provenance import sha256_file
from monai_xres.output.writer import atomic_write_text

BUNDLES = ("ct_spleen_unet3d", "ct_spleen_unet2d", "ct_organs_unetr3d")
SWEEP = (("hirescam", {}), ("segxrescam", {"pool_size": 2, "pool_mode": "mean"}), ("seggradcam", {}))
AT_DEFAULT = tuple({"pool_size": w, "pool_mode": m} for w, m in ((2, "max"), (4, "mean"), (4, "max")))
RISE = ({},)
COLUMNS_TOP = ["masking_top1pct_dice", "masking_top2pct_dice", "masking_top5pct_dice", "masking_top10pct_dice",
               "masking_top20pct_dice", "masking_top50pct_dice"]
COLUMNS = COLUMNS_TOP + ["masking_dice_0mm", "masking_retained_0mm", "deletion_auc", "insertion_auc",
                         "randomisation_spearman", "randomisation_flagged"]
BEGIN, END = "<!-- faithfulness:begin -->", "<!-- faithfulness:end -->"
FULL_STEPS, FULL_RISE_MASKS = 10, 100  # the full sweep; fewer is a reduced one


def _label(name: str, params: dict) -> str:
    return get_method(name).display_label(params)


def _factories(network: torch.nn.Module, rise_masks: int) -> tuple[dict, dict[str, str], str]:
    """Rows ``label -> factory``, each CAM row's layer alias, and the network's default alias."""
    levels = expand_layers(network, ["all"])
    decoders = [a for a in network_levels(network) if a.startswith("decoder")]
    sweep = levels + (["+".join(decoders)] if len(decoders) > 1 else [])
    default = next(a for a in levels if resolve_layer(network, a).name == default_layer_name(network)[0])
    rows, layer_of = {}, {}
    for layer in sweep:
        for name, params in SWEEP:
            label = f"{_label(name, params)} @ {layer}"
            rows[label] = (name, params, layer)
            layer_of[label] = layer
    for params in AT_DEFAULT:
        rows[f"{_label('segxrescam', params)} @ {default}"] = ("segxrescam", params, default)
    for params in RISE:
        rows[_label("segrise", params)] = ("segrise", {"n_masks": rise_masks, **params}, None)

    def factory(name, params, layer):
        shared = {"verbose": False, "target_layer": layer, "grid_size": 7, "batch_size": 8, "seed": 0}
        return lambda net: get_method(name).build(net, params, shared=shared)

    return {label: factory(*spec) for label, spec in rows.items()}, layer_of, default


def _mean_rank(ranks: list[float]) -> float:
    """A score: the mean of ranks, rounded to 1e-9 so that equal means (e.g. 22/9 reached two ways) compare equal
    and a tie falls to the order of the levels, coarse to fine (module docstring)."""
    return round(float(np.mean(ranks)), 9)


def _ranking(evaluation: Evaluation, layer_of: dict[str, str]) -> dict[str, float]:
    """Mean rank of each single layer over (CAM method, metric) pairs (module docstring)."""
    summary = {row["method"]: row for row in evaluation.summary()}
    layers = sorted({layer for layer in layer_of.values() if "+" not in layer}, key=list(layer_of.values()).index)
    ranks: dict[str, list[float]] = {layer: [] for layer in layers}
    for name, params in SWEEP:
        rows = {layer: summary[f"{_label(name, params)} @ {layer}"] for layer in layers}
        for metric, sign in (("deletion_auc", -1), ("insertion_auc", 1), ("top", 1)):
            value = [np.nanmean([row[m][0] for m in COLUMNS_TOP]) if metric == "top" else row[metric][0]
                     for row in rows.values()]
            for layer, rank in zip(layers, rankdata([-sign * v for v in value], method="average")):
                ranks[layer].append(float(rank))
    return {layer: _mean_rank(r) for layer, r in ranks.items()}


def _subset(evaluation: Evaluation, keep: set[str]) -> Evaluation:
    return dataclasses.replace(evaluation, methods=[m for m in evaluation.methods if m in keep])


def _type_choice(results: list[dict]) -> list[str]:
    """Per network type, the mean over its bundles of each layer's mean rank on the sample cases: the evidence
    for the pinned default (``NETWORK_TYPES``)."""
    lines = []
    for network in dict.fromkeys(r["network"] for r in results):
        mine = [r for r in results if r["network"] == network and r["cases"] == "sample cases" and r["ranking"]]
        if not mine:
            continue
        layers = [layer for layer in mine[0]["ranking"] if all(layer in r["ranking"] for r in mine)]
        score = {layer: _mean_rank([r["ranking"][layer] for r in mine]) for layer in layers}
        ranked = sorted(score.items(), key=lambda x: x[1])  # stable: a tie keeps the coarser level first
        bundles = ", ".join(r["bundle"] for r in mine)
        lines.append(f"- {network} ({bundles}): {', '.join(f'`{layer}` {v:.2f}' for layer, v in ranked)}; "
                     f"most faithful `{ranked[0][0]}`, "
                     f"pinned default `{mine[0]['default']}`.")
    return lines


def _section(results: list[dict], note: str) -> str:
    out = [BEGIN, "", "Written by `python tools/faithfulness_tables.py` (see its docstring); do not edit by hand.", ""]
    if note:
        out += [f"**{note}**", ""]
    out += ["Layer ranking per network type (mean rank over deletion AUC, insertion AUC and the mean top-k masking "
            "Dice, for HiResCAM, Seg-XRes-CAM mean w2 and Seg-Grad-CAM, over the sample cases; lower is more "
            "faithful):", "", *_type_choice(results), ""]
    for r in results:
        head = f"#### {r['bundle']} ({r['network']}), {r['cases']}"
        weights = (f"Weights `models/model.pt` sha256 {r['sha256'][:12]}; {r['n']} case(s), {r['size']}; default "
                   f"layer `{r['default']}`")
        if not r["n"]:
            reasons = "; ".join(f"{s['case']}: {s['reason']}" for s in r["skipped"])
            out += [head, "", f"{weights}. No case to evaluate: {reasons}", ""]
            continue
        ranking = ", ".join(f"{layer} {score:.2f}" for layer, score in sorted(r["ranking"].items(), key=lambda x: x[1]))
        out += [f"{head}: layer sweep", "", f"{weights}. Layer ranking (mean rank, lower is more faithful): "
                f"{ranking}.", "", r["sweep"], "", f"{head}: at the default layer, with baselines", "", r["table"], ""]
    return "\n".join(out + [END])


def _sweep_size(args: argparse.Namespace, bundle_name: str) -> tuple[int | None, int, int, bool]:
    """``(cases, steps, RISE masks, reduced)`` for one bundle: the reduction applies to ``--reduced-for`` only."""
    if args.quick:
        return 1, 3, 8, True
    if args.reduced_for and bundle_name not in args.reduced_for:
        return None, FULL_STEPS, FULL_RISE_MASKS, False
    reduced = bool(args.cases or args.steps != FULL_STEPS or args.rise_masks != FULL_RISE_MASKS)
    return args.cases, args.steps, args.rise_masks, reduced


def run(args: argparse.Namespace) -> list[dict]:
    all_cases = [("sample cases", [str(i) for i, _ in sample_cases()], [str(lb) for _, lb in sample_cases()])]
    if args.real_ct:
        all_cases.append(("real CT", [args.real_ct], [args.real_labels]))
    results = []
    for bundle_name in args.bundles:
        n, steps, masks, reduced = _sweep_size(args, bundle_name)
        datasets = [(name, images[:n], labels[:n]) for name, images, labels in all_cases]
        settings = EvaluationSettings(n_steps=steps, randomisation_steps=args.randomisation_steps,
                                      reference=_label("segrise", RISE[0]), batch_size=8)
        size = f"{steps} deletion/insertion steps, {masks} RISE masks" + (", a reduced sweep" if reduced else "")
        bundle = shipped_bundle(bundle_name)
        network, parser = bundle_network(bundle)
        factories, layer_of, default = _factories(network, masks)
        for cases_name, images, labels in datasets:
            start = time.time()
            out = Path(args.output_dir) / bundle_name / cases_name.replace(" ", "_")
            cases = bundle_cases(network, parser.get_parsed_content("preprocessing"),
                                 parser.get_parsed_content("inferer"), images, labels, 1)
            region = [{"class_index": 1, "region_key": "label", "label_value": 1, "name": "spleen"}]
            evaluation = evaluate(cases, network, factories, region, None, settings)
            write_report(evaluation, out)
            swept = _subset(evaluation, set(layer_of) | set(evaluation.baselines))
            at_default = _subset(evaluation, {m for m in evaluation.methods if layer_of.get(m, default) == default})
            results.append({"bundle": bundle_name, "network": type(network).__name__, "cases": cases_name, "size": size,
                            "n": len({r["case"] for r in evaluation.records}), "default": default,
                            "type_default": str(network_type(network).default_layer),
                            "sha256": sha256_file(bundle / "models" / "model.pt"),
                            "ranking": _ranking(evaluation, layer_of) if evaluation.records else {},
                            "seconds": round(time.time() - start),
                            "skipped": evaluation.skipped, "sweep": markdown_table(swept, columns=COLUMNS),
                            "table": markdown_table(at_default, columns=COLUMNS)})
            print(f"{bundle_name} / {cases_name}: {results[-1]['seconds']} s, ranking {results[-1]['ranking']}",
                  flush=True)
    return results


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--real-ct", help="a real CT scan (e.g. ../shared/data/ct_abdomen_3mm.nii.gz)")
    parser.add_argument("--real-labels", help="its label map, spleen = 1")
    parser.add_argument("--bundles", nargs="+", default=list(BUNDLES), choices=BUNDLES)
    parser.add_argument("--output-dir", default="outputs/faithfulness")
    parser.add_argument("--page", help="Markdown page to update between the faithfulness markers "
                        "(docs/faithfulness.md)")
    parser.add_argument("--readme", help="deprecated: the same as --page")
    parser.add_argument("--note", default="", help="a line printed above the tables (e.g. which weights)")
    parser.add_argument("--rise-masks", type=int, default=FULL_RISE_MASKS)
    parser.add_argument("--steps", type=int, default=FULL_STEPS, help="deletion/insertion steps")
    parser.add_argument("--randomisation-steps", type=int, default=2)
    parser.add_argument("--cases", type=int, help="only the first N cases of each set (a reduced sweep)")
    parser.add_argument("--reduced-for", nargs="+", choices=BUNDLES,
                        help="apply --cases/--steps/--rise-masks to these bundles only")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    if args.readme:  # the tables moved from README to the docs; the old option keeps working
        if args.page:
            parser.error("give --page alone (--readme is its deprecated alias)")
        warnings.warn("--readme is deprecated: use --page (the tables now live in docs/faithfulness.md)",
                      DeprecationWarning, stacklevel=2)
        args.page = args.readme
    if bool(args.real_ct) != bool(args.real_labels):
        parser.error("give --real-ct and --real-labels together")
    missing = [p for p in (args.real_ct, args.real_labels, args.page) if p and not Path(p).is_file()]
    if missing:
        parser.error(f"{missing[0]} does not exist")
    return args


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    text = Path(args.page).read_text(encoding="utf-8") if args.page else ""
    if args.page and (BEGIN not in text or END not in text):  # checked before hours of work, not after
        print(f"faithfulness_tables: error: {args.page} has no {BEGIN} ... {END} markers", file=sys.stderr)
        return 2
    torch.manual_seed(0)
    results = run(args)
    out = Path(args.output_dir)
    section = _section(results, args.note)
    atomic_write_text(out / "readme_section.md", section + "\n")
    keys = ("bundle", "cases", "n", "size", "default", "ranking", "seconds", "sha256", "skipped")
    atomic_write_text(out / "ranking.json", json.dumps([{k: r[k] for k in keys} for r in results], indent=1))
    if args.page:
        text = Path(args.page).read_text(encoding="utf-8")  # as it is now: other edits meanwhile are kept
        pattern = re.compile(re.escape(BEGIN) + ".*?" + re.escape(END), re.S)
        atomic_write_text(args.page, pattern.sub(lambda _: section, text))
    print(f"Wrote {out / 'readme_section.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
