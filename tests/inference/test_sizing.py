"""ops/bench/sizing.py counts what inference/model.py holds, whole and per tensor-parallel rank."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import torch

from inference.linear import TensorParallel
from inference.model import ModelArgs, Transformer

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "inference" / "demo" / "checkpoint"


def sizing():
    spec = importlib.util.spec_from_file_location("sizing", ROOT / "ops" / "bench" / "sizing.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def count(cfg: dict, tp: TensorParallel) -> int:
    with torch.device("meta"):
        model = Transformer(ModelArgs.from_config(cfg), tp)
    return sum(p.numel() for p in model.parameters())


def test_parameter_counts_match_the_model_whole_and_per_rank():
    cfg = json.loads((DEMO / "config.json").read_text())
    s = sizing()
    assert s.size(cfg, 1)["total_params"] == count(cfg, TensorParallel())
    assert s.size(cfg, 2)["rank_params"] == count(cfg, TensorParallel(0, 2))
    assert s.size(cfg, 2)["rank_params"] < 0.7 * count(cfg, TensorParallel())


def test_published_shapes_give_the_published_sizes():
    s = sizing()
    assert abs(s.size(s.PRESETS["v2-lite"], 1)["total_params"] / 1e9 - 15.7) < 0.1
    v3 = dict(s.PRESETS["v3"], num_nextn_predict_layers=0)
    assert abs(s.size(v3, 8)["total_params"] / 1e9 - 671) < 1.5
    assert s.size(v3, 8)["latent_bytes_per_token"] == 61 * 576 * 2  # layers x (512 + 64) x bf16
    fp8 = s.size(v3, 8)["rank_weight_bytes"]
    assert fp8 < 0.52 * s.size(v3, 8, fp8=False)["rank_weight_bytes"]
