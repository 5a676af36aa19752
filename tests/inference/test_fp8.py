"""FP8 block-quantized checkpoints, loaded as published, against transformers on the dequantized weights.

The FP8 checkpoint is made by the project (inference.quantize) from a tiny random V3 whose every
quantized linear leaves partial 128-blocks. The oracle is transformers running the weights our
dequantizer produces from it (fp32), so the comparison checks the loader, the block scales and the
W8A16 compute, not the quantization error.
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from inference import load_model
from inference.engine import Engine, Request, SamplingParams
from inference.loader import CheckpointError
from inference.quantize import dequantize_checkpoint, quantize_checkpoint
from kernels.fp8 import CACHE, FP8_DTYPE
from tests.inference.checkpoints import DEVICE


@pytest.fixture(scope="module")
def fp8(checkpoint, tmp_path_factory):
    """(FP8 dir, dequantized dir with quantization_config kept, transformers on the dequantized weights)."""
    from transformers import DeepseekV3ForCausalLM

    src, _ = checkpoint("v3_fp8_edges")
    root = tmp_path_factory.mktemp("fp8")
    quantize_checkpoint(src, root / "fp8")
    dequantize_checkpoint(root / "fp8", root / "deq", dtype=torch.float32)
    plain = root / "deq_plain"  # transformers would try its own FP8 path on a quantization_config
    shutil.copytree(root / "deq", plain)
    cfg = json.loads((plain / "config.json").read_text())
    cfg.pop("quantization_config")
    (plain / "config.json").write_text(json.dumps(cfg))
    ref = DeepseekV3ForCausalLM.from_pretrained(plain, dtype=torch.float32).eval().to(DEVICE)
    ref.generation_config.eos_token_id = None
    ref.generation_config.pad_token_id = 0
    return root / "fp8", root / "deq", ref


def prompt(length: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(2, 97, (1, length), generator=g).to(DEVICE)


def test_the_checkpoint_is_fp8_as_published_with_partial_blocks(fp8):
    path, _, _ = fp8
    t = load_file(path / "model.safetensors")
    assert t["model.layers.1.mlp.experts.3.down_proj.weight"].dtype == FP8_DTYPE
    assert t["model.layers.1.mlp.experts.3.down_proj.weight_scale_inv"].shape == (2, 2)  # [160, 136]
    assert t["model.layers.0.self_attn.kv_b_proj.weight_scale_inv"].shape == (1, 2)  # [80, 144]
    assert t["model.embed_tokens.weight"].dtype == torch.float32
    assert "model.layers.1.mlp.gate.weight_scale_inv" not in t
    assert json.loads((path / "config.json").read_text())["quantization_config"]["weight_block_size"] == [128, 128]


def test_weights_stay_fp8_in_memory_and_the_rest_in_the_compute_dtype(fp8):
    path, _, _ = fp8
    model = load_model(path, dtype=torch.float32, device=DEVICE)
    attn, moe = model.layers[1].self_attn, model.layers[1].mlp
    assert attn.q_b_proj.weight.dtype == FP8_DTYPE and attn.q_b_proj.weight_scale_inv.shape == (1, 2)
    assert moe.w13.dtype == FP8_DTYPE and moe.w13_scale_inv.shape == (8, 4, 2)  # gate grid then up grid
    assert model.layers[0].mlp.down_proj.weight.dtype == FP8_DTYPE
    assert moe.gate_weight.dtype == torch.float32 and model.lm_head.weight.dtype == torch.float32


@pytest.mark.parametrize("cache_mb", ["0", "1024"])
def test_prefill_logits_match_transformers_on_the_dequantized_weights(fp8, monkeypatch, cache_mb):
    path, _, ref = fp8
    monkeypatch.setenv("LEVEE_FP8_CACHE_MB", cache_mb)
    CACHE.clear()
    ours = load_model(path, dtype=torch.float32, device=DEVICE)
    for length in (1, 7, 40, 97):
        ids = prompt(length, seed=length)
        with torch.no_grad():
            expected = ref(ids).logits
        got = ours(ids)
        assert (got - expected).abs().max().item() <= 1e-4, length
    assert (CACHE.bytes > 0) == (cache_mb != "0")


def test_decode_through_the_engine_matches_transformers_generate(fp8):
    path, _, ref = fp8
    engine = Engine(load_model(path, dtype=torch.float32, device=DEVICE), kv_budget_bytes=8 << 20).start()
    try:
        for length, seed in ((5, 1), (33, 2)):
            ids = prompt(length, seed)
            with torch.no_grad():
                expected = ref.generate(ids, max_new_tokens=24, do_sample=False)[0, length:].tolist()
            got = engine.submit(Request(ids[0].tolist(), SamplingParams(max_tokens=24, temperature=0.0,
                                                                        ignore_eos=True))).result(timeout=120)
            assert got.token_ids == expected
            assert len(set(expected)) > 3
    finally:
        engine.stop()


def test_a_bf16_conversion_that_keeps_quantization_config_loads(fp8):
    _, deq, ref = fp8
    assert "quantization_config" in json.loads((deq / "config.json").read_text())
    ours = load_model(deq, dtype=torch.float32, device=DEVICE)
    assert ours.layers[1].mlp.w13.dtype == torch.float32
    ids = prompt(30, seed=9)
    with torch.no_grad():
        assert (ours(ids) - ref(ids).logits).abs().max().item() <= 1e-4


@pytest.fixture
def writable(fp8, tmp_path):
    dst = tmp_path / "ckpt"
    shutil.copytree(fp8[0], dst)
    return dst


def edit(path, fn):
    t = load_file(path / "model.safetensors")
    fn(t)
    save_file(t, path / "model.safetensors", metadata={"format": "pt"})


def test_an_fp8_weight_without_its_scale_is_named(writable):
    edit(writable, lambda t: t.pop("model.layers.0.self_attn.o_proj.weight_scale_inv"))
    with pytest.raises(CheckpointError, match=r"model\.layers\.0\.self_attn\.o_proj\.weight is float8_e4m3fn "
                                              r"but model\.layers\.0\.self_attn\.o_proj\.weight_scale_inv is missing"):
        load_model(writable, dtype=torch.float32, device=DEVICE)


def test_a_misshapen_scale_is_named(writable):
    edit(writable, lambda t: t.update({"model.layers.1.mlp.experts.2.up_proj.weight_scale_inv": torch.ones(1, 1)}))
    with pytest.raises(CheckpointError, match=r"experts\.2\.up_proj\.weight_scale_inv has shape \(1, 1\), "
                                              r"expected \(2, 2\)"):
        load_model(writable, dtype=torch.float32, device=DEVICE)


def test_a_scale_beside_an_unquantized_weight_is_named(writable):
    def unquantize(t):
        t["model.layers.0.self_attn.o_proj.weight"] = t["model.layers.0.self_attn.o_proj.weight"].float()

    edit(writable, unquantize)
    with pytest.raises(CheckpointError, match=r"o_proj\.weight has dtype torch\.float32 but a .*weight_scale_inv"):
        load_model(writable, dtype=torch.float32, device=DEVICE)


def test_a_scale_for_a_tensor_that_is_never_quantized_is_unexpected(writable):
    edit(writable, lambda t: t.update({"model.embed_tokens.weight_scale_inv": torch.ones(1, 2)}))
    with pytest.raises(CheckpointError, match=r"unexpected.*model\.embed_tokens\.weight_scale_inv"):
        load_model(writable, dtype=torch.float32, device=DEVICE)


def test_experts_half_quantized_are_named(writable):
    def mix(t):
        for p in ("gate_proj", "up_proj", "down_proj"):
            name = f"model.layers.2.mlp.experts.5.{p}.weight"
            t[name] = t[name].float()
            t.pop(name + "_scale_inv")

    edit(writable, mix)
    with pytest.raises(CheckpointError, match=r"layer 2 mixes FP8 and unquantized experts.*experts\.5"):
        load_model(writable, dtype=torch.float32, device=DEVICE)
