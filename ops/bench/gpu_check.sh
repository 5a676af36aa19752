#!/usr/bin/env bash
# The fused-MoE device check, in one call: compiled Triton tests (bf16, fp16, fp32), a bounded
# tuning pass that writes the config table, and the benchmark with those configs.
#   OUT=/some/dir bash ops/bench/gpu_check.sh
# Everything lands in $OUT: logs, moe_cuda.{md,json}, tuned_configs.json (a bundle; split it into
# kernels/configs/ with `python -m kernels.tune --unbundle tuned_configs.json`). Freshly tuned
# tables take precedence over the committed ones; SKIP_TUNE=1 benchmarks the committed ones.
# Each phase has its own time limit so a slow one cannot starve the benchmark; a last phase
# times each stage (align, GEMM 1, GEMM 2, sum) alone at 1 and 64 tokens.
set -uo pipefail
OUT=${OUT:-/tmp/moe_gpu_out}
mkdir -p "$OUT"
cd "$(dirname "$0")/../.."
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
PY=${PY:-python3}
CFG_DIR=$(mktemp -d)
TEST_LIMIT=${TEST_LIMIT:-150} TUNE_BUDGET=${TUNE_BUDGET:-120} BENCH_LIMIT=${BENCH_LIMIT:-240}

{
  date -u
  nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem,temperature.gpu --format=csv
  $PY -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"
} 2>&1 | tee "$OUT/env.txt"

echo "== compiled kernel tests"
timeout "$TEST_LIMIT" $PY -m pytest -q -o addopts="" -p no:cacheprovider \
  tests/kernels/test_fused_moe_gpu.py tests/kernels/test_moe_dispatch.py 2>&1 | tee "$OUT/tests.log"
echo "tests exit: ${PIPESTATUS[0]}" | tee -a "$OUT/tests.log"

if [ "${SKIP_TUNE:-0}" = 1 ]; then
  echo "== tuning skipped: the benchmark uses the tables committed in kernels/configs/"
else
  echo "== tuning (budget ${TUNE_BUDGET}s)"
  timeout $((TUNE_BUDGET + 60)) $PY -m kernels.tune --shapes V2-Lite V3 --tokens 1 64 4096 8 512 \
    --budget-s "$TUNE_BUDGET" --out-dir "$CFG_DIR" --bundle "$OUT/tuned_configs.json" 2>&1 | tee "$OUT/tune.log"
  echo "tune exit: ${PIPESTATUS[0]}" | tee -a "$OUT/tune.log"
fi

if [ "${SWEEP:-0}" = 1 ]; then
  echo "== decode (GEMV) tile sweep at one token"
  timeout "${SWEEP_LIMIT:-120}" $PY ops/bench/moe_decode_sweep.py --out "$OUT" --write-tables "$CFG_DIR" 2>&1 | tee "$OUT/sweep.log"
  echo "sweep exit: ${PIPESTATUS[0]}" | tee -a "$OUT/sweep.log"
fi

echo "== benchmark"
LEVEE_MOE_CONFIG_DIR=$CFG_DIR timeout "$BENCH_LIMIT" $PY ops/bench/moe.py --device cuda --out "$OUT" ${BENCH_ARGS:-} 2>&1 \
  | tee "$OUT/bench.log"
echo "bench exit: ${PIPESTATUS[0]}" | tee -a "$OUT/bench.log"

if [ "${BREAKDOWN_TOKENS:-1 64}" != none ]; then
  echo "== per-stage breakdown"
  LEVEE_MOE_CONFIG_DIR=$CFG_DIR timeout "${BREAKDOWN_LIMIT:-90}" $PY ops/bench/moe.py --device cuda \
    --breakdown-tokens ${BREAKDOWN_TOKENS:-1 64} --out "$OUT" 2>&1 | tee "$OUT/breakdown.log"
  echo "breakdown exit: ${PIPESTATUS[0]}" | tee -a "$OUT/breakdown.log"
fi
