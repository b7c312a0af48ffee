#!/usr/bin/env bash
# The checks that need an NVIDIA GPU, as one script for one run on a GPU machine, from the
# repository root:  bash benchmarks/gpu_checks.sh [OUT_DIR [PART...]]
#
# 1. tests: the backend, every-op, attention-mask, generation, KV-cache, fused-kernel and
#    activation-checkpointing tests,
#    with CuPy and JAX on the GPU, cuDNN's attention under JAX among them (180 s); a failure
#    does not stop the others (up to 30), so that one run shows all that fails, and each test's
#    result is written as it ends, so a part cut off at its limit still says which passed; four
#    test processes share the card;
# 2. shakespeare_char: nanoGPT's Shakespeare-character GPU recipe - 6 layers, 6 heads, d_model
#    384, context 256, dropout 0.2, batch 64, 5000 iterations, lr 1e-3 cosine to 1e-4 after 100
#    warm-up steps, AdamW betas 0.9 / 0.99 - trained by tinyllm-JAX in bfloat16, validation loss
#    over 200 batches every 1000 steps; the target is <= 1.50 (nanoGPT's README: 1.4697, about 3
#    minutes on an A100); its wall time is the part's (300 s). SHAKESPEARE_ARGS, appended, overrides
#    flags: a CPU dry run takes SHAKESPEARE_ARGS="--steps 2 --batch-size 2 --eval-interval 2
#    --eval-batches 1";
# 3. bench_generate: bench_generate.py's backend table, compiled JAX and CuPy decoding
#    against NumPy's (100 s);
# 4. speedrun_cupy, speedrun_jax: the speedrun on CuPy and on JAX, every stage, its pretraining
#    (the gpu preset's) cut to 200 steps (150 s, 110 s);
# 5. bench_gpu: bench_gpu.py, training tokens/s and MFU of tinyllm-JAX, tinyllm-CuPy, torch
#    eager and torch.compile at nanoGPT's GPU shape and GPT-2 small's, generation tokens/s and
#    CuPy's fused elementwise chains against their unfused form (its own --budget, 420 s unless
#    BENCH_GPU_BUDGET says, and a limit 60 s above it); its figures also in OUT_DIR/bench_gpu.json,
#    written after every row, so a run cut short keeps what it measured.
# Each part has a time limit of its own, so that one slow part cannot use up the run; all of
# them take at most 22 minutes, so name the parts wanted after OUT_DIR to run fewer. Within 15
# minutes of a GPU, start-up (1-2 minutes) included, two calls:
#   bash benchmarks/gpu_checks.sh gpu-checks tests shakespeare_char   # at most 480 s
#   BENCH_GPU_BUDGET=240 bash benchmarks/gpu_checks.sh gpu-checks bench_gpu   # at most 300 s
# What each part prints goes to OUT_DIR (default: gpu-checks/) as well as to the screen.
set -u
OUT=${1:-gpu-checks}
PARTS=" ${*:2} "
mkdir -p "$OUT"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 MPLBACKEND=Agg
export TINYLLM_CACHE=${TINYLLM_CACHE:-/tmp/tinyllm-cache}
# JAX takes 75% of the card at its first use unless told not to; CuPy shares the card with it
# in the test and generation parts
export XLA_PYTHON_CLIENT_PREALLOCATE=${XLA_PYTHON_CLIENT_PREALLOCATE:-false}
RUNS=$(mktemp -d /tmp/gpu-checks-runs.XXXXXX)  # the training runs' folders, new each time: a
# second call on the same machine must not find the first call's run there (pretrain refuses)
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/machine.txt"
python3 -c "import numpy, cupy, jax; print('numpy', numpy.__version__, '| cupy', cupy.__version__, '| jax', jax.__version__, jax.devices())" 2>&1 | tee -a "$OUT/machine.txt"
python3 -m tinyllm.cli info 2>&1 | tee -a "$OUT/machine.txt"

part() {  # part NAME SECONDS COMMAND...: run it, unless other parts were named
  local name=$1 seconds=$2; shift 2
  if [ "$PARTS" != "  " ] && [[ "$PARTS" != *" $name "* ]]; then return; fi
  echo "=== $name (limit ${seconds} s)"
  local start=$SECONDS
  timeout "$seconds" "$@" > "$OUT/$name.txt" 2>&1
  local status=$?
  tail -n 40 "$OUT/$name.txt"
  echo "=== $name: exit $status after $((SECONDS - start)) s"
}

part tests 180 python3 -m pytest -n 4 --dist loadfile -v --tb=short -rfE --maxfail=30 \
  -p no:cacheprovider tests/test_backends.py tests/test_ops.py tests/test_attention_mask.py \
  tests/test_generate_jax.py tests/test_kv_cache.py tests/test_batched_generate.py \
  tests/test_speculative.py tests/test_precision.py tests/test_fused.py tests/test_recompute.py \
  -k "jax or cupy or gpu or backend"
part shakespeare_char 300 python3 -m tinyllm.cli pretrain --preset small --tokenizer char \
  --backend jax --dtype bfloat16 --steps 5000 --batch-size 64 --eval-interval 1000 \
  --eval-batches 200 --samples 0 --no-progress --out "$RUNS/shakespeare-char" ${SHAKESPEARE_ARGS:-}
cp "$RUNS/shakespeare-char/metrics.jsonl" "$OUT/shakespeare_char.jsonl" 2>/dev/null
part bench_generate 100 python3 benchmarks/bench_generate.py --only backends
for backend in cupy jax; do  # the first also trains the BPE tokenizer (then cached)
  part "speedrun_$backend" $([ $backend = cupy ] && echo 150 || echo 110) python3 -m tinyllm.cli speedrun --backend "$backend" \
    --steps 200 --no-progress --out "$RUNS/speedrun-$backend"
  cp "$RUNS/speedrun-$backend/report.md" "$OUT/speedrun_$backend.md" 2>/dev/null
done
BUDGET=${BENCH_GPU_BUDGET:-420}
part bench_gpu $((BUDGET + 60)) python3 benchmarks/bench_gpu.py --budget "$BUDGET" \
  --out "$OUT/bench_gpu.json"
