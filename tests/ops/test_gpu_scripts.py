"""The prepared GPU scripts run where no GPU is (this box, CI) only in part; a lent GPU's minutes are
few, so what of them can run on the CPU runs here: ops/bench/engine_gpu.py's model builder, floors
and engine drivers on a tiny copy of its V2-Lite shapes."""
from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def engine_gpu():
    sys.path.insert(0, str(ROOT / "ops" / "bench"))
    try:
        spec = importlib.util.spec_from_file_location("engine_gpu", ROOT / "ops" / "bench" / "engine_gpu.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.path.remove(str(ROOT / "ops" / "bench"))


TINY = dict(vocab_size=257, hidden_size=64, intermediate_size=96, moe_intermediate_size=16, num_hidden_layers=2,
            num_attention_heads=2, kv_lora_rank=32, qk_nope_head_dim=16, qk_rope_head_dim=8, v_head_dim=16,
            n_routed_experts=8, n_shared_experts=2, num_experts_per_tok=2, max_position_embeddings=4096,
            eos_token_ids=(256,))


def test_the_engine_benchmark_drives_a_tiny_copy_of_its_model_on_the_cpu(engine_gpu):
    from inference.engine import Engine

    model = engine_gpu.build_model(torch.device("cpu"), torch.float32, **TINY)
    assert model.args.kv_lora_rank == 32 and model.args.n_routed_experts == 8  # the shrink took
    pb = engine_gpu.param_bytes(model)
    assert pb["moe_layers"] == 1 and pb["expert"] == 3 * 16 * 64 * 4  # w13 (2·I×H) and w2 (H×I), fp32
    floors = [engine_gpu.decode_floor(model, pb, b, 64, 1e12, 1e14) for b in (1, 8, 64)]
    assert all(math.isfinite(f) and f > 0 for f in floors) and floors == sorted(floors)
    assert engine_gpu.prefill_floor(model, pb, 1024, 1e14) < engine_gpu.prefill_floor(model, pb, 8192, 1e14)
    per_token = model.args.num_hidden_layers * model.args.latent_dim * 4
    engine = Engine(model, kv_budget_bytes=per_token * 512, max_batch=4, max_model_len=256, cuda_graphs=False).start()
    try:
        rate = engine_gpu.decode_rate(engine, model.args.vocab_size, 3, 24, 6)
        first = engine_gpu.ttft(engine, model.args.vocab_size, 40)
    finally:
        engine.stop()
    assert rate > 0 and 0 < first < 60
    assert engine.steps > 0
