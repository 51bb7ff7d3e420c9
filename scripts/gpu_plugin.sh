#!/usr/bin/env bash
# GPU readiness of the audio, motion and video plugins: about 5 minutes on one CUDA GPU each.
#
#   scripts/gpu_plugin.sh audio|motion|video          # CUDA: the sizes below, bf16
#   scripts/gpu_plugin.sh audio|motion|video --cpu    # the same commands at tiny sizes (tests)
#
# Two checks, one line each: "PASS <check>: <figures>" or "FAIL <check>: <why>"; the exit
# status is the number of failed checks. Environment: GPU_OUT (work directory, default a fresh
# temporary one), LAYERSYNC_CACHE (data/metric caches; default ~/.cache/layersync), PYTHON
# (default .venv/bin/python next to this script's repository, else python3).
#
#  1 step    `layersync bench step`: vanilla and LayerSync steps interleaved; median step time,
#            memory and their ratios
#  2 metric  `layersync train` for a few steps, then the plugin's metric at the end (its
#            metrics.json), with the wall time of the whole run
#
# Sizes on CUDA (the issues' GPU checks; the data are each plugin's embedded demo data):
#  audio   SiT-XL/1 on 215 log-mel frames (3.36 s at 16 kHz, hop 250), 50 bf16 steps,
#          fad_musicnn of 256 samples
#  motion  MDM 8 x 512, batch 64, 200 bf16 steps; one replication of 1,024 samples, DDIM 50
#  video   SiT-XL, 16 x 64 x 64 clips in 2x8x8 tubelets = 512 tokens, 50 bf16 steps,
#          fvd256_16f (256 generated vs 256 real clips)
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-$ROOT/.venv/bin/python}"
[ -x "$PYTHON" ] || PYTHON=python3
MODALITY="${1:-}"
CPU=0
[ "${2:-}" = "--cpu" ] && CPU=1
if [ $CPU = 0 ] && ! "$PYTHON" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "no CUDA device visible: running the CPU path (tiny sizes)"
    CPU=1
fi
OUT="${GPU_OUT:-$(mktemp -d -t "layersync-gpu-$MODALITY-XXXXXX")}"
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1

# -- per-modality settings: MODEL (both checks), STEP (bench step), RUN (train + metric) ----
case "$MODALITY:$CPU" in
    audio:0)
        MODEL=(model.depth=28 model.hidden_size=1152 model.num_heads=16 model.patch_size=1
               data.seconds=3.359375 train.batch_size=64)
        STEPS=50 RUN=(train.steps=50 metric.fad=on metric.num_samples=256) ;;
    audio:1)
        MODEL=(model.depth=2 model.hidden_size=32 model.num_heads=2 data.per_family=2
               data.eval_per_family=1 mel.stats_items=16 mel.griffin_lim_iters=4
               train.batch_size=4 sampler.steps=2)
        STEPS=2 RUN=(train.steps=2 metric.fad=on metric.num_samples=8 metric.batch_size=8) ;;
    motion:0)
        MODEL=(model.num_layers=8 model.latent_dim=512 train.batch_size=64)
        STEPS=200 RUN=(train.steps=200 sampler.mode=ddim sampler.ddim_steps=50
                      metric.num_samples=1024 metric.replications=1) ;;
    motion:1)
        MODEL=(model.latent_dim=32 model.ff_size=64 model.num_layers=4 diffusion.steps=20
               data.max_len=64 train.batch_size=8)
        STEPS=2 RUN=(train.steps=2 sampler.mode=ddim sampler.ddim_steps=3 metric.num_samples=40
                     metric.replications=1 metric.diversity_times=10 metric.evaluator_steps=3
                     metric.evaluator_hidden=16 metric.evaluator_out=16) ;;
    video:0)
        MODEL=(model.depth=28 model.hidden_size=1152 model.num_heads=16 "model.patch_size=[2,8,8]"
               data.size=64 data.frames=16 train.batch_size=32)
        STEPS=50 RUN=(train.steps=50 metric.fvd=on metric.num_samples=256) ;;
    video:1)
        MODEL=(model.depth=4 model.hidden_size=32 model.num_heads=2 data.size=16 data.frames=16
               train.batch_size=4 sampler.steps=2)
        STEPS=2 RUN=(train.steps=2 metric.fvd=on metric.num_samples=4 metric.batch_size=4
                     sampler.batch_size=4) ;;
    *)
        echo "usage: $0 audio|motion|video [--cpu]" >&2
        exit 2 ;;
esac
if [ $CPU = 1 ]; then
    export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
    DEVICE=(train.device=cpu)
else
    DEVICE=(train.device=cuda train.precision=bf16)
fi
FAILED=0
report() {  # report CHECK STATUS LINE
    echo "$2 $1: $3"
    [ "$2" = FAIL ] && FAILED=$((FAILED + 1))
    return 0
}
tail_of() { tail -n 3 "$1" | tr '\n' ' ' | cut -c1-300; }
echo "gpu_plugin: $MODALITY ($([ $CPU = 1 ] && echo cpu || echo cuda)), work directory $OUT"

# -- 1 step: vanilla vs LayerSync training steps ---------------------------------------------
if "$PYTHON" -m layersync bench step -m "$MODALITY" --steps "$STEPS" --warmup 1 \
        --json "$OUT/step.json" "${MODEL[@]}" "${DEVICE[@]}" >"$OUT/step.log" 2>&1; then
    report step PASS "$("$PYTHON" - "$OUT/step.json" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))
v, ls = r["arms"]["vanilla"], r["arms"]["layersync"]
print(f"{r['params'] / 1e6:.1f}M params, batch {r['batch_size']}, {r['precision']}, pair "
      f"{','.join(r['pairs'])}: vanilla {v['median_step_s'] * 1e3:.1f} ms, LayerSync "
      f"{ls['median_step_s'] * 1e3:.1f} ms (x{r['step_time_ratio']:.3f}), memory "
      f"{v['memory_bytes'] / 2**20:.0f} / {ls['memory_bytes'] / 2**20:.0f} MB "
      f"(x{r['memory_ratio']:.3f})")
EOF
)"
else
    report step FAIL "$(tail_of "$OUT/step.log")"
fi

# -- 2 metric: a short run and the plugin's metric at its end --------------------------------
START=$SECONDS
if "$PYTHON" -m layersync train -m "$MODALITY" "${MODEL[@]}" "${RUN[@]}" "${DEVICE[@]}" \
        "run.out_dir=$OUT" run.name=metric log.progress=false checkpoint.every=100000 \
        >"$OUT/metric.log" 2>&1; then
    report metric PASS "$("$PYTHON" - "$OUT/metric" $((SECONDS - START)) <<'EOF'
import json, sys
from pathlib import Path
run, wall = Path(sys.argv[1]), sys.argv[2]
last = sorted((run / "eval").iterdir())[-1]
metrics = json.loads((last / "metrics.json").read_text())
shown = {k: v for k, v in metrics.items() if not k.startswith("val_loss/") and not k.endswith("_interval")}
print(f"step {int(last.name)}, {wall} s wall (training + metric): "
      + ", ".join(f"{k} {v:.4g}" for k, v in shown.items()))
EOF
)"
else
    report metric FAIL "$(tail_of "$OUT/metric.log")"
fi
exit $FAILED
