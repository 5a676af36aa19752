"""The Triton kernels, run by the interpreter on CPU tensors, against the reference loop.

Each case names one point; together they cover every value of each axis (E ∈ {1, 4, 8},
k ∈ {1, 2, 6}, T ∈ {1, 7, 33, 64}, fp32 and fp16, every routing kind) without the cross product,
which the interpreter could not afford. H and I are never multiples of the 32-wide test tiles
except where a case says so (to exercise the unmasked EVEN_K loop).
"""

import pytest
import torch

from kernels import fused_moe, moe_reference
from kernels.testing import assert_moe_close, random_problem

pytestmark = pytest.mark.usefixtures("interpreter")

F32, F16 = torch.float32, torch.float16

# (E, k, T, H, I, dtype, routing)
CASES = [
    (1, 1, 1, 40, 24, F32, "random"),
    (1, 1, 64, 72, 40, F16, "random"),  # E = 1: every token on one expert
    (4, 1, 7, 72, 40, F32, "random"),
    (4, 2, 7, 72, 40, F16, "random"),
    (4, 2, 33, 128, 64, F32, "random"),  # H, I multiples of the tile: EVEN_K path
    (8, 2, 64, 96, 56, F16, "random"),
    (8, 6, 33, 48, 40, F32, "random"),
    (8, 6, 1, 72, 24, F16, "random"),
    (4, 1, 33, 72, 40, F16, "one_expert"),
    (8, 6, 7, 72, 40, F32, "one_expert"),
    (8, 2, 33, 48, 40, F32, "skip_experts"),
    (8, 1, 64, 40, 24, F16, "skip_experts"),
    (8, 6, 7, 72, 40, F32, "zero_weights"),
    (4, 2, 33, 40, 24, F16, "zero_weights"),
]


def _id(case):
    e, k, t, h, i, dtype, routing = case
    return f"E{e}-k{k}-T{t}-H{h}-I{i}-{str(dtype).removeprefix('torch.')}-{routing}"


@pytest.mark.parametrize("case", CASES, ids=[_id(c) for c in CASES])
def test_it_matches_the_reference(case):
    num_experts, top_k, num_tokens, hidden, inter, dtype, routing = case
    problem = random_problem(num_tokens, hidden, inter, num_experts, top_k, dtype=dtype, routing=routing,
                             seed=num_tokens * 100 + num_experts)
    out = fused_moe(*problem.args())
    ref = moe_reference(*problem.args())
    assert out.dtype == dtype
    assert_moe_close(out, ref, str(dtype).removeprefix("torch."))


def test_tokens_whose_weights_are_all_zero_get_exactly_zero():
    problem = random_problem(33, 40, 24, 8, 6, dtype=F32, routing="zero_weights", seed=3)
    out = fused_moe(*problem.args())
    assert torch.equal(out[1::2], torch.zeros_like(out[1::2]))
    assert out[0::2].abs().sum() > 0


@pytest.mark.parametrize(
    "config",
    [
        {"BLOCK_M": 32, "BLOCK_N": 16, "BLOCK_K": 64, "GROUP_M": 4, "num_warps": 4, "num_stages": 2},
        {"BLOCK_M": 16, "BLOCK_N": 64, "BLOCK_K": 16, "GROUP_M": 2, "num_warps": 4, "num_stages": 2,
         "gemm2": {"BLOCK_N": 32, "BLOCK_K": 32, "GROUP_M": 1}},
    ],
    ids=["wide-m", "gemm2-override"],
)
def test_other_tile_configs_give_the_same_answer(config):
    from kernels.triton_moe import fused_moe_triton

    problem = random_problem(33, 72, 40, 8, 2, dtype=F32, seed=11)
    out = fused_moe_triton(*problem.args(), config=config)
    assert_moe_close(out, moe_reference(*problem.args()), "float32")


def test_it_accepts_int64_ids_and_half_precision_weights():
    problem = random_problem(7, 40, 24, 4, 2, dtype=F16, seed=5)
    ids64 = problem.topk_ids.long()
    weights16 = problem.topk_weights.half()
    out = fused_moe(problem.hidden, problem.w13, problem.w2, weights16, ids64)
    ref = moe_reference(problem.hidden, problem.w13, problem.w2, weights16, ids64)
    assert_moe_close(out, ref, "float16")


def test_no_tokens_gives_an_empty_output():
    problem = random_problem(0, 40, 24, 4, 2, dtype=F32)
    out = fused_moe(*problem.args())
    assert out.shape == (0, 40)


DECODE_CASES = [
    (8, 6, 1, 72, 40, F32),
    (4, 2, 3, 128, 64, F16),
    (1, 1, 1, 40, 24, F32),
    (8, 2, 7, 48, 40, F16),
]


@pytest.mark.parametrize("case", DECODE_CASES, ids=["E{}-k{}-T{}-H{}-I{}".format(*c[:5]) for c in DECODE_CASES])
def test_the_small_batch_path_matches_the_reference(case):
    from kernels.triton_moe import fused_moe_triton

    num_experts, top_k, num_tokens, hidden, inter, dtype = case
    problem = random_problem(num_tokens, hidden, inter, num_experts, top_k, dtype=dtype, seed=num_tokens)
    out = fused_moe_triton(*problem.args(), decode=True)
    assert_moe_close(out, moe_reference(*problem.args()), str(dtype).removeprefix("torch."))


def test_the_decode_cut_off_can_be_set_for_measuring(monkeypatch):
    from kernels.triton_moe import use_decode_path

    monkeypatch.setenv("LEVEE_MOE_DECODE_MAX_TOKENS", "4")
    assert use_decode_path(4, 6, 64) and not use_decode_path(5, 6, 64)


@pytest.mark.parametrize("num_tokens", [1, 2])
def test_the_aligned_path_still_serves_single_tokens_when_asked(num_tokens):
    from kernels.triton_moe import fused_moe_triton

    problem = random_problem(num_tokens, 72, 40, 8, 6, dtype=F32, seed=21)
    out = fused_moe_triton(*problem.args(), decode=False)
    assert_moe_close(out, moe_reference(*problem.args()), "float32")


def test_the_small_batch_path_takes_its_tiles_from_the_config():
    from kernels.triton_moe import fused_moe_triton

    problem = random_problem(1, 72, 40, 8, 6, dtype=F32, seed=4)
    config = {"BLOCK_M": 16, "BLOCK_N": 32, "BLOCK_K": 32, "GROUP_M": 1, "num_warps": 4, "num_stages": 1,
              "gemv1": [1, 16, 4], "gemv2": [8, 64, 4]}
    out = fused_moe_triton(*problem.args(), config=config, decode=True)
    assert_moe_close(out, moe_reference(*problem.args()), "float32")


SPLIT_CONFIG = {"BLOCK_M": 16, "BLOCK_N": 32, "BLOCK_K": 32, "GROUP_M": 1, "num_warps": 4, "num_stages": 1}


@pytest.mark.parametrize("case", DECODE_CASES, ids=["E{}-k{}-T{}-H{}-I{}".format(*c[:5]) for c in DECODE_CASES])
@pytest.mark.parametrize("split", [True, [4, 16, 4]], ids=["heuristic-tiles", "config-tiles"])
def test_the_split_decode_down_projection_matches_the_reference(case, split):
    """GEMM 2 split over the k experts (per-pair rows, then the sum kernel), asked for by config."""
    from kernels.triton_moe import fused_moe_triton

    num_experts, top_k, num_tokens, hidden, inter, dtype = case
    problem = random_problem(num_tokens, hidden, inter, num_experts, top_k, dtype=dtype, seed=num_tokens + 40)
    config = {**SPLIT_CONFIG, "gemv2_split": split}
    out = fused_moe_triton(*problem.args(), config=config, decode=True)
    assert out.dtype == dtype
    assert_moe_close(out, moe_reference(*problem.args()), str(dtype).removeprefix("torch."))


def test_the_split_decode_path_is_off_unless_a_config_asks(monkeypatch):
    """No committed table turns it on, so the tuned decode path runs as it was measured."""
    import json

    from kernels import triton_moe
    from kernels.configs import CONFIG_DIR

    for path in CONFIG_DIR.glob("*.json"):
        assert all("gemv2_split" not in entry for entry in json.loads(path.read_text()).values()), path
    calls = []
    monkeypatch.setattr(triton_moe, "moe_gemv2_split", lambda *a, **k: calls.append(1))
    problem = random_problem(1, 72, 40, 8, 6, dtype=F32, seed=5)
    out = triton_moe.fused_moe_triton(*problem.args(), decode=True)
    assert not calls
    assert_moe_close(out, moe_reference(*problem.args()), "float32")
