#!/usr/bin/env bash
# FP8, several GPUs and MTP on CUDA: the checks of issue 18 that need a GPU, as one short run.
# PREPARED, NOT YET RUN (no GPU was lent to the session that wrote it).
#   OUT=/some/dir bash ops/bench/fp8_gpu_checks.sh
# 1. the FP8 parity tests, the logits parity tests and MTP speculation in the engine on CUDA
#    (LEVEE_TEST_DEVICE=cuda, fp32; greedy identity with and without drafts);
# 2. the compiled FP8 kernels vs the bf16 kernel: numerics and bandwidth at V2-Lite and V3 shapes,
#    and the dense block-FP8 GEMM (ops/bench/fp8_moe_gpu.py);
# 3. when the machine has 2+ GPUs: the 2-rank parity tests over NCCL (LEVEE_TEST_DEVICE=cuda).
# Each phase has its own limit so a slow one cannot starve the next.
set -uo pipefail
OUT=${OUT:-/tmp/fp8_gpu_out}
mkdir -p "$OUT"
cd "$(dirname "$0")/../.."
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
PY=${PY:-python3}
{
  date -u
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
  $PY -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, 'gpus', torch.cuda.device_count())"
} 2>&1 | tee "$OUT/env.txt"

echo "== inference tests on CUDA (FP8 parity included)"
LEVEE_TEST_DEVICE=cuda timeout "${TEST_LIMIT:-240}" $PY -m pytest -p no:django -p no:cacheprovider -q -x \
  tests/inference/test_fp8.py tests/inference/test_parity_with_transformers.py tests/inference/test_engine_mtp.py \
  2>&1 | tail -20 | tee "$OUT/tests_cuda.log"

echo "== MTP speculation in the engine on CUDA: acceptance and tokens/s with and without"
timeout "${MTP_LIMIT:-120}" $PY ops/bench/mtp.py --engine --device cuda --tokens 64 --batch 1 8 32 --rounds 2 \
  --json "$OUT/mtp_cuda.json" 2>&1 | tee "$OUT/mtp_cuda.log"

echo "== FP8 fused MoE and dense GEMM vs bf16"
timeout "${BENCH_LIMIT:-300}" $PY ops/bench/fp8_moe_gpu.py --json "$OUT/fp8_moe_gpu.json" 2>&1 | tee "$OUT/fp8_moe_gpu.log"

if [ "$($PY -c 'import torch; print(torch.cuda.device_count())')" -ge 2 ]; then
  echo "== 2 ranks over NCCL"
  timeout "${TP_LIMIT:-180}" $PY - <<'PY' 2>&1 | tee "$OUT/tp_nccl.log"
import socket, torch, torch.multiprocessing as mp
from pathlib import Path
def main(rank, port):
    from inference import load_model, parallel
    tp = parallel.init(rank, 2, port=port, device="cuda")
    ckpt = Path("inference/demo/checkpoint")
    model = load_model(ckpt, dtype=torch.float32, device=f"cuda:{rank}", tp=tp)
    ids = torch.arange(2, 60, device=f"cuda:{rank}")[None]
    out = model(ids)
    if rank == 0:
        single = load_model(ckpt, dtype=torch.float32, device="cuda:0", tp=parallel.TensorParallel())
        print("2-rank NCCL vs 1 rank max |diff|", (out - single(ids)).abs().max().item())
    torch.distributed.destroy_process_group()
with socket.socket() as s:
    s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]
mp.spawn(main, args=(port,), nprocs=2)
PY
fi
echo "done; results in $OUT"
