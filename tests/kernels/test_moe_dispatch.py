"""Which backend fused_moe picks, and that the package imports without triton."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from kernels import backend_for, fused_moe, moe_reference
from kernels.testing import assert_moe_close, random_problem

REPO = Path(__file__).resolve().parents[2]


def test_cpu_tensors_take_the_torch_path(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    assert backend_for(torch.zeros(1)) == "torch"


def test_the_interpreter_flag_sends_cpu_tensors_to_triton(monkeypatch):
    pytest.importorskip("triton")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert backend_for(torch.zeros(1)) == "triton"


def test_cuda_tensors_take_triton(cuda):
    assert backend_for(torch.zeros(1, device=cuda)) == "triton"


def test_the_default_cpu_call_is_right(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    problem = random_problem(9, 48, 32, 8, 2)
    assert_moe_close(fused_moe(*problem.args()), moe_reference(*problem.args()), "float32")


def test_it_imports_and_runs_where_triton_is_missing():
    """A CPU-only worker without triton: `import triton` fails, fused_moe still works (torch path)."""
    script = (
        "import sys; sys.modules['triton'] = None\n"  # makes `import triton` raise ImportError
        "import torch, kernels\n"
        "from kernels.testing import random_problem\n"
        "p = random_problem(5, 32, 16, 4, 2)\n"
        "out = kernels.fused_moe(*p.args())\n"
        "ref = kernels.moe_reference(*p.args())\n"
        "assert torch.allclose(out, ref, atol=1e-5), 'wrong answer'\n"
        "assert not kernels.triton_available()\n"
        "assert kernels.backend_for(p.hidden) == 'torch'\n"
        "print('ok')\n"
    )
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(REPO)}  # even asked for, it falls back
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_importing_kernels_does_not_import_triton():
    script = "import sys, kernels; print('triton' in sys.modules)"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"
