"""Guards on the host work of a decode step: ATen ops and host syncs counted with a TorchDispatchMode.

A small model's decode step is bound by the host (Python and dispatch per op), so the op count is the
cost. The budgets below are measured values plus a margin; an increase past them is a regression to
explain, not a number to bump.
"""

from __future__ import annotations

import copy
from collections import Counter

import pytest
import torch

from inference import load_model
from inference.engine import Engine, Request, SamplingParams
from inference.model import ModelArgs, Transformer
from inference.opcount import OpCounter
from kernels import backend_for
from tests.inference.checkpoints import DEVICE

# v3_grouped_yarn (3 layers, 2 MoE) at batch 8, CPU: measured 589 greedy, 621 sampled with top-p,
# top-k and a penalty (779 and 807 before the linears ran on packed weights without a row floor,
# RMSNorm became F.rms_norm and the queries' and key's rotations one call; the CPU torch MoE path
# loops over the experts hit: the count moves with the routing). ops/bench/inference.py --ops REV
# compares with the engine at any revision.
DECODE_STEP_OP_BUDGET = {"greedy": 640, "sampled": 675}


def decode_step(model, n: int, base: int = 10, spread: int = 7, **params) -> OpCounter:
    """Admit n requests (prompts of base + spread·i tokens), run until all decode, count one decode step."""
    eng = Engine(model, kv_budget_bytes=8 << 20)
    for i in range(n):
        eng.submit(Request([3 + i % 90] * (base + spread * i), SamplingParams(max_tokens=50, ignore_eos=True, **params,
                                                                       **({"seed": i} if params else {}))))
    with torch.inference_mode():
        eng._waiting.extend(eng._incoming)
        eng._incoming.clear()
        eng._admit()
        eng._step()  # prefill
        eng._step()  # first decode (the count table and buffers exist from here on)
        assert all(s.output and s.num_computed == len(s.tokens()) - 1 for s in eng._running)
        with OpCounter() as ops:
            eng._step()
    return ops


@pytest.fixture(scope="module")
def moe_model(checkpoint):
    path, _ = checkpoint("v3_grouped_yarn")
    return load_model(path, dtype=torch.float32, device=DEVICE)


@pytest.fixture(scope="module")
def dense_model():
    args = ModelArgs(vocab_size=97, hidden_size=64, intermediate_size=128, moe_intermediate_size=32,
                     num_hidden_layers=2, num_attention_heads=4, q_lora_rank=None, kv_lora_rank=32,
                     qk_nope_head_dim=16, qk_rope_head_dim=8, v_head_dim=16)
    torch.manual_seed(0)
    model = Transformer(args)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(torch.ones_like(p) if "norm" in name else torch.randn_like(p) * 0.05)
    return model.requires_grad_(False).to(DEVICE)  # as load_model leaves it


@pytest.mark.parametrize("kind", ["greedy", "sampled"])
def test_a_decode_step_stays_within_its_op_budget(moe_model, kind):
    params = {} if kind == "greedy" else dict(temperature=0.8, top_p=0.9, top_k=20, presence_penalty=0.3)
    ops = decode_step(moe_model, 8, **params)
    assert ops.total <= DECODE_STEP_OP_BUDGET[kind], ops.by_name.most_common(12)
    # The sampled ids come back once; the CPU torch MoE path reads its expert counts once per layer.
    moe_layers = sum(moe_model.args.is_moe_layer(i) for i in range(moe_model.args.num_hidden_layers))
    hidden = torch.empty(1, moe_model.args.hidden_size, device=DEVICE)
    assert ops.syncs == 1 + (moe_layers if backend_for(hidden) == "torch" else 0), ops.by_name


@pytest.mark.parametrize("kind", ["greedy", "sampled"])
def test_a_decode_step_costs_the_same_host_work_at_any_batch_size(dense_model, kind):
    params = {} if kind == "greedy" else dict(temperature=0.8, top_p=0.9, frequency_penalty=0.3)
    # Contexts of 70-100 tokens: two 64-token KV splits for the longest, alone or not (one split
    # takes a shorter path, a constant, not per-sequence work).
    one = decode_step(dense_model, 1, base=70, spread=2, **params)
    four = decode_step(dense_model, 4, base=70, spread=2, **params)
    many = decode_step(dense_model, 16, base=70, spread=2, **params)
    assert four.by_name == many.by_name  # no per-sequence or per-length-group work on the host
    assert one.syncs == four.syncs == many.syncs == 1
    # The linears run on oneDNN's packed weights, whose rows need no floor (kernels/rows.py); only the
    # absorbed W_UK / W_UV products (two per layer) are padded to 4 rows below 4: a pad and a slice each.
    layers = dense_model.args.num_hidden_layers
    assert one.by_name - four.by_name == Counter({"aten.pad.default": 2 * layers, "aten.slice.Tensor": 2 * layers})
    assert four.by_name - one.by_name == Counter(), four.by_name - one.by_name


def test_the_decode_step_makes_no_host_sync_on_cuda(dense_model):
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA: set_sync_debug_mode only reports device syncs")
    model = copy.deepcopy(dense_model).to("cuda")
    eng = Engine(model, kv_budget_bytes=8 << 20)
    for i in range(4):
        eng.submit(Request([3 + i] * (10 + 5 * i), SamplingParams(max_tokens=50, ignore_eos=True)))
    with torch.inference_mode():
        eng._waiting.extend(eng._incoming)
        eng._incoming.clear()
        eng._admit()
        eng._step()
        eng._step()
        eng._step()  # warm: captured graphs (where enabled) exist from here on
        calls = {"n": 0}
        real = eng._sample

        def sample_then_allow_the_one_copy(*args, **kwargs):
            # Everything before the sampled ids' copy must run without a sync.
            calls["n"] += 1
            torch.cuda.set_sync_debug_mode("default")
            return real(*args, **kwargs)

        eng._sample = sample_then_allow_the_one_copy
        torch.cuda.set_sync_debug_mode("error")
        try:
            eng._step()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    assert calls["n"] == 1
