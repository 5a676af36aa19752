"""The CPU fast path against the reference loop, at sizes the interpreter could not run.

Every case runs with both per-expert GEMMs the path can use (oneDNN's inner product, the default
for fp32 and bf16 CPU tensors, and torch.matmul), oneDNN with and without prepacked weights, and
both ways of running the experts (a pool of one-thread workers taking whole experts, or one expert
after another with threaded GEMMs).
"""

import gc
import threading
import weakref

import pytest
import torch

from kernels import moe_reference, moe_torch
from kernels.testing import assert_moe_close, random_problem
from kernels.torch_moe import (
    GEMM_ENV,
    PARALLEL_ENV,
    PREPACK_ENV,
    PREPACK_MIN_ROWS_ENV,
    _expert_pool,
    _packed,
    clear_packed_weights,
    gemm_for,
    onednn_available,
    onednn_dtypes,
    onednn_transposed,
    parallel_for,
    prepack_for,
)


@pytest.fixture(params=[("onednn", "experts", "packed"), ("onednn", "gemm", "packed"), ("onednn", "experts", "plain"),
                        ("onednn", "gemm", "plain"), ("matmul", "experts", "plain"), ("matmul", "gemm", "plain")],
                ids=lambda p: "-".join(p))
def gemm(request, monkeypatch):
    """Force one GEMM, prepacking on or off and one way of running experts; skip oneDNN where this
    torch has no mkldnn."""
    gemm, parallel, packing = request.param
    if gemm == "onednn" and not onednn_available():
        pytest.skip("this torch has no oneDNN (mkldnn) inner product")
    monkeypatch.setenv(GEMM_ENV, gemm)
    monkeypatch.setenv(PARALLEL_ENV, parallel)
    monkeypatch.setenv(PREPACK_ENV, "1" if packing == "packed" else "0")
    before = torch.get_num_threads()
    if parallel == "experts" and before < 2:  # another test module may have left torch on one thread
        torch.set_num_threads(2)
    yield request.param[:2]
    torch.set_num_threads(before)


@pytest.mark.parametrize("num_tokens", [1, 7, 64, 512])
@pytest.mark.parametrize("routing", ["random", "skip_experts", "zero_weights"])
def test_it_matches_the_reference_at_deepseek_routing_width(num_tokens, routing, gemm):
    problem = random_problem(num_tokens, 64, 48, 64, 6, dtype=torch.float32, routing=routing, seed=num_tokens)
    assert_moe_close(moe_torch(*problem.args()), moe_reference(*problem.args()), "float32")


@pytest.mark.parametrize("num_tokens", [1, 64])
def test_it_runs_under_inference_mode_as_the_engine_calls_it(num_tokens, gemm):
    # The expert pool's threads must take the caller's mode: an engine's tensors are inference
    # tensors, which may only be written to inside inference_mode.
    problem = random_problem(num_tokens, 64, 48, 64, 6, dtype=torch.float32, seed=num_tokens)
    with torch.inference_mode():
        out = moe_torch(*problem.args())
    assert_moe_close(out, moe_reference(*problem.args()), "float32")


@pytest.mark.parametrize("seed", [0, 1])
def test_experts_with_8_to_16_rows_take_the_transposed_product(seed, gemm):
    """fp32 experts with 8-16 rows compute w @ x.t() through oneDNN; mixed with experts outside
    that band in one call."""
    problem = random_problem(40, 96, 40, 16, 4, dtype=torch.float32, seed=seed)
    counts = torch.bincount(problem.topk_ids.reshape(-1).long(), minlength=16).tolist()
    assert any(onednn_transposed(c, torch.float32) for c in counts)
    assert any(c and not onednn_transposed(c, torch.float32) for c in counts)
    assert_moe_close(moe_torch(*problem.args()), moe_reference(*problem.args()), "float32")


def test_which_experts_take_the_transposed_product():
    assert [r for r in range(40) if onednn_transposed(r, torch.float32)] == list(range(8, 17))
    assert not any(onednn_transposed(r, dtype) for r in range(40) for dtype in (torch.bfloat16, torch.float16))


def test_every_token_on_one_expert(gemm):
    problem = random_problem(100, 64, 40, 8, 1, dtype=torch.float32, routing="one_expert")
    assert_moe_close(moe_torch(*problem.args()), moe_reference(*problem.args()), "float32")


def test_every_token_on_the_same_k_experts(gemm):
    problem = random_problem(37, 48, 24, 16, 4, dtype=torch.float32, routing="one_expert", seed=3)
    assert_moe_close(moe_torch(*problem.args()), moe_reference(*problem.args()), "float32")


@pytest.mark.parametrize(("hidden", "inter", "experts", "top_k"), [(72, 40, 9, 3), (33, 17, 5, 5), (130, 66, 3, 1)])
def test_sizes_that_are_not_multiples_of_anything(hidden, inter, experts, top_k, gemm):
    problem = random_problem(11, hidden, inter, experts, top_k, dtype=torch.float32, seed=hidden)
    assert_moe_close(moe_torch(*problem.args()), moe_reference(*problem.args()), "float32")


def test_one_token_with_k_equal_to_e(gemm):
    problem = random_problem(1, 64, 32, 6, 6, dtype=torch.float32, seed=5)
    assert_moe_close(moe_torch(*problem.args()), moe_reference(*problem.args()), "float32")


def test_all_routing_weights_zero_gives_zeros(gemm):
    problem = random_problem(9, 48, 24, 8, 2, dtype=torch.float32, seed=6)
    problem.topk_weights.zero_()
    out = moe_torch(*problem.args())
    assert torch.equal(out, torch.zeros_like(out))


def test_zero_weights_in_an_expert_give_that_experts_rows_zero(gemm):
    """An expert whose w2 is all zeros contributes nothing; the other experts are unaffected."""
    problem = random_problem(20, 48, 24, 4, 2, dtype=torch.float32, seed=7)
    problem.w2[1].zero_()
    assert_moe_close(moe_torch(*problem.args()), moe_reference(*problem.args()), "float32")


def test_no_tokens_gives_an_empty_output(gemm):
    problem = random_problem(0, 40, 24, 4, 2, dtype=torch.float32)
    out = moe_torch(*problem.args())
    assert out.shape == (0, 40)


def test_int64_ids_and_fp16_routing_weights(gemm):
    problem = random_problem(13, 48, 24, 8, 2, dtype=torch.float32, seed=8)
    ids, weights = problem.topk_ids.long(), problem.topk_weights.half()
    out = moe_torch(problem.hidden, problem.w13, problem.w2, weights, ids)
    ref = moe_reference(problem.hidden, problem.w13, problem.w2, weights, ids)
    assert_moe_close(out, ref, "float32")


@pytest.mark.parametrize(("dtype", "tolerance"), [(torch.bfloat16, "bfloat16"), (torch.float16, "float16")])
@pytest.mark.parametrize("num_tokens", [1, 33])
def test_half_precision_on_the_cpu(dtype, tolerance, num_tokens, gemm):
    problem = random_problem(num_tokens, 64, 48, 16, 6, dtype=dtype, seed=2)
    out = moe_torch(*problem.args())
    assert out.dtype == dtype
    assert_moe_close(out, moe_reference(*problem.args()), tolerance)


def test_the_two_gemms_agree_closely(monkeypatch):
    if not onednn_available():
        pytest.skip("this torch has no oneDNN (mkldnn) inner product")
    problem = random_problem(64, 256, 96, 16, 6, dtype=torch.float32, seed=9)
    monkeypatch.setenv(GEMM_ENV, "onednn")
    a = moe_torch(*problem.args())
    monkeypatch.setenv(GEMM_ENV, "matmul")
    b = moe_torch(*problem.args())
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_which_gemm_is_chosen(monkeypatch):
    monkeypatch.delenv(GEMM_ENV, raising=False)
    x86 = torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512")
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        runs = dtype in onednn_dtypes()
        assert gemm_for(torch.zeros(1, dtype=dtype)) == ("onednn" if runs and x86 else "matmul")
        monkeypatch.setenv(GEMM_ENV, "onednn")
        assert gemm_for(torch.zeros(1, dtype=dtype)) == ("onednn" if runs else "matmul")  # never one that cannot run
        monkeypatch.setenv(GEMM_ENV, "matmul")
        assert gemm_for(torch.zeros(1, dtype=dtype)) == "matmul"
        monkeypatch.delenv(GEMM_ENV)
    if onednn_available():
        assert torch.float32 in onednn_dtypes()
    monkeypatch.setenv(GEMM_ENV, "blas")
    with pytest.raises(ValueError, match=GEMM_ENV):
        gemm_for(torch.zeros(1))


def test_it_does_not_sync_per_expert(gemm):
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


def test_how_experts_are_run(monkeypatch):
    monkeypatch.delenv(PARALLEL_ENV, raising=False)
    hidden = torch.zeros(1)
    threads = torch.get_num_threads()
    spread = [1] * max(threads, 2)  # as many active experts as threads, none larger than its share
    assert parallel_for(hidden, spread) == ("experts" if threads > 1 else "gemm")
    assert parallel_for(hidden, [0, 12, 0, 0]) == "gemm"  # every pair on one expert: threaded GEMMs
    assert parallel_for(hidden, [1] + [0] * 7) == "gemm"
    monkeypatch.setenv(PARALLEL_ENV, "gemm")
    assert parallel_for(hidden, spread) == "gemm"
    monkeypatch.setenv(PARALLEL_ENV, "experts")
    assert parallel_for(hidden, [0, 12, 0, 0]) == ("experts" if threads > 1 else "gemm")
    monkeypatch.setenv(PARALLEL_ENV, "threads")
    with pytest.raises(ValueError, match=PARALLEL_ENV):
        parallel_for(hidden, spread)


def test_the_expert_pool_leaves_torchs_thread_settings_alone(monkeypatch, request):
    """Workers run with one thread each; the calling thread and threads started later keep torch's
    default (the pool sets it to 1 while it starts and puts it back)."""
    if torch.get_num_threads() < 2:  # another test module may have left torch on one thread
        torch.set_num_threads(2)
        request.addfinalizer(lambda: torch.set_num_threads(1))
    threads = torch.get_num_threads()
    monkeypatch.setenv(PARALLEL_ENV, "experts")
    problem = random_problem(64, 64, 32, 16, 4, dtype=torch.float32, seed=10)
    assert_moe_close(moe_torch(*problem.args()), moe_reference(*problem.args()), "float32")
    assert torch.get_num_threads() == threads

    def threads_after_a_parallel_op() -> int:
        torch.empty(1 << 17).fill_(1.0)  # large enough to go through at::parallel_for
        return torch.get_num_threads()

    seen = []
    later = threading.Thread(target=lambda: seen.append(threads_after_a_parallel_op()))
    later.start()
    later.join()
    assert seen == [threads]
    pool = _expert_pool(threads)
    assert [f.result() for f in [pool.executor.submit(threads_after_a_parallel_op) for _ in range(2 * threads)]] == [1] * (2 * threads)


def test_the_expert_pool_runs_every_item_and_raises_a_workers_error():
    pool = _expert_pool(max(2, torch.get_num_threads()))
    done = []

    def fn(item: int) -> None:
        if item == 3:
            raise RuntimeError("expert 3 failed")
        done.append(item)

    with pytest.raises(RuntimeError, match="expert 3 failed"):
        pool.run(fn, list(range(10)))
    assert sorted(done) == [i for i in range(10) if i != 3]
    pool.run(fn, [])  # nothing to do is fine


# Prepacked weights (oneDNN's blocked layout, cached per weight tensor).


@pytest.fixture
def packing(monkeypatch):
    """oneDNN with prepacked weights forced on, an empty cache before and after."""
    if not onednn_available():
        pytest.skip("this torch has no oneDNN (mkldnn) inner product")
    monkeypatch.setenv(GEMM_ENV, "onednn")
    monkeypatch.setenv(PREPACK_ENV, "1")
    clear_packed_weights()
    yield
    clear_packed_weights()


def count_reorders(monkeypatch) -> list[int]:
    """Counts the weight reorders (packings) moe_torch does from here on."""
    import kernels.torch_moe as torch_moe

    calls = [0]
    op = torch_moe._reorder_op()

    def counting(w):
        calls[0] += 1
        return op(w)

    monkeypatch.setattr(torch_moe, "_reorder_op", lambda: counting)
    return calls


def test_prepacking_is_chosen_for_onednn_inputs_and_can_be_turned_off(monkeypatch, packing):
    problem = random_problem(8, 32, 16, 4, 2)
    assert prepack_for(problem.hidden, problem.w13, problem.w2)
    assert not prepack_for(problem.hidden, problem.w13.requires_grad_(), problem.w2)
    problem.w13.requires_grad_(False)
    for off in ("0", "off", "false"):
        monkeypatch.setenv(PREPACK_ENV, off)
        assert not prepack_for(problem.hidden, problem.w13, problem.w2)
    monkeypatch.setenv(PREPACK_ENV, "1")
    monkeypatch.setenv(GEMM_ENV, "matmul")
    assert not prepack_for(problem.hidden, problem.w13, problem.w2)
    monkeypatch.setenv(GEMM_ENV, "onednn")
    half = random_problem(8, 32, 16, 4, 2, dtype=torch.float16)
    # fp16 packs only where this CPU's oneDNN has an fp16 inner product (AVX512-FP16/AMX-FP16): ask the probe
    assert prepack_for(half.hidden, half.w13, half.w2) == (torch.float16 in onednn_dtypes())


@pytest.mark.parametrize("num_tokens", [1, 7, 64, 512])
@pytest.mark.parametrize("routing", ["random", "skip_experts"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_packed_path_matches_the_reference_and_packs_only_used_experts(num_tokens, routing, dtype, packing):
    if dtype not in onednn_dtypes():
        pytest.skip(f"no oneDNN {dtype} on this CPU")
    problem = random_problem(num_tokens, 64, 48, 64, 6, dtype=dtype, routing=routing, seed=num_tokens)
    out = moe_torch(*problem.args())
    assert_moe_close(out, moe_reference(*problem.args()), "float32" if dtype == torch.float32 else "bfloat16")
    counts = torch.bincount(problem.topk_ids.reshape(-1).long(), minlength=64).tolist()
    packed = [i for i, c in enumerate(counts) if c >= 1]  # every expert used, one-row ones too (the default)
    for weight in (problem.w13, problem.w2):
        entry = _packed[id(weight)]
        assert [i for i, p in enumerate(entry.experts) if p is not None] == packed


def test_a_tokens_result_does_not_depend_on_how_many_rows_share_its_experts(packing, monkeypatch):
    """Packed for every row count (the default), token 0 comes out bit for bit the same alone as
    beside 63 others; with one-row experts on the plain weight ($LEVEE_MOE_CPU_PREPACK_MIN_ROWS=2)
    it need not, which is why that is not the default."""
    problem = random_problem(64, 64, 48, 8, 2, seed=3)
    args = problem.args()
    alone = (args[0][:1], args[1], args[2], args[3][:1], args[4][:1])
    assert torch.equal(moe_torch(*alone)[0], moe_torch(*args)[0])
    monkeypatch.setenv(PREPACK_MIN_ROWS_ENV, "2")
    torch.testing.assert_close(moe_torch(*alone)[0], moe_torch(*args)[0])  # close, not necessarily equal
    monkeypatch.setenv(PREPACK_MIN_ROWS_ENV, "0")
    with pytest.raises(ValueError, match=PREPACK_MIN_ROWS_ENV):
        moe_torch(*args)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("threads", [1, 2])
def test_one_token_takes_the_short_path_and_gets_its_row_of_the_general_path_bit_for_bit(dtype, threads, packing,
                                                                                         monkeypatch, request):
    """A batch-1 decode step's MoE call (one token, every expert packed) skips the sort by expert and
    the gathers there and back; each of its pairs is its expert's only row, so the products, the
    weighting and the sum over k are the general path's. Pairs of no local expert (id E, expert
    parallelism) add nothing; with 2 threads the experts may run on the pool."""
    import kernels.torch_moe as torch_moe

    if dtype not in onednn_dtypes():
        pytest.skip(f"no oneDNN {dtype} on this CPU")
    before = torch.get_num_threads()
    request.addfinalizer(lambda: torch.set_num_threads(before))
    torch.set_num_threads(threads)
    problem = random_problem(32, 64, 48, 8, 3, dtype=dtype, seed=5)
    ids = problem.topk_ids.clone()
    ids[3, 1] = 8  # a foreign pair (another rank's expert)
    ids[4, :] = 8  # a token wholly routed elsewhere
    args = (problem.hidden, problem.w13, problem.w2, problem.topk_weights, ids)
    together = moe_torch(*args)
    calls = [0]
    short = torch_moe._one_token

    def counting(*a, **k):
        calls[0] += 1
        return short(*a, **k)

    monkeypatch.setattr(torch_moe, "_one_token", counting)
    for t in (0, 3, 4, 17, 31):
        alone = moe_torch(args[0][t : t + 1], args[1], args[2], args[3][t : t + 1], args[4][t : t + 1])
        assert torch.equal(alone[0], together[t]), t
    assert calls[0] == 5
    assert torch.equal(together[4], torch.zeros_like(together[4]))


def test_steady_state_calls_hit_the_cache(monkeypatch, packing):
    problem = random_problem(64, 64, 48, 64, 6)
    reorders = count_reorders(monkeypatch)
    first = moe_torch(*problem.args())
    assert reorders[0] > 0
    packed_once = reorders[0]
    for _ in range(3):
        torch.testing.assert_close(moe_torch(*problem.args()), first, rtol=0, atol=0)
    assert reorders[0] == packed_once
    assert len(_packed) == 2


def test_an_in_place_weight_update_is_seen(monkeypatch, packing):
    problem = random_problem(64, 64, 48, 16, 4)
    moe_torch(*problem.args())
    reorders = count_reorders(monkeypatch)
    with torch.no_grad():
        problem.w13.mul_(-0.5)
        problem.w2[3].add_(0.25)
    assert_moe_close(moe_torch(*problem.args()), moe_reference(*problem.args()), "float32")
    assert reorders[0] > 0  # repacked
    before = reorders[0]
    problem.w2.copy_(torch.randn_like(problem.w2) * 0.05)  # a copy_ into the same storage too
    assert_moe_close(moe_torch(*problem.args()), moe_reference(*problem.args()), "float32")
    assert reorders[0] > before


def test_a_different_tensor_with_other_values_is_repacked(packing):
    problem = random_problem(64, 64, 48, 16, 4)
    moe_torch(*problem.args())
    other = random_problem(64, 64, 48, 16, 4, seed=5)
    args = (problem.hidden, other.w13, other.w2, problem.topk_weights, problem.topk_ids)
    assert_moe_close(moe_torch(*args), moe_reference(*args), "float32")


def test_the_cache_does_not_keep_weights_alive_or_grow(packing):
    refs = []
    for seed in range(12):
        problem = random_problem(32, 64, 48, 16, 4, seed=seed)
        moe_torch(*problem.args())
        refs.append(weakref.ref(problem.w13))
        assert len(_packed) <= 4  # this problem's two weights, at most the previous two not yet collected
        del problem
    gc.collect()
    assert all(ref() is None for ref in refs)
    assert len(_packed) == 0


def test_layers_past_the_memory_budget_run_on_plain_weights(monkeypatch, packing):
    from kernels.torch_moe import PREPACK_BUDGET_ENV

    first, second = random_problem(64, 64, 48, 64, 6, seed=1), random_problem(64, 64, 48, 64, 6, seed=2)
    one_layer = first.w13.nbytes + first.w2.nbytes
    monkeypatch.setenv(PREPACK_BUDGET_ENV, str(-(-one_layer // 2**20)))  # room for one layer's copies
    reorders = count_reorders(monkeypatch)
    assert_moe_close(moe_torch(*first.args()), moe_reference(*first.args()), "float32")
    packed_first = reorders[0]
    assert packed_first > 0 and len(_packed) == 2
    assert_moe_close(moe_torch(*second.args()), moe_reference(*second.args()), "float32")
    assert reorders[0] == packed_first and len(_packed) == 2  # the second layer was not packed
