from __future__ import annotations

import pytest
import torch

from tests.inference import checkpoints
from tests.inference.checkpoints import DEVICE


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory):
    """checkpoint(case, **build_kwargs) → (path, transformers model); built once per session."""
    made: dict = {}

    def get(case: str, **kwargs):
        key = (case, tuple(sorted(kwargs.items())))
        if key not in made:
            path = tmp_path_factory.mktemp(case)
            made[key] = (path, checkpoints.build(case, path, **kwargs).to(DEVICE))
        return made[key]

    # One thread: on a shared 2-core box OpenMP barriers across two busy cores cost ~10x more than
    # they save on these tiny matrices.
    torch.set_num_threads(1)
    return get
