import os
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads OpenMP: see prcl.cli

import pytest
import torch

torch.set_num_threads(2)

SHARED = Path(__file__).resolve().parents[2] / "shared"


@pytest.fixture
def shared_dir() -> Path:
    """The team's reference data (``../shared``); tests that need it skip when it is absent."""
    if not SHARED.is_dir():
        pytest.skip("../shared (reference data) is not present in this checkout")
    return SHARED
