#!/usr/bin/env bash
# Retrain the example bundles on synthetic CT by the staged recipe their committed weights came from (each
# bundle's docs/README.md, "Training recipe"), then print each one's Dice on the held-out generated cases
# (seeds 1000-1004, configs/evaluate.json) and on the real CT beside the checkout. The committed weights' early
# stages ran on the cases of generator version 2 and their last stage on version 3 (the docs say which); a
# re-run here trains every stage on the present generator's cases.
#
#   benchmarks/train_bundles.sh [BUNDLE ...]      # default: ct_spleen_unet3d ct_spleen_unet2d ct_organs_unetr3d
#   benchmarks/train_bundles.sh planted_shortcut_unet3d planted_control_unet3d   # the ground-truth UNet pair
#
# The planted pair trains on generated planted-cue scenes (monai_xres.sample_data.planted); the shortcut model
# by a curriculum of marker distances (marker_gap_mm). Their held-out Dice is on test scenes 9000-9019; with
# both trained, benchmarks/verify_planted.py counts the scenes whose reliance is verified.
#
# Every stage is configs/train.json with command-line overrides; a stage starts from the previous stage's best
# validation checkpoint (`init_checkpoint`), the last stage writes the bundle's models/model.pt. The early
# stages ran without the low-resolution augmentation (RandSimulateLowResolutiond, added to train.json after
# them), hence its `prob 0.0` there. The real CT is only evaluated, never trained on or used to pick a
# checkpoint (that is the synthetic validation Dice). Logs and checkpoints go to $WORK_DIR (default
# /tmp/monai_xres_train); THREADS (default 1) CPU threads per run; TRAIN=0 skips training (evaluates the
# committed weights only).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
WORK_DIR=${WORK_DIR:-/tmp/monai_xres_train}
THREADS=${THREADS:-1}
REAL_CT=${REAL_CT:-$ROOT/../shared/data/ct_abdomen_3mm.nii.gz}
REAL_LABELS=${REAL_LABELS:-$ROOT/../shared/data/ct_abdomen_3mm_labels.nii.gz}
BUNDLES=("$@")
[ ${#BUNDLES[@]} -gt 0 ] || BUNDLES=(ct_spleen_unet3d ct_spleen_unet2d ct_organs_unetr3d)
export OMP_NUM_THREADS=$THREADS

stage() {  # stage BUNDLE NAME [OVERRIDE ...]: one train.json run into $WORK_DIR/BUNDLE/NAME
    local b=$1 name=$2; shift 2
    local out=$WORK_DIR/$b/$name start
    mkdir -p "$out"
    start=$(date +%s)
    (cd "$ROOT/bundles/$b" && python -m monai.bundle run --config_file configs/train.json \
        --num_threads "$THREADS" --ckpt_dir "$out" "$@" > "$out/train.log" 2>&1)
    echo "$b $name: $(( $(date +%s) - start )) s, best validation: $(grep 'Key metric' "$out/train.log" | tail -1)"
}

train() {
    local b=$1 w=$WORK_DIR/$1
    case $b in
    ct_spleen_unet3d)  # the low-resolution augmentation is random transform 4
        stage "$b" s1 --max_epochs 10 --lr_scheduler#T_max 60 --val_interval 10 --train#random_transforms#4#prob 0.0
        stage "$b" s2 --init_checkpoint "$w/s1/model.pt" --max_epochs 30 --val_interval 5 --learning_rate 0.001 \
            --train#random_transforms#4#prob 0.0
        stage "$b" s3 --init_checkpoint "$w/s2/model.pt" --max_epochs 25 --val_interval 5 --learning_rate 0.001
        stage "$b" s4 --init_checkpoint "$w/s3/model.pt" --max_epochs 25 --val_interval 5 --learning_rate 0.001
        stage "$b" s5 --init_checkpoint "$w/s4/model.pt" --max_epochs 25 --val_interval 5 --learning_rate 0.0007 \
            --train_seeds '$list(range(200, 400))' ;;
    ct_spleen_unet2d)  # random transform 5
        stage "$b" s1 --max_epochs 10 --lr_scheduler#T_max 80 --val_interval 10 --train#random_transforms#5#prob 0.0
        stage "$b" s2 --init_checkpoint "$w/s1/model.pt" --max_epochs 20 --val_interval 5 --learning_rate 0.001
        stage "$b" s3 --init_checkpoint "$w/s2/model.pt" --max_epochs 12 --val_interval 3 --learning_rate 0.0007 ;;
    ct_organs_unetr3d)  # from the previous release's weights (generator version 1, commit d8e42f7)
        mkdir -p "$w"
        git -C "$ROOT" show d8e42f7:bundles/ct_organs_unetr3d/models/model.pt > "$w/v1.pt"
        stage "$b" s2 --init_checkpoint "$w/v1.pt" --max_epochs 6 --lr_scheduler#T_max 8 --val_interval 2 \
            --learning_rate 0.001
        stage "$b" s3 --init_checkpoint "$w/s2/model.pt" --max_epochs 6 --val_interval 2 --learning_rate 0.0007 \
            --train#random_transforms#2#num_samples 1 ;;
    planted_shortcut_unet3d)  # M first almost touching its object, then out to the benchmark's 20-40 mm
        stage "$b" s1 --marker_gap_mm "[2,10]" --max_epochs 15
        stage "$b" s2 --init_checkpoint "$w/s1/model.pt" --marker_gap_mm "[8,26]" --max_epochs 10
        stage "$b" s3 --init_checkpoint "$w/s2/model.pt" --max_epochs 15
        stage "$b" s4 --init_checkpoint "$w/s3/model.pt" --max_epochs 8 --learning_rate 0.001 \
            --train_seeds '$list(range(0, 1600))' --val_seeds '$list(range(5000, 5100))' ;;
    planted_control_unet3d)
        stage "$b" s1
        stage "$b" s2 --init_checkpoint "$w/s1/model.pt" --max_epochs 10 --learning_rate 0.0005
        stage "$b" s3 --init_checkpoint "$w/s2/model.pt" --max_epochs 8 --learning_rate 0.001 \
            --train_seeds '$list(range(0, 1600))' --val_seeds '$list(range(5000, 5100))' ;;
    esac
    cp "$(ls -d "$w"/s* | tail -1)/model.pt" "$ROOT/bundles/$b/models/model.pt"
}

for b in "${BUNDLES[@]}"; do
    [ "${TRAIN:-1}" = 0 ] || train "$b"
    cd "$ROOT/bundles/$b"
    python -m monai.bundle run --config_file "['configs/inference.json','configs/evaluate.json']" \
        --output_dir "$WORK_DIR/$b/heldout" > "$WORK_DIR/$b.heldout.log" 2>&1
    echo "$b held-out (configs/evaluate.json's seeds):"; cat "$WORK_DIR/$b/heldout/test_mean_dice_raw.csv"
    if [ -f "$REAL_CT" ] && [[ $b != planted_* ]]; then
        # TotalSegmentator ids of spleen, right kidney, left kidney, liver (the UNETR bundle's four classes)
        extra=(); [ "$b" = ct_organs_unetr3d ] && extra=(--reference_labels "[1, 2, 3, 5]")
        python -m monai.bundle run --config_file "['configs/inference.json','configs/evaluate.json']" \
            --dataset#data "[{'image': '$REAL_CT', 'reference': '$REAL_LABELS'}]" "${extra[@]}" \
            --output_dir "$WORK_DIR/$b/real" > "$WORK_DIR/$b.real.log" 2>&1
        echo "$b real CT:"; cat "$WORK_DIR/$b/real/test_mean_dice_raw.csv"
    fi
    cd "$ROOT"
done
if [ -f bundles/planted_shortcut_unet3d/models/model.pt ] && [[ " ${BUNDLES[*]} " == *" planted_"* ]]; then
    python benchmarks/verify_planted.py bundles/planted_shortcut_unet3d bundles/planted_control_unet3d \
        --seeds 9100-9149
fi
