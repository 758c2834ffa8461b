"""Runs never destroy work: the run folder's rules, resume's folder, interrupts."""

import errno
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
from prcl.data.synthetic import CLASS_NAMES
from prcl.engine import Trainer, train
from prcl.engine.checkpoint import load_checkpoint
from prcl.engine.run_folder import LOCK, RunFolderError, hold_run_folder, last_evaluation


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


@pytest.fixture(scope="module")
def early_run(cache, tmp_path_factory):
    """A tiny run stopped after its first epoch: last.pth at step 2 of 4."""
    run = tmp_path_factory.mktemp("early") / "run"
    train(tiny(cache, run, "train.epochs=1"), progress=False)
    return run


@pytest.fixture(scope="module")
def finished_run(early_run, tmp_path_factory):
    """The early run continued to its end (step 4), with its step-2 checkpoint kept apart."""
    run = tmp_path_factory.mktemp("finished") / "run"
    shutil.copytree(early_run, run)
    assert main(["train", "--resume", str(run / "last.pth"), "train.epochs=2",
                 "--no-progress"]) == 0
    return run


def copy_of(run, tmp_path):
    shutil.copytree(run, tmp_path / "run")
    return tmp_path / "run"


@pytest.mark.parametrize("name", ["metrics.jsonl", "config.yaml"])
def test_resume_never_writes_through_a_link_in_the_run_folder(early_run, tmp_path, capsys,
                                                               name):
    run = copy_of(early_run, tmp_path)
    precious = tmp_path / "precious.txt"
    precious.write_text("the user's own file\n")
    (run / name).unlink()
    (run / name).symlink_to(precious)
    assert main(["train", "--resume", str(run / "last.pth"), "train.epochs=2",
                 "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{run / name} is a link (to {precious})" in err
    assert precious.read_text() == "the user's own file\n"
    assert load_checkpoint(run / "last.pth")["training"]["step"] == 2


def test_resuming_an_earlier_checkpoint_is_refused_where_it_would_rewind_the_run(
        early_run, finished_run, tmp_path, capsys):
    run = copy_of(finished_run, tmp_path)
    shutil.copy(early_run / "last.pth", run / "step2.pth")
    before = snapshot(run)
    args = ["train", "--resume", str(run / "step2.pth"), "train.epochs=2", "--no-progress"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert f"{run / 'last.pth'} holds step 4, later than the step 2 resumed from" in err
    assert f"--resume {run / 'last.pth'}" in err and "train.out_dir=" in err
    assert snapshot(run) == before
    branch = tmp_path / "branch"
    assert main([*args, f"train.out_dir={branch}"]) == 0
    assert load_checkpoint(branch / "last.pth")["training"]["step"] == 4
    assert snapshot(run) == before


def test_overwrite_removes_only_a_runs_own_files(finished_run, cache, tmp_path, capsys):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "config.yaml").write_text("model:\n  encoder: resnet18\n")
    args = ["train", "synthetic", *tiny_overrides(cache, mine), "train.epochs=1",
            "--no-progress"]
    for extra in ([], ["--overwrite"]):
        assert main([*args, *extra]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "holds a run" not in err
        assert f"{mine / 'config.yaml'} was not written by a prcl run" in err
        assert (mine / "config.yaml").read_text() == "model:\n  encoder: resnet18\n"
    run = copy_of(finished_run, tmp_path)
    (run / "notes.txt").write_text("mine")
    assert main(["train", "synthetic", *tiny_overrides(cache, run), "train.epochs=1",
                 "--overwrite", "--no-progress"]) == 0
    assert (run / "notes.txt").read_text() == "mine"
    assert [load_checkpoint(run / n)["training"]["step"] for n in ("last.pth", "best.pth")] \
        == [2, 2]


def test_a_run_that_ended_before_its_first_checkpoint_is_no_run(cache, tmp_path, capsys,
                                                                 monkeypatch):
    run = tmp_path / "run"

    def crash(*args, **kwargs):
        raise RuntimeError("a crash before the first checkpoint")

    monkeypatch.setattr(Trainer, "train_step", crash)
    with pytest.raises(RuntimeError, match="a crash before"):
        train(tiny(cache, run), progress=False)
    assert {p.name for p in run.iterdir()} >= {"config.yaml", "metrics.jsonl"}
    monkeypatch.undo()
    assert main(["train", "synthetic", *tiny_overrides(cache, run), "train.epochs=1",
                 "--no-progress"]) == 0
    assert load_checkpoint(run / "last.pth")["training"]["step"] == 2
    (run / "last.pth").unlink()
    assert main(["train", "synthetic", *tiny_overrides(cache, run), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "already holds a run" in err and f"--resume {run / 'best.pth'}" in err


@pytest.mark.parametrize("method", ["prcl", "mean_teacher"])
def test_a_semi_supervised_run_with_every_image_labelled_is_refused_before_anything_is_made(
        cache, tmp_path, capsys, method):
    run = tmp_path / "run"
    args = [*tiny_overrides(cache, run), "data.num_labels=24", f"train.method={method}"]
    assert main(["train", "synthetic", *args, "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "6 labelled" not in err
    assert f"24 labelled training images and no unlabelled one, so train.method={method}" in err
    assert "use train.method=supervised" in err and not run.exists()
    assert main(["check-data", "synthetic", *args]) == 0
    assert "note: every training image is labelled" in capsys.readouterr().out


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


class FullDisk:
    """A file that takes its first 64 KiB, then fails as a full disk does."""

    def __init__(self, file):
        self.file, self.written = file, 0

    def write(self, data):
        self.written += len(data)
        if self.written > 1 << 16:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return self.file.write(data)

    def __getattr__(self, name):
        return getattr(self.file, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.file.close()


def test_a_full_disk_during_a_save_is_one_line_and_the_last_checkpoint_stays(
        early_run, tmp_path, capsys, monkeypatch):
    run = copy_of(early_run, tmp_path)
    good = (run / "last.pth").read_bytes()
    real = os.fdopen
    monkeypatch.setattr(os, "fdopen", lambda fd, mode="r", *a, **k:
                        FullDisk(real(fd, mode, *a, **k)) if mode == "wb"
                        else real(fd, mode, *a, **k))
    assert main(["train", "--resume", str(run / "last.pth"), "train.epochs=2",
                 "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert f"could not write {run / 'last.pth'} at step 4 (No space left on device)" in err
    assert f"{run / 'last.pth'}, the last good checkpoint (step 2), is intact" in err
    assert (run / "last.pth").read_bytes() == good and not list(run.glob(".*.tmp"))


@pytest.mark.parametrize(("override", "words"), [
    ("model.rep_dim=64", "the checkpoint's network has model.rep_dim=32, not 64"),
    ("model.encoder=resnet34", "has model.encoder=resnet18, not resnet34"),
    ("data.dataset=folder", "the checkpoint predicts 3 classes but the data has 3"),
])
def test_resume_refuses_overrides_that_change_the_network_naming_the_key(
        early_run, tmp_path, capsys, override, words):
    run = copy_of(early_run, tmp_path)
    before = snapshot(run)
    folder_dataset(tmp_path / "data")
    words = words.replace("predicts 3", f"predicts {len(CLASS_NAMES)}")
    assert main(["train", "--resume", str(run / "last.pth"), override,
                 f"data.root={tmp_path / 'data'}" if "folder" in override else "train.seed=1",
                 "data.num_labels=4", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and words in err
    assert snapshot(run) == before


def test_resuming_a_finished_run_says_it_is_complete_with_its_score(finished_run, tmp_path,
                                                                    capsys):
    run = copy_of(finished_run, tmp_path)
    before = snapshot(run)
    final = last_evaluation(run)
    assert main(["train", "--resume", str(run / "last.pth"), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert f"{run} is complete: prcl trained all 4 steps (final mIoU " \
        f"{final['miou'] * 100:.1f}, best {final['best_miou'] * 100:.1f})" in out
    assert "nan" not in out and "train.epochs above 2" in out
    assert snapshot(run) == before


def test_resume_names_the_edits_of_config_yaml_it_does_not_use(early_run, tmp_path, capsys):
    run = copy_of(early_run, tmp_path)
    config = run / "config.yaml"
    text = config.read_text()
    assert text.startswith("# The config of a prcl run") and "  lr: 0.06\n" in text
    config.write_text(text.replace("  lr: 0.06\n", "  lr: 0.01\n")
                      .replace("  epochs: 1\n", "  epochs: 2\n"))
    assert main(["train", "--resume", str(config.parent / "last.pth"), "train.epochs=2",
                 "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert f"note: {config} differs from the config the run continues with in optim.lr: " \
        "0.01 in the file, 0.06 used." in err
    assert "train.epochs" not in err
    assert "  lr: 0.06\n" in config.read_text()
