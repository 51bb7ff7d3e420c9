#!/usr/bin/env bash
# The issue-14 study (docs/study/README.md): Stage A then Stage B, resumable.
#   bash docs/study/run_study.sh [A [ROW ...]|A2|B|Bseed SEED|Bfinal|all]     (default: all)
# Every arm is a run directory `layersync bench convergence` reuses when finished and resumes
# from its last checkpoint otherwise: re-run the same command after an interruption. Output in
# $STUDY (default /work/study); CPU time of each command appended to $STUDY/cpu_times.txt.
set -euo pipefail
cd "$(dirname "$0")/../.."
STUDY=${STUDY:-/work/study}
LS=${LS:-.venv/bin/layersync}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
mkdir -p "$STUDY"

run() {  # run NAME CMD...: nice'd, CPU time (user+sys s) logged, output in $STUDY/logs/NAME.log
  local name=$1
  shift
  mkdir -p "$STUDY/logs"
  local start
  start=$(date -u +%FT%TZ)
  /usr/bin/time -f "%U %S" -o "$STUDY/logs/$name.time" nice -n 10 "$@" >"$STUDY/logs/$name.log" 2>&1
  read -r user sys <"$STUDY/logs/$name.time"
  echo "$name start=$start user_s=$user sys_s=$sys" >>"$STUDY/cpu_times.txt"
}

share_vanilla() {  # share_vanilla OUT SOURCE_OUT SEED: link the vanilla arm when it exists
  mkdir -p "$1"
  [ -L "$1/vanilla-seed$3" ] && [ ! -e "$1/vanilla-seed$3" ] && rm "$1/vanilla-seed$3"  # dangling
  [ -e "$1/vanilla-seed$3" ] || [ ! -d "$2/vanilla-seed$3" ] || ln -s "$2/vanilla-seed$3" "$1/vanilla-seed$3"
}

# -- Stage A: dose-response at demo depth --------------------------------------------------
A_COMMON=(--preset demo --steps 500 --eval-every 100 --metric val_loss --no-noise-check
  metric.fid=off log.progress=false checkpoint.every=100)
stage_a_row() {  # stage_a_row ID SEEDS OVERRIDES...
  local id=$1 seeds=$2
  shift 2
  local out="$STUDY/A/$id"
  [ "$id" = lam0.2 ] || share_vanilla "$out" "$STUDY/A/lam0.2" "${seeds##*,}"
  run "A-$id-s$seeds" "$LS" bench convergence -m image "${A_COMMON[@]}" --seeds "$seeds" \
    --out "$out" "$@"
}
stage_a() {  # stage_a [ROW ...]: the given rows at seed 0 (default: all, in this order)
  local rows=("$@")
  [ ${#rows[@]} -gt 0 ] || rows=(lam0.2 lam0.02 lam0.05 lam0.1 lam0.2-warmup lam0.2-gated)
  local id args
  for id in "${rows[@]}"; do  # lam0.2 first: it trains the shared vanilla arm
    args=$(grep -h "^A-$id-s0 " "$STUDY/overrides.txt" | cut -d' ' -f2-)
    [ -n "$args" ] || { echo "unknown Stage A row: $id" >&2; return 2; }
    # shellcheck disable=SC2086
    stage_a_row "$id" 0 $args
  done
}
stage_a2() {  # seed 1 for the best row (lowest seed-0 final val_loss) and vanilla
  local best
  best=$(.venv/bin/python - "$STUDY/A" <<'PY'
import json, sys
from pathlib import Path
rows = {}
for f in Path(sys.argv[1]).glob("*/convergence.json"):
    r = json.loads(f.read_text())
    rows[f.parent.name] = r["curves"]["layersync"]["0"][-1][1]
print(min(rows, key=rows.get))
PY
)
  echo "Stage A best row at seed 0: $best" | tee -a "$STUDY/cpu_times.txt"
  local args
  args=$(grep -h "^A-$best-s0 " "$STUDY/overrides.txt" | cut -d' ' -f2-)
  share_vanilla "$STUDY/A/$best" "$STUDY/A/lam0.2" 1
  [ "$best" = lam0.2 ] || share_vanilla "$STUDY/A/$best" "$STUDY/A/lam0.2" 0
  # shellcheck disable=SC2086
  run "A-$best-s0,1" "$LS" bench convergence -m image "${A_COMMON[@]}" --seeds 0,1 \
    --out "$STUDY/A/$best" $args
}

# -- Stage B: 12 blocks on Fashion-MNIST, pair 4<-8 -----------------------------------------
B_OVERRIDES=(model.depth=12 model.hidden_size=96 model.num_heads=4 model.patch_size=4
  layersync.pairs=4\<-8 metric.fid=off log.progress=false checkpoint.every=250)
B_COMMON=(--preset fashion-mnist --steps 3000 --eval-every 250 --metric val_loss
  --no-noise-check "${B_OVERRIDES[@]}")
stage_b_row() {  # stage_b_row LAMBDA LR SEEDS
  local out="$STUDY/B/lam$1-lr$2"
  [ "$1" = 0.3 ] || share_vanilla "$out" "$STUDY/B/lam0.3-lr$2" "${3##*,}"
  run "B-lam$1-lr$2-s$3" "$LS" bench convergence -m image "${B_COMMON[@]}" --seeds "$3" \
    --out "$out" layersync.weight="$1" train.lr="$2"
}
stage_b() {
  stage_b_row 0.3 1e-3 0
  stage_b_row 0.3 1e-4 0
  stage_b_row 0.2 1e-3 0
  stage_b_row 0.2 1e-4 0
}
stage_b_seed() {  # stage_b_seed SEED: both arms of the λ 0.3 / lr 1e-3 row, in parallel
  # Each arm is trained by `layersync train` with the config `bench convergence` gives it (one
  # thread each, the two arms side by side); bench then finds both finished and reads them.
  local out="$STUDY/B/lam0.3-lr1e-3" seed=$1 arm weight pids=()
  for arm in vanilla layersync; do
    weight=0.3
    [ "$arm" = layersync ] || weight=0  # as bench's vanilla arm: the term measured, not trained
    run "B-lam0.3-lr1e-3-$arm-s$seed" "$LS" train -m image --preset fashion-mnist \
      "${B_OVERRIDES[@]}" train.lr=1e-3 layersync.weight=$weight run.out_dir="$out" \
      run.name="$arm-seed$seed" \
      run.seed="$seed" train.steps=3000 log.eval_every=250 layersync.enabled=true &
    pids+=($!)
  done
  wait "${pids[@]}"
  stage_b_row 0.3 1e-3 "$seed"
}
stage_b_final() {  # FID (and KID) of 2000 samples on every final checkpoint, two sampling seeds
  for lr in 1e-3 1e-4; do
    for lam in 0.3 0.2; do
      local out="$STUDY/B/lam$lam-lr$lr"
      [ -d "$out" ] || continue
      run "Bfinal-lam$lam-lr$lr" "$LS" bench convergence -m image "${B_COMMON[@]}" --seeds 0 \
        --out "$out" layersync.weight="$lam" train.lr="$lr" \
        --final-eval metric.fid=on,metric.num_samples=2000,metric.reference_count=2000
    done
  done
}

# the overrides of each Stage A row, for stage_a2
cat >"$STUDY/overrides.txt" <<'TXT'
A-lam0.2-s0 layersync.weight=0.2
A-lam0.02-s0 layersync.weight=0.02
A-lam0.05-s0 layersync.weight=0.05
A-lam0.1-s0 layersync.weight=0.1
A-lam0.2-warmup-s0 layersync.weight=0.2 layersync.schedule=warmup layersync.warmup_steps=250
A-lam0.2-gated-s0 layersync.weight=0.2 layersync.time_range=[0.5,1.0]
TXT

case "${1:-all}" in
  A) stage_a "${@:2}" ;;
  A2) stage_a2 ;;
  B) stage_b ;;
  Bseed) stage_b_seed "$2" ;;
  Bfinal) stage_b_final ;;
  all) stage_a && stage_a2 && stage_b && stage_b_final ;;
  *) echo "usage: $0 [A [ROW ...]|A2|B|Bseed SEED|Bfinal|all]" >&2; exit 2 ;;
esac
