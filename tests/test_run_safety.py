"""Runs never destroy work: the run folder's rules, resume's folder, interrupts."""

import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from PIL import Image
from test_train import TINY, tiny

from prcl.cli import main
from prcl.engine import train
from prcl.engine.checkpoint import load_checkpoint
from prcl.engine.run_folder import LOCK, RunFolderError, hold_run_folder


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("synthetic")


def snapshot(folder):
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file()}


def test_a_new_run_refuses_a_folder_holding_a_run(cache, tmp_path, capsys):
    run = tmp_path / "run"
    train(tiny(cache, run), progress=False)
    before = snapshot(run)
    args = ["train", "synthetic", *tiny_overrides(cache, run), "--no-progress"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{run} already holds a run" in err
    assert "--resume" in err and "--overwrite" in err and "step 4, best mIoU" in err
    assert snapshot(run) == before
    assert main([*args, "train.epochs=1", "--overwrite"]) == 0
    assert load_checkpoint(run / "last.pth")["training"]["step"] == 2
    assert not (run / LOCK).exists()


def tiny_overrides(cache, out):
    from test_train import TINY
    return [*TINY, f"data.root={cache}", f"train.out_dir={out}"]


def test_a_live_run_holds_its_folder_and_a_dead_ones_lock_is_stale(tmp_path):
    in_use = rf"in use by another run \(pid {os.getpid()}"
    with (hold_run_folder(tmp_path, fresh=True), pytest.raises(RunFolderError, match=in_use),
          hold_run_folder(tmp_path, fresh=True)):
        pass
    assert not (tmp_path / LOCK).exists()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()
    (tmp_path / LOCK).write_text(f"{dead} {socket.gethostname()}")
    (tmp_path / ".last.pth.abc123.tmp").write_bytes(b"half a checkpoint")
    with hold_run_folder(tmp_path, fresh=True):
        assert (tmp_path / LOCK).read_text().split()[0] == str(os.getpid())
        assert not (tmp_path / ".last.pth.abc123.tmp").exists()


def test_resume_continues_in_the_checkpoints_own_folder(cache, tmp_path):
    original = tmp_path / "original"
    train(tiny(cache, original, "train.epochs=1"), progress=False)
    copy = tmp_path / "copy"
    shutil.copytree(original, copy)
    before = snapshot(original)
    assert main(["train", "--resume", str(copy / "last.pth"), "train.epochs=2",
                 "--no-progress"]) == 0
    assert snapshot(original) == before
    assert (copy / "last.pth").read_bytes() != before["last.pth"]
    elsewhere = tmp_path / "elsewhere"
    assert main(["train", "--resume", str(copy / "last.pth"), "train.epochs=3",
                 f"train.out_dir={elsewhere}", "--no-progress"]) == 0
    assert load_checkpoint(elsewhere / "last.pth")["training"]["step"] == 6


@pytest.mark.parametrize(("signal_name", "code"), [("SIGTERM", 143), ("SIGINT", 130)])
def test_a_signal_saves_the_step_reached_and_ends_in_one_line(cache, tmp_path, signal_name,
                                                               code):
    run = tmp_path / "run"
    command = [sys.executable, "-m", "prcl", "train", "synthetic",
               *tiny_overrides(cache, run), "train.epochs=500", "--no-progress"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    metrics = run / "metrics.jsonl"
    deadline = time.monotonic() + 120
    while not (metrics.is_file() and '"train"' in metrics.read_text()):
        assert process.poll() is None and time.monotonic() < deadline, process.stderr.read()
        time.sleep(0.2)
    process.send_signal(getattr(signal, signal_name))
    _, err = process.communicate(timeout=120)
    assert process.returncode == code, err
    assert err.count("\n") == 1 and f"stopped by {signal_name} after step" in err
    step = int(err.split("after step ")[1].split(";")[0])
    assert load_checkpoint(run / "last.pth")["training"]["step"] == step
    assert f"--resume {run / 'last.pth'}" in err
    assert not list(run.glob(".*.tmp")) and not (run / LOCK).exists()


def test_ctrl_c_stops_the_demos_two_runs_side_by_side_cleanly_in_one_line(cache, tmp_path):
    """SIGINT to the demo's process group, as a terminal's Ctrl-C: both runs save their
    step and the demo ends with the runs' one line and the shell's code for SIGINT."""
    out = tmp_path / "demo"
    command = [sys.executable, "-m", "prcl", "demo", "--out", str(out), *TINY,
               f"data.root={cache}", "train.epochs=500"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, start_new_session=True,
                               env={**os.environ, "PYTHONUNBUFFERED": "1"})
    runs = [out / "supervised", out / "prcl"]
    deadline = time.monotonic() + 120
    while not all((r / "metrics.jsonl").is_file() and '"train"' in
                  (r / "metrics.jsonl").read_text() for r in runs):
        assert process.poll() is None and time.monotonic() < deadline, process.stderr.read()
        time.sleep(0.2)
    os.killpg(process.pid, signal.SIGINT)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 130, err
    last = err.strip().splitlines()[-1]
    assert last.startswith("prcl demo: error: stopped by SIGINT after step"), err
    assert "Traceback" not in err
    for run in runs:
        assert load_checkpoint(run / "last.pth")["training"]["step"] > 0
        assert not list(run.glob(".*.tmp")) and not (run / LOCK).exists()


def folder_dataset(root, bad=None):
    """A 3-class folder dataset: 8 training images with masks, 2 validation ones; ``bad``
    spoils one file: 'image' (unreadable), 'size' (a validation mask of another size) or
    'value' (a validation mask holding class 7)."""
    (root / "classes.txt").parent.mkdir(parents=True, exist_ok=True)
    (root / "classes.txt").write_text("sky\nroad\ncar\n")
    rng = np.random.default_rng(0)
    for split, count in (("train", 8), ("val", 2)):
        for i in range(count):
            for sub in ("images", "masks"):
                (root / sub / split).mkdir(parents=True, exist_ok=True)
            pixels = rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / "images" / split / f"{i}.png")
            mask = np.kron(rng.integers(0, 3, (4, 4)), np.ones((16, 16))).astype(np.uint8)
            Image.fromarray(mask).save(root / "masks" / split / f"{i}.png")
    if bad == "image":
        (root / "images" / "train" / "3.png").write_bytes(b"\x89PNG broken")
    elif bad == "size":
        Image.fromarray(np.zeros((48, 64), np.uint8)).save(root / "masks" / "val" / "0.png")
    elif bad == "value":
        Image.fromarray(np.full((64, 64), 7, np.uint8)).save(root / "masks" / "val" / "1.png")


def folder_run(cache, data, run, *extra):
    return ["train", "synthetic", *tiny_overrides(cache, run), "data.dataset=folder",
            f"data.root={data}", "data.num_labels=4", *extra, "--no-progress"]


@pytest.mark.parametrize(("bad", "named"), [("image", "3.png: cannot read image"),
                                            ("size", "0.png: mask is 64x48 but its image")])
def test_train_refuses_bad_files_before_the_first_step(cache, tmp_path, capsys, bad, named):
    folder_dataset(tmp_path / "data", bad)
    assert main(folder_run(cache, tmp_path / "data", tmp_path / "run")) == 2
    err = capsys.readouterr().err
    assert named in err and "1 problem(s) with the dataset" in err
    assert not (tmp_path / "run").exists()


def test_a_bad_file_met_while_training_ends_in_one_line_after_saving(cache, tmp_path, capsys):
    folder_dataset(tmp_path / "data", "value")
    run = tmp_path / "run"
    assert main(folder_run(cache, tmp_path / "data", run, "data.num_workers=1")) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert "val/1.png: mask values 7 are neither classes 0-2 nor 255" in err
    assert "Training stopped after step 2" in err and f"--resume {run / 'last.pth'}" in err
    assert load_checkpoint(run / "last.pth")["training"]["step"] == 2


@pytest.mark.parametrize("device", ["cuda", "cuda:3", "mps"])
def test_a_device_this_machine_lacks_is_one_line_naming_those_it_has(cache, tmp_path, capsys,
                                                                     monkeypatch, device):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    run = tmp_path / "run"
    assert main(["train", "synthetic", *tiny_overrides(cache, run), f"train.device={device}",
                 "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"train.device={device}, but" in err
    assert "use one of cpu, or auto" in err and not run.exists()
