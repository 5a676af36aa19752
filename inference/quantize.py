"""Convert a DeepSeek checkpoint between bf16/fp32 and DeepSeek's block-FP8 layout.

    python -m inference.quantize SRC DST               # block-quantize to FP8 (as DeepSeek publishes)
    python -m inference.quantize --dequantize SRC DST  # FP8 → the config's dtype (bf16 by default)

Quantizing writes every attention projection, dense/shared MLP and routed-expert weight as
float8_e4m3fn with a float32 `weight_scale_inv` per 128×128 block (amax / 448 per block; partial
edge blocks get their own scale) and adds DeepSeek's `quantization_config` to config.json; the
embeddings, head, norms and router stay as they were. Dequantizing does the reverse and, as
DeepSeek's own converter does, leaves `quantization_config` in config.json (our loader accepts
that). Tokenizer and other files are copied. The multi-token-prediction layer is converted too.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from kernels.fp8 import BLOCK, FP8_DTYPE, dequantize, quantize

QUANTIZED = re.compile(
    r"^model\.layers\.\d+\.(self_attn\.(q_a_proj|q_b_proj|q_proj|kv_a_proj_with_mqa|kv_b_proj|o_proj)"
    r"|mlp\.(experts\.\d+\.|shared_experts\.)?(gate_proj|up_proj|down_proj))\.weight$"
)
QUANTIZATION_CONFIG = {"activation_scheme": "dynamic", "fmt": "e4m3", "quant_method": "fp8",
                       "weight_block_size": list(BLOCK)}


def _read_all(src: Path) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for f in sorted(src.glob("*.safetensors")):
        with safe_open(str(f), framework="pt", device="cpu") as st:  # type: ignore[no-untyped-call]
            for name in st.keys():
                out[name] = st.get_tensor(name)
    if not out:
        raise SystemExit(f"no *.safetensors in {src}")
    return out


def _copy_side_files(src: Path, dst: Path) -> None:
    dst.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        if f.is_file() and not f.name.endswith(".safetensors") and f.name not in ("model.safetensors.index.json",
                                                                                     "config.json"):
            shutil.copy2(f, dst / f.name)


def quantize_checkpoint(src: str | Path, dst: str | Path) -> int:
    """Write the FP8 version of `src` to `dst` (one safetensors file); returns how many weights were quantized."""
    src, dst = Path(src), Path(dst)
    tensors = _read_all(src)
    out: dict[str, torch.Tensor] = {}
    count = 0
    for name, t in tensors.items():
        if QUANTIZED.match(name) and t.dim() == 2:
            q, s = quantize(t)
            out[name], out[name + "_scale_inv"] = q, s
            count += 1
        else:
            out[name] = t.contiguous()
    _copy_side_files(src, dst)
    save_file(out, str(dst / "model.safetensors"), metadata={"format": "pt"})
    cfg = json.loads((src / "config.json").read_text())
    cfg["quantization_config"] = dict(QUANTIZATION_CONFIG)
    (dst / "config.json").write_text(json.dumps(cfg, indent=2))
    return count


def dequantize_checkpoint(src: str | Path, dst: str | Path, dtype: torch.dtype | None = None) -> int:
    """Write `src` with every FP8 weight dequantized (to `dtype`, default the config's dtype or bf16)."""
    src, dst = Path(src), Path(dst)
    tensors = _read_all(src)
    cfg = json.loads((src / "config.json").read_text())
    if dtype is None:
        name = str(cfg.get("dtype") or cfg.get("torch_dtype") or "bfloat16").removeprefix("torch.")
        dtype = getattr(torch, name)
    out: dict[str, torch.Tensor] = {}
    count = 0
    for name, t in tensors.items():
        if name.endswith("_scale_inv"):
            continue
        scale = tensors.get(name + "_scale_inv")
        if scale is not None and t.dtype == FP8_DTYPE:
            out[name] = dequantize(t, scale, dtype)
            count += 1
        else:
            out[name] = t.contiguous()
    _copy_side_files(src, dst)
    save_file(out, str(dst / "model.safetensors"), metadata={"format": "pt"})
    (dst / "config.json").write_text(json.dumps(cfg, indent=2))  # quantization_config kept, as DeepSeek's does
    return count


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m inference.quantize", description=__doc__.splitlines()[0])
    parser.add_argument("src")
    parser.add_argument("dst")
    parser.add_argument("--dequantize", action="store_true", help="FP8 → bf16 (or the config's dtype)")
    args = parser.parse_args(argv)
    if args.dequantize:
        print(f"dequantized {dequantize_checkpoint(args.src, args.dst)} weights into {args.dst}")
    else:
        print(f"quantized {quantize_checkpoint(args.src, args.dst)} weights into {args.dst}")


if __name__ == "__main__":
    main()
