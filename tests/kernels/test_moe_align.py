"""The align step, under the interpreter: pairs grouped by expert, padded to BLOCK_M."""

import pytest
import torch

from kernels.testing import random_routing

pytestmark = pytest.mark.usefixtures("interpreter")


def check_alignment(topk_ids, num_experts, block_m, sorted_ids, expert_ids, num_post_pad):
    num_pairs = topk_ids.numel()
    flat = topk_ids.reshape(-1).long()
    counts = torch.bincount(flat, minlength=num_experts)
    padded = (counts + block_m - 1) // block_m * block_m
    total = int(padded.sum())
    assert int(num_post_pad[0]) == total

    # every pair exactly once, nothing but the sentinel in the padding
    placed = sorted_ids[:total].long()
    real = placed[placed < num_pairs]
    assert torch.equal(real.sort().values, torch.arange(num_pairs))
    assert bool((placed[placed >= num_pairs] == num_pairs).all())
    assert bool((sorted_ids[total:] == num_pairs).all())

    # each block holds one expert's pairs, in pair order, and the blocks run expert by expert
    blocks = placed.view(-1, block_m)
    for b, row in enumerate(blocks):
        expert = int(expert_ids[b])
        pairs = row[row < num_pairs]
        assert 0 <= expert < num_experts
        assert bool((flat[pairs] == expert).all()), f"block {b} (expert {expert}) holds pairs of other experts"
        assert bool((pairs.diff() > 0).all())
    assert bool((expert_ids[: total // block_m].diff() >= 0).all())
    assert bool((expert_ids[total // block_m:] == -1).all())


@pytest.mark.parametrize(
    ("num_tokens", "num_experts", "top_k", "block_m", "chunk", "routing"),
    [
        (1, 8, 6, 16, None, "random"),
        (7, 1, 1, 16, None, "random"),
        (33, 5, 2, 16, None, "random"),  # E not a power of two
        (64, 8, 2, 32, None, "skip_experts"),
        (200, 8, 3, 16, 16, "random"),  # many chunks: the multi-program path
        (150, 6, 2, 64, 32, "one_expert"),
        (100, 64, 6, 16, 16, "random"),
    ],
)
def test_pairs_are_grouped_by_expert_and_padded(num_tokens, num_experts, top_k, block_m, chunk, routing):
    from kernels.triton_moe import moe_align

    gen = torch.Generator().manual_seed(num_tokens)
    ids, _ = random_routing(num_tokens, num_experts, top_k, routing=routing, generator=gen)
    sorted_ids, expert_ids, num_post_pad = moe_align(ids, num_experts, block_m, chunk=chunk)
    check_alignment(ids, num_experts, block_m, sorted_ids, expert_ids, num_post_pad)


def test_the_layout_does_not_depend_on_the_chunking():
    from kernels.triton_moe import moe_align

    ids, _ = random_routing(300, 8, 3, generator=torch.Generator().manual_seed(1))
    layouts = [moe_align(ids, 8, 16, chunk=chunk) for chunk in (16, 64, 1024)]
    for other in layouts[1:]:
        for a, b in zip(layouts[0], other, strict=True):
            assert torch.equal(a, b)
