"""Serving one model over several processes (GPUs) with torch.distributed: tensor + expert parallel.

Every rank holds its shard of the weights (inference/linear.py, inference/model.py: MLA heads and
the dense/shared MLPs split column- then row-wise, routed experts partitioned, vocabulary split)
and runs the same forward; the collectives inside the layers make every rank's hidden states and
logits identical. Only rank 0 runs an engine. The seam is the model call:

- rank 0 wraps its model in `ParallelRunner`, which the engine uses as it uses a Transformer
  (`args`, `device`, `dtype`, `hidden_states(ids, positions, backend)`, `lm_head(x)`). Each call
  first broadcasts the step's inputs — token ids, positions and the attention backend (the step's
  slot plan; its KV cache swapped for a placeholder) — then runs the same call locally;
- every other rank runs `follow(model)`: receive a step, run it against its own KV cache (same
  geometry, same slots: every rank caches the full latent, which MLA shares across heads), repeat.
  The prefix index lives on rank 0 only; it decides the slots, so the caches stay identical.

Backend: NCCL on CUDA, gloo on CPU (`init`). A rank that dies or stalls breaks the group: the
collective raises (at once when a peer's connection closes, else after $LEVEE_TP_TIMEOUT_S), the
runner marks itself broken and every later call raises `RankFailure` at once, so the engine fails
the jobs in flight with that message instead of hanging; the worker must then be restarted.

Launch (single node): `start_followers` spawns ranks 1..N-1 from the serving process with
torch.multiprocessing, as the inference worker does when $LEVEE_TP_SIZE > 1 (inference/serving.py).
Environment: LEVEE_TP_SIZE (ranks, default 1), LEVEE_TP_PORT (rendezvous port on 127.0.0.1,
default 29510), LEVEE_TP_TIMEOUT_S (collective timeout, default 60).
"""

from __future__ import annotations

import copy
import datetime
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from inference.kvcache import KVCache
from inference.linear import TensorParallel
from inference.model import Transformer

log = logging.getLogger("inference.parallel")

SIZE_ENV, PORT_ENV, TIMEOUT_ENV = "LEVEE_TP_SIZE", "LEVEE_TP_PORT", "LEVEE_TP_TIMEOUT_S"


class RankFailure(RuntimeError):
    """A tensor-parallel rank died or stopped answering; the group cannot continue."""


def tp_size() -> int:
    return int(os.environ.get(SIZE_ENV, "1"))


def timeout_s() -> float:
    return float(os.environ.get(TIMEOUT_ENV, "60"))


def init(rank: int, world: int, *, port: int | None = None, device: str = "cpu",
         timeout: float | None = None) -> TensorParallel:
    """Join (or create) the process group on 127.0.0.1: NCCL for CUDA devices, gloo otherwise."""
    port = port or int(os.environ.get(PORT_ENV, "29510"))
    backend = "nccl" if device.startswith("cuda") else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(rank)
    dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=timeout or timeout_s()))
    return TensorParallel(rank, world, dist.group.WORLD)


def rank_device(device: str, rank: int) -> str:
    return f"cuda:{rank}" if device.startswith("cuda") else device


@dataclass
class _CacheRef:
    """Stands in for rank 0's KV cache in a broadcast step; a follower puts its own cache there."""

    num_layers: int
    num_blocks: int
    block_size: int
    latent_dim: int
    dtype: torch.dtype


def _map(obj: Any, fn: Callable[[Any], Any]) -> Any:
    """Apply fn to the leaves (tensors, caches) of lists, tuples, dicts and plain objects' attributes."""
    if isinstance(obj, (torch.Tensor, KVCache, _CacheRef)):
        return fn(obj)
    if isinstance(obj, list):
        return [_map(v, fn) for v in obj]
    if isinstance(obj, tuple):
        return tuple(_map(v, fn) for v in obj)
    if isinstance(obj, dict):
        return {k: _map(v, fn) for k, v in obj.items()}
    if hasattr(obj, "__dict__") and not isinstance(obj, type):
        out = copy.copy(obj)
        for k, v in vars(obj).items():
            setattr(out, k, _map(v, fn))
        return out
    return obj


def _outbound(obj: Any) -> Any:
    def leaf(x: Any) -> Any:
        if isinstance(x, KVCache):
            layers, slots, dim = x.data.shape
            return _CacheRef(layers, x.num_blocks, x.block_size, dim, x.data.dtype)
        return x.cpu() if isinstance(x, torch.Tensor) else x

    return _map(obj, leaf)


class ParallelRunner:
    """Rank 0's model, as the engine sees it: each call is broadcast to the followers, then run."""

    def __init__(self, model: Transformer, tp: TensorParallel) -> None:
        self.model = model
        self.tp = tp
        self.args = model.args
        self.broken: str | None = None
        self.followers: list[Any] = []  # the follower processes, when this process spawned them
        self.mtp = model.mtp  # the engine speculates when every rank loaded the MTP layer (load_parallel(mtp=True))

    @property
    def device(self) -> torch.device:
        return self.model.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.dtype

    def _call(self, op: str, *payload: Any) -> Any:
        if self.broken is not None:
            raise RankFailure(self.broken)
        try:
            _broadcast(self.tp, (op, _outbound(payload)))
            return getattr(self.model, op)(*payload)
        except Exception as exc:
            self.broken = (f"tensor-parallel group of {self.tp.world} failed during {op}: "
                           f"{type(exc).__name__}: {exc}; a rank died or stalls, restart the worker")
            log.error(self.broken)
            raise RankFailure(self.broken) from exc

    def hidden_states(self, input_ids: torch.Tensor, positions: torch.Tensor, backend: Any) -> torch.Tensor:
        return self._call("hidden_states", input_ids, positions, backend)  # type: ignore[no-any-return]

    def lm_head(self, x: torch.Tensor) -> torch.Tensor:
        return self._call("lm_head", x)  # type: ignore[no-any-return]

    def mtp_hidden(self, next_ids: torch.Tensor, hidden: torch.Tensor, positions: torch.Tensor,
                   backend: Any) -> torch.Tensor:
        return self._call("mtp_hidden", next_ids, hidden, positions, backend)  # type: ignore[no-any-return]

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self._call("forward", input_ids)  # type: ignore[no-any-return]

    __call__ = forward

    def stop(self, join_s: float = 10.0) -> None:
        """Release the followers (they return from `follow`) and wait for those this process spawned."""
        if self.broken is None:
            try:
                _broadcast(self.tp, ("stop", ()))
            except Exception:  # noqa: BLE001 - a follower already gone: nothing left to release
                pass
            self.broken = "the tensor-parallel group was stopped"
        for p in self.followers:
            p.join(join_s)
            if p.is_alive():
                p.kill()
        if dist.is_initialized():
            dist.destroy_process_group()


def _broadcast(tp: TensorParallel, message: Any) -> Any:
    box = [message if tp.rank == 0 else None]
    dist.broadcast_object_list(box, src=0, group=tp.group)
    return box[0]


def follow(model: Transformer, tp: TensorParallel) -> int:
    """A follower's loop: run each step rank 0 broadcasts, against this rank's own KV cache, until
    "stop". Returns the number of calls run. Raises when the group breaks (rank 0 died)."""
    device = model.device
    cache: KVCache | None = None
    calls = 0

    def inbound(x: Any) -> Any:
        nonlocal cache
        if isinstance(x, _CacheRef):
            if cache is None or tuple(cache.data.shape) != (x.num_layers, x.num_blocks * x.block_size,
                                                               x.latent_dim):
                cache = KVCache(num_layers=x.num_layers, num_blocks=x.num_blocks, block_size=x.block_size,
                                latent_dim=x.latent_dim, dtype=x.dtype, device=device)
            return cache
        return x.to(device) if isinstance(x, torch.Tensor) else x

    with torch.inference_mode():
        while True:
            op, payload = _broadcast(tp, None)
            if op == "stop":
                return calls
            getattr(model, op)(*_map(payload, inbound))
            calls += 1


def _follower_main(rank: int, world: int, port: int, checkpoint: str, dtype: torch.dtype, device: str,
                   timeout: float, mtp: bool = False) -> None:
    from inference.loader import load_model

    torch.set_num_threads(max(1, torch.get_num_threads() // world))
    tp = init(rank, world, port=port, device=device, timeout=timeout)
    model = load_model(checkpoint, dtype=dtype, device=rank_device(device, rank), tp=tp, mtp=mtp)
    try:
        follow(model, tp)
    except Exception as exc:  # noqa: BLE001 - rank 0 is gone: nothing to follow
        log.warning("follower rank %d stops: %s", rank, exc)
    finally:
        dist.destroy_process_group()


def start_followers(world: int, checkpoint: str, *, dtype: torch.dtype, device: str, port: int | None = None,
                    timeout: float | None = None, mtp: bool = False) -> list[Any]:
    """Spawn ranks 1..world-1 (each loads its shard, with the MTP layer's when `mtp`, then follows);
    rank 0 calls `init` next."""
    port = port or int(os.environ.get(PORT_ENV, "29510"))
    ctx = mp.get_context("spawn")
    procs = []
    for rank in range(1, world):
        p = ctx.Process(target=_follower_main, name=f"levee-tp-rank{rank}",
                        args=(rank, world, port, checkpoint, dtype, device, timeout or timeout_s(), mtp), daemon=True)
        p.start()
        procs.append(p)
    return procs


def load_parallel(checkpoint: str, *, dtype: torch.dtype, device: str, world: int | None = None,
                  port: int | None = None, timeout: float | None = None,
                  mtp: bool = False) -> tuple[ParallelRunner, list[Any]]:
    """Rank 0's side of a single-node launch: spawn the followers, join the group, load rank 0's
    shard (every rank with its share of the MTP layer when `mtp`). Returns the runner to hand to
    the Engine and the follower processes."""
    world = world or tp_size()
    procs = start_followers(world, checkpoint, dtype=dtype, device=device, port=port, timeout=timeout, mtp=mtp)
    from inference.loader import load_model

    tp = init(0, world, port=port, device=device, timeout=timeout)
    model = load_model(checkpoint, dtype=dtype, device=rank_device(device, 0), tp=tp, mtp=mtp)
    runner = ParallelRunner(model, tp)
    runner.followers = procs
    return runner, procs
