"""Checkpoint files: written atomically, read with clear errors.

A prcl checkpoint is a dict with ``format``, ``config`` (plain dicts), ``num_classes``,
``class_names``, ``student`` and ``teacher`` state dicts, and, for checkpoints written during
training, the optimisers, counters and RNG states needed to resume exactly (``training``).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch

from prcl.config import Config, apply_overrides, config_from_dict, config_to_dict
from prcl.errors import CheckpointError
from prcl.files import atomic_write, read_pth
from prcl.models import DeepLabV3Plus, model_from_config

FORMAT = "prcl-checkpoint-1"


def atomic_save(obj: Any, path: str | Path) -> Path:
    """``torch.save`` through ``atomic_write``: the old file or the new one, never half."""
    return atomic_write(path, lambda f: torch.save(obj, f))


def make_checkpoint(
    cfg: Config,
    student: DeepLabV3Plus,
    teacher: DeepLabV3Plus,
    class_names: list[str] | None = None,
    training: dict[str, Any] | None = None,
) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "config": config_to_dict(cfg),
        "num_classes": student.num_classes,
        "class_names": class_names,
        "student": student.state_dict(),
        "teacher": teacher.state_dict(),
        "training": training,
    }


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a prcl checkpoint as data (``read_pth``); a missing, unreadable or foreign file
    raises CheckpointError."""
    path = Path(path)
    ckpt = read_pth(path)
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        hint = ""
        if isinstance(ckpt, dict) and {"ema", "uncer_head"} <= set(ckpt):
            hint = " It looks like the authors' checkpoint: run `prcl convert-official` first."
        raise CheckpointError(f"{path} is not a prcl checkpoint.{hint}")
    return ckpt


def checkpoint_step(path: str | Path) -> int:
    """The training step a checkpoint holds (0 for weights only), read without loading its
    tensors (they are memory-mapped)."""
    ckpt = read_pth(path, mmap=True)
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a prcl checkpoint")
    return (ckpt.get("training") or {}).get("step", 0)


def checkpoint_config(ckpt: dict[str, Any], overrides: list[str] = ()) -> Config:
    """The run's config stored in a checkpoint, with ``a.b=value`` overrides on top."""
    raw = apply_overrides(copy.deepcopy(ckpt["config"]), overrides)
    return config_from_dict(raw, source="checkpoint config")


def model_from_checkpoint(
    ckpt: dict[str, Any], which: str = "teacher"
) -> tuple[DeepLabV3Plus, Config]:
    """The network stored under ``which`` (teacher | student) and the run's config."""
    cfg = checkpoint_config(ckpt)
    model = model_from_config(cfg.model, ckpt["num_classes"], pretrained=False)
    model.load_state_dict(ckpt[which])
    return model, cfg


def checkpoint_class_names(ckpt: dict[str, Any]) -> list[str]:
    """The class names a checkpoint was trained with, or "0", "1", ... where it has none."""
    return ckpt.get("class_names") or [str(c) for c in range(ckpt["num_classes"])]
