"""Loading: config variants, sharding, and errors that name what is wrong."""

from __future__ import annotations

import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from inference import load_model
from inference.loader import CheckpointError
from tests.inference.checkpoints import DELETE, DEVICE, YARN, rewrite_config


@pytest.fixture
def ckpt(checkpoint, tmp_path):
    """A private, writable copy of a single-file V3 checkpoint."""
    src, ref = checkpoint("v3_grouped_yarn")
    dst = tmp_path / "ckpt"
    shutil.copytree(src, dst)
    return dst, ref


def edit_tensors(path, fn):
    tensors = load_file(path / "model.safetensors")
    fn(tensors)
    save_file(tensors, path / "model.safetensors", metadata={"format": "pt"})


def logits(path, ids):
    return load_model(path, dtype=torch.float32, device=DEVICE)(ids)


IDS = (torch.arange(2, 52).view(1, 50) % 97).to(DEVICE)


def test_it_reads_the_old_rope_theta_and_rope_scaling_keys(ckpt):
    path, ref = ckpt
    scaling = {k: v for k, v in YARN.items() if k not in ("rope_theta", "rope_type")} | {"type": "yarn"}
    rewrite_config(path, rope_parameters=DELETE, rope_theta=YARN["rope_theta"], rope_scaling=scaling)
    with torch.no_grad():
        expected = ref(IDS).logits
    assert (logits(path, IDS) - expected).abs().max().item() <= 1e-4


def test_it_loads_into_a_lower_precision_and_keeps_the_router_bias_in_fp32(ckpt):
    path, _ = ckpt
    model = load_model(path, dtype=torch.bfloat16, device=DEVICE)
    assert model.embed_tokens.weight.dtype == torch.bfloat16
    assert model.layers[1].mlp.w13.dtype == torch.bfloat16
    assert model.layers[1].mlp.e_score_correction_bias.dtype == torch.float32
    assert model(IDS).shape == (1, 50, 97)


def test_experts_are_stacked_gate_then_up(ckpt):
    path, _ = ckpt
    tensors = load_file(path / "model.safetensors")
    w13 = load_model(path, dtype=torch.float32, device=DEVICE).layers[2].mlp.w13
    assert w13.shape == (16, 48, 48)
    assert torch.equal(w13[5, :24].cpu(), tensors["model.layers.2.mlp.experts.5.gate_proj.weight"])
    assert torch.equal(w13[5, 24:].cpu(), tensors["model.layers.2.mlp.experts.5.up_proj.weight"])


def test_the_multi_token_prediction_layer_is_skipped(ckpt):
    path, _ = ckpt
    edit_tensors(path, lambda t: t.update({"model.layers.3.self_attn.q_a_proj.weight": torch.zeros(24, 48),
                                          "model.layers.3.eh_proj.weight": torch.zeros(48, 96)}))
    assert logits(path, IDS).shape == (1, 50, 97)


def test_a_missing_tensor_is_named(ckpt):
    path, _ = ckpt
    edit_tensors(path, lambda t: t.pop("model.layers.1.self_attn.kv_b_proj.weight"))
    with pytest.raises(CheckpointError, match=r"missing.*model\.layers\.1\.self_attn\.kv_b_proj\.weight"):
        load_model(path, device=DEVICE)


def test_a_missing_expert_is_named(ckpt):
    path, _ = ckpt
    edit_tensors(path, lambda t: t.pop("model.layers.2.mlp.experts.7.up_proj.weight"))
    with pytest.raises(CheckpointError, match=r"missing.*model\.layers\.2\.mlp\.experts\.7\.up_proj\.weight"):
        load_model(path, device=DEVICE)


def test_an_unexpected_tensor_is_named(ckpt):
    path, _ = ckpt
    edit_tensors(path, lambda t: t.update({"model.layers.0.mlp.surprise.weight": torch.zeros(3)}))
    with pytest.raises(CheckpointError, match=r"unexpected.*model\.layers\.0\.mlp\.surprise\.weight"):
        load_model(path, device=DEVICE)


def test_a_misshapen_tensor_is_named(ckpt):
    path, _ = ckpt
    edit_tensors(path, lambda t: t.update({"model.norm.weight": torch.ones(47)}))
    with pytest.raises(CheckpointError, match=r"model\.norm\.weight has shape \(47,\), expected \(48,\)"):
        load_model(path, device=DEVICE)


def test_a_block_scale_beside_an_unquantized_weight_is_named(ckpt):
    path, _ = ckpt
    edit_tensors(path, lambda t: t.update({"model.layers.0.self_attn.o_proj.weight_scale_inv": torch.ones(1, 1)}))
    with pytest.raises(CheckpointError, match=r"o_proj\.weight has dtype torch\.float32 but a .*weight_scale_inv"):
        load_model(path, device=DEVICE)


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("scoring_func", "tanh", r"scoring_func 'tanh'"),
        ("topk_method", "random", r"topk_method 'random'"),
        ("hidden_act", "gelu", r"hidden_act 'gelu'"),
        ("quantization_config", {"quant_method": "awq"}, r"quantization_config.*'awq'"),
        ("quantization_config", {"quant_method": "fp8", "weight_block_size": [64, 64]}, r"weight_block_size \[64, 64\]"),
        ("rope_parameters", {"rope_type": "longrope", "rope_theta": 1e4}, r"rope type 'longrope'"),
        ("kv_lora_rank", DELETE, r"'kv_lora_rank' is missing"),
        ("topk_group", 9, r"topk_group 9 exceeds n_group 4"),
    ],
)
def test_an_unsupported_config_value_is_named(ckpt, key, value, message):
    path, _ = ckpt
    rewrite_config(path, **{key: value})
    with pytest.raises(CheckpointError, match=message):
        load_model(path, device=DEVICE)


def test_a_shard_listed_in_the_index_but_absent_is_named(checkpoint, tmp_path):
    src, _ = checkpoint("v3_grouped_yarn", max_shard_size="40KB")
    path = tmp_path / "sharded"
    shutil.copytree(src, path)
    victim = sorted(path.glob("*.safetensors"))[1]
    victim.unlink()
    with pytest.raises(CheckpointError, match=victim.name):
        load_model(path, device=DEVICE)
