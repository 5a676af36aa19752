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


def _gone(pid: int) -> bool:
    """Exited (no process, or a zombie nobody has reaped yet)."""
    from pathlib import Path

    status = Path(f"/proc/{pid}/status")
    if not status.exists():
        return True
    return any(line.startswith("State:") and "Z" in line.split(":", 1)[1] for line in status.read_text().splitlines())


def test_sigterm_stops_every_child_as_ctrl_c_does():
    """docker stop, systemd and kill send SIGTERM: the supervisor must not die leaving its children."""
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    root = Path(run.__file__).resolve().parents[1]
    script = (f"import subprocess, sys; sys.path.insert(0, {str(root)!r}); from ops import run; "
              "children = [subprocess.Popen(['sleep', '60']) for _ in range(2)]; "
              "print(' '.join(str(c.pid) for c in children), flush=True); sys.exit(run.supervise(children))")
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    pids = [int(p) for p in proc.stdout.readline().split()]
    assert len(pids) == 2 and not any(_gone(p) for p in pids)
    time.sleep(0.3)  # inside supervise's loop
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=20) == 0
    assert all(_gone(p) for p in pids)
