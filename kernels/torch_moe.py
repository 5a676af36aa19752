"""The torch fast path: what workers without a GPU run.

The T·k (token, expert) pairs are sorted by expert once and their token rows gathered once; each
active expert then does one gate/up matmul and one down matmul over exactly the rows routed to it
(a contiguous slice of the gathered rows), writing its weighted rows into its slice of a sorted
buffer; one gather back to pair order and a sum over k give the output. Python loops run per active
expert, never per token, and the only host sync is reading the per-expert counts (one .tolist()).

GEMM. The per-expert products are `x @ w.t()` with x a few rows (about 6 at 64 tokens, E = 64,
k = 6) and w the expert's [N, K] weight as stored (K contiguous). For fp32 and bf16 CPU tensors
they go to oneDNN's inner product (`torch.ops.mkldnn._linear_pointwise`, the op Inductor emits for
linear layers), which reads the weight in place, rather than to torch.matmul: fp32 matmul is MKL's
sgemm, which on the AMD EPYC we measure on takes a generic code path and streams a 6-row product's
weights at 8-10 GB/s, against ~20 GB/s for oneDNN's AVX-512 brgemm (docs/kernels.md). oneDNN is the
default on x86 with AVX2/AVX-512; fp16 (no oneDNN primitive without AVX512-FP16), other CPUs and
CUDA tensors use matmul. `$LEVEE_MOE_CPU_GEMM` (`onednn` / `matmul`, read per call) forces one.
Without prepacking (below), fp32 experts with 8-16 rows run the oneDNN products the other way
round, w @ x.t() (the weight as oneDNN's source, the rows in one AVX-512 vector), which holds
~20 GB/s where x @ w.t() slows down (9% at 128 tokens, even at 64).

Prepacked weights. Per-expert GEMMs of 2+ rows take the weight in oneDNN's own blocked layout
(`torch.ops.mkldnn._reorder_linear_weight`, an mkldnn tensor `_linear_pointwise` accepts as its
weight): 22-24 GB/s at 6 rows on one thread against 11 for the plain weight, which oneDNN
transposes into blocks on every call. The packed copies are cached per weight tensor (`_packed`),
each expert packed the first time it is used; an entry is keyed on a weakref to the tensor and
checked against its data_ptr() and _version (an in-place update or a new tensor repacks) and is
dropped when the tensor dies. Costs a second copy of the expert weights in memory. One-row experts
(decode) keep the plain weight (20 GB/s, packed 16). `$LEVEE_MOE_CPU_PREPACK=0` turns it off.

Threads. When the work splits evenly enough (at least as many active experts as torch's threads,
none with more than its share of the pairs), the experts run on a pool of as many workers, each a
one-thread OpenMP team that takes the next expert, largest first, and runs both its GEMMs; else
experts run one after another and each GEMM uses all threads. At a few rows per expert a GEMM is
~1 ms, so a fork/join per GEMM costs, and on a shared machine one preempted thread stalls every
GEMM; the pool was ~10% faster at 64 tokens in interleaved runs and far steadier on a busy machine.
`$LEVEE_MOE_CPU_PARALLEL` (`experts` / `gemm`) forces one.

Half-precision inputs: each GEMM accumulates in fp32 internally, SiLU·up is computed in fp32 from
the rounded gate/up, the down projection's input is rounded back, and the routing weights and the
sum over k are applied in fp32; the result is cast back to the input dtype.

Legend: T tokens, H hidden, I expert intermediate size, E experts, k experts per token,
P = T·k pairs.
"""

from __future__ import annotations

import functools
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, wait
from typing import cast

import torch
import torch.nn.functional as F

from kernels.weight_cache import WeightCache, WeightEntry

GEMM_ENV = "LEVEE_MOE_CPU_GEMM"
GEMMS = ("onednn", "matmul")

Linear = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (x [n, K], w [N, K]) -> x @ w.t() [n, N]


def matmul_linear(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    return x @ w.t()


@functools.cache
def _onednn_op() -> Callable[..., torch.Tensor] | None:
    """torch.ops.mkldnn._linear_pointwise, or None where this torch lacks it (no mkldnn build)."""
    try:
        mkldnn_available = cast(Callable[[], bool], torch.backends.mkldnn.is_available)  # unannotated in torch
        if not mkldnn_available():
            return None
        return torch.ops.mkldnn._linear_pointwise.default
    except (AttributeError, RuntimeError):
        return None


def onednn_available() -> bool:
    return _onednn_op() is not None


@functools.cache
def onednn_dtypes() -> frozenset[torch.dtype]:
    """Input dtypes oneDNN has an inner product for on this CPU: fp32, and bf16 where torch says
    oneDNN supports it (AVX-512 on x86); never fp16 without AVX512-FP16/AMX-FP16."""
    if not onednn_available():
        return frozenset()
    dtypes = {torch.float32}
    for dtype, probe in ((torch.bfloat16, "_is_mkldnn_bf16_supported"), (torch.float16, "_is_mkldnn_fp16_supported")):
        try:
            if getattr(torch.ops.mkldnn, probe)():
                dtypes.add(dtype)
        except (AttributeError, RuntimeError):
            pass
    return frozenset(dtypes)


@functools.cache
def _onednn_preferred() -> bool:
    """oneDNN is the default only where it was measured to win: x86 with AVX2 or AVX-512 (its JIT
    brgemm kernels); elsewhere (ARM, old x86) matmul stays unless $LEVEE_MOE_CPU_GEMM asks."""
    return torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512")


def _linear_pointwise() -> Callable[..., torch.Tensor]:
    op = _onednn_op()
    if op is None:
        raise RuntimeError("this torch has no oneDNN inner product (torch.ops.mkldnn._linear_pointwise)")
    return op


def onednn_linear(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """x @ w.t() through oneDNN's inner product; w read in place (no reorder, no copy)."""
    return _linear_pointwise()(x, w, None, "none", [], "")


def onednn_linear_t(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """(x @ w.t()).t() = w @ x.t(), [N, n], with the weight as oneDNN's *source*: its rows are read
    straight into the kernel instead of being transposed into blocks first, and x's few rows sit in
    one vector. That costs the same per weight byte up to 16 rows (one AVX-512 vector of fp32),
    where the usual orientation has slowed down (docs/kernels.md)."""
    return _linear_pointwise()(w, x, None, "none", [], "")


TRANSPOSED_ROWS = (8, 16)  # fp32 rows per expert for which onednn_linear_t is used (measured band)


def onednn_transposed(rows: int, dtype: torch.dtype) -> bool:
    """Whether an expert with `rows` rows runs its oneDNN GEMMs as w @ x.t() (fp32 only: in bf16
    that orientation was 2x slower at every row count measured but 32)."""
    return dtype == torch.float32 and TRANSPOSED_ROWS[0] <= rows <= TRANSPOSED_ROWS[1]


def gemm_for(hidden: torch.Tensor) -> str:
    """'onednn' or 'matmul': which GEMM moe_torch uses for the per-expert products of this input.
    $LEVEE_MOE_CPU_GEMM forces one, except that oneDNN is never used where it cannot run."""
    forced = os.environ.get(GEMM_ENV, "").strip().lower()
    if forced and forced not in GEMMS:
        raise ValueError(f"${GEMM_ENV} must be one of {GEMMS} or unset, got {forced!r}")
    if hidden.device.type != "cpu" or hidden.dtype not in onednn_dtypes():
        return "matmul"
    if forced:
        return forced
    return "onednn" if _onednn_preferred() else "matmul"


PREPACK_ENV = "LEVEE_MOE_CPU_PREPACK"
PREPACK_MIN_ROWS_ENV = "LEVEE_MOE_CPU_PREPACK_MIN_ROWS"


def prepack_min_rows() -> int:
    """Experts with at least this many rows run on packed weights ($LEVEE_MOE_CPU_PREPACK_MIN_ROWS,
    read per call; default 1). At 1 every expert takes the packed kernel, whose rows come out the
    same whatever the expert's row count, so a token's result does not depend on which other tokens
    chose its experts (batch invariance, docs/inference.md). 2 gives one-row experts (decode) the
    plain weight again, which reads large experts about 20% faster at one row (docs/kernels.md) but
    rounds differently from the packed kernel."""
    raw = os.environ.get(PREPACK_MIN_ROWS_ENV, "").strip()
    if not raw:
        return 1
    if not raw.isdigit() or int(raw) < 1:
        raise ValueError(f"${PREPACK_MIN_ROWS_ENV} must be a whole number ≥ 1, got {raw!r}")
    return int(raw)


@functools.cache
def _reorder_op() -> Callable[[torch.Tensor], torch.Tensor] | None:
    """torch.ops.mkldnn._reorder_linear_weight, or None where this torch lacks it."""
    if not onednn_available():
        return None
    try:
        return torch.ops.mkldnn._reorder_linear_weight.default
    except (AttributeError, RuntimeError):
        return None


def prepack_for(hidden: torch.Tensor, *weights: torch.Tensor) -> bool:
    """Whether moe_torch runs its oneDNN products on prepacked weights: oneDNN in use for this input
    (fp32/bf16 CPU), the reorder op present, weights of the input's dtype that need no grad, and
    $LEVEE_MOE_CPU_PREPACK not 0 (read per call)."""
    if os.environ.get(PREPACK_ENV, "").strip().lower() in ("0", "false", "no", "off"):
        return False
    return (
        gemm_for(hidden) == "onednn"
        and _reorder_op() is not None
        and all(w.device.type == "cpu" and w.dtype == hidden.dtype and not w.requires_grad for w in weights)
    )


class _PackedWeights(WeightEntry):
    """Per-expert packed copies of one [E, N, K] weight tensor, valid while the tensor lives, keeps
    its storage and has not been written in place."""

    def __init__(self, weight: torch.Tensor):
        super().__init__(_cache, weight)
        self.experts: list[torch.Tensor | None] = [None] * weight.shape[0]
        self.nbytes = weight.nbytes  # what its packed copies take once all are made (about)

    def expert(self, weight: torch.Tensor, index: int) -> torch.Tensor:
        """The packed copy of weight[index], packing it on first use (two workers never pack the same
        expert in one call; two concurrent calls might, harmlessly, both pack it)."""
        packed = self.experts[index]
        if packed is None:
            reorder = _reorder_op()
            if reorder is None:
                raise RuntimeError("this torch has no oneDNN weight reorder (torch.ops.mkldnn._reorder_linear_weight)")
            with torch.no_grad():
                packed = reorder(weight[index].contiguous())
            self.experts[index] = packed
        return packed


_cache: WeightCache[_PackedWeights] = WeightCache()
_packed = _cache.entries  # id(weight tensor) -> its packed experts
_packed_lock = _cache.lock


PREPACK_BUDGET_ENV = "LEVEE_MOE_CPU_PREPACK_MAX_MB"
PREPACK_BUDGET_MB = 4096  # packed copies are a second copy of the expert weights: cap what they may take


def _prepack_budget() -> int:
    raw = os.environ.get(PREPACK_BUDGET_ENV, "").strip()
    return (int(raw) if raw else PREPACK_BUDGET_MB) * 2**20


def packed_layer(w13: torch.Tensor, w2: torch.Tensor) -> tuple[_PackedWeights, _PackedWeights] | None:
    """The cache entries for one layer's two weight tensors, fresh (empty) ones for a tensor that is
    new, was written in place or now points at other memory; None when their packed copies would
    take the cache past its budget ($LEVEE_MOE_CPU_PREPACK_MAX_MB, 4096 by default: the first layers
    of a large model get packed copies, the rest run on their plain weights)."""
    keys = (id(w13), id(w2))
    with _packed_lock:
        entries = [_packed.get(key) for key in keys]
        e13, e2 = entries
        if e13 is not None and e13.valid_for(w13) and e2 is not None and e2.valid_for(w2):
            return e13, e2
        others = sum(e.nbytes for k, e in _packed.items() if k not in keys)
        if others + w13.nbytes + w2.nbytes > _prepack_budget():
            for key in keys:
                _packed.pop(key, None)
            return None
        fresh: list[_PackedWeights] = []
        for entry, key, weight in zip(entries, keys, (w13, w2), strict=True):
            if entry is None or not entry.valid_for(weight):
                entry = _packed[key] = _PackedWeights(weight)
            fresh.append(entry)
        return fresh[0], fresh[1]


def clear_packed_weights() -> None:
    """Drop every cached packed weight (their memory goes back at once)."""
    _cache.clear()


PARALLEL_ENV = "LEVEE_MOE_CPU_PARALLEL"
PARALLEL_MODES = ("experts", "gemm")


class _ExpertPool:
    """Threads that each run whole experts with a one-thread OpenMP team.

    ATen has no per-thread thread count: torch.set_num_threads sets the calling thread's OpenMP
    team size (and MKL's) but also a process-wide default that threads copy when they first run a
    parallel op. So each worker first runs a parallel op (taking the default, once for its life),
    then sets itself to one thread; when all have, the creating thread sets the default back.
    """

    def __init__(self, threads: int):
        self.threads = threads
        ready = threading.Barrier(threads + 1)

        def init() -> None:
            torch.empty(1 << 16).fill_(0.0)  # ATen's per-thread lazy init happens here, not later
            torch.set_num_threads(1)
            ready.wait()

        self.executor = ThreadPoolExecutor(threads, thread_name_prefix="levee-moe-expert")
        self._started = [self.executor.submit(init) for _ in range(threads)]
        ready.wait()
        torch.set_num_threads(threads)  # the process-wide default again, as it was
        for future in self._started:
            future.result()

    def run(self, fn: Callable[[int], None], items: list[int]) -> None:
        """fn(item) for every item, each worker taking the next item when it is free (one task per
        worker, not one per item: a future per expert cost ~3% at 64 tokens)."""
        lock = threading.Lock()
        queue = iter(items)
        # Grad and inference modes are per thread: the workers take the caller's (an engine runs
        # under inference_mode, and its tensors may only be written to under it).
        inference, grad = torch.is_inference_mode_enabled(), torch.is_grad_enabled()

        def worker() -> None:
            with torch.inference_mode(inference), torch.set_grad_enabled(grad):
                while True:
                    with lock:
                        item = next(queue, None)
                    if item is None:
                        return
                    fn(item)

        futures = [self.executor.submit(worker) for _ in range(min(self.threads, len(items)))]
        wait(futures)  # all done before an error is raised: no worker still writes after we return
        for future in futures:
            future.result()


_pools: dict[int, _ExpertPool] = {}
_pools_lock = threading.Lock()


def _forget_pools_after_fork() -> None:
    """A forked child (a prefork Celery worker) has none of its parent's threads: start afresh."""
    global _pools_lock
    _pools.clear()
    _pools_lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pools_after_fork)


def _expert_pool(threads: int) -> _ExpertPool:
    with _pools_lock:
        if threads not in _pools:
            _pools[threads] = _ExpertPool(threads)
        return _pools[threads]


@functools.cache
def _openmp() -> bool:
    return "parallel backend: OpenMP" in torch.__config__.parallel_info()


def parallel_for(hidden: torch.Tensor, counts: list[int]) -> str:
    """'experts' (a pool of one-thread workers takes whole experts, largest first) or 'gemm' (one
    expert after another, each GEMM using all of torch's threads).

    Experts in parallel skip an OpenMP fork/join per GEMM and, on a shared machine, one preempted
    thread no longer stalls every GEMM; but an expert then gets one core, so it is chosen only when
    the work splits: at least as many active experts as threads and no expert with more than
    1/threads of the pairs (all tokens on one expert stays 'gemm'). CPU tensors and OpenMP builds
    only; $LEVEE_MOE_CPU_PARALLEL forces one for measuring ('experts' still needs threads > 1)."""
    forced = os.environ.get(PARALLEL_ENV, "").strip().lower()
    if forced and forced not in PARALLEL_MODES:
        raise ValueError(f"${PARALLEL_ENV} must be one of {PARALLEL_MODES} or unset, got {forced!r}")
    threads = torch.get_num_threads()
    if hidden.device.type != "cpu" or threads < 2 or not _openmp() or forced == "gemm":
        return "gemm"
    if forced == "experts":
        return "experts"
    active = sum(1 for c in counts if c)
    return "experts" if active >= threads and max(counts, default=0) * threads <= sum(counts) else "gemm"


def moe_torch(
    hidden: torch.Tensor,  # [T, H]
    w13: torch.Tensor,  # [E, 2I, H]
    w2: torch.Tensor,  # [E, H, I]
    topk_weights: torch.Tensor,  # [T, k]
    topk_ids: torch.Tensor,  # [T, k]
    *,
    expert_weights: Callable[[int], tuple[torch.Tensor, torch.Tensor]] | None = None,
) -> torch.Tensor:  # [T, H]
    """Pairs whose id is E (one past the last expert) belong to no local expert and add nothing
    (expert parallelism). `expert_weights(e)` → (w13[e], w2[e]) in hidden's dtype, for weights
    stored otherwise (FP8: kernels/moe.py dequantizes the experts used); prepacking is then off."""
    num_tokens, top_k = topk_ids.shape
    num_experts = w13.shape[0]
    inter = w13.shape[1] // 2
    onednn = gemm_for(hidden) == "onednn"
    linear: Linear = onednn_linear if onednn else matmul_linear
    prepack = onednn and expert_weights is None and prepack_for(hidden, w13, w2)
    layer = packed_layer(w13, w2) if prepack else None  # None: off, or over the memory budget
    min_rows = prepack_min_rows()
    half = hidden.dtype in (torch.float16, torch.bfloat16)
    acc_dtype = torch.float32 if half else hidden.dtype

    if num_tokens == 1 and layer is not None and min_rows == 1:
        return _one_token(hidden, w13, w2, topk_weights, topk_ids, layer, acc_dtype)

    flat_ids = topk_ids.reshape(-1)  # [P]
    order = torch.argsort(flat_ids, stable=True)  # [P] pair ids grouped by expert
    counts = torch.bincount(flat_ids, minlength=num_experts + 1).tolist()  # the one host sync
    foreign = counts.pop(num_experts) if len(counts) > num_experts else 0  # pairs of no local expert
    token_of_pair = order // top_k  # [P]
    weight_of_pair = topk_weights.reshape(-1)[order].to(acc_dtype)[:, None]  # [P, 1]
    x_sorted = hidden.index_select(0, token_of_pair)  # [P, H], each expert's rows one slice

    # Each expert's rows land in one slice of a buffer in sorted order; one permutation puts them
    # back at their pairs and a sum over k finishes (index_add_ per expert is far slower on CPU).
    # Experts write disjoint slices, so they can run in any order, on any thread.
    sorted_out = torch.empty(num_tokens * top_k, hidden.shape[1], dtype=acc_dtype, device=hidden.device)
    starts = [0]
    for count in counts:
        starts.append(starts[-1] + count)
    if foreign:
        sorted_out[starts[-1]:].zero_()

    def run_expert(expert: int) -> None:
        rows = slice(starts[expert], starts[expert + 1])
        if layer is not None and counts[expert] >= min_rows:
            packed13, packed2 = layer
            gate_up = onednn_linear(x_sorted[rows], packed13.expert(w13, expert))  # [n, 2I]
            if half:
                gate_up = gate_up.float()
            act = F.silu(gate_up[:, :inter]) * gate_up[:, inter:]  # [n, I]
            y = onednn_linear(act.to(hidden.dtype) if half else act, packed2.expert(w2, expert))  # [n, H]
        else:
            w13_e, w2_e = expert_weights(expert) if expert_weights is not None else (w13[expert], w2[expert])
            if onednn and onednn_transposed(counts[expert], hidden.dtype):  # fp32: nothing to round
                gate_up_t = onednn_linear_t(x_sorted[rows], w13_e)  # [2I, n]
                act_t = F.silu(gate_up_t[:inter]) * gate_up_t[inter:]  # [I, n]
                y = onednn_linear_t(act_t.t().contiguous(), w2_e).t()  # [n, H] (a view)
            else:
                gate_up = linear(x_sorted[rows], w13_e)  # [n, 2I]
                if half:
                    gate_up = gate_up.float()
                act = F.silu(gate_up[:, :inter]) * gate_up[:, inter:]  # [n, I]
                y = linear(act.to(hidden.dtype) if half else act, w2_e)  # [n, H]
        torch.mul(y, weight_of_pair[rows], out=sorted_out[rows])

    active = [expert for expert, count in enumerate(counts) if count]
    if parallel_for(hidden, counts) == "experts":
        _expert_pool(torch.get_num_threads()).run(run_expert, sorted(active, key=counts.__getitem__, reverse=True))
    else:
        for expert in active:
            run_expert(expert)
    # Back to pair order by a gather (an index_put of the rows is ~5x slower on CPU), then Σ over k.
    per_pair = sorted_out.index_select(0, torch.argsort(order))  # [P, H], row p for pair p
    out = per_pair.view(num_tokens, top_k, hidden.shape[1]).sum(dim=1)
    return out.to(hidden.dtype)


def _one_token(hidden: torch.Tensor, w13: torch.Tensor, w2: torch.Tensor, topk_weights: torch.Tensor,
               topk_ids: torch.Tensor, layer: tuple[_PackedWeights, _PackedWeights], acc_dtype: torch.dtype
               ) -> torch.Tensor:
    """moe_torch for one token (a batch-1 decode step) when every expert runs packed: the same
    products, the same weighting and the same sum over k as the general path, bit for bit (the packed
    kernel's rows do not depend on the row count), without sorting pairs by expert and gathering
    rows there and back: a token's k experts are distinct, so each pair is its expert's only row and
    writes its row of the [k, H] buffer in pair order. The one host sync reads the k ids."""
    top_k, num_experts = topk_ids.shape[1], w13.shape[0]
    inter = w13.shape[1] // 2
    half = hidden.dtype in (torch.float16, torch.bfloat16)
    ids = topk_ids[0].tolist()
    weight_of_pair = topk_weights.reshape(-1).to(acc_dtype)[:, None]  # [k, 1]
    per_pair = torch.empty(top_k, hidden.shape[1], dtype=acc_dtype, device=hidden.device)
    packed13, packed2 = layer

    def run_pair(pair: int) -> None:
        expert = ids[pair]
        gate_up = onednn_linear(hidden, packed13.expert(w13, expert))  # [1, 2I]
        if half:
            gate_up = gate_up.float()
        act = F.silu(gate_up[:, :inter]) * gate_up[:, inter:]  # [1, I]
        y = onednn_linear(act.to(hidden.dtype) if half else act, packed2.expert(w2, expert))  # [1, H]
        torch.mul(y, weight_of_pair[pair : pair + 1], out=per_pair[pair : pair + 1])

    local = [pair for pair, expert in enumerate(ids) if expert < num_experts]
    if len(local) < top_k:  # pairs of no local expert (expert parallelism) add nothing
        per_pair[[pair for pair in range(top_k) if pair not in local]] = 0
    counts = [0] * num_experts
    for pair in local:
        counts[ids[pair]] += 1
    if parallel_for(hidden, counts) == "experts":  # what the general path would choose for these counts
        _expert_pool(torch.get_num_threads()).run(run_pair, local)
    else:
        for pair in local:
            run_pair(pair)
    return per_pair.view(1, top_k, hidden.shape[1]).sum(dim=1).to(hidden.dtype)
