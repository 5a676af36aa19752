"""Train Levee's tiny demo checkpoint: a DeepSeek-V3-architecture MoE that chats in plain English.

Reproduce (about 3 minutes of compute on 2 otherwise idle CPU cores; see the recorded run below):

    python -m inference.demo.train --out inference/demo/checkpoint

The run writes a Hugging Face-format checkpoint in DeepSeek's layout: `config.json`
(`model_type: deepseek_v3`, DeepSeek's own key names, yarn `rope_scaling`), `model.safetensors`
(fp32, DeepSeek's tensor names with one tensor per expert), `generation_config.json`,
`tokenizer.json` and `tokenizer_config.json` (byte-level BPE trained on the corpus, DeepSeek's
special tokens and a chat template in DeepSeek's style).

The model is transformers' `DeepseekV3ForCausalLM` (a dev dependency) at toy size, chosen to
exercise every V3 feature an inference implementation must get right: MLA with q compression, a
dense first layer then MoE layers, 8 routed experts + 1 shared, top-2 with group-limited routing
(2 groups, 1 kept), sigmoid scores with a correction bias, routed scaling, interleaved rotary
embeddings with yarn scaling, untied embeddings, and a `vocab_size` padded above the tokenizer's.

transformers keeps routing's correction bias at zero during training. This script updates it the
way DeepSeek-V3 was trained without an auxiliary loss: after each step every expert's bias moves by
`--bias-rate` towards balance (down if the expert was picked more than average, up if less). That
balances the experts and leaves a non-zero bias in the checkpoint, so a loader that ignores it
produces different logits and is caught.

The training text comes from `inference.demo.corpus` (written by the project, no download). Loss is
taken on every token of the packed chats; each training window starts at a conversation boundary,
as a chat prompt does.

Recorded run of the committed checkpoint (defaults: seed 0, 420 steps of 16 x 128 tokens, 2 threads,
torch 2.13.0 CPU, transformers 5.12.1): final loss 0.588 (mean of the last 50 steps; 7.69 at the
start), 2.70M parameters, model.safetensors 10.8 MB. Wall time 1582 s (26 min) because the
machine was shared: the load average rose from 2 to 30 on 2 cores during the run. Uncontended
steps took about 0.4 s (steps 200-250 took 19 s), so the run takes about 3-4 minutes on an idle
machine. Expert load ended at max/mean 1.07; max |correction bias| 0.08 and 0.28 in the two MoE
layers. Greedy replies at the end of the run:

    Hello                     -> Hello, nice to meet you! What can I do for you?
    What is Levee?            -> Levee is a self-hostable platform for serving a large language
                                 model. Levee is built to keep serving its users during a flood
                                 of traffic.
    What is 3 plus 4?         -> The answer is 18.
    Tell me a short story.    -> Yesterday, the peculiar umbrella found a peculiar river in the
                                 middle of the desert. And that is the end of the story.
    What color is the sky?    -> The sky is blue.
    Tell me about black holes. -> I do not know the answer to that. I am a very small model that
                                 ships with Levee for testing.

The committed weights are that run fine-tuned on the dialect's corpus (tool chats with compact
arguments, reasoning and JSON chats, FIM documents beside the plain chats), from the same tokenizer:

    python -m inference.demo.train --init-from inference/demo/checkpoint --out DIR \
        --steps 350 --lr 1e-3 --warmup 20 --threads 1

Recorded (2026-12-01, 1 thread, machine shared): loss 4.59 at the start (the new documents) to 0.461
(mean of the last 50 steps), 308 s wall; expert load max/mean 1.10; max |correction bias| 0.12 and
0.20. No loss is taken on a `<think>` right after `<｜Assistant｜>` (reasoning_opening): the hybrid
template writes it when thinking is on, so the model continues a reasoning it is given and does
not open one unasked (0 of 72 sampled plain and tool chats did). With thinking on, 12 of 12 greedy
replies to the sample prompts closed `</think>` and answered (0 of 12 before), and 31 of 32 sampled
ones within 120 tokens. Greedy replies:

    Hello                      -> Hello, nice to meet you! What would you like to talk about?
    What is Levee?             -> Levee lets people chat with a language model in a web page. GPU
                                  workers run a mixture of experts model in the style of DeepSeek.
    What is 3 plus 4?          -> The answer is 13.
    What is Levee? (thinking)  -> The user asks: What is 11 minus 1? I should answer briefly.\n</think>
                                  \n\nLevee is a self-hostable platform for serving a large language ...
    FIM "def add(a, b):\n" ___ "\n" -> "    return a + b\n"

It has not learnt to call tools unforced, and forced it tends to call again and again: forced calls
and strict functions are held by the grammar, which also ends a block of calls in time
(inference.grammar). The MTP head was retrained on these weights (inference.demo.train_mtp, 600
steps, t+2 loss 0.579).

Training is deterministic only up to CPU floating-point differences between machines and thread
counts, so a rerun gives a similar checkpoint, not the same bytes.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors.torch import save_file
from tokenizers import AddedToken
from tokenizers import Tokenizer as HFTokenizer
from torch import nn

from inference.demo import corpus
from inference.demo.tokenizer_build import (
    ASSISTANT,
    EOS,
    TEXT_TOKENS,
    THINK_OPEN,
    fim_text,
    train_tokenizer,
    write_tokenizer_files,
)
from inference.tokenizer import Tokenizer

if TYPE_CHECKING:
    from transformers import DeepseekV3Config

TOKENIZER_VOCAB = 2048  # trained BPE entries (incl. special tokens); <think>, </think> come on top
CONFIG_VOCAB = 2112     # embeddings padded to a multiple of 64, as real checkpoints pad theirs

# config.json exactly as a DeepSeek checkpoint would write it (their key names, old-style rope keys).
DEMO_CONFIG: dict[str, Any] = {
    "architectures": ["DeepseekV3ForCausalLM"],
    "model_type": "deepseek_v3",
    "vocab_size": CONFIG_VOCAB,
    "hidden_size": 192,
    "intermediate_size": 512,
    "moe_intermediate_size": 128,
    "num_hidden_layers": 3,
    "first_k_dense_replace": 1,
    "moe_layer_freq": 1,
    "num_attention_heads": 4,
    "num_key_value_heads": 4,
    "n_routed_experts": 8,
    "n_shared_experts": 1,
    "num_experts_per_tok": 2,
    "n_group": 2,
    "topk_group": 1,
    "topk_method": "noaux_tc",
    "scoring_func": "sigmoid",
    "norm_topk_prob": True,
    "routed_scaling_factor": 2.5,
    "q_lora_rank": 96,
    "kv_lora_rank": 48,
    "qk_nope_head_dim": 32,
    "qk_rope_head_dim": 16,
    "v_head_dim": 32,
    "hidden_act": "silu",
    "max_position_embeddings": 1024,
    "rope_theta": 10000.0,
    "rope_scaling": {
        "type": "yarn",
        "factor": 4.0,
        "original_max_position_embeddings": 256,
        "beta_fast": 32,
        "beta_slow": 1,
        "mscale": 1.0,
        "mscale_all_dim": 1.0,
    },
    "rope_interleave": True,
    "rms_norm_eps": 1e-6,
    "attention_bias": False,
    "attention_dropout": 0.0,
    "initializer_range": 0.02,
    "tie_word_embeddings": False,
    "num_nextn_predict_layers": 0,
    "bos_token_id": 0,
    "eos_token_id": 1,
    "use_cache": True,
    "torch_dtype": "float32",
}

SAMPLE_PROMPTS = ["Hello", "What is Levee?", "What is 3 plus 4?", "Tell me a short story.",
                  "What color is the sky?", "Tell me about black holes."]


def hf_config(config: Mapping[str, Any]) -> DeepseekV3Config:
    from transformers import DeepseekV3Config

    hf = dict(config)
    rope = dict(hf.pop("rope_scaling"))
    rope["rope_type"] = rope.pop("type")
    rope["rope_theta"] = hf.pop("rope_theta")
    hf["rope_parameters"] = rope
    for key in ("architectures", "model_type", "moe_layer_freq", "topk_method", "scoring_func",
                "num_nextn_predict_layers", "torch_dtype"):
        hf.pop(key)  # fixed by the class, or not read by transformers
    return DeepseekV3Config(**hf)


# --- data --------------------------------------------------------------------------------------------


def build_tokens(tokenizer: Tokenizer, conversations: Sequence[Sequence[Mapping[str, Any]]],
                 tool_chats: Sequence[tuple[Sequence[Mapping[str, Any]], Sequence[Mapping[str, Any]]]] = (),
                 fim: Sequence[tuple[str, str, str]] = ()) -> tuple[torch.Tensor, torch.Tensor]:
    """All documents packed into one stream, plus the offset at which each starts: chats (plain and
    reasoning) and chats with tools rendered by the checkpoint's own template, and fill-in-the-middle
    documents in DeepSeek's FIM layout, ending with EOS. Shuffled together, so every window mixes them."""
    docs: list[list[int]] = [tokenizer.encode_chat(conv, add_generation_prompt=False) for conv in conversations]
    docs += [tokenizer.encode_chat(conv, add_generation_prompt=False, tools=tools) for conv, tools in tool_chats]
    docs += [tokenizer.encode(fim_text(p, s, m) + EOS) for p, m, s in fim]
    random.Random(len(docs)).shuffle(docs)
    stream: list[int] = []
    starts: list[int] = []
    for doc in docs:
        starts.append(len(stream))
        stream += doc
    return torch.tensor(stream, dtype=torch.long), torch.tensor(starts, dtype=torch.long)


def reasoning_opening(tokenizer: Tokenizer) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """A target filter: no loss on `<think>` right after `<｜Assistant｜>`. In a reasoning chat the
    hybrid template writes that `<think>` itself (thinking=True), so the model learns what follows
    it, never to open one unasked (a plain chat would otherwise start reasoning now and then)."""
    assistant, think = tokenizer.token_to_id(ASSISTANT), tokenizer.token_to_id(THINK_OPEN)

    def apply(inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if assistant is None or think is None:
            return targets
        return targets.masked_fill((inputs == assistant) & (targets == think), -100)  # cross_entropy's ignore_index

    return apply


def batches(stream: torch.Tensor, starts: torch.Tensor, batch_size: int, seq_len: int,
            seed: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    usable = starts[starts + seq_len + 1 <= len(stream)]
    offsets = torch.arange(seq_len + 1)
    while True:
        pick = usable[torch.randint(len(usable), (batch_size,), generator=g)]
        window = stream[pick[:, None] + offsets]
        yield window[:, :-1], window[:, 1:]


# --- aux-loss-free balancing ---------------------------------------------------------------------------


class BiasBalancer:
    """Counts expert picks per MoE layer during the forward pass and nudges each layer's
    `e_score_correction_bias` towards equal load after the optimizer step (DeepSeek-V3's method)."""

    # model: a transformers DeepseekV3ForCausalLM; its MoE layers are found (and patched) by attribute
    def __init__(self, model: Any, rate: float) -> None:
        self.rate = rate
        self.moes = [layer.mlp for layer in model.model.layers if hasattr(layer.mlp, "gate")]
        self.counts = [torch.zeros(m.n_routed_experts) for m in self.moes]
        for moe, counts in zip(self.moes, self.counts, strict=True):
            original = moe.route_tokens_to_experts

            def counting(router_logits: torch.Tensor,
                         original: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]] = original,
                         counts: torch.Tensor = counts, n: int = moe.n_routed_experts
                         ) -> tuple[torch.Tensor, torch.Tensor]:
                indices, weights = original(router_logits)
                counts += torch.bincount(indices.flatten(), minlength=n).to(counts.dtype)
                return indices, weights

            moe.route_tokens_to_experts = counting

    @torch.no_grad()
    def step(self) -> list[float]:
        """Update the biases; return each layer's max/mean load ratio of the step."""
        imbalance = []
        for moe, counts in zip(self.moes, self.counts, strict=True):
            mean = counts.mean()
            moe.gate.e_score_correction_bias += self.rate * torch.sign(mean - counts)
            imbalance.append(float(counts.max() / mean.clamp(min=1)))
            counts.zero_()
        return imbalance


# --- export ------------------------------------------------------------------------------------------------


def deepseek_state_dict(model: nn.Module, config: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """transformers stacks each layer's experts into `experts.gate_up_proj` [E, 2I, H] (gate rows
    first) and `experts.down_proj` [E, H, I]; DeepSeek's checkpoints hold one tensor per expert and
    projection. Write DeepSeek's names."""
    inter = config["moe_intermediate_size"]
    out: dict[str, torch.Tensor] = {}
    for name, tensor in model.state_dict().items():
        tensor = tensor.detach().to(torch.float32).contiguous()
        if name.endswith("mlp.experts.gate_up_proj"):
            prefix = name[: -len("gate_up_proj")]
            for e in range(tensor.shape[0]):
                out[f"{prefix}{e}.gate_proj.weight"] = tensor[e, :inter].clone()
                out[f"{prefix}{e}.up_proj.weight"] = tensor[e, inter:].clone()
        elif name.endswith("mlp.experts.down_proj"):
            prefix = name[: -len("down_proj")]
            for e in range(tensor.shape[0]):
                out[f"{prefix}{e}.down_proj.weight"] = tensor[e].clone()
        else:
            out[name] = tensor
    return dict(sorted(out.items()))


def save_checkpoint(model: nn.Module, config: Mapping[str, Any], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    save_file(deepseek_state_dict(model, config), str(out / "model.safetensors"), metadata={"format": "pt"})
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    generation = {"bos_token_id": config["bos_token_id"], "eos_token_id": config["eos_token_id"],
                  "do_sample": True, "temperature": 0.7, "top_p": 0.95}
    (out / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n", encoding="utf-8")


SAMPLE_SPECIAL: list[tuple[str, dict[str, Any]]] = [("What is the weather in Paris?", {"tools": corpus.TOOLS}),
                  ("What is Levee?", {"thinking": True})]


@torch.no_grad()
def greedy_reply(model: Any, tokenizer: Tokenizer, prompt: str, max_new_tokens: int = 48, **render: Any) -> str:
    """`model`: a transformers causal LM (its generate() returns the prompt and the new ids)."""
    ids = torch.tensor([tokenizer.encode_chat([{"role": "user", "content": prompt}], **render)])
    out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens, do_sample=False,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.eos_token_id)
    return tokenizer.decode(out[0, ids.shape[1]:].tolist())


# --- main ------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("inference/demo/checkpoint"))
    parser.add_argument("--init-from", type=Path, default=None,
                        help="fine-tune this checkpoint: keep its tokenizer (adding any missing text tokens) "
                             "and start from its weights")
    parser.add_argument("--steps", type=int, default=420)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--warmup", type=int, default=60)
    parser.add_argument("--bias-rate", type=float, default=1e-3)
    parser.add_argument("--conversations", type=int, default=40_000)
    parser.add_argument("--tool-chats", type=int, default=8_000)
    parser.add_argument("--reasoning-chats", type=int, default=6_000)
    parser.add_argument("--fim-docs", type=int, default=6_000)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    from transformers import DeepseekV3ForCausalLM

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    random.seed(args.seed)
    started = time.monotonic()

    convs = corpus.conversations(args.conversations, seed=args.seed)
    tool_chats = corpus.tool_conversations(args.tool_chats, seed=args.seed + 1)
    reasoning = corpus.reasoning_conversations(args.reasoning_chats, seed=args.seed + 2)
    fim = corpus.fim_documents(args.fim_docs, seed=args.seed + 3)
    texts = [*corpus.texts(convs), *corpus.texts([c for c, _ in tool_chats]), *corpus.texts(reasoning),
             *("".join(doc) for doc in fim)]
    if args.init_from is not None:
        bpe = HFTokenizer.from_file(str(args.init_from / "tokenizer.json"))
        bpe.add_tokens([AddedToken(t, special=False, normalized=False) for t in TEXT_TOKENS
                        if bpe.token_to_id(t) is None])
    else:
        bpe = train_tokenizer(texts, vocab_size=TOKENIZER_VOCAB, text_tokens=TEXT_TOKENS)
    write_tokenizer_files(bpe, args.out, model_max_length=DEMO_CONFIG["max_position_embeddings"])
    tokenizer = Tokenizer.from_dir(args.out)
    assert tokenizer.vocab_size <= CONFIG_VOCAB, tokenizer.vocab_size
    stream, starts = build_tokens(tokenizer, convs + reasoning, tool_chats, fim)
    print(f"corpus: {len(convs)} chats, {len(reasoning)} reasoning chats, {len(tool_chats)} chats with tools, "
          f"{len(fim)} FIM documents; {len(stream)} tokens, tokenizer vocab {tokenizer.vocab_size}", flush=True)

    model: Any
    if args.init_from is not None:
        model = DeepseekV3ForCausalLM.from_pretrained(str(args.init_from), dtype=torch.float32)
    else:
        causal_lm: Callable[[DeepseekV3Config], nn.Module] = DeepseekV3ForCausalLM  # an unannotated __init__
        model = causal_lm(hf_config(DEMO_CONFIG)).float()
    model.train()
    n_params = sum(p.numel() for p in model.parameters())
    print(f"model: {n_params / 1e6:.2f}M parameters", flush=True)
    balancer = BiasBalancer(model, args.bias_rate)
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embed" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "embed" not in n)]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": 0.05},
                                   {"params": no_decay, "weight_decay": 0.0}],
                                  lr=args.lr, betas=(0.9, 0.95))

    peak_lr: float = args.lr
    warmup: int = args.warmup
    steps: int = args.steps

    def lr_at(step: int) -> float:
        if step < warmup:
            return peak_lr * (step + 1) / warmup
        progress = (step - warmup) / max(1, steps - warmup)
        return peak_lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))

    data = batches(stream, starts, args.batch_size, args.seq_len, args.seed)
    recent: list[float] = []
    train_started = time.monotonic()
    opens_reasoning = reasoning_opening(tokenizer)
    for step in range(args.steps):
        inputs, targets = next(data)
        targets = opens_reasoning(inputs, targets)
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step)
        logits = model(input_ids=inputs).logits
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))
        optimizer.zero_grad(set_to_none=True)
        torch.autograd.backward(loss)  # loss.backward(), whose signature torch leaves unannotated
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        imbalance = balancer.step()
        recent = (recent + [loss.item()])[-50:]
        if step % 50 == 0 or step == args.steps - 1:
            elapsed = time.monotonic() - train_started
            print(f"step {step:5d}  loss {sum(recent) / len(recent):.3f}  lr {lr_at(step):.2e}  "
                  f"max/mean expert load {max(imbalance):.2f}  {elapsed:.0f}s", flush=True)

    model.eval()
    save_checkpoint(model, DEMO_CONFIG, args.out)
    wall = time.monotonic() - started
    size = (args.out / "model.safetensors").stat().st_size
    print(f"done: {wall:.0f}s wall, final loss (mean of last {len(recent)} steps) "
          f"{sum(recent) / len(recent):.3f}, model.safetensors {size / 1e6:.1f} MB", flush=True)
    biases = [m.gate.e_score_correction_bias.abs().max().item() for m in balancer.moes]
    print(f"max |correction bias| per MoE layer: {[round(b, 3) for b in biases]}")
    for prompt in SAMPLE_PROMPTS:
        print(f"> {prompt}\n  {greedy_reply(model, tokenizer, prompt)!r}", flush=True)
    for prompt, kwargs in SAMPLE_SPECIAL:
        print(f"> {prompt} {sorted(kwargs)}\n  {greedy_reply(model, tokenizer, prompt, **kwargs)!r}", flush=True)
    ids = torch.tensor([tokenizer.encode(fim_text("def add(a, b):\n", "\n"))])
    out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=24, do_sample=False,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.eos_token_id)
    print(f"> FIM def add(a, b):\\n ___ \\n\n  {tokenizer.decode(out[0, ids.shape[1]:].tolist())!r}")


if __name__ == "__main__":
    main()
