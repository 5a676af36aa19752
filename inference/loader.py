"""Load a Hugging Face-format DeepSeek V2/V3 checkpoint into `inference.model.Transformer`.

Tensors are read through safetensors' memory map and copied once, straight into the target dtype
and device; routed experts are stacked into w13 [E, 2I, H] / w2 [E, H, I] as they are read. The
multi-token-prediction layer (numbered num_hidden_layers) is skipped. Anything missing, unexpected,
misshapen or unsupported raises `CheckpointError` naming the tensor or config value.
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from pathlib import Path

import torch
from safetensors import safe_open

from inference.model import ConfigError, ModelArgs, MoE, Transformer

_EXPERT = re.compile(r"^model\.layers\.(\d+)\.mlp\.experts\.(\d+)\.(gate_proj|up_proj|down_proj)\.weight$")
_LAYER = re.compile(r"^model\.layers\.(\d+)\.")
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)  # written by some old exporters; recomputed here


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
        with safe_open(str(f), framework="pt") as st:
            for name in st.keys():
                out[name] = f
    return out


def _expected(model: Transformer) -> dict[str, tuple[int, ...]]:
    """Checkpoint tensor name → shape, for everything except the routed experts."""
    out: dict[str, tuple[int, ...]] = {}
    for name, p in model.named_parameters():
        if name.endswith((".w13", ".w2")):
            continue
        if name == "lm_head.weight" and model.args.tie_word_embeddings:
            continue
        ckpt = name if name.startswith("lm_head.") else "model." + name
        ckpt = ckpt.replace(".mlp.gate_weight", ".mlp.gate.weight")
        ckpt = ckpt.replace(".mlp.e_score_correction_bias", ".mlp.gate.e_score_correction_bias")
        out[ckpt] = tuple(p.shape)
    return out


def _param_name(ckpt: str) -> str:
    name = ckpt.removeprefix("model.")
    name = name.replace(".mlp.gate.weight", ".mlp.gate_weight")
    return name.replace(".mlp.gate.e_score_correction_bias", ".mlp.e_score_correction_bias")


def load_model(
    path: str | Path,
    *,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> Transformer:
    """Load the checkpoint directory `path`. dtype defaults to the checkpoint's config (`dtype` or
    `torch_dtype`, else float32); device defaults to CUDA when available, else CPU."""
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
    fp8 = sorted(n for n in files if n.endswith("weight_scale_inv"))
    if fp8:
        raise CheckpointError(
            f"FP8 block-quantised weights are not supported (found {len(fp8)} weight_scale_inv tensors, "
            f"e.g. {fp8[0]}); convert the checkpoint to bf16 first"
        )

    with torch.device("meta"):
        model = Transformer(args)
    expected = _expected(model)

    # Sort what the checkpoint holds into plain tensors, routed experts, and things we don't know.
    L = args.num_hidden_layers
    experts: dict[int, dict[tuple[int, str], str]] = defaultdict(dict)
    unexpected: list[str] = []
    for name in files:
        layer = _LAYER.match(name)
        if layer and int(layer.group(1)) >= L:
            continue  # multi-token-prediction layer(s): not used for generation
        if name.endswith(_IGNORED_SUFFIXES):
            continue
        m = _EXPERT.match(name)
        if m and args.is_moe_layer(int(m.group(1))) and int(m.group(2)) < (args.n_routed_experts or 0):
            experts[int(m.group(1))][(int(m.group(2)), m.group(3))] = name
        elif name not in expected:
            unexpected.append(name)
    if unexpected:
        raise CheckpointError(f"unexpected tensor(s) in checkpoint: {', '.join(sorted(unexpected)[:8])}"
                              + (f" and {len(unexpected) - 8} more" if len(unexpected) > 8 else ""))
    missing = [n for n in expected if n not in files]
    for i in range(L):
        if args.is_moe_layer(i):
            for e in range(args.n_routed_experts or 0):
                for proj in ("gate_proj", "up_proj", "down_proj"):
                    if (e, proj) not in experts[i]:
                        missing.append(f"model.layers.{i}.mlp.experts.{e}.{proj}.weight")
    if missing:
        raise CheckpointError(f"missing tensor(s) in checkpoint: {', '.join(missing[:8])}"
                              + (f" and {len(missing) - 8} more" if len(missing) > 8 else ""))

    handles: dict[Path, object] = {}

    def read(name: str, shape: tuple[int, ...] | None = None):
        f = files[name]
        if f not in handles:
            handles[f] = safe_open(str(f), framework="pt", device="cpu")
        t = handles[f].get_tensor(name)  # a view of the memory map, not a copy
        if shape is not None and tuple(t.shape) != shape:
            raise CheckpointError(f"tensor {name} has shape {tuple(t.shape)}, expected {shape}")
        return t

    state: dict[str, torch.Tensor] = {}
    for name, shape in expected.items():
        target = torch.float32 if name.endswith("e_score_correction_bias") else dtype
        state[_param_name(name)] = read(name, shape).to(device=device, dtype=target)
    if args.tie_word_embeddings:
        state["lm_head.weight"] = state["embed_tokens.weight"]

    H, inter = args.hidden_size, args.moe_intermediate_size
    for i, block in enumerate(model.layers):
        if not isinstance(block.mlp, MoE):
            continue
        E = args.n_routed_experts or 0
        w13 = torch.empty(E, 2 * inter, H, dtype=dtype, device=device)
        w2 = torch.empty(E, H, inter, dtype=dtype, device=device)
        for e in range(E):
            names = experts[i]
            w13[e, :inter].copy_(read(names[(e, "gate_proj")], (inter, H)))
            w13[e, inter:].copy_(read(names[(e, "up_proj")], (inter, H)))
            w2[e].copy_(read(names[(e, "down_proj")], (H, inter)))
        state[f"layers.{i}.mlp.w13"] = w13
        state[f"layers.{i}.mlp.w2"] = w2

    model.load_state_dict(state, strict=True, assign=True)
    if args.tie_word_embeddings:
        model.lm_head.weight = model.embed_tokens.weight
    model.requires_grad_(False)
    model.eval()
    model.init_rope(device)
    return model
