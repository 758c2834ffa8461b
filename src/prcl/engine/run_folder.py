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

from prcl.config import Config, config_to_dict, load_config
from prcl.engine.checkpoint import checkpoint_step
from prcl.errors import CheckpointError, ConfigError, PrclError
from prcl.processes import process_alive

RUN_FILES = ("last.pth", "best.pth", "metrics.jsonl", "config.yaml", "tensorboard")
"""What a run writes into its folder."""
CHECKPOINTS = ("last.pth", "best.pth")
"""A folder holds a run when it holds one of these: a run that never wrote a checkpoint
left nothing to continue, and a new run takes its place."""
CONFIG_HEADER = "# The config of a prcl run, written by `prcl train` (--resume reads the " \
    "checkpoint's own copy)\n"
"""The first line of a run's ``config.yaml``: a file without it is not the run's own."""
LOCK = ".lock"


class RunFolderError(PrclError):
    """The run folder is in use, holds another run that must not be overwritten, or holds
    files at a run's file names that a run did not write."""


@contextmanager
def hold_run_folder(run_dir: Path, fresh: bool, overwrite: bool = False,
                    step: int = 0) -> Iterator[None]:
    """Hold ``run_dir`` for this process while the body runs.

    Refuse a folder holding, at a run's file names, a link or a file no run wrote
    (``foreign_files``). ``fresh`` (a new run): when the folder holds a run (a checkpoint),
    refuse, naming ``--resume`` and ``--overwrite``; with ``overwrite``, or when the earlier
    run never wrote a checkpoint, remove that run's files first. Not ``fresh`` (a run resumed
    at ``step``): refuse when the folder's ``last.pth`` is later, which the run would rewind.
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    lock = _acquire(run_dir / LOCK)
    try:
        for stale in run_dir.glob(".*.pth.*.tmp"):  # from a save that was killed
            stale.unlink(missing_ok=True)
        foreign = foreign_files(run_dir)
        if foreign:
            raise RunFolderError(f"{'; '.join(foreign)}: a run writes its own files at these "
                                 "names, so move them away or set train.out_dir to another "
                                 "folder")
        if fresh:
            _clear_for_new_run(run_dir, overwrite)
        else:
            _refuse_rewinding(run_dir, step)
        yield
    finally:
        lock.unlink(missing_ok=True)


def foreign_files(run_dir: Path) -> list[str]:
    """One line for each run file name in ``run_dir`` that holds something a run did not
    write: a link, a ``config.yaml`` without ``CONFIG_HEADER`` (unless a checkpoint of an
    earlier prcl, which wrote none, is there), a ``metrics.jsonl`` that is not JSON records,
    a ``tensorboard`` that is not a folder of event files, a checkpoint name that is a
    folder."""
    lines = []
    for name in RUN_FILES:
        path = run_dir / name
        if path.is_symlink():
            lines.append(f"{path} is a link (to {os.readlink(path)}), and a run never writes "
                         "through one")
        elif path.exists() and not _written_by_a_run(path):
            lines.append(f"{path} was not written by a prcl run")
    return lines


def _written_by_a_run(path: Path) -> bool:
    if path.name in CHECKPOINTS:
        return path.is_file()
    if path.name == "tensorboard":
        return path.is_dir() and all(p.name.startswith("events.out.tfevents.")
                                     for p in path.iterdir())
    if not path.is_file():
        return False
    first = _first_line(path)
    if path.name == "config.yaml":
        earlier_prcl = any((path.parent / name).is_file() for name in CHECKPOINTS)
        return first == CONFIG_HEADER.strip() or earlier_prcl
    try:  # metrics.jsonl: empty, or JSON records
        return not first or isinstance(json.loads(first), dict)
    except json.JSONDecodeError:
        return False


def _first_line(path: Path, limit: int = 1 << 16) -> str:
    with path.open("rb") as f:
        return f.readline(limit).decode(errors="replace").strip()


def _clear_for_new_run(run_dir: Path, overwrite: bool) -> None:
    """Refuse a folder holding a run unless ``overwrite``; then remove the run's files (also
    those of a run that ended before its first checkpoint)."""
    checkpoints = [run_dir / name for name in CHECKPOINTS if (run_dir / name).is_file()]
    if checkpoints and not overwrite:
        raise RunFolderError(
            f"{run_dir} already holds a run ({describe_run(run_dir)}); continue it with "
            f"`prcl train --resume {checkpoints[0]}`, start it over with `--overwrite` (its "
            "files are deleted), or set train.out_dir to a new folder"
        )
    for path in (run_dir / name for name in RUN_FILES):
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)


def _refuse_rewinding(run_dir: Path, step: int) -> None:
    """Refuse resuming at ``step`` into a folder whose ``last.pth`` holds a later step (it
    would be overwritten, and metrics.jsonl would hold the steps between twice)."""
    last = run_dir / "last.pth"
    if not last.is_file():
        return
    try:
        saved = checkpoint_step(last)
    except CheckpointError:  # a damaged last.pth: resuming from another file recovers
        return
    if saved > step:
        raise RunFolderError(
            f"{last} holds step {saved}, later than the step {step} resumed from: resuming "
            f"would rewind the run and overwrite it. Continue with `prcl train --resume "
            f"{last}`, or continue the earlier checkpoint in a new folder with "
            "train.out_dir=NEW_FOLDER"
        )


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


def edited_config_keys(run_dir: Path, cfg: Config, overrides: list[str] = ()) -> list[str]:
    """'key: value in the file, value used' for each key where ``run_dir/config.yaml`` (edited
    by hand, say) differs from ``cfg``, the config a resumed run continues with; keys set by
    ``overrides`` and ``train.out_dir`` (the folder the run is in) are left out."""
    path = run_dir / "config.yaml"
    if path.is_symlink() or not path.is_file():  # a link is refused when the run starts
        return []
    try:
        written = flat_config(load_config(path))
    except ConfigError as exc:
        return [f"it is not a config prcl can read ({exc})"]
    used = flat_config(cfg)
    skipped = {"train.out_dir", *(o.partition("=")[0].strip() for o in overrides)}
    return [f"{key}: {written[key]!r} in the file, {used[key]!r} used"
            for key in used if key not in skipped and written[key] != used[key]]


def flat_config(cfg: Config) -> dict[str, Any]:
    """Every key of ``cfg`` as 'section.key' (nested sections joined with dots): value."""
    flat: dict[str, Any] = {}

    def walk(node: dict[str, Any], prefix: str) -> None:
        for key, value in node.items():
            if isinstance(value, dict):
                walk(value, f"{prefix}{key}.")
            else:
                flat[f"{prefix}{key}"] = value

    walk(config_to_dict(cfg), "")
    return flat
