"""The tuner's logic, run through the interpreter with a stand-in timer (the real one needs a GPU)."""

import json
import time

import pytest
import torch

from kernels import configs, tune


def fake_bench(fn):
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) * 1e3


def test_it_returns_a_valid_config_per_token_count(interpreter, monkeypatch):
    # A smaller candidate list keeps the interpreter quick; the logic is the same.
    monkeypatch.setattr(tune, "CANDIDATES", {16: [(64, 128, 4, 4, 1), (32, 32, 4, 2, 1)],
                                             32: [(64, 128, 4, 4, 8), (32, 64, 4, 3, 8)]})
    table = tune.tune_shape(40, 24, 4, 2, [1, 33], deadline=time.monotonic() + 600, dtype=torch.float32,
                            device="cpu", bench=fake_bench, log=lambda msg: None)
    assert set(table) == {1, 33}
    for cfg in table.values():
        assert all(key in cfg for key in configs.CONFIG_KEYS)
        first, second = configs.gemm_configs(cfg)
        assert second["BLOCK_M"] == first["BLOCK_M"]
    assert table[33]["BLOCK_M"] in (16, 32)


def test_a_spent_budget_keeps_the_defaults(interpreter):
    table = tune.tune_shape(40, 24, 4, 2, [1], deadline=time.monotonic() - 1, dtype=torch.float32,
                            device="cpu", bench=fake_bench, log=lambda msg: None)
    assert table == {}


def test_tables_merge_into_the_file_the_launcher_reads(tmp_path, monkeypatch):
    cfg = {"BLOCK_M": 16, "BLOCK_N": 64, "BLOCK_K": 128, "GROUP_M": 1, "num_warps": 4, "num_stages": 4}
    tune.write_table({1: cfg}, 64, 1408, "NVIDIA H200", tmp_path)
    path = tune.write_table({64: {**cfg, "BLOCK_M": 32}}, 64, 1408, "NVIDIA H200", tmp_path)
    assert path.name == "E=64,N=1408,device_name=NVIDIA_H200.json"
    assert list(json.loads(path.read_text())) == ["1", "64"]

    bundle = tmp_path / "bundle.json"
    bundle.write_text(json.dumps({path.name: json.loads(path.read_text())}))
    out = tmp_path / "out"
    tune.unbundle(bundle, out)
    monkeypatch.setenv("LEVEE_MOE_CONFIG_DIR", str(out))
    configs._load_table.cache_clear()
    try:
        assert configs.get_config(50, 64, 1408, 6, "NVIDIA H200")["BLOCK_M"] == 32
    finally:
        configs._load_table.cache_clear()


def test_a_bundle_with_a_broken_config_is_refused(tmp_path):
    bundle = tmp_path / "bundle.json"
    bundle.write_text(json.dumps({"E=1,N=2,device_name=X.json": {"1": {"BLOCK_M": 16}}}))
    with pytest.raises(SystemExit, match="without"):
        tune.unbundle(bundle, tmp_path / "out")
