import os
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads OpenMP: see prcl.cli

import pytest
import torch

torch.set_num_threads(2)

REFERENCE_DATA = "PRCL_REFERENCE_DATA"


@pytest.fixture
def shared_dir() -> Path:
    """Reference data that the repository does not hold (real VOC images, the authors'
    split lists and their checkpoint's key list), in the folder that ``$PRCL_REFERENCE_DATA``
    names; tests that need it skip without it."""
    folder = Path(os.environ.get(REFERENCE_DATA, "")).expanduser()
    if not os.environ.get(REFERENCE_DATA) or not folder.is_dir():
        pytest.skip(f"reference data not found: set {REFERENCE_DATA} to its folder")
    return folder
