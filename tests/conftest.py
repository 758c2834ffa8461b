import os
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads OpenMP: see prcl.cli

import pytest
import torch

torch.set_num_threads(2)

REFERENCE_DATA = "PRCL_REFERENCE_DATA"
BESIDE_THE_CHECKOUT = Path(__file__).resolve().parents[2] / "shared"
"""Where the team keeps the reference data when $PRCL_REFERENCE_DATA is not set."""


@pytest.fixture
def shared_dir() -> Path:
    """Reference data that the repository does not hold (real VOC images, the authors'
    split lists and their checkpoint's key list): the folder ``$PRCL_REFERENCE_DATA`` names,
    else ``shared/`` beside the checkout; tests that need it skip without it."""
    folder = Path(os.environ.get(REFERENCE_DATA) or BESIDE_THE_CHECKOUT).expanduser()
    if not folder.is_dir():
        pytest.skip(f"reference data not found: set {REFERENCE_DATA} to its folder")
    return folder
