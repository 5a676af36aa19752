"""Paged MLA decode attention: the Triton kernel (interpreter) and the torch split form against the reference."""

from __future__ import annotations

import pytest
import torch

from kernels.mla import mla_decode
from kernels.torch_mla import KV_SPLIT, mla_decode_reference, mla_decode_torch

TOL = {torch.float32: 2e-5, torch.float16: 2e-3}


def paged_case(lengths: list[int], *, heads: int, latent: int, rope: int, block_size: int, dtype: torch.dtype,
               seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Queries, a cache whose blocks are handed out in a shuffled order, block tables padded to whole splits."""
    g = torch.Generator().manual_seed(seed)
    per_split = KV_SPLIT // block_size
    nb = max(-(-n // KV_SPLIT) for n in lengths) * per_split
    need = sum(-(-n // block_size) for n in lengths)
    num_blocks = need + 3
    perm = torch.randperm(num_blocks, generator=g).tolist()
    table = torch.zeros(len(lengths), nb, dtype=torch.int32)
    for b, n in enumerate(lengths):
        k = -(-n // block_size)
        table[b, :k] = torch.tensor([perm.pop() for _ in range(k)])
        table[b, k:] = perm[0]  # padding names a real block: it must be masked, not merely absent
    cache = torch.randn(num_blocks * block_size, latent + rope, generator=g).to(dtype)
    q = (torch.randn(len(lengths), heads, latent + rope, generator=g) * 0.3).to(dtype)
    return q, cache, table, torch.tensor(lengths, dtype=torch.int32)


CASES = [  # lengths, heads, latent, rope, block size
    ([1], 1, 32, 16, 16),
    ([7, 33, 64, 65, 130], 3, 64, 16, 16),
    ([5, 200], 16, 128, 32, 8),
    ([64, 1, 17], 20, 32, 16, 64),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("lengths,heads,latent,rope,bs", CASES)
def test_the_triton_kernel_matches_the_reference(interpreter, dtype, lengths, heads, latent, rope, bs):
    q, cache, table, lens = paged_case(lengths, heads=heads, latent=latent, rope=rope, block_size=bs, dtype=dtype)
    kw = dict(scale=0.125, block_size=bs, latent_rank=latent)
    got = mla_decode(q, cache, table, lens, **kw)
    assert got.shape == (len(lengths), heads, latent) and got.dtype == dtype
    torch.testing.assert_close(got.float(), mla_decode_reference(q, cache, table, lens, **kw), atol=TOL[dtype],
                               rtol=TOL[dtype])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("lengths,heads,latent,rope,bs", CASES)
def test_the_torch_split_form_matches_the_reference(dtype, lengths, heads, latent, rope, bs):
    q, cache, table, lens = paged_case(lengths, heads=heads, latent=latent, rope=rope, block_size=bs, dtype=dtype)
    kw = dict(scale=0.125, block_size=bs, latent_rank=latent)
    got = mla_decode_torch(q, cache, table, lens, **kw)
    torch.testing.assert_close(got.float(), mla_decode_reference(q, cache, table, lens, **kw), atol=TOL[dtype],
                               rtol=TOL[dtype])


@pytest.mark.parametrize("form", ["triton", "torch"])
def test_a_sequence_gets_the_same_bits_alone_or_in_a_batch(interpreter, monkeypatch, form):
    if form == "torch":
        monkeypatch.setenv("TRITON_INTERPRET", "0")  # mla_decode's CPU path
    lengths = [70, 3, 129, 64]
    q, cache, table, lens = paged_case(lengths, heads=4, latent=64, rope=16, block_size=16, dtype=torch.float32)
    kw = dict(scale=0.2, block_size=16, latent_rank=64)
    together = mla_decode(q, cache, table, lens, **kw)
    for b, n in enumerate(lengths):
        width = -(-n // KV_SPLIT) * (KV_SPLIT // 16)  # its own table, no wider than it needs
        alone = mla_decode(q[b : b + 1], cache, table[b : b + 1, :width], lens[b : b + 1], **kw)
        assert torch.equal(alone[0], together[b]), b


def test_bad_shapes_are_refused_with_a_reason(interpreter):
    q, cache, table, lens = paged_case([5], heads=2, latent=32, rope=16, block_size=16, dtype=torch.float32)
    with pytest.raises(ValueError, match="cache must be"):
        mla_decode(q, cache[:, :40], table, lens, scale=1.0, block_size=16, latent_rank=32)
    with pytest.raises(ValueError, match="block_table"):
        mla_decode(q, cache, table[:, None], lens, scale=1.0, block_size=16, latent_rank=32)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_the_compiled_kernel_matches_and_is_batch_invariant_on_cuda(cuda, dtype):
    lengths = [1, 63, 64, 65, 700, 1024, 3]
    q, cache, table, lens = paged_case(lengths, heads=16, latent=512, rope=64, block_size=16, dtype=dtype)
    q, cache, table, lens = q.to(cuda), cache.to(cuda), table.to(cuda), lens.to(cuda)
    kw = dict(scale=0.07, block_size=16, latent_rank=512)
    together = mla_decode(q, cache, table, lens, **kw)
    ref = mla_decode_reference(q, cache, table, lens, **kw)
    tol = 2e-2 if dtype == torch.bfloat16 else 3e-3
    torch.testing.assert_close(together.float(), ref, atol=tol, rtol=tol)
    for b in range(len(lengths)):
        alone = mla_decode(q[b : b + 1], cache, table[b : b + 1], lens[b : b + 1], **kw)
        assert torch.equal(alone[0], together[b]), b
