#!/usr/bin/env bash
# The inference checks that need a GPU, as one short run: the inference tests on CUDA, then the
# engine benchmark in bf16 and fp32. Results land in $OUT (or ./test-artifacts).
set -uo pipefail
OUT=${OUT:-test-artifacts}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1
nvidia-smi -L
$PY -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"
LEVEE_TEST_DEVICE=cuda timeout 300 $PY -m pytest -p no:django -q -x tests/inference -p no:cacheprovider \
  --durations=5 2>&1 | tee "$OUT/tests_cuda.log" | grep -vE "Warning|warn" | tail -25
for dtype in bfloat16 float32; do
  timeout 150 $PY ops/bench/inference.py --device cuda --dtype $dtype --json "$OUT/bench_$dtype.json" 2>&1 \
    | grep -vE "Loading weights|Writing model" | tail -8
done
