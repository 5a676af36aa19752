"""The paged MLA latent cache and its prefix index.

Per token per layer the cache holds the normed latent c_kv (kv_lora_rank values) followed by the
rotated rotary key k_pe (qk_rope_head_dim values), never expanded per-head keys and values. Storage
is cut into fixed-size blocks; each sequence owns a block table.

Prefix reuse works in *units* of 64 tokens (64 / block_size blocks). A unit's key hashes the key of
the unit before it, the user id and the unit's token ids, so a key names a whole prefix and one
user's prefixes can never be found by another. Units are reference counted; units nobody uses sit in
an LRU list and are evicted (oldest first) when free blocks run out. Only the scheduler thread
touches this object.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import dataclass

import torch

UNIT_TOKENS = 64


@dataclass
class Unit:
    blocks: tuple[int, ...]
    refs: int = 0


class KVCache:
    def __init__(
        self,
        *,
        num_layers: int,
        num_blocks: int,
        block_size: int,
        latent_dim: int,
        dtype: torch.dtype,
        device: torch.device,
    ):
        if UNIT_TOKENS % block_size:
            raise ValueError(f"block_size {block_size} must divide {UNIT_TOKENS}")
        self.block_size = block_size
        self.num_blocks = num_blocks
        self.blocks_per_unit = UNIT_TOKENS // block_size
        # [layers, slots, C + dr]; slot = block * block_size + offset
        self.data = torch.zeros(num_layers, num_blocks * block_size, latent_dim, dtype=dtype, device=device)
        self.free: list[int] = list(range(num_blocks - 1, -1, -1))
        self.units: dict[bytes, Unit] = {}
        self.lru: OrderedDict[bytes, None] = OrderedDict()  # units with refs == 0, oldest first
        self.evictable_blocks = 0

    @staticmethod
    def bytes_per_token(num_layers: int, latent_dim: int, dtype: torch.dtype) -> int:
        return num_layers * latent_dim * torch.empty((), dtype=dtype).element_size()

    # -- block allocation ------------------------------------------------------------------------

    def available(self) -> int:
        """Blocks that could be handed out now (free plus evictable)."""
        return len(self.free) + self.evictable_blocks

    def allocate(self, n: int) -> list[int]:
        if n > self.available():
            raise RuntimeError(f"KV cache: {n} blocks wanted, {self.available()} available")
        while len(self.free) < n:
            key, _ = self.lru.popitem(last=False)
            unit = self.units.pop(key)
            self.evictable_blocks -= len(unit.blocks)
            self.free.extend(unit.blocks)
        out = self.free[-n:] if n else []
        del self.free[len(self.free) - n :]
        return out

    def release_blocks(self, blocks: list[int]) -> None:
        self.free.extend(blocks)

    # -- prefix units ----------------------------------------------------------------------------

    @staticmethod
    def unit_keys(user: str, tokens: list[int], n_units: int, parent: bytes = b"") -> list[bytes]:
        keys = []
        for j in range(n_units):
            chunk = tokens[j * UNIT_TOKENS : (j + 1) * UNIT_TOKENS]
            h = hashlib.blake2b(digest_size=16)
            h.update(parent)
            h.update(user.encode())
            h.update(b"\0")
            h.update(",".join(map(str, chunk)).encode())
            parent = h.digest()
            keys.append(parent)
        return keys

    def lookup(self, keys: list[bytes]) -> list[bytes]:
        """The longest run of leading keys that are cached."""
        hits = []
        for key in keys:
            if key not in self.units:
                break
            hits.append(key)
        return hits

    def acquire(self, key: bytes) -> tuple[int, ...]:
        unit = self.units[key]
        if unit.refs == 0:
            del self.lru[key]
            self.evictable_blocks -= len(unit.blocks)
        unit.refs += 1
        return unit.blocks

    def release(self, key: bytes) -> None:
        unit = self.units[key]
        unit.refs -= 1
        if unit.refs == 0:
            self.lru[key] = None
            self.evictable_blocks += len(unit.blocks)

    def register(self, key: bytes, blocks: list[int]) -> bool:
        """Publish blocks holding a computed unit; the caller keeps one reference. False if the
        unit is already cached (the caller then keeps its blocks private)."""
        if key in self.units:
            return False
        self.units[key] = Unit(tuple(blocks), refs=1)
        return True

    def cached_units(self) -> int:
        return len(self.units)
