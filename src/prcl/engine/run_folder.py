"""The run folder's rules: one live run per folder, and a new run never touches an old run's
files unless asked to start over.

A training process holds ``<run_dir>/.lock`` (its pid and host) while it runs. A lock whose
process is gone (killed with ``kill -9``, a crashed node) is stale and is taken over; a lock
held by a live process refuses the second run. While it holds the folder, the run removes the
temporary files that an interrupted checkpoint save may have left.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from prcl.errors import PrclError
from prcl.processes import process_alive

RUN_FILES = ("last.pth", "best.pth", "metrics.jsonl", "config.yaml", "tensorboard")
"""What a run writes into its folder."""
LOCK = ".lock"


class RunFolderError(PrclError):
    """The run folder is in use, or holds another run that must not be overwritten."""


@contextmanager
def hold_run_folder(run_dir: Path, fresh: bool, overwrite: bool = False) -> Iterator[None]:
    """Hold ``run_dir`` for this process while the body runs.

    ``fresh`` (a new run, not a resumed one): when the folder already holds a run's files,
    refuse, naming ``--resume`` and ``--overwrite``; with ``overwrite`` remove them first.
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    lock = _acquire(run_dir / LOCK)
    try:
        for stale in run_dir.glob(".*.pth.*.tmp"):  # from a save that was killed
            stale.unlink(missing_ok=True)
        existing = [run_dir / name for name in RUN_FILES if (run_dir / name).exists()]
        if fresh and existing:
            if not overwrite:
                raise RunFolderError(
                    f"{run_dir} already holds a run ({describe_run(run_dir)}); continue it with "
                    f"`prcl train --resume {run_dir / 'last.pth'}`, start it over with "
                    "`--overwrite` (its files are deleted), or set train.out_dir to a new folder"
                )
            for path in existing:
                shutil.rmtree(path) if path.is_dir() else path.unlink()
        yield
    finally:
        lock.unlink(missing_ok=True)


def describe_run(run_dir: Path) -> str:
    """What an existing run folder holds, e.g. 'last.pth, metrics.jsonl; step 60, best mIoU
    26.6', from its file names and the last evaluation in metrics.jsonl."""
    names = [name for name in RUN_FILES if (run_dir / name).exists()]
    text = ", ".join(names)
    last = last_evaluation(run_dir)
    if last is not None:
        text += f"; step {last['step']}, best mIoU {last['best_miou'] * 100:.1f}"
    return text


def last_evaluation(run_dir: Path) -> dict[str, Any] | None:
    """The last ``eval`` record of run_dir's metrics.jsonl (step, miou, best_miou, iou per
    class), or None when there is none; unreadable lines (a write cut short) are skipped."""
    metrics = run_dir / "metrics.jsonl"
    if not metrics.is_file():
        return None
    last = None
    for line in metrics.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and "eval" in record:
            last = record["eval"]
    return last


def _acquire(lock: Path) -> Path:
    me = f"{os.getpid()} {socket.gethostname()}"
    for _ in range(3):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            holder = _holder(lock)
            if holder is None and _just_made(lock):
                holder = (0, "a process that is just starting")
            if holder is not None and _alive(*holder):
                pid, host = holder
                raise RunFolderError(
                    f"{lock.parent} is in use by another run (pid {pid} on {host}); wait for "
                    "it to end or set train.out_dir to another folder (if no run uses it, "
                    f"delete {lock})"
                ) from None
            lock.unlink(missing_ok=True)  # stale: the process that held it is gone
            continue
        with os.fdopen(fd, "w") as f:
            f.write(me)
        return lock
    raise RunFolderError(f"could not take {lock}: other processes keep creating it")


def _holder(lock: Path) -> tuple[int, str] | None:
    """(pid, host) written in a lock file, or None when it cannot be read."""
    try:
        pid, host = lock.read_text().split()
        return int(pid), host
    except (OSError, ValueError):
        return None


def _just_made(lock: Path, seconds: float = 10.0) -> bool:
    """Whether the lock file is so new that its writer may not have written it yet."""
    try:
        return time.time() - lock.stat().st_mtime < seconds
    except OSError:
        return False


def _alive(pid: int, host: str) -> bool:
    """Whether the process may still run: on another host we cannot tell, so yes."""
    return host != socket.gethostname() or process_alive(pid)
