#!/usr/bin/env bash
# GPU smoke test: the riskiest multi-GPU paths in at most ~10 minutes on one 1- to 8-GPU machine.
#
#   scripts/gpu_smoke.sh            # all visible GPUs (SiT-XL/2 and B/2 on synthetic latents)
#   scripts/gpu_smoke.sh --cpu      # the same checks, tiny sizes, 2 gloo processes (CI/tests)
#
# One line per check: "PASS <check>: <figures>", "FAIL <check>: <why>" or "SKIP <check>: <why>";
# the exit status is the number of failed checks. Environment: SMOKE_OUT (work directory,
# default a fresh temporary one), NPROC (processes; default: the GPU count, 2 on CPU), PYTHON
# (default .venv/bin/python next to this script's repository, else python3).
#
#  1 bench step     SiT-XL/2, micro-batch 32: step time, peak memory, LayerSync/vanilla ratio
#  2 ddp            XL/2, global batch 256, mid-run checkpoint and EMA samples, peak memory/GPU
#  3 resume         B/2 straight vs stopped-and-resumed: largest loss and weight gaps
#  4 fsdp           FSDP2 with mid-run sampling and grad accumulation, then save/resume
#  5 compile        torch.compile under DDP: graph breaks and recompiles counted
#  6 sample         distributed sampling with uneven parts == one process
#  7 fid            in-training FID (only when the Inception weights are installed)
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-$ROOT/.venv/bin/python}"
[ -x "$PYTHON" ] || PYTHON=python3
TORCHRUN="$(dirname "$PYTHON")/torchrun"
[ -x "$TORCHRUN" ] || TORCHRUN=torchrun
OUT="${SMOKE_OUT:-$(mktemp -d -t layersync-smoke-XXXXXX)}"
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1

CPU=0
[ "${1:-}" = "--cpu" ] && CPU=1
if [ $CPU = 0 ] && ! "$PYTHON" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "no CUDA device visible: running the CPU path (tiny sizes, gloo)"
    CPU=1
fi

if [ $CPU = 1 ]; then
    export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
    NPROC="${NPROC:-2}"
    DEVICE=cpu
    # a 4-block SiT on 8x8x4 "latents": every path, in seconds
    BIG=(model.arch=custom model.depth=4 model.hidden_size=32 model.num_heads=2 model.patch_size=2)
    MID=("${BIG[@]}")
    SIZE=8 MICRO=2 GLOBAL=$((2 * NPROC)) ITEMS=64 STEPS=4 SAMPLER=2 FIDN=16
else
    NPROC="${NPROC:-$("$PYTHON" -c "import torch; print(torch.cuda.device_count())")}"
    DEVICE=cuda
    BIG=(model.arch=SiT-XL/2)
    MID=(model.arch=SiT-B/2)
    SIZE=32 MICRO=32 GLOBAL=256 ITEMS=2048 STEPS=20 SAMPLER=10 FIDN=512
fi
# global batch divisible by the processes (x2 for the accumulation check)
GLOBAL=$(( (GLOBAL / (2 * NPROC)) * 2 * NPROC )); [ $GLOBAL -gt 0 ] || GLOBAL=$((2 * NPROC))
HALF=$((STEPS / 2))
FAILED=0

launch() {  # launch N ARGS...: N processes (torchrun) or one
    local n=$1; shift
    if [ "$n" -gt 1 ]; then
        "$TORCHRUN" --standalone --nproc_per_node "$n" -m layersync "$@"
    else
        "$PYTHON" -m layersync "$@"
    fi
}
report() {  # report CHECK STATUS LINE
    echo "$2 $1: $3"
    [ "$2" = FAIL ] && FAILED=$((FAILED + 1))
    return 0
}
tail_of() { tail -n 3 "$1" | tr '\n' ' ' | cut -c1-300; }

# Synthetic class-conditional "latents" (float NCHW), the shape of ImageNet-256 VAE latents on GPU
DATA="$OUT/latents.npz"
"$PYTHON" - "$DATA" "$ITEMS" "$SIZE" <<'EOF'
import sys
import numpy as np
path, n, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
rng = np.random.default_rng(0)
labels = rng.integers(0, 10, n)
images = np.tanh(rng.standard_normal((n, 4, size, size)) * 0.5 + labels[:, None, None, None] / 10)
images = images.astype(np.float32)
np.savez(path, images=images, labels=labels)
EOF
COMMON=(--modality image train.device=$DEVICE "data.source=array" "data.path=$DATA" log.progress=false
        log.every=1 metric.fid=off "sampler.steps=$SAMPLER" log.sample_count=4 ema.decay=0.9)

# ---- 1. bench step -------------------------------------------------------------------------
if "$PYTHON" -m layersync bench step "${COMMON[@]}" "${BIG[@]}" "train.batch_size=$MICRO" \
        --steps 3 --warmup 1 --json "$OUT/bench.json" >"$OUT/bench.log" 2>&1; then
    report "bench step" PASS "$("$PYTHON" - "$OUT/bench.json" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))
v, l = r["arms"]["vanilla"], r["arms"]["layersync"]
print(f"{r['device']} {r['precision']} batch {r['batch_size']}: vanilla {v['median_step_s']*1e3:.1f} ms, "
      f"layersync {l['median_step_s']*1e3:.1f} ms (ratio {l['median_step_s']/v['median_step_s']:.3f}), "
      f"peak {l['memory_bytes']/2**30:.2f} GiB")
EOF
)"
else
    report "bench step" FAIL "$(tail_of "$OUT/bench.log")"
fi

# ---- 2. DDP, mid-run checkpoint and EMA samples --------------------------------------------
if launch "$NPROC" train "${COMMON[@]}" "${BIG[@]}" "run.out_dir=$OUT" run.name=ddp \
        "train.batch_size=$GLOBAL" "train.steps=$STEPS" "checkpoint.every=$HALF" \
        "log.sample_every=$HALF" >"$OUT/ddp.log" 2>&1; then
    report ddp PASS "$("$PYTHON" - "$OUT/ddp" "$HALF" <<'EOF'
import json, sys
from pathlib import Path
run, half = Path(sys.argv[1]), int(sys.argv[2])
lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
train = [x for x in lines if x["kind"] == "train"]
mem = max((x.get("peak_mem_gb", 0.0) for x in train), default=0.0)
samples = sorted(p.name for p in (run / "samples").iterdir())
ckpts = sorted(p.name for p in (run / "checkpoints").iterdir() if p.name.isdigit())
assert any(p.startswith(f"{half:07d}") for p in samples), f"no mid-run samples: {samples}"
print(f"{len(train)} steps, last loss {train[-1]['loss']:.4f}, {train[-1]['samples_per_s']:.1f} "
      f"samples/s, peak {mem:.2f} GB/GPU (max over ranks), samples {samples}, checkpoints {ckpts}")
EOF
)"
else
    report ddp FAIL "$(tail_of "$OUT/ddp.log")"
fi

# ---- 3. straight vs resumed ----------------------------------------------------------------
compare_runs() {  # compare_runs A B: largest loss and weight gaps over the steps both logged
    "$PYTHON" - "$1" "$2" <<'EOF'
import json, sys
from pathlib import Path
from layersync.train import checkpoint as ckpt
a, b = Path(sys.argv[1]), Path(sys.argv[2])
def losses(run):
    out = {}
    for x in (run / "metrics.jsonl").read_text().splitlines():
        x = json.loads(x)
        if x["kind"] == "train":
            out[x["step"]] = x["loss"]
    return out
la, lb = losses(a), losses(b)
loss_gap = max(abs(la[s] - lb[s]) for s in la.keys() & lb.keys())
wa = ckpt.load_weights(ckpt.resolve_checkpoint(a), "model")
wb = ckpt.load_weights(ckpt.resolve_checkpoint(b), "model")
weight_gap = max((wa[k] - wb[k]).abs().max().item() for k in wa)
print(f"largest loss gap {loss_gap:.3g}, largest weight gap {weight_gap:.3g}")
EOF
}
R3=(train "${COMMON[@]}" "${MID[@]}" "run.out_dir=$OUT" "train.batch_size=$GLOBAL" "checkpoint.every=$HALF")
# the resumed run: HALF steps, then continued to STEPS (constant LR: the schedule does not
# depend on train.steps)
if launch "$NPROC" "${R3[@]}" run.name=straight "train.steps=$STEPS" --overwrite >"$OUT/straight.log" 2>&1 \
    && launch "$NPROC" "${R3[@]}" run.name=resumed "train.steps=$HALF" --overwrite >"$OUT/resumed.log" 2>&1 \
    && launch "$NPROC" "${R3[@]}" run.name=resumed "train.steps=$STEPS" --resume latest >>"$OUT/resumed.log" 2>&1; then
    report resume PASS "$(compare_runs "$OUT/straight" "$OUT/resumed" 2>&1 | tail -1) ($STEPS steps, stop at $HALF)"
else
    report resume FAIL "$(tail_of "$OUT/resumed.log")"
fi

# ---- 4. FSDP2: mid-run sampling, accumulation, save/resume ---------------------------------
F4=(train "${COMMON[@]}" "${MID[@]}" "run.out_dir=$OUT" run.name=fsdp train.distributed=fsdp
    train.grad_accum=2 "train.batch_size=$GLOBAL" log.sample_every=1 "checkpoint.every=$HALF")
if launch "$NPROC" "${F4[@]}" "train.steps=$HALF" >"$OUT/fsdp.log" 2>&1 \
    && launch "$NPROC" "${F4[@]}" "train.steps=$STEPS" --resume latest >>"$OUT/fsdp.log" 2>&1; then
    report fsdp PASS "$NPROC processes, sampled after every step, $HALF + $((STEPS - HALF)) steps across a resume"
else
    report fsdp FAIL "$(tail_of "$OUT/fsdp.log")"
fi

# ---- 5. compile under DDP ------------------------------------------------------------------
if TORCH_LOGS="graph_breaks,recompiles" launch "$NPROC" train "${COMMON[@]}" "${MID[@]}" \
        "run.out_dir=$OUT" run.name=compiled train.compile=true "train.batch_size=$GLOBAL" \
        "train.steps=$STEPS" >"$OUT/compile.log" 2>&1; then
    breaks=$(grep -c "Graph break" "$OUT/compile.log" || true)
    recompiles=$(grep -c "Recompiling function" "$OUT/compile.log" || true)
    report compile PASS "$breaks graph-break and $recompiles recompile log lines over $NPROC ranks"
else
    report compile FAIL "$(tail_of "$OUT/compile.log")"
fi

# ---- 6. distributed sampling, uneven parts -------------------------------------------------
N6=$((3 * NPROC + 1))  # batches of 2: the last one is short and the ranks' shares differ
if [ -d "$OUT/ddp/checkpoints" ] \
    && launch 1 sample "$OUT/ddp" -n "$N6" --batch-size 2 --out "$OUT/sample1" >"$OUT/sample.log" 2>&1 \
    && launch "$NPROC" sample "$OUT/ddp" -n "$N6" --batch-size 2 --out "$OUT/sampleN" >>"$OUT/sample.log" 2>&1; then
    if "$PYTHON" - "$OUT/sample1" "$OUT/sampleN" "$N6" >>"$OUT/sample.log" 2>&1 <<'EOF'
import sys
from pathlib import Path
a, b = Path(sys.argv[1]), Path(sys.argv[2])
fa = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
fb = sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
assert fa == fb, (fa, fb)
diff = [str(p) for p in fa if (a / p).read_bytes() != (b / p).read_bytes()]
assert not diff, f"files differ: {diff}"
EOF
    then
        report sample PASS "$N6 samples in batches of 2 on $NPROC processes == 1 process, byte for byte"
    else
        report sample FAIL "$(tail_of "$OUT/sample.log")"
    fi
else
    report sample FAIL "$(tail_of "$OUT/sample.log" 2>/dev/null || echo 'no ddp run to sample from')"
fi

# ---- 7. in-training FID (on the 8x8 digits: real images for Inception) ---------------------
if "$PYTHON" -c "from layersync_image.fid import load_inception; load_inception(None)" >/dev/null 2>&1; then
    if launch "$NPROC" train --modality image --preset demo train.device=$DEVICE log.progress=false \
            "run.out_dir=$OUT" run.name=fid metric.fid=on "metric.num_samples=$FIDN" \
            "metric.reference_count=$FIDN" "sampler.steps=$SAMPLER" "train.batch_size=$GLOBAL" \
            train.steps=2 log.eval_every=1 >"$OUT/fid.log" 2>&1; then
        report fid PASS "$(cat "$OUT"/fid/eval/*/metrics.json | tr -d '\n ' | cut -c1-200)"
    else
        report fid FAIL "$(tail_of "$OUT/fid.log")"
    fi
else
    report fid SKIP "Inception weights not installed"
fi

echo "logs and runs in $OUT; $FAILED check(s) failed"
exit $FAILED
