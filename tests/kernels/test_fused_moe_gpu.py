"""The compiled Triton kernels on a CUDA device (skipped elsewhere): bf16 too, and graph capture.

Interpreter tests cannot see what only the compiler does (tl.dot's >= 16 rule, wgmma layouts,
pipelining, int32 overflow of large offsets), so each default tile config is compiled here at
least once, at sizes that are not multiples of the tiles.
"""

import pytest
import torch

from kernels import fused_moe, moe_reference
from kernels.configs import default_config
from kernels.testing import assert_moe_close, random_problem

pytestmark = pytest.mark.gpu

BF16, F16, F32 = torch.bfloat16, torch.float16, torch.float32
TOLERANCE = {BF16: "bfloat16", F16: "float16", F32: "tf32"}

# (E, k, T, H, I, routing): together they reach every default BLOCK_M (16, 32, 64, 128)
CASES = [
    (8, 2, 1, 256, 128, "random"),
    (64, 6, 33, 1000, 360, "random"),
    (64, 6, 300, 2048, 1408, "random"),
    (16, 4, 300, 512, 200, "skip_experts"),
    (8, 2, 4096, 384, 256, "random"),
    (256, 8, 64, 512, 256, "zero_weights"),
    (4, 1, 100, 256, 96, "one_expert"),
]


def _id(case):
    return "E{}-k{}-T{}-H{}-I{}-{}".format(*case)


@pytest.mark.parametrize("case", CASES, ids=[_id(c) for c in CASES])
def test_compiled_bf16_matches_the_reference(cuda, case):
    check(cuda, case, BF16)


@pytest.mark.parametrize("dtype", [F16, F32], ids=["fp16", "fp32"])
@pytest.mark.parametrize("case", [CASES[1], CASES[4]], ids=[_id(CASES[1]), _id(CASES[4])])
def test_compiled_fp16_and_fp32_match_the_reference(cuda, case, dtype):
    check(cuda, case, dtype)


def check(device, case, dtype):
    num_experts, top_k, num_tokens, hidden, inter, routing = case
    problem = random_problem(num_tokens, hidden, inter, num_experts, top_k, dtype=dtype, device=device,
                             routing=routing, seed=num_tokens)
    out = fused_moe(*problem.args())
    torch.cuda.synchronize()
    assert_moe_close(out, moe_reference(*problem.args()), TOLERANCE[dtype])


def test_every_default_block_m_is_reached():
    reached = {default_config(t, e, k)["BLOCK_M"] for e, k, t, *_ in CASES}
    assert reached == {16, 32, 64, 128}


def test_align_on_the_gpu_at_deepseek_v3_width(cuda):
    from kernels.testing import random_routing
    from kernels.triton_moe import moe_align

    ids, _ = random_routing(4096, 256, 8, generator=torch.Generator().manual_seed(0), device=cuda)
    sorted_ids, expert_ids, num_post_pad = moe_align(ids, 256, 64)
    total = int(num_post_pad.item())
    placed = sorted_ids[:total].long()
    real = placed[placed < ids.numel()]
    assert torch.equal(real.sort().values, torch.arange(ids.numel(), device=cuda))
    owners = expert_ids[:total // 64].long().repeat_interleave(64)
    flat = ids.reshape(-1).long()
    mask = placed < ids.numel()
    assert torch.equal(flat[placed[mask]], owners[mask])


def test_it_runs_inside_a_cuda_graph(cuda):
    """No host sync on the path: capture and replay give the eager answer."""
    problem = random_problem(8, 512, 256, 64, 6, dtype=BF16, device=cuda)
    eager = fused_moe(*problem.args())
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        fused_moe(*problem.args())  # warm-up on the side stream, as capture wants
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = fused_moe(*problem.args())
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(captured, eager)


@pytest.mark.parametrize("num_tokens", [1, 4])
@pytest.mark.parametrize(("num_experts", "top_k", "hidden", "inter"), [(64, 6, 2048, 1408), (256, 8, 1000, 360)])
def test_the_small_batch_path_compiled_in_bf16(cuda, num_tokens, num_experts, top_k, hidden, inter):
    from kernels.triton_moe import fused_moe_triton

    problem = random_problem(num_tokens, hidden, inter, num_experts, top_k, dtype=BF16, device=cuda, seed=7)
    out = fused_moe_triton(*problem.args(), decode=True)
    torch.cuda.synchronize()
    assert_moe_close(out, moe_reference(*problem.args()), "bfloat16")


@pytest.mark.parametrize("num_tokens", [1, 4])
@pytest.mark.parametrize(("num_experts", "top_k", "hidden", "inter"), [(64, 6, 2048, 1408), (8, 1, 1000, 360)])
def test_the_split_decode_down_projection_compiled_in_bf16(cuda, num_tokens, num_experts, top_k, hidden, inter):
    """The config-selected split of the small-batch GEMM 2 (moe_gemv2_split), compiled."""
    from kernels.triton_moe import fused_moe_triton

    problem = random_problem(num_tokens, hidden, inter, num_experts, top_k, dtype=BF16, device=cuda, seed=8)
    config = {**default_config(num_tokens, num_experts, top_k), "gemv2_split": True}
    out = fused_moe_triton(*problem.args(), config=config, decode=True)
    torch.cuda.synchronize()
    assert_moe_close(out, moe_reference(*problem.args()), "bfloat16")
