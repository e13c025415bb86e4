#!/usr/bin/env bash
# Train the demo model (configs/PanopticFCN-R50-demo-scenes.yaml) on generated scenes, resumably, and
# evaluate it. Used on the GPU machine (docs/training.md); runs anywhere with the package on PYTHONPATH.
#
#   scripts/train_demo.sh WORK OUT MINUTES [RESUME_DIR]
#
# WORK: scratch folder (datasets, work dir); OUT: where model_final.pth, the loss log, the evaluation and
# the resume state (split into <16 MiB parts) go; MINUTES: training time budget of this call; RESUME_DIR:
# a folder holding the parts of a previous call's state (last.pth.part-*), to continue from.
set -euo pipefail
WORK=$1; OUT=$2; MINUTES=$3; RESUME=${4:-}
CONFIG=${CONFIG:-configs/PanopticFCN-R50-demo-scenes.yaml}
TRAIN_SEEDS=${TRAIN_SEEDS:-$(seq -s ' ' 1000 1015)}   # 16 sets, disjoint from the evaluation seeds
PER_SEED=${PER_SEED:-500}
EVAL_SEEDS=${EVAL_SEEDS:-"1 3"}                        # demo evaluation set, unseen check set
EVAL_COUNT=${EVAL_COUNT:-64}
PD="python3 -m panoptic_deploy.cli"
mkdir -p "$WORK" "$OUT"
t0=$(date +%s)
pids=()
for s in $TRAIN_SEEDS; do
  [ -f "$WORK/train-$s/panoptic.json" ] || $PD make-dataset --seed "$s" --count "$PER_SEED" --output "$WORK/train-$s" --force >/dev/null &
  pids+=($!)
done
for s in $EVAL_SEEDS; do
  [ -f "$WORK/eval-$s/panoptic.json" ] || $PD make-dataset --seed "$s" --count "$EVAL_COUNT" --output "$WORK/eval-$s" --force >/dev/null &
  pids+=($!)
done
for p in "${pids[@]}"; do wait "$p"; done
echo "datasets ready in $(( $(date +%s) - t0 )) s"
if [ -n "$RESUME" ] && ls "$RESUME"/last.pth.part-* >/dev/null 2>&1; then
  mkdir -p "$WORK/run"
  cat "$RESUME"/last.pth.part-* > "$WORK/run/last.pth"
  [ -f "$RESUME/loss_log.jsonl" ] && cp "$RESUME/loss_log.jsonl" "$WORK/run/loss_log.jsonl"
  echo "resume state restored"
fi
DATASETS=$(for s in $TRAIN_SEEDS; do printf '%s ' "$WORK/train-$s"; done)
t1=$(date +%s)
# shellcheck disable=SC2086
PYTHONUNBUFFERED=1 $PD train --config "$CONFIG" --dataset $DATASETS --output "$OUT/model_final.pth" \
  --work-dir "$WORK/run" --workers "${WORKERS:-14}" --max-minutes "$MINUTES" --no-progress ${TRAIN_ARGS:-} \
  || echo "TRAINING FAILED rc=$?"
echo "training wall $(( $(date +%s) - t1 )) s"
cp "$WORK/run/loss_log.jsonl" "$WORK/run/progress.json" "$OUT/" || true
(cd "$WORK/run" && split -b 15M -d last.pth "$OUT/last.pth.part-") || true
EVALS=$(for s in $EVAL_SEEDS; do printf '%s ' "$WORK/eval-$s"; done)
# shellcheck disable=SC2086
python3 -m panoptic_deploy.training.evaluate --config "$CONFIG" --weights "$OUT/model_final.pth" \
  --dataset $EVALS --json "$OUT/eval.json" || echo "EVALUATION FAILED"
echo "total wall $(( $(date +%s) - t0 )) s"
