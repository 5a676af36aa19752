"""Tile configurations for the Triton MoE kernels.

A configuration is chosen per call by the launcher, never by `@triton.autotune` (which compiles
at first call, and in some Triton versions failed at import on hosts without a GPU). Lookup order:

1. a JSON file `E={E},N={N},device_name={device}.json` in $LEVEE_MOE_CONFIG_DIR, then in
   kernels/configs/ (written by `python -m kernels.tune` on the GPU in question). It maps a
   token count to a config; the entry with the nearest token count wins;
2. otherwise a default derived from the mean number of rows each expert receives.

N is the expert intermediate size I (the width of GEMM 1's output). A config holds BLOCK_M (shared
by the align step and both GEMMs), BLOCK_N, BLOCK_K, GROUP_M, num_warps, num_stages, and an
optional "gemm2" dict overriding any of those but BLOCK_M for the down projection.
"""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path
from typing import Any

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
CONFIG_KEYS = ("BLOCK_M", "BLOCK_N", "BLOCK_K", "GROUP_M", "num_warps", "num_stages")

Config = dict[str, Any]


def config_file_name(num_experts: int, inter: int, device_name: str) -> str:
    return f"E={num_experts},N={inter},device_name={device_name.replace(' ', '_')}.json"


@functools.lru_cache(maxsize=64)
def _load_table(num_experts: int, inter: int, device_name: str) -> dict[int, Config] | None:
    name = config_file_name(num_experts, inter, device_name)
    dirs = [Path(d) for d in os.environ.get("LEVEE_MOE_CONFIG_DIR", "").split(os.pathsep) if d]
    for directory in [*dirs, CONFIG_DIR]:
        path = directory / name
        if path.is_file():
            raw = json.loads(path.read_text())
            return {int(tokens): _validated(cfg, path) for tokens, cfg in raw.items()}
    return None


def _validated(cfg: Config, path: Path) -> Config:
    missing = [key for key in CONFIG_KEYS if key not in cfg]
    if missing:
        raise ValueError(f"{path}: config {cfg} lacks {missing}")
    return cfg


def default_config(num_tokens: int, num_experts: int, top_k: int, interpret: bool = False) -> Config:
    """A sound starting point: size BLOCK_M to the rows an expert gets on average.

    Small BLOCK_M at decode wastes no tensor-core work on padding that matters there (it is
    bandwidth-bound); large tiles at prefill are what reaches the matmul units' rate. Every block
    dim stays >= 16, which the compiled tl.dot needs.
    """
    rows_per_expert = num_tokens * top_k / max(num_experts, 1)
    if interpret:
        # The interpreter's cost is per program: small N/K tiles keep masking exercised, and a
        # BLOCK_M of 16 keeps the padded length small.
        return {"BLOCK_M": 16, "BLOCK_N": 32, "BLOCK_K": 32, "GROUP_M": 1, "num_warps": 4, "num_stages": 1}
    if rows_per_expert <= 16:
        return {"BLOCK_M": 16, "BLOCK_N": 64, "BLOCK_K": 128, "GROUP_M": 1, "num_warps": 4, "num_stages": 4}
    if rows_per_expert <= 48:
        return {"BLOCK_M": 32, "BLOCK_N": 64, "BLOCK_K": 128, "GROUP_M": 8, "num_warps": 4, "num_stages": 4}
    if rows_per_expert <= 128:
        return {"BLOCK_M": 64, "BLOCK_N": 128, "BLOCK_K": 64, "GROUP_M": 8, "num_warps": 4, "num_stages": 4}
    return {"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 64, "GROUP_M": 8, "num_warps": 8, "num_stages": 3}


def get_config(
    num_tokens: int, num_experts: int, inter: int, top_k: int, device_name: str | None, interpret: bool = False
) -> Config:
    """The config for one call: the tuned table's nearest entry if there is one, else the default."""
    if device_name is not None and not interpret:
        table = _load_table(num_experts, inter, device_name)
        if table:
            nearest = min(table, key=lambda tokens: abs(tokens - num_tokens))
            return table[nearest]
    return default_config(num_tokens, num_experts, top_k, interpret)


DEFAULT_SHARED_MEMORY = 227 * 1024  # what a Hopper block may have; the launcher asks the device


def shared_memory_needed(cfg: Config, element_size: int, b_tiles: int) -> int:
    """Bytes of pipelined tiles: stages × (A tile + b_tiles × B tile). GEMM 1 has two B tiles (gate
    and up). Matches what Triton 3.6 asked for on an H200 for the configs it refused."""
    tile: int = cfg["BLOCK_M"] * cfg["BLOCK_K"] + b_tiles * cfg["BLOCK_N"] * cfg["BLOCK_K"]
    stages: int = cfg["num_stages"]
    return stages * tile * element_size


def fit_shared_memory(cfg: Config, element_size: int, b_tiles: int,
                      limit: int = DEFAULT_SHARED_MEMORY) -> Config:
    """Shrink num_stages, then BLOCK_K, until the pipelined tiles fit in `limit` bytes.

    Tables and defaults are written for 2-byte types; fp32 doubles every tile. A config that fits
    is returned unchanged (a tuned table is used as tuned).
    """
    cfg = dict(cfg)
    while shared_memory_needed(cfg, element_size, b_tiles) > limit and cfg["num_stages"] > 2:
        cfg["num_stages"] -= 1
    while shared_memory_needed(cfg, element_size, b_tiles) > limit and cfg["BLOCK_K"] > 16:
        cfg["BLOCK_K"] //= 2
    return cfg


def gemm_configs(cfg: Config) -> tuple[Config, Config]:
    """Split a config into the GEMM 1 and GEMM 2 settings (GEMM 2 may override all but BLOCK_M)."""
    base = {key: cfg[key] for key in CONFIG_KEYS}
    second = dict(base)
    second.update({k: v for k, v in cfg.get("gemm2", {}).items() if k != "BLOCK_M"})
    return base, second
