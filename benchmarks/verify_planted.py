"""Verify by intervention that a planted bundle pair relies on the evidence it was trained to use.

For each unseen ``test`` scene (M and P on the target), both bundles segment the scene as it is, without M and
without P (:func:`monai_xres.metrics.reliance.verify_reliance`); a case is verified when removing M breaks
the shortcut model (Dice drop >= 0.5) and leaves the control model (drop < 0.1), and removing P the reverse.

    python benchmarks/verify_planted.py bundles/planted_shortcut_unet3d bundles/planted_control_unet3d \
        --seeds 9100-9149 [--json out.json]
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch

from monai_xres.cli.arguments import seed_range
from monai_xres.metrics.reliance import INTERVENTIONS, bundle_predictor, verify_reliance
from monai_xres.output.writer import atomic_write_text
from monai_xres.sample_data.planted import generate_scene


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("shortcut", help="bundle trained on shortcut scenes")
    parser.add_argument("control", help="bundle trained on control scenes")
    parser.add_argument("--seeds", type=seed_range, default=seed_range("9100-9149"), help="test-scene seeds, LOW-HIGH")
    parser.add_argument("--json", help="write every case's Dice here")
    args = parser.parse_args()
    torch.set_num_threads(1)
    shortcut, control = bundle_predictor(args.shortcut), bundle_predictor(args.control)
    cases = []
    for seed in args.seeds:
        result = verify_reliance(shortcut, control, generate_scene(seed, "test"), seed=seed)
        cases.append({"seed": seed, **result})
        d = result["dice"]
        print(seed, "verified" if result["verified"] else "NOT verified",
              " ".join(f"{m}:{k}={d[m][k]:.2f}" for m in d for k in INTERVENTIONS), flush=True)
    verified = sum(c["verified"] for c in cases)
    means = {m: {k: float(np.mean([c["dice"][m][k] for c in cases])) for k in INTERVENTIONS}
             for m in ("shortcut", "control")}
    print(f"verified {verified}/{len(cases)} (seeds {args.seeds[0]}-{args.seeds[-1]}); mean Dice "
          + "; ".join(f"{m}: " + ", ".join(f"{k} {v:.3f}" for k, v in means[m].items()) for m in means))
    if args.json:
        atomic_write_text(args.json, json.dumps({"shortcut": args.shortcut, "control": args.control,
                                                 "verified": verified, "total": len(cases), "mean_dice": means,
                                                 "cases": cases}, indent=1))


if __name__ == "__main__":
    main()
