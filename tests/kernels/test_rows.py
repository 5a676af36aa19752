"""kernels/rows.py: products whose rows come out the same at every row count, one row included.

The engine's decode products have one row per sequence; a row's result must not depend on how many
sequences share the step (docs/inference.md, "Batching is invisible"). Parameters run on a oneDNN
packed copy (no floor needed), other weights are padded to 4 rows.
"""

import gc
import weakref

import pytest
import torch
import torch.nn.functional as F

from kernels import rows
from kernels.torch_moe import GEMM_ENV, onednn_available, onednn_dtypes


@pytest.fixture
def packing(monkeypatch):
    """oneDNN on, packing on, an empty cache before and after; one thread (oneDNN/MKL may split a
    product by the thread count, which the row property does not cover)."""
    if not onednn_available() or torch.float32 not in onednn_dtypes():
        pytest.skip("this torch has no oneDNN fp32 inner product")
    monkeypatch.setenv(GEMM_ENV, "onednn")
    monkeypatch.delenv(rows.PREPACK_ENV, raising=False)
    monkeypatch.delenv(rows.PREPACK_BUDGET_ENV, raising=False)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    rows.clear_packed_linears()
    yield
    rows.clear_packed_linears()
    torch.set_num_threads(threads)


def parameter(*shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.nn.Parameter(torch.randn(*shape, generator=g) * 0.1, requires_grad=False)


def same_at_every_row_count(weight, bias=None, k=136):
    x = torch.randn(64, k, generator=torch.Generator().manual_seed(1))
    full = rows.linear(x, weight, bias)
    return all(torch.equal(rows.linear(x[i : i + m], weight, bias), full[i : i + m])
               for i in (0, 5, 30) for m in (1, 2, 3, 4, 5, 9, 33))


def test_a_parameter_runs_packed_and_its_rows_do_not_depend_on_the_row_count(packing):
    w, b = parameter(200, 136), parameter(200, seed=1)
    x = torch.randn(7, 3, 136)
    out = rows.linear(x, w, b)
    assert rows._packed_for(x, w) is not None
    torch.testing.assert_close(out, F.linear(x, w, b), rtol=1e-5, atol=1e-5)
    assert same_at_every_row_count(w, b)
    # a strided input (a transposed view) is read as it is
    xt = torch.randn(136, 10).t()
    torch.testing.assert_close(rows.linear(xt, w), F.linear(xt, w), rtol=1e-5, atol=1e-5)


def test_weights_that_are_not_long_lived_parameters_take_the_floor(packing):
    plain = parameter(200, 136).detach().clone()  # e.g. a per-call conversion such as the router's .float()
    trained = torch.nn.Parameter(parameter(200, 136).detach().clone())  # requires grad
    for w in (plain, trained):
        assert rows._packed_for(torch.randn(1, 136), w) is None
        assert same_at_every_row_count(w)  # the 4-row floor
    x = torch.randn(2, 136, requires_grad=True)  # training: plain F.linear, which has a backward
    rows.linear(x, trained).sum().backward()
    assert x.grad is not None and trained.grad is not None


def test_a_weights_path_is_decided_at_first_sight_and_kept_while_it_lives(monkeypatch, packing):
    x = torch.randn(3, 136)
    monkeypatch.setenv(rows.PREPACK_ENV, "0")
    off = parameter(200, 136)
    assert rows._packed_for(x, off) is None
    monkeypatch.setenv(rows.PREPACK_ENV, "1")
    assert rows._packed_for(x, off) is None  # still the floor: its rounding never changes mid-run
    on = parameter(200, 136, seed=2)
    first = rows._packed_for(x, on)
    assert first is not None and rows._packed_for(x, on) is first
    with torch.no_grad():
        on.mul_(2)  # an in-place write repacks
    assert rows._packed_for(x, on) is not first
    torch.testing.assert_close(rows.linear(x, on), F.linear(x, on), rtol=1e-5, atol=1e-5)


def test_weights_past_the_budget_take_the_floor(monkeypatch, packing):
    small, large = parameter(64, 136), parameter(4096, 136, seed=3)  # 35 KiB, 2.1 MiB
    monkeypatch.setenv(rows.PREPACK_BUDGET_ENV, "1")
    assert rows._packed_for(torch.randn(1, 136), small) is not None
    assert rows._packed_for(torch.randn(1, 136), large) is None
    assert same_at_every_row_count(large)


def test_the_cache_does_not_keep_weights_alive(packing):
    refs = []
    for seed in range(5):
        w = parameter(200, 136, seed=seed)
        rows.linear(torch.randn(2, 136), w)
        refs.append(weakref.ref(w))
        del w
    gc.collect()
    assert all(ref() is None for ref in refs)
    assert not rows._entries


def test_a_group_runs_as_one_packed_product_whose_rows_do_not_depend_on_the_row_count(packing):
    """MLA's two down-projections (or an MLP's gate and up) read the same input: one oneDNN call on a
    packed concatenation, each weight's output a view of its columns."""
    q_a, kv_a = parameter(192, 136), parameter(80, 136, seed=1)  # widths that do not fill a block evenly
    x = torch.randn(64, 136, generator=torch.Generator().manual_seed(1))
    full = rows.linear_group(x, (q_a, kv_a))
    assert [tuple(t.shape) for t in full] == [(64, 192), (64, 80)]
    assert rows._group_for(x, (q_a, kv_a)).packed is not None
    for out, w in zip(full, (q_a, kv_a), strict=True):
        torch.testing.assert_close(out, F.linear(x, w), rtol=1e-5, atol=1e-5)
    for i in (0, 5, 30):
        for m in (1, 2, 3, 4, 5, 9, 33):
            part = rows.linear_group(x[i : i + m], (q_a, kv_a))
            assert all(torch.equal(p, f[i : i + m]) for p, f in zip(part, full, strict=True))
    three = rows.linear_group(torch.randn(2, 5, 136), (q_a, kv_a, parameter(24, 136, seed=2)))  # [..., K] inputs
    assert [tuple(t.shape) for t in three] == [(2, 5, 192), (2, 5, 80), (2, 5, 24)]


def test_a_group_that_cannot_be_packed_runs_its_weights_one_by_one(monkeypatch, packing):
    x = torch.randn(3, 136)
    a, b = parameter(64, 136), parameter(32, 136, seed=1)
    plain = parameter(32, 136, seed=2).detach().clone()  # not a parameter: the floor, alone or in a group
    biased = rows.linear_group(x, (a, b), (parameter(64, seed=3), None))  # biases: one by one, each packed
    assert torch.equal(biased[1], rows.linear(x, b))
    mixed = rows.linear_group(x, (a, plain))
    assert rows._group_for(x, (a, plain)).packed is None
    assert torch.equal(mixed[0], rows.linear(x, a)) and torch.equal(mixed[1], rows.linear(x, plain))
    other_k = parameter(32, 100, seed=4)
    assert rows._group_for(x, (a, other_k)).packed is None
    monkeypatch.setenv(rows.PREPACK_BUDGET_ENV, "0")  # past the budget: decided once, one by one
    c, d = parameter(64, 136, seed=5), parameter(32, 136, seed=6)
    assert rows._group_for(x, (c, d)).packed is None
    monkeypatch.delenv(rows.PREPACK_BUDGET_ENV)
    assert rows._group_for(x, (c, d)).packed is None  # its rounding never changes mid-run


def test_a_groups_packed_copy_follows_its_weights(packing):
    x = torch.randn(2, 136)
    a, b = parameter(64, 136), parameter(32, 136, seed=1)
    first = rows._group_for(x, (a, b))
    assert first.packed is not None and rows._group_for(x, (a, b)) is first
    with torch.no_grad():
        b.mul_(2)  # an in-place write to either weight repacks the group
    out = rows.linear_group(x, (a, b))
    assert rows._group_for(x, (a, b)) is not first
    torch.testing.assert_close(out[1], F.linear(x, b), rtol=1e-5, atol=1e-5)
    ref = weakref.ref(b)
    del b, out
    gc.collect()
    assert ref() is None
    assert not [key for key in rows._entries if isinstance(key, tuple)]  # dropped with one of its weights
