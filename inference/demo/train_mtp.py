"""Train a multi-token-prediction (MTP) head for the demo checkpoint, the main model frozen.

    python -m inference.demo.train_mtp --checkpoint inference/demo/checkpoint

Writes `mtp.safetensors` beside the checkpoint's `model.safetensors`, in DeepSeek-V3's layout for
layer `num_hidden_layers` (enorm, hnorm, eh_proj, the decoder block's tensors with one tensor per
expert, shared_head.norm); `load_model(path, mtp=True)` loads it, a plain load skips it. The
head learns to predict token t+2 from the main model's final hidden state at t and the embedding
of token t+1, on the same corpus the demo model was trained on (inference.demo.corpus, tokenized
by the checkpoint's own tokenizer). Its decoder block starts as a copy of the main model's last
block; eh_proj starts as "take the hidden state". The routed experts are computed by the
differentiable reference loop while training (the fused paths have no backward).
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

import inference.model as model_module
from inference.attention import CausalAttention
from inference.demo import corpus
from inference.demo.train import batches, build_tokens
from inference.loader import _ckpt_name, load_model
from inference.model import MoE, MTPLayer
from inference.moe import routed_experts
from inference.tokenizer import Tokenizer
from kernels import moe_reference

_FUSED = routed_experts


def _reference_experts(hidden: torch.Tensor, w13: torch.Tensor, w2: torch.Tensor, topk_weights: torch.Tensor,
                       topk_ids: torch.Tensor, **kwargs: Any) -> torch.Tensor:
    """The reference loop where gradients are wanted (the MTP block), the fused path elsewhere."""
    if torch.is_grad_enabled():
        return moe_reference(hidden, w13, w2, topk_weights, topk_ids)
    return _FUSED(hidden, w13, w2, topk_weights, topk_ids, **kwargs)


def mtp_tensors(mtp: MTPLayer, num_layers: int) -> dict[str, torch.Tensor]:
    """The layer's weights under DeepSeek-V3's checkpoint names (experts one tensor each)."""
    out: dict[str, torch.Tensor] = {}
    for name, t in mtp.state_dict().items():
        full = "mtp." + name
        if name.endswith(("mlp.w13", "mlp.w2")):
            continue
        out[_ckpt_name(full, num_layers)] = t.detach().contiguous().clone()
    moe = mtp.block.mlp
    if isinstance(moe, MoE):
        inter = moe.w13.shape[1] // 2
        prefix = f"model.layers.{num_layers}.mlp.experts"
        for e in range(moe.w13.shape[0]):
            out[f"{prefix}.{e}.gate_proj.weight"] = moe.w13[e, :inter].detach().contiguous().clone()
            out[f"{prefix}.{e}.up_proj.weight"] = moe.w13[e, inter:].detach().contiguous().clone()
            out[f"{prefix}.{e}.down_proj.weight"] = moe.w2[e].detach().contiguous().clone()
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", type=Path, default=Path("inference/demo/checkpoint"))
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=96)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--conversations", type=int, default=20_000)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    started = time.monotonic()

    model = load_model(args.checkpoint, dtype=torch.float32, device="cpu")
    cfg = model.args
    L = cfg.num_hidden_layers
    mtp = MTPLayer(cfg)
    with torch.no_grad():
        for p in mtp.parameters():
            p.zero_()
        mtp.block.load_state_dict(model.layers[L - 1].state_dict())
        for norm in (mtp.enorm, mtp.hnorm):
            norm.weight.fill_(1.0)
        mtp.norm.weight.copy_(model.norm.weight)
        H = cfg.hidden_size
        mtp.eh_proj.weight.normal_(0.0, 0.02)
        mtp.eh_proj.weight[:, H:] += torch.eye(H)
    mtp.requires_grad_(True)
    if isinstance(mtp.block.mlp, MoE) and mtp.block.mlp.e_score_correction_bias is not None:
        mtp.block.mlp.e_score_correction_bias.requires_grad_(False)  # balancing, not gradients, moves it
    model.mtp = mtp
    setattr(model_module, "routed_experts", _reference_experts)  # noqa: B010 - the MoE's one call site

    tokenizer = Tokenizer.from_dir(args.checkpoint)
    stream, starts = build_tokens(tokenizer, corpus.conversations(args.conversations, seed=args.seed + 1))
    data = batches(stream, starts, args.batch_size, args.seq_len, args.seed + 1)
    params = [p for p in mtp.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=args.lr, betas=(0.9, 0.95), weight_decay=0.0)
    positions = torch.arange(args.seq_len - 1)
    recent: list[float] = []
    for step in range(args.steps):
        for group in opt.param_groups:
            group["lr"] = args.lr * min(1.0, (step + 1) / 30) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * step / args.steps)))
        inputs, targets = next(data)
        with torch.no_grad():
            hidden = model.hidden_states(inputs, torch.arange(args.seq_len), CausalAttention())
        out = model.mtp_hidden(inputs[:, 1:], hidden[:, :-1], positions, CausalAttention())
        logits = model.lm_head(out)
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        recent = (recent + [loss.item()])[-50:]
        if step % 50 == 0 or step == args.steps - 1:
            print(f"step {step:4d}  t+2 loss {sum(recent) / len(recent):.3f}  {time.monotonic() - started:.0f}s",
                  flush=True)
    save_file(mtp_tensors(mtp, L), str(args.checkpoint / "mtp.safetensors"), metadata={"format": "pt"})
    size = (args.checkpoint / "mtp.safetensors").stat().st_size
    print(f"done: {time.monotonic() - started:.0f}s, final t+2 loss {sum(recent) / len(recent):.3f}, "
          f"mtp.safetensors {size / 1e6:.1f} MB", flush=True)


if __name__ == "__main__":
    main()
