"""The package's edges: `python -m inference generate`, and no torch for the web tier."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import torch

from inference import load_model

ROOT = Path(__file__).resolve().parents[2]


def test_importing_the_package_does_not_import_torch():
    code = "import sys, inference; assert 'torch' not in sys.modules, 'inference pulled in torch'"
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)


def test_generate_prints_the_greedy_continuation_of_prompt_ids(checkpoint):
    path, _ = checkpoint("v2_lite")
    prompt = [5, 9, 13, 17, 21]
    model = load_model(path, dtype=torch.float32, device="cpu")
    seq = torch.tensor([prompt])
    for _ in range(6):
        seq = torch.cat([seq, model(seq)[:, -1].argmax(-1, keepdim=True)], dim=1)
    expected = seq[0, len(prompt):].tolist()
    out = subprocess.run(
        [sys.executable, "-m", "inference", "generate", "--checkpoint", str(path), "--device", "cpu",
         "--prompt-ids", ",".join(map(str, prompt)), "--max-tokens", "6", "--temperature", "0", "--ignore-eos"],
        cwd=ROOT, capture_output=True, text=True, check=True, timeout=120,
    )
    assert [int(t) for t in out.stdout.split()] == expected
    assert "[length]" in out.stderr and "completion 6 tokens" in out.stderr


def test_generate_without_a_checkpoint_says_so(monkeypatch):
    monkeypatch.delenv("LEVEE_CHECKPOINT", raising=False)
    out = subprocess.run([sys.executable, "-m", "inference", "generate", "--prompt-ids", "1,2"],
                         cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "LEVEE_CHECKPOINT" in out.stderr
