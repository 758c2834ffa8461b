"""The demo behind `make demo`: the supervised baseline against PRCL on the built-in dataset,
the same labelled subset, steps and labelled batch for both; PRCL also sees the unlabelled
images. Prints both mIoUs and writes one figure."""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import torch

from prcl.config import Config, load_config
from prcl.data import build_datasets
from prcl.engine.checkpoint import load_checkpoint, model_from_checkpoint
from prcl.engine.distributed import select_device
from prcl.engine.trainer import TrainResult, train
from prcl.evaluation import predict
from prcl.viz import grid, heatmap, mask_image, to_pil_image

METHODS = ("supervised", "prcl")


def run_demo(out_dir: str | Path = "runs/demo", overrides: list[str] = (),
             progress: bool = True, side_by_side: bool | None = None) -> dict[str, TrainResult]:
    """Train both methods, print ``supervised  mIoU x`` and ``prcl  mIoU y`` (percent, the
    final networks on the whole validation set) and write ``<out_dir>/demo.png``. The runs'
    folders under ``out_dir`` are the demo's own: a new demo replaces them.

    ``side_by_side`` (default: on a CPU with at least two cores) trains the two at once, one
    process each with half the cores (``train_side_by_side``); otherwise one after the other
    with every core. The numbers depend on the thread count, so the two ways print different
    mIoUs; side by side on a 2-core CPU they are ``benchmarks/methods.py synthetic --jobs 2``'s."""
    out = Path(out_dir)
    configs = {m: load_config("synthetic", [*overrides, f"train.method={m}",
                                            f"train.out_dir={out / m}"]) for m in METHODS}
    build_datasets(configs["prcl"].data)  # the dataset made once, before the runs read it
    threads = threads_each(configs["prcl"], side_by_side)
    if threads:
        print(f"training both side by side, {threads} thread(s) each", flush=True)
        results = train_side_by_side(configs, threads, progress)
    else:
        results = {m: _train_timed(cfg, progress) for m, cfg in configs.items()}
    for method in METHODS:
        print(f"{method:<10}  mIoU {results[method].last_miou * 100:.1f}")
    figure = demo_figure(out, configs["prcl"])
    print(f"figure: {figure}")
    return results


def available_cores() -> int:
    """The CPU cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def threads_each(cfg: Config, side_by_side: bool | None = None) -> int:
    """Threads per run when the demo's two trainings go side by side (half the cores, at
    least one), 0 when they run one after the other. ``side_by_side`` None: side by side on
    a CPU with at least two cores, where the demo then trains with the thread count of the
    benchmark's tables (one per run on two cores) in about the time one after the other
    takes (docs/performance.md, The demo); one after the other on a GPU or a single core."""
    cores = available_cores()
    if side_by_side is None:
        side_by_side = cores >= 2 and select_device(cfg.train.device).type == "cpu"
    return max(cores // 2, 1) if side_by_side else 0


def train_side_by_side(configs: dict[str, Config], threads: int,
                       progress: bool = True) -> dict[str, TrainResult]:
    """Each config (method -> config) trained in its own process with ``threads`` threads,
    all at once, each progress bar on its own line. method -> result. A run's error is
    raised here; Ctrl-C reaches the runs (the same process group), which save ``last.pth``
    and stop as a run alone does, while this process waits for them
    (``_ctrl_c_left_to_the_runs``)."""
    spawn = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(len(configs), mp_context=spawn) as pool:
        futures = {m: pool.submit(_train_timed, cfg, progress, threads, line)
                   for line, (m, cfg) in enumerate(configs.items())}
        with _ctrl_c_left_to_the_runs():
            return {m: future.result() for m, future in futures.items()}


@contextmanager
def _ctrl_c_left_to_the_runs() -> Iterator[None]:
    """Ignore SIGINT in this process for the body (in the main thread; elsewhere Python
    allows no handlers), so that Ctrl-C stops the runs cleanly and their ``Interrupted``
    comes back instead of a traceback here. Set after the runs started: they do not inherit
    it."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous if previous is not None else signal.SIG_DFL)


def _train_timed(cfg: Config, progress: bool, threads: int = 0,
                 bar_position: int = 0) -> TrainResult:
    """One run (with ``threads`` threads when given); prints ``<method>: N steps in S s``."""
    if threads:
        torch.set_num_threads(threads)
    started = time.perf_counter()
    result = train(cfg, progress=progress, overwrite=True, bar_position=bar_position)
    print(f"{cfg.train.method}: {result.steps} steps in {time.perf_counter() - started:.0f} s",
          flush=True)
    return result


@torch.no_grad()
def demo_figure(out: Path, cfg, num_images: int = 4) -> Path:
    """Rows of validation images: image | ground truth | supervised | PRCL | PRCL uncertainty."""
    data = build_datasets(cfg.data)
    models = {m: model_from_checkpoint(load_checkpoint(out / m / "last.pth"))[0].eval()
              for m in METHODS}
    rows = []
    for index in range(min(num_images, len(data.val))):
        image, label = data.val[index]
        row = [to_pil_image(image), mask_image(label)]
        for method in METHODS:
            pred = predict(models[method], image[None], cfg.eval, uncertainty=method == "prcl")
            row.append(mask_image(pred.probs[0].argmax(0)))
        row.append(heatmap(pred.uncertainty[0, 0]))
        rows.append(row)
    path = out / "demo.png"
    grid(rows, ["image", "ground truth", "supervised", "PRCL", "PRCL uncertainty"]).save(path)
    return path
