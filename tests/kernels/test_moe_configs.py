"""The tile-config table: tuned files win by nearest token count, defaults otherwise."""

import json

import pytest

from kernels import configs


@pytest.fixture
def config_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("LEVEE_MOE_CONFIG_DIR", str(tmp_path))
    configs._load_table.cache_clear()
    yield tmp_path
    configs._load_table.cache_clear()


def entry(block_m):
    return {"BLOCK_M": block_m, "BLOCK_N": 64, "BLOCK_K": 64, "GROUP_M": 1, "num_warps": 4, "num_stages": 3}


def test_a_tuned_file_is_used_by_nearest_token_count(config_dir):
    name = configs.config_file_name(64, 1408, "NVIDIA H200")
    assert name == "E=64,N=1408,device_name=NVIDIA_H200.json"
    (config_dir / name).write_text(json.dumps({"1": entry(16), "64": entry(32), "4096": entry(128)}))
    assert configs.get_config(2, 64, 1408, 6, "NVIDIA H200")["BLOCK_M"] == 16
    assert configs.get_config(100, 64, 1408, 6, "NVIDIA H200")["BLOCK_M"] == 32
    assert configs.get_config(3000, 64, 1408, 6, "NVIDIA H200")["BLOCK_M"] == 128


def test_other_shapes_and_devices_fall_back_to_defaults(config_dir):
    (config_dir / configs.config_file_name(64, 1408, "NVIDIA H200")).write_text(json.dumps({"1": entry(64)}))
    assert configs.get_config(1, 64, 1408, 6, "NVIDIA H100") == configs.default_config(1, 64, 6)
    assert configs.get_config(1, 256, 1024, 8, "NVIDIA H200") == configs.default_config(1, 256, 8)


def test_a_file_missing_a_key_is_refused(config_dir):
    bad = entry(16)
    del bad["num_stages"]
    (config_dir / configs.config_file_name(8, 64, "X")).write_text(json.dumps({"1": bad}))
    with pytest.raises(ValueError, match=r"lacks \['num_stages'\]"):
        configs.get_config(1, 8, 64, 2, "X")


@pytest.mark.parametrize("tokens", [1, 8, 64, 512, 4096, 65536])
@pytest.mark.parametrize(("experts", "top_k"), [(64, 6), (256, 8), (8, 2)])
def test_defaults_keep_every_tile_at_least_16(tokens, experts, top_k):
    cfg = configs.default_config(tokens, experts, top_k)
    assert all(cfg[key] >= 16 for key in ("BLOCK_M", "BLOCK_N", "BLOCK_K"))


def test_gemm2_overrides_all_but_block_m():
    cfg = {**entry(32), "gemm2": {"BLOCK_M": 128, "BLOCK_N": 128, "num_warps": 8}}
    first, second = configs.gemm_configs(cfg)
    assert first["BLOCK_N"] == 64 and second["BLOCK_N"] == 128 and second["num_warps"] == 8
    assert second["BLOCK_M"] == 32


def test_fp32_tiles_are_shrunk_to_fit_shared_memory():
    big = {"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 64, "GROUP_M": 8, "num_warps": 8, "num_stages": 3}
    limit = 232448  # an H200's per-block limit, as Triton reported it
    assert configs.fit_shared_memory(big, 2, b_tiles=2, limit=limit) == big  # bf16: 144 KiB, fits
    assert configs.shared_memory_needed(big, 4, b_tiles=2) == 294912  # fp32: what the H200 refused
    fitted = configs.fit_shared_memory(big, 4, b_tiles=2, limit=limit)
    assert configs.shared_memory_needed(fitted, 4, b_tiles=2) <= limit
    assert fitted["BLOCK_M"] == 128 and fitted["BLOCK_K"] >= 16


def test_a_tuned_config_that_fits_is_left_alone():
    tuned = {"BLOCK_M": 64, "BLOCK_N": 256, "BLOCK_K": 64, "GROUP_M": 8, "num_warps": 8, "num_stages": 3}
    assert configs.shared_memory_needed(tuned, 2, b_tiles=2) == 221184
    assert configs.fit_shared_memory(tuned, 2, b_tiles=2, limit=232448) == tuned


def test_the_committed_h200_tables_are_complete():
    for experts, inter in ((64, 1408), (256, 2048)):
        table = configs._load_table(experts, inter, "NVIDIA H200")
        assert table is not None and set(table) == {1, 8, 64, 512, 4096}
