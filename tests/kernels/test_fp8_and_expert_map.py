"""FP8 block-scaled experts and the expert map, on the torch path and under the Triton interpreter.

The oracle is the reference loop run on the dequantized weights: FP8 changes what the weights
are, never how the layer computes with them. Dimensions of 136/160 leave partial 128-blocks.
"""

import pytest
import torch

from kernels import MoEInputError, fused_moe, moe_reference
from kernels.fp8 import CACHE, FP8_DTYPE, dequantize, dequantize_w13, quantize
from kernels.testing import assert_moe_close, random_problem


def quantized(problem):
    """(w13 fp8, w13 scales, w2 fp8, w2 scales): gate and up quantized separately, as published."""
    inter = problem.w13.shape[1] // 2
    q13, s13, q2, s2 = [], [], [], []
    for e in range(problem.w13.shape[0]):
        qg, sg = quantize(problem.w13[e, :inter])
        qu, su = quantize(problem.w13[e, inter:])
        qd, sd = quantize(problem.w2[e])
        q13.append(torch.cat((qg, qu)))
        s13.append(torch.cat((sg, su)))
        q2.append(qd)
        s2.append(sd)
    return torch.stack(q13), torch.stack(s13), torch.stack(q2), torch.stack(s2)


def test_quantize_round_trips_within_fp8_precision_and_edge_blocks_get_their_own_scale():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(200, 136, generator=g)
    w[130:, 130:] *= 1000  # the corner block is partial in both dimensions and much larger
    q, s = quantize(w)
    assert q.dtype == FP8_DTYPE and s.shape == (2, 2)
    assert s[1, 1] > 100 * s[0, 0]
    back = dequantize(q, s)
    rel = ((back - w).abs() / w.abs().clamp_min(1e-3)).median()
    assert rel < 0.05  # e4m3 has a 3-bit mantissa: ~3% worst case per element
    # The partial corner block is scaled by its own amax: its largest element is exactly 448 in fp8.
    assert q[130:, 130:].float().abs().max() == 448.0


def test_dequantize_names_a_misshapen_scale():
    q, _ = quantize(torch.randn(130, 10))
    with pytest.raises(ValueError, match=r"scale_inv has shape \(1, 1\), expected \(2, 1\)"):
        dequantize(q, torch.ones(1, 1))


@pytest.mark.parametrize("num_tokens", [1, 9])
def test_fp8_torch_path_matches_the_reference_on_dequantized_weights(num_tokens):
    problem = random_problem(num_tokens, 160, 136, 4, 2, seed=num_tokens)
    q13, s13, q2, s2 = quantized(problem)
    ref = moe_reference(problem.hidden, dequantize_w13(q13, s13), dequantize(q2, s2),
                        problem.topk_weights, problem.topk_ids)
    CACHE.clear()
    out = fused_moe(problem.hidden, q13, q2, problem.topk_weights, problem.topk_ids, w13_scale=s13, w2_scale=s2)
    assert_moe_close(out, ref, "float32")
    # and it is not the bf16-exact answer: the quantization really happened
    exact = moe_reference(*problem.args())
    assert (out - exact).abs().max() > 1e-4


def test_the_dequant_cache_respects_its_budget(monkeypatch):
    problem = random_problem(9, 160, 136, 4, 2, seed=3)
    q13, s13, q2, s2 = quantized(problem)
    args = (problem.hidden, q13, q2, problem.topk_weights, problem.topk_ids)
    CACHE.clear()
    monkeypatch.setenv("LEVEE_FP8_CACHE_MB", "0")
    first = fused_moe(*args, w13_scale=s13, w2_scale=s2)
    assert CACHE.bytes == 0 and CACHE.hits == 0
    monkeypatch.setenv("LEVEE_FP8_CACHE_MB", "64")
    fused_moe(*args, w13_scale=s13, w2_scale=s2)
    cached = CACHE.bytes
    assert cached > 0
    again = fused_moe(*args, w13_scale=s13, w2_scale=s2)
    assert CACHE.hits > 0 and CACHE.bytes == cached
    assert torch.equal(first, again)


def test_fp8_weights_without_scales_are_refused():
    problem = random_problem(3, 160, 136, 4, 2)
    q13, s13, q2, s2 = quantized(problem)
    with pytest.raises(MoEInputError, match="must have hidden's dtype"):
        fused_moe(problem.hidden, q13, q2, problem.topk_weights, problem.topk_ids)
    with pytest.raises(MoEInputError, match=r"w2_scale must be \[E, ceil\(H/128\), ceil\(I/128\)\]"):
        fused_moe(problem.hidden, q13, q2, problem.topk_weights, problem.topk_ids, w13_scale=s13,
                  w2_scale=s2[:, :1].contiguous())


def split_experts(problem, local: list[int]):
    """This rank's stacked experts and the global → local map (-1 elsewhere)."""
    emap = torch.full((problem.w13.shape[0],), -1, dtype=torch.int32)
    emap[torch.tensor(local)] = torch.arange(len(local), dtype=torch.int32)
    return problem.w13[local].contiguous(), problem.w2[local].contiguous(), emap


@pytest.mark.parametrize("num_tokens", [1, 2, 17])
def test_expert_map_shards_sum_to_the_whole_layer_on_the_torch_path(num_tokens):
    problem = random_problem(num_tokens, 48, 40, 5, 2, seed=num_tokens)
    ref = moe_reference(*problem.args())
    total = torch.zeros_like(ref)
    for local in ([0, 1, 2], [3, 4]):  # uneven: 5 experts over 2 ranks
        w13, w2, emap = split_experts(problem, local)
        total += fused_moe(problem.hidden, w13, w2, problem.topk_weights, problem.topk_ids, expert_map=emap)
    assert_moe_close(total, ref, "float32")


@pytest.mark.usefixtures("interpreter")
@pytest.mark.parametrize("num_tokens", [1, 17])
def test_expert_map_shards_sum_to_the_whole_layer_under_the_interpreter(num_tokens):
    problem = random_problem(num_tokens, 48, 40, 5, 2, seed=num_tokens)
    ref = moe_reference(*problem.args())
    total = torch.zeros_like(ref)
    for local in ([0, 1, 2], [3, 4]):
        w13, w2, emap = split_experts(problem, local)
        total += fused_moe(problem.hidden, w13, w2, problem.topk_weights, problem.topk_ids, expert_map=emap)
    assert_moe_close(total, ref, "float32")


@pytest.mark.usefixtures("interpreter")
@pytest.mark.parametrize("num_tokens, decode", [(1, True), (2, True), (9, False)])
def test_fp8_triton_kernels_match_the_reference_on_dequantized_weights(num_tokens, decode):
    from kernels.triton_moe import fused_moe_triton

    problem = random_problem(num_tokens, 160, 136, 4, 2, seed=num_tokens + 10)
    q13, s13, q2, s2 = quantized(problem)
    ref = moe_reference(problem.hidden, dequantize_w13(q13, s13), dequantize(q2, s2),
                        problem.topk_weights, problem.topk_ids)
    out = fused_moe_triton(problem.hidden, q13, q2, problem.topk_weights, problem.topk_ids,
                           w13_scale=s13, w2_scale=s2, decode=decode)
    assert_moe_close(out, ref, "float32")


@pytest.mark.usefixtures("interpreter")
@pytest.mark.parametrize("m", [1, 5, 40])
def test_the_block_fp8_gemm_matches_a_dense_product_of_the_dequantized_weight(m):
    from kernels.fp8_linear import fp8_linear_triton

    g = torch.Generator().manual_seed(m)
    w = torch.randn(200, 136, generator=g)
    q, s = quantize(w)
    x = torch.randn(m, 136, generator=g)
    out = fp8_linear_triton(x, q, s)
    assert_moe_close(out, x @ dequantize(q, s).t(), "float32")


def test_the_block_fp8_gemm_names_a_bad_scale():
    from kernels.fp8_linear import fp8_linear_triton

    q, _ = quantize(torch.randn(200, 136))
    with pytest.raises(MoEInputError, match=r"scale_inv must be \(2, 2\)"):
        fp8_linear_triton(torch.randn(3, 136), q, torch.ones(1, 2))
