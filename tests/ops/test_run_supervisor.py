"""`make run` (ops/run.py) gives its processes one prometheus multiprocess folder, emptied at start."""
from ops import run


def test_the_children_share_a_metrics_folder_under_the_data_dir(monkeypatch):
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    assert run._env()["PROMETHEUS_MULTIPROC_DIR"] == str(run.VAR / "prometheus")


def test_an_operator_choice_of_folder_is_kept(monkeypatch, tmp_path):
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    assert run._env()["PROMETHEUS_MULTIPROC_DIR"] == str(tmp_path)


def test_resetting_removes_only_the_value_files(tmp_path):
    (tmp_path / "counter_123.db").write_bytes(b"old")
    (tmp_path / "histogram_9.db").write_bytes(b"old")
    (tmp_path / "README").write_text("not ours")
    run.reset_metrics_dir(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["README"]
    run.reset_metrics_dir(tmp_path / "new")
    assert (tmp_path / "new").is_dir()
