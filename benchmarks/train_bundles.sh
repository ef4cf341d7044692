#!/usr/bin/env bash
# Retrain the example bundles on synthetic CT (generator version 2), then print each one's Dice on the held-out
# generated cases (seeds 1000-1004, configs/evaluate.json) and on the real CT beside the checkout.
#
#   benchmarks/train_bundles.sh [BUNDLE ...]      # default: ct_spleen_unet3d ct_spleen_unet2d ct_organs_unetr3d
#
# Each training run uses one CPU thread at the lowest priority (on a shared 2-core machine two threads were
# slower); logs and metric tables go to $LOG_DIR (default /tmp/monai_xres_train_logs). The real CT is only
# evaluated, never trained on. TRAIN=0 skips training (evaluation of the committed weights only).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
LOG_DIR=${LOG_DIR:-/tmp/monai_xres_train_logs}
REAL_CT=${REAL_CT:-$ROOT/../shared/data/ct_abdomen_3mm.nii.gz}
REAL_LABELS=${REAL_LABELS:-$ROOT/../shared/data/ct_abdomen_3mm_labels.nii.gz}
mkdir -p "$LOG_DIR"
BUNDLES=("$@")
[ ${#BUNDLES[@]} -gt 0 ] || BUNDLES=(ct_spleen_unet3d ct_spleen_unet2d ct_organs_unetr3d)
export OMP_NUM_THREADS=1

for b in "${BUNDLES[@]}"; do
    cd "$ROOT/bundles/$b"
    if [ "${TRAIN:-1}" != 0 ]; then
        start=$(date +%s)
        nice -n 19 python -m monai.bundle run --config_file configs/train.json --num_threads 1 > "$LOG_DIR/$b.train.log" 2>&1
        echo "$b: trained in $(( $(date +%s) - start )) s (log: $LOG_DIR/$b.train.log)"
    fi
    nice -n 19 python -m monai.bundle run --config_file "['configs/inference.json','configs/evaluate.json']" \
        --output_dir "$LOG_DIR/$b.heldout" > "$LOG_DIR/$b.heldout.log" 2>&1
    echo "$b held-out (seeds 1000-1004):"; cat "$LOG_DIR/$b.heldout/test_mean_dice_raw.csv"
    if [ -f "$REAL_CT" ]; then
        # TotalSegmentator ids of spleen, right kidney, left kidney, liver (the UNETR bundle's four classes)
        extra=(); [ "$b" = ct_organs_unetr3d ] && extra=(--reference_labels "[1, 2, 3, 5]")
        nice -n 19 python -m monai.bundle run --config_file "['configs/inference.json','configs/evaluate.json']" \
            --dataset#data "[{'image': '$REAL_CT', 'reference': '$REAL_LABELS'}]" "${extra[@]}" \
            --output_dir "$LOG_DIR/$b.real" > "$LOG_DIR/$b.real.log" 2>&1
        echo "$b real CT:"; cat "$LOG_DIR/$b.real/test_mean_dice_raw.csv"
    fi
done
