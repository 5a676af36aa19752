"""Load a Hugging Face-format DeepSeek V2/V3 checkpoint into `inference.model.Transformer`.

Tensors are read through safetensors' memory map and copied once, straight into the target dtype
and device; routed experts are stacked into w13 [E, 2I, H] / w2 [E, H, I] as they are read. The
multi-token-prediction layer (numbered num_hidden_layers) is skipped. Anything missing, unexpected,
misshapen or unsupported raises `CheckpointError` naming the tensor or config value.

FP8 checkpoints load as published: a linear weight with a `weight_scale_inv` beside it stays
float8_e4m3fn with its fp32 128×128 block scales (Linear.weight_scale_inv; MoE.w13_scale_inv /
w2_scale_inv for the stacked experts, the gate's grid then the up's); everything else (embeddings,
head, norms, router) loads in the compute dtype. A bf16 conversion that still carries
`quantization_config` has no scales and loads as a plain checkpoint. Under tensor parallelism each
rank reads only its slice of each split tensor (and its own experts); an FP8 slice that does not
start on a 128-block boundary is dequantized to the compute dtype (inference/linear.py).
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, cast

import torch
from safetensors import safe_open
from torch import nn

from inference.linear import SINGLE, Linear, TensorParallel, VocabEmbedding, shard, shard_fp8
from inference.model import ConfigError, ModelArgs, MoE, Transformer
from kernels.fp8 import FP8_DTYPE, scale_shape, w13_scale_shape

_EXPERT = re.compile(r"^model\.layers\.(\d+)\.mlp\.experts\.(\d+)\.(gate_proj|up_proj|down_proj)\.weight$")
_LAYER = re.compile(r"^model\.layers\.(\d+)\.")
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)
_SCALE = ".weight_scale_inv"  # written by some old exporters; recomputed here


class SafeTensors(Protocol):
    """An open safetensors file, as the loader uses it."""

    def __enter__(self) -> SafeTensors: ...
    def __exit__(self, *exc: object) -> None: ...
    def keys(self) -> list[str]: ...
    def get_tensor(self, name: str) -> torch.Tensor: ...


class _SafeOpen(Protocol):
    def __call__(self, filename: str, *, framework: str, device: str = "cpu") -> SafeTensors: ...


_safe_open = cast(_SafeOpen, safe_open)  # safetensors' own signature is unannotated


class CheckpointError(ValueError):
    """The checkpoint cannot be loaded; the message names the tensor, file or config value."""


def read_config(path: str | Path) -> ModelArgs:
    cfg_path = Path(path) / "config.json"
    if not cfg_path.is_file():
        raise CheckpointError(f"{cfg_path} not found")
    try:
        return ModelArgs.from_config(json.loads(cfg_path.read_text()))
    except ConfigError as exc:
        raise CheckpointError(str(exc)) from exc


def has_mtp_layer(path: str | Path) -> bool:
    """Whether the checkpoint carries a multi-token-prediction layer (layer num_hidden_layers's
    eh_proj: V3 as published, or the demo checkpoint's mtp.safetensors)."""
    path = Path(path)
    return f"model.layers.{read_config(path).num_hidden_layers}.eh_proj.weight" in _tensor_files(path)


def _tensor_files(path: Path) -> dict[str, Path]:
    """Map every tensor name to the safetensors file that holds it."""
    index = path / "model.safetensors.index.json"
    if index.is_file():
        weight_map = json.loads(index.read_text()).get("weight_map", {})
        missing_files = sorted({f for f in weight_map.values() if not (path / f).is_file()})
        if missing_files:
            raise CheckpointError(f"{index} lists shard(s) that do not exist: {', '.join(missing_files)}")
        return {name: path / f for name, f in weight_map.items()}
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise CheckpointError(f"no model.safetensors or model.safetensors.index.json in {path}")
    out: dict[str, Path] = {}
    for f in files:
        with _safe_open(str(f), framework="pt") as st:
            for name in st.keys():
                out[name] = f
    return out


@dataclass
class _Target:
    """Where one checkpoint tensor goes: a parameter, its global shape and this rank's slice."""

    param: str
    shape: tuple[int, ...]
    rows: tuple[int, int] | None = None  # slice of dim 0 (None: all)
    cols: tuple[int, int] | None = None  # slice of dim 1
    linear: Linear | None = None  # set for the weights of quantizable linears


def _ckpt_name(param: str, num_layers: int = 0) -> str:
    if param.startswith("mtp."):  # the MTP layer is checkpoint layer num_hidden_layers
        rest = param.removeprefix("mtp.")
        rest = rest.removeprefix("block.") if rest.startswith("block.") else rest
        rest = "shared_head.norm.weight" if rest == "norm.weight" else rest
        param = f"layers.{num_layers}.{rest}"
    name = param if param.startswith("lm_head.") else "model." + param
    name = name.replace(".mlp.gate_weight", ".mlp.gate.weight")
    return name.replace(".mlp.e_score_correction_bias", ".mlp.gate.e_score_correction_bias")


def _targets(model: Transformer) -> dict[str, _Target]:
    """Checkpoint tensor name → target, for everything except the routed experts."""
    out: dict[str, _Target] = {}
    L = model.args.num_hidden_layers
    for prefix, module in model.named_modules():
        if isinstance(module, Linear):
            if prefix == "lm_head" and model.args.tie_word_embeddings:
                continue
            full = (0, module.in_features)
            out[_ckpt_name(prefix + ".weight", L)] = _Target(
                prefix + ".weight", (module.out_features, module.in_features), module.rows,
                module.cols if module.cols != full else None, module)
            if module.bias is not None:
                out[_ckpt_name(prefix + ".bias", L)] = _Target(prefix + ".bias", (module.out_features,), module.rows)
        elif isinstance(module, VocabEmbedding):
            out[_ckpt_name(prefix + ".weight", L)] = _Target(
                prefix + ".weight", (module.num_embeddings, module.weight.shape[1]), module.rows)
    placed = {t.param for t in out.values()}
    for name, p in model.named_parameters():
        if name.endswith((".w13", ".w2")) or name in placed:
            continue
        if name == "lm_head.weight":
            continue
        out[_ckpt_name(name, L)] = _Target(name, tuple(p.shape))
    return out


def load_model(
    path: str | Path,
    *,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
    tp: TensorParallel = SINGLE,
    mtp: bool = False,
) -> Transformer:
    """Load the checkpoint directory `path`. dtype (the compute dtype; FP8 weights stay FP8)
    defaults to the checkpoint's config (`dtype` or `torch_dtype`, else float32); device defaults to
    CUDA when available, else CPU. `tp`: this process's rank in a tensor/expert-parallel group;
    it reads and keeps only its shard of each split tensor. `mtp`: also load the multi-token-
    prediction layer (checkpoint layer num_hidden_layers; an error names it when absent), else skip it."""
    path = Path(path)
    args = read_config(path)
    cfg = json.loads((path / "config.json").read_text())
    if dtype is None:
        name = cfg.get("dtype") or cfg.get("torch_dtype") or "float32"
        dtype = getattr(torch, str(name).removeprefix("torch."), None)
        if not isinstance(dtype, torch.dtype):
            raise CheckpointError(f"config.json: dtype {name!r} is not a torch dtype")
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)

    files = _tensor_files(path)
    try:
        with torch.device("meta"):
            model = Transformer(args, tp, mtp=mtp)
    except ConfigError as exc:
        raise CheckpointError(str(exc)) from exc
    targets = _targets(model)
    quantizable = {name for name, t in targets.items() if t.linear is not None}

    # Sort what the checkpoint holds into plain tensors, routed experts, and things we don't know.
    L = args.num_hidden_layers
    experts: dict[int, dict[tuple[int, str], str]] = defaultdict(dict)
    unexpected: list[str] = []
    for name in files:
        layer = _LAYER.match(name)
        if layer and int(layer.group(1)) >= L:
            if not mtp or int(layer.group(1)) > L:
                continue  # multi-token-prediction layer(s) not asked for (or a second one)
            if name in (f"model.layers.{L}.embed_tokens.weight", f"model.layers.{L}.shared_head.head.weight"):
                continue  # V3's copies of the main model's embedding and head
        if name.endswith(_IGNORED_SUFFIXES):
            continue
        if name.endswith(_SCALE):
            base = name.removesuffix("_scale_inv")
            m = _EXPERT.match(base)
            if base in quantizable or (m and base in files):
                continue  # read with its weight
            unexpected.append(name)
            continue
        m = _EXPERT.match(name)
        if m and args.is_moe_layer(int(m.group(1))) and int(m.group(2)) < (args.n_routed_experts or 0):
            experts[int(m.group(1))][(int(m.group(2)), m.group(3))] = name
        elif name not in targets:
            unexpected.append(name)
    if unexpected:
        raise CheckpointError(f"unexpected tensor(s) in checkpoint: {', '.join(sorted(unexpected)[:8])}"
                              + (f" and {len(unexpected) - 8} more" if len(unexpected) > 8 else ""))
    missing = [n for n in targets if n not in files]
    for i in range(L + 1 if mtp else L):
        if args.is_moe_layer(i):
            for e in range(args.n_routed_experts or 0):
                for proj in ("gate_proj", "up_proj", "down_proj"):
                    if (e, proj) not in experts[i]:
                        missing.append(f"model.layers.{i}.mlp.experts.{e}.{proj}.weight")
    if missing:
        raise CheckpointError(f"missing tensor(s) in checkpoint: {', '.join(missing[:8])}"
                              + (f" and {len(missing) - 8} more" if len(missing) > 8 else ""))

    handles: dict[Path, SafeTensors] = {}

    def read(name: str, shape: tuple[int, ...] | None = None) -> torch.Tensor:
        f = files[name]
        if f not in handles:
            handles[f] = _safe_open(str(f), framework="pt", device="cpu")
        t: torch.Tensor = handles[f].get_tensor(name)  # a view of the memory map, not a copy
        if shape is not None and tuple(t.shape) != shape:
            raise CheckpointError(f"tensor {name} has shape {tuple(t.shape)}, expected {shape}")
        return t

    def read_fp8(name: str, shape: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(weight, its block scales or None): FP8 exactly when a weight_scale_inv sits beside it."""
        w = read(name, shape)
        scale_name = name + "_scale_inv"
        if scale_name not in files:
            if w.dtype == FP8_DTYPE:
                raise CheckpointError(f"tensor {name} is float8_e4m3fn but {scale_name} is missing")
            return w, None
        if w.dtype != FP8_DTYPE:
            raise CheckpointError(f"tensor {name} has dtype {w.dtype} but a {scale_name} beside it: "
                                  "block-scaled weights must be float8_e4m3fn")
        scale = read(scale_name, scale_shape(*shape))
        if scale.dtype != torch.float32:
            raise CheckpointError(f"tensor {scale_name} has dtype {scale.dtype}, expected float32")
        if not torch.isfinite(scale).all():
            raise CheckpointError(f"tensor {scale_name} holds non-finite scales")
        return w, scale

    def place(t: torch.Tensor, target_dtype: torch.dtype) -> torch.Tensor:
        return t.to(device=device, dtype=target_dtype).contiguous()

    state: dict[str, torch.Tensor] = {}
    scales: dict[str, torch.Tensor] = {}  # linear module name → its weight_scale_inv
    for name, target in targets.items():
        if target.linear is not None:
            w, scale = read_fp8(name, target.shape)  # type: ignore[arg-type]
            rows = target.rows or (0, target.shape[0])
            cols = target.cols or (0, target.shape[1])
            if scale is not None:
                w, scale = shard_fp8(w, scale, rows, cols, dtype)
            else:
                w = shard(w, rows, cols)
            if scale is not None:
                state[target.param] = place(w, FP8_DTYPE)
                scales[target.param.removesuffix(".weight")] = place(scale, torch.float32)
            else:
                state[target.param] = place(w, dtype)
            continue
        t = read(name, target.shape)
        if target.rows is not None:
            t = t[target.rows[0]:target.rows[1]]
        target_dtype = torch.float32 if name.endswith("e_score_correction_bias") else dtype
        if t.dtype == FP8_DTYPE:
            raise CheckpointError(f"tensor {name} is float8_e4m3fn, but only linear layers' weights may be")
        state[target.param] = place(t, target_dtype)
    if args.tie_word_embeddings:
        state["lm_head.weight"] = state["embed_tokens.weight"]

    H, inter = args.hidden_size, args.moe_intermediate_size
    expert_scales: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    blocks = list(enumerate(model.layers))
    if model.mtp is not None:
        blocks.append((L, model.mtp.block))
    moes: dict[int, MoE] = {}
    for i, block in blocks:
        if not isinstance(block.mlp, MoE):
            continue
        moes[i] = block.mlp
        lo, hi = block.mlp.expert_range
        names = experts[i]
        fp8 = {f"{names[(e, p)]}" for e in range(lo, hi) for p in ("gate_proj", "up_proj", "down_proj")
               if names[(e, p)] + "_scale_inv" in files or read(names[(e, p)]).dtype == FP8_DTYPE}
        if fp8 and len(fp8) != 3 * (hi - lo):
            plain = sorted(names[(e, p)] for e in range(lo, hi) for p in ("gate_proj", "up_proj", "down_proj")
                           if names[(e, p)] not in fp8)
            raise CheckpointError(f"layer {i} mixes FP8 and unquantized experts: e.g. {plain[0]} has no "
                                  "weight_scale_inv")
        wdtype = FP8_DTYPE if fp8 else dtype
        w13 = torch.empty(hi - lo, 2 * inter, H, dtype=wdtype, device=device)
        w2 = torch.empty(hi - lo, H, inter, dtype=wdtype, device=device)
        if fp8:
            nb = scale_shape(inter, H)[0]
            s13 = torch.empty(hi - lo, *w13_scale_shape(inter, H), dtype=torch.float32, device=device)
            s2 = torch.empty(hi - lo, *scale_shape(H, inter), dtype=torch.float32, device=device)
        for j, e in enumerate(range(lo, hi)):
            gate, s_gate = read_fp8(names[(e, "gate_proj")], (inter, H))
            up, s_up = read_fp8(names[(e, "up_proj")], (inter, H))
            down, s_down = read_fp8(names[(e, "down_proj")], (H, inter))
            w13[j, :inter].copy_(gate)
            w13[j, inter:].copy_(up)
            w2[j].copy_(down)
            if fp8:
                assert s_gate is not None and s_up is not None and s_down is not None
                s13[j, :nb].copy_(s_gate)
                s13[j, nb:].copy_(s_up)
                s2[j].copy_(s_down)
        where = "mtp.block" if i == L else f"layers.{i}"
        state[f"{where}.mlp.w13"] = w13
        state[f"{where}.mlp.w2"] = w2
        if fp8:
            expert_scales[i] = (s13, s2)

    # Scales are attributes the loader adds, so the strict state-dict load checks everything else.
    model.load_state_dict(state, strict=True, assign=True)
    for prefix, scale in scales.items():
        model.get_submodule(prefix).weight_scale_inv = nn.Parameter(scale, requires_grad=False)
    for i, (s13, s2) in expert_scales.items():
        moe = moes[i]
        moe.w13_scale_inv = nn.Parameter(s13, requires_grad=False)
        moe.w2_scale_inv = nn.Parameter(s2, requires_grad=False)
    for module in model.modules():  # buffers made on the meta device (the expert maps)
        for bname, buf in list(module.named_buffers(recurse=False)):
            if buf is not None and buf.is_meta:
                module.register_buffer(bname, _rebuild_buffer(module, bname).to(device), persistent=False)
    if args.tie_word_embeddings:
        model.lm_head.weight = model.embed_tokens.weight
    model.requires_grad_(False)
    model.eval()
    model.init_rope(device)
    return model


def _rebuild_buffer(module: nn.Module, name: str) -> torch.Tensor:
    if isinstance(module, MoE) and name == "expert_map":
        E = module.args.n_routed_experts or 0
        lo, hi = module.expert_range
        emap = torch.full((E,), -1, dtype=torch.int32)
        emap[lo:hi] = torch.arange(hi - lo, dtype=torch.int32)
        return emap
    raise CheckpointError(f"internal: buffer {name} of {type(module).__name__} has no loader rule")
