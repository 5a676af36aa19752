"""Fixtures for the kernel tests.

The Triton interpreter is switched on per test (monkeypatch), not for the whole session: kernels
decides interpret-or-compile at call time, so these tests can share one pytest process with suites
that import torch or kernels first, and those suites' CPU calls keep the fast torch path.
"""

import pytest


@pytest.fixture
def interpreter(monkeypatch):
    """Run Triton kernels on CPU tensors through the interpreter for this test."""
    pytest.importorskip("triton")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    yield


@pytest.fixture
def cuda():
    torch = pytest.importorskip("torch")
    pytest.importorskip("triton")
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    return torch.device("cuda")
