"""The CPU fast path against the reference loop, at sizes the interpreter could not run."""

import pytest
import torch

from kernels import moe_reference, moe_torch
from kernels.testing import assert_moe_close, random_problem


@pytest.mark.parametrize("num_tokens", [1, 7, 64, 512])
@pytest.mark.parametrize("routing", ["random", "skip_experts", "zero_weights"])
def test_it_matches_the_reference_at_deepseek_routing_width(num_tokens, routing):
    problem = random_problem(num_tokens, 64, 48, 64, 6, dtype=torch.float32, routing=routing, seed=num_tokens)
    assert_moe_close(moe_torch(*problem.args()), moe_reference(*problem.args()), "float32")


def test_every_token_on_one_expert():
    problem = random_problem(100, 64, 40, 8, 1, dtype=torch.float32, routing="one_expert")
    assert_moe_close(moe_torch(*problem.args()), moe_reference(*problem.args()), "float32")


@pytest.mark.parametrize(("dtype", "tolerance"), [(torch.bfloat16, "bfloat16"), (torch.float16, "float16")])
def test_half_precision_on_the_cpu(dtype, tolerance):
    problem = random_problem(33, 64, 48, 16, 6, dtype=dtype, seed=2)
    out = moe_torch(*problem.args())
    assert out.dtype == dtype
    assert_moe_close(out, moe_reference(*problem.args()), tolerance)


def test_it_does_not_sync_per_expert():
    """One host read of the counts, not one per expert: .tolist() is called exactly once."""
    problem = random_problem(64, 32, 24, 16, 4, dtype=torch.float32)
    calls = []
    original = torch.Tensor.tolist

    def counting_tolist(self):
        calls.append(self.shape)
        return original(self)

    torch.Tensor.tolist = counting_tolist
    try:
        moe_torch(*problem.args())
    finally:
        torch.Tensor.tolist = original
    assert len(calls) == 1
