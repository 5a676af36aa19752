"""Stopping what a benchmark or a test started: a process started with `start_new_session=True`
leads its own process group, so a stop reaches its children too (gunicorn's workers, Celery's pool)."""
from __future__ import annotations

import os
import signal
import subprocess


def stop_group(proc: subprocess.Popen, *, timeout: float = 20) -> None:
    """SIGTERM to `proc`'s group, then SIGKILL if it has not exited within `timeout` seconds."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            return
        proc.wait()
