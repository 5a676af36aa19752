"""The committed demo checkpoint: DeepSeek's format, small, and it talks in words.

The layout checks read the files directly (safetensors + json, no transformers), so they say what
any loader may rely on. The generation check loads it with transformers' DeepseekV3ForCausalLM, the
peer our own model is compared against.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from safetensors import safe_open

from inference.demo import corpus
from inference.demo.tokenizer_build import ASSISTANT, BOS, EOS, PAD, THINK_CLOSE, THINK_OPEN, USER
from inference.tokenizer import IncrementalDetokenizer, Tokenizer

CHECKPOINT = Path(__file__).resolve().parents[2] / "inference" / "demo" / "checkpoint"
MAX_BYTES = 20 * 1024 * 1024


@pytest.fixture(scope="module")
def config() -> dict:
    return json.loads((CHECKPOINT / "config.json").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def tensors() -> dict[str, tuple[tuple[int, ...], str]]:
    with safe_open(str(CHECKPOINT / "model.safetensors"), framework="numpy") as f:
        out = {}
        for name in f.keys():  # noqa: SIM118 - safe_open is not a mapping
            sl = f.get_slice(name)
            out[name] = (tuple(sl.get_shape()), sl.get_dtype())
        return out


def expected_shapes(c: dict) -> dict[str, tuple[int, ...]]:
    """Every tensor a DeepSeek-V3 checkpoint of this config holds, by DeepSeek's names."""
    h, heads = c["hidden_size"], c["num_attention_heads"]
    qk = c["qk_nope_head_dim"] + c["qk_rope_head_dim"]
    out = {"model.embed_tokens.weight": (c["vocab_size"], h), "model.norm.weight": (h,),
           "lm_head.weight": (c["vocab_size"], h)}
    for i in range(c["num_hidden_layers"]):
        p = f"model.layers.{i}."
        out |= {
            p + "input_layernorm.weight": (h,),
            p + "post_attention_layernorm.weight": (h,),
            p + "self_attn.q_a_proj.weight": (c["q_lora_rank"], h),
            p + "self_attn.q_a_layernorm.weight": (c["q_lora_rank"],),
            p + "self_attn.q_b_proj.weight": (heads * qk, c["q_lora_rank"]),
            p + "self_attn.kv_a_proj_with_mqa.weight": (c["kv_lora_rank"] + c["qk_rope_head_dim"], h),
            p + "self_attn.kv_a_layernorm.weight": (c["kv_lora_rank"],),
            p + "self_attn.kv_b_proj.weight": (heads * (c["qk_nope_head_dim"] + c["v_head_dim"]), c["kv_lora_rank"]),
            p + "self_attn.o_proj.weight": (h, heads * c["v_head_dim"]),
        }
        if i < c["first_k_dense_replace"]:
            inter = c["intermediate_size"]
            out |= {p + "mlp.gate_proj.weight": (inter, h), p + "mlp.up_proj.weight": (inter, h),
                    p + "mlp.down_proj.weight": (h, inter)}
            continue
        e, inter = c["n_routed_experts"], c["moe_intermediate_size"]
        shared = inter * c["n_shared_experts"]
        out |= {p + "mlp.gate.weight": (e, h), p + "mlp.gate.e_score_correction_bias": (e,),
                p + "mlp.shared_experts.gate_proj.weight": (shared, h),
                p + "mlp.shared_experts.up_proj.weight": (shared, h),
                p + "mlp.shared_experts.down_proj.weight": (h, shared)}
        for j in range(e):
            out |= {p + f"mlp.experts.{j}.gate_proj.weight": (inter, h),
                    p + f"mlp.experts.{j}.up_proj.weight": (inter, h),
                    p + f"mlp.experts.{j}.down_proj.weight": (h, inter)}
    return out


def test_the_checkpoint_is_small_enough_to_commit():
    total = sum(p.stat().st_size for p in CHECKPOINT.iterdir())
    assert total <= MAX_BYTES, f"{total / 1e6:.1f} MB"


def test_config_declares_a_deepseek_v3_model_that_uses_every_v3_feature(config):
    assert config["model_type"] == "deepseek_v3"
    assert config["architectures"] == ["DeepseekV3ForCausalLM"]
    assert config["q_lora_rank"] and config["kv_lora_rank"]
    assert 0 < config["first_k_dense_replace"] < config["num_hidden_layers"]
    assert config["n_shared_experts"] >= 1 and config["n_routed_experts"] > config["num_experts_per_tok"] > 1
    assert config["n_group"] > config["topk_group"] >= 1
    assert (config["scoring_func"], config["topk_method"]) == ("sigmoid", "noaux_tc")
    assert config["rope_scaling"]["type"] == "yarn"
    assert config["routed_scaling_factor"] != 1.0


def test_tensors_have_deepseeks_names_and_shapes(config, tensors):
    expected = expected_shapes(config)
    assert set(tensors) == set(expected)
    assert {name: shape for name, (shape, _) in tensors.items()} == expected
    assert {dtype for _, dtype in tensors.values()} <= {"F32", "BF16"}
    assert all(dtype == "F32" for name, (_, dtype) in tensors.items() if name.endswith("e_score_correction_bias"))


def test_the_routing_bias_was_trained_away_from_zero():
    with safe_open(str(CHECKPOINT / "model.safetensors"), framework="numpy") as f:
        biases = [f.get_tensor(n) for n in f.keys() if n.endswith("e_score_correction_bias")]  # noqa: SIM118
    assert biases and all(abs(b).max() > 1e-3 for b in biases)


def test_the_tokenizer_has_deepseeks_special_tokens_and_template(config):
    tok = Tokenizer.from_dir(CHECKPOINT)
    assert (tok.bos_token_id, tok.eos_token_id) == (config["bos_token_id"], config["eos_token_id"])
    for token in (BOS, EOS, PAD, USER, ASSISTANT, THINK_OPEN, THINK_CLOSE):
        assert tok.token_to_id(token) is not None, token
    assert tok.vocab_size <= config["vocab_size"]
    prompt = tok.apply_chat_template([{"role": "user", "content": "Hello"}])
    assert prompt == f"{BOS}{USER}Hello{ASSISTANT}"


def corpus_words() -> set[str]:
    words: set[str] = set()
    for text in corpus.texts(corpus.conversations(5000, seed=0)):
        words |= set(re.findall(r"[a-z]+", text.lower()))
    return words


@pytest.mark.slow
@pytest.mark.parametrize("prompt", ["Hello", "What is Levee?"])
def test_transformers_loads_it_and_greedy_chat_replies_are_words(prompt):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    torch.set_num_threads(2)
    model, info = transformers.DeepseekV3ForCausalLM.from_pretrained(
        str(CHECKPOINT), output_loading_info=True, dtype=torch.float32)
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    tok = Tokenizer.from_dir(CHECKPOINT)
    ids = torch.tensor([tok.encode_chat([{"role": "user", "content": prompt}])])
    out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=40, do_sample=False,
                         eos_token_id=tok.eos_token_id, pad_token_id=tok.eos_token_id)
    new = out[0, ids.shape[1]:].tolist()
    assert new[-1] == tok.eos_token_id, "the reply should end on its own"
    detok = IncrementalDetokenizer(tok)
    reply = "".join(detok.push(i) for i in new) + detok.flush()
    assert reply == tok.decode(new)
    words = re.findall(r"[a-z]+", reply.lower())
    assert len(words) >= 3 and reply.isprintable(), reply
    known = corpus_words()
    assert sum(w in known for w in words) / len(words) >= 0.9, reply


@pytest.mark.slow
def test_the_training_script_runs_end_to_end_and_writes_deepseeks_layout(tmp_path):
    pytest.importorskip("transformers")
    from inference.demo import train

    out = tmp_path / "ckpt"
    train.main(["--out", str(out), "--steps", "2", "--batch-size", "2", "--seq-len", "32",
                "--conversations", "300", "--threads", "1"])
    config = json.loads((out / "config.json").read_text(encoding="utf-8"))
    assert config == train.DEMO_CONFIG
    with safe_open(str(out / "model.safetensors"), framework="numpy") as f:
        shapes = {name: tuple(f.get_slice(name).get_shape()) for name in f.keys()}  # noqa: SIM118
    assert shapes == expected_shapes(config)
    assert Tokenizer.from_dir(out).apply_chat_template([{"role": "user", "content": "Hi"}]) == f"{BOS}{USER}Hi{ASSISTANT}"
