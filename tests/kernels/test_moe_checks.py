"""Launchers refuse bad inputs with a message that says what was wrong."""

import pytest
import torch

from kernels import MoEInputError, fused_moe
from kernels.testing import random_problem


@pytest.fixture
def problem():
    return random_problem(5, 40, 24, 4, 2, dtype=torch.float32)


def call(problem, **replace):
    args = dict(hidden=problem.hidden, w13=problem.w13, w2=problem.w2,
                topk_weights=problem.topk_weights, topk_ids=problem.topk_ids)
    args.update(replace)
    return fused_moe(**args)


@pytest.fixture(params=["torch", "interpreter"])
def backend(request, monkeypatch):
    """Every check holds on both CPU backends (the interpreter runs the Triton launcher's checks)."""
    if request.param == "interpreter":
        pytest.importorskip("triton")
        monkeypatch.setenv("TRITON_INTERPRET", "1")
    else:
        monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    return request.param


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda p: {"hidden": p.hidden[None]}, r"hidden must be 2-D \[T, H\], got shape \(1, 5, 40\)"),
        (lambda p: {"w13": p.w13[0]}, r"w13 must be 3-D \[E, 2I, H\]"),
        (lambda p: {"w2": p.w2[0]}, r"w2 must be 3-D \[E, H, I\]"),
        (lambda p: {"hidden": p.hidden[:, :32].contiguous()}, r"with H = 32 \(hidden's last dim\)"),
        (lambda p: {"w13": p.w13[:, :47].contiguous()}, r"second dim \(2I\) must be even, got 47"),
        (lambda p: {"w2": p.w2[..., :20].contiguous()}, r"w2 must be \[E, H, I\] = \(4, 40, 24\)"),
        (lambda p: {"w2": p.w2[:3].contiguous()}, r"w2 must be \[E, H, I\] = \(4, 40, 24\)"),
        (lambda p: {"topk_ids": p.topk_ids[:4].contiguous(), "topk_weights": p.topk_weights[:4].contiguous()},
         r"topk_ids has 4 rows but hidden has 5 tokens"),
        (lambda p: {"topk_weights": p.topk_weights[:, :1].contiguous()},
         r"topk_weights \(5, 1\) and topk_ids \(5, 2\) must have the same shape"),
        (lambda p: {"topk_ids": torch.zeros(5, 5, dtype=torch.int32), "topk_weights": torch.ones(5, 5)},
         r"top-k = 5 exceeds the number of experts E = 4"),
        (lambda p: {"hidden": p.hidden.double(), "w13": p.w13.double(), "w2": p.w2.double()},
         r"hidden must be float16, bfloat16 or float32, got torch.float64"),
        (lambda p: {"w2": p.w2.half()}, r"w13 \(torch.float32\) and w2 \(torch.float16\) must have hidden's dtype"),
        (lambda p: {"topk_ids": p.topk_ids.float()}, r"topk_ids must be int32 or int64, got torch.float32"),
        (lambda p: {"topk_weights": p.topk_ids}, r"topk_weights must be floating point, got torch.int32"),
        (lambda p: {"hidden": p.hidden.t().contiguous().t()}, r"hidden must be contiguous \(got strides \(1, 5\)"),
        (lambda p: {"w13": p.w13.transpose(1, 2).contiguous().transpose(1, 2)}, r"w13 must be contiguous"),
        (lambda p: {"topk_ids": p.topk_ids.t().contiguous().t()}, r"topk_ids must be contiguous"),
    ],
    ids=["hidden-3d", "w13-2d", "w2-2d", "hidden-size", "odd-2I", "w2-inter", "w2-experts", "token-count",
         "weights-shape", "k-over-E", "float64", "mixed-dtypes", "float-ids", "int-weights",
         "strided-hidden", "strided-w13", "strided-ids"],
)
def test_it_names_what_is_wrong(problem, backend, mutate, message):
    with pytest.raises(MoEInputError, match=message):
        call(problem, **mutate(problem))


def test_the_interpreter_refuses_bfloat16(interpreter):
    problem = random_problem(3, 40, 24, 4, 2, dtype=torch.bfloat16)
    with pytest.raises(MoEInputError, match="interpreter computes garbage for bfloat16"):
        fused_moe(*problem.args())


def test_triton_launcher_wants_cuda_without_the_interpreter(monkeypatch, problem):
    pytest.importorskip("triton")
    from kernels.triton_moe import fused_moe_triton

    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(MoEInputError, match=r"need CUDA tensors \(got device cpu\) unless TRITON_INTERPRET=1"):
        fused_moe_triton(*problem.args())


@pytest.mark.parametrize("key", ["BLOCK_M", "BLOCK_N", "BLOCK_K"])
def test_tiles_below_16_are_refused(interpreter, problem, key):
    from kernels.triton_moe import fused_moe_triton

    config = {"BLOCK_M": 16, "BLOCK_N": 32, "BLOCK_K": 32, "GROUP_M": 1, "num_warps": 4, "num_stages": 1}
    config[key] = 8
    with pytest.raises(MoEInputError, match=rf"{key} must be a power of two >= 16 \(tl.dot needs it\), got 8"):
        fused_moe_triton(*problem.args(), config=config)


def test_align_checks_its_ids(interpreter):
    from kernels.triton_moe import moe_align

    with pytest.raises(MoEInputError, match=r"moe_align: topk_ids must be 2-D \[T, k\], got shape \(6,\)"):
        moe_align(torch.zeros(6, dtype=torch.int32), 4, 16)
    with pytest.raises(MoEInputError, match=r"BLOCK_M must be a power of two >= 16, got 24"):
        moe_align(torch.zeros(3, 2, dtype=torch.int32), 4, 24)
