"""The demo's comparison repeated over seeds: supervised baseline vs PRCL on the built-in
dataset, 1/16 of the labels, the same labelled subset, steps and labelled batch for both.
Each seed changes the labelled subset, the initialisation and the data order.

    .venv/bin/python benchmarks/synthetic.py [--seeds 0 1 2] [--epochs-factor 4] [--jobs 1]
                                             [KEY=VALUE ...]

Prints one line per run and the mean and standard deviation of the final mIoU per method.
With ``--jobs N`` the runs go to N processes at once, each with (CPU cores / N) threads:
on a 2-core machine two one-thread runs finish sooner than one two-thread run after another.
A run's numbers depend on its thread count, so compare tables made with the same --jobs.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import time
from concurrent.futures import ProcessPoolExecutor, as_completed

import torch

from prcl.config import load_config
from prcl.engine import train

METHODS = ("supervised", "prcl")


def run(method: str, seed: int, overrides: list[str],
        threads: int | None) -> tuple[float, int, float]:
    """One training run: (final mIoU in percent, steps, seconds)."""
    if threads:
        torch.set_num_threads(threads)
    cfg = load_config("synthetic", [*overrides, f"train.method={method}", f"train.seed={seed}",
                                    f"data.split_seed={seed}"])
    started = time.perf_counter()
    result = train(cfg, progress=False)
    return result.last_miou * 100, result.steps, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("overrides", nargs="*", help="overrides of the synthetic config")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs-factor", type=float, default=4.0,
                        help="train this many times the demo's epochs (default 4)")
    parser.add_argument("--jobs", type=int, default=1, help="runs at once, in processes")
    parser.add_argument("--out", default="runs/benchmark-synthetic")
    args = parser.parse_args()

    base = load_config("synthetic", args.overrides)
    epochs = round(base.train.epochs * args.epochs_factor)
    warmup = round(base.train.labelled_warmup_epochs * args.epochs_factor)
    runs = [(method, seed, [
        *args.overrides, f"train.epochs={epochs}", f"ramp.max_epoch={epochs}",
        f"train.eval_every={epochs}", f"train.labelled_warmup_epochs={warmup}",
        f"train.out_dir={args.out}/{method}-seed{seed}",
    ]) for method in reversed(METHODS) for seed in args.seeds]  # the slower PRCL runs first
    miou: dict[tuple[str, int], float] = {}

    def report(method: str, seed: int, outcome: tuple[float, int, float]) -> None:
        miou[method, seed] = outcome[0]
        print(f"seed {seed}  {method:<10}  mIoU {outcome[0]:5.1f}  ({outcome[1]} steps, "
              f"{outcome[2]:.0f} s)", flush=True)

    if args.jobs == 1:
        for method, seed, overrides in runs:
            report(method, seed, run(method, seed, overrides, None))
    else:
        threads = max(1, (os.cpu_count() or 1) // args.jobs)
        spawn = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(args.jobs, mp_context=spawn) as pool:
            futures = {pool.submit(run, method, seed, overrides, threads): (method, seed)
                       for method, seed, overrides in runs}
            for future in as_completed(futures):
                report(*futures[future], future.result())
    results = {m: [miou[m, seed] for seed in args.seeds] for m in METHODS}
    warmup_note = f" (PRCL: the first {warmup} on labels only)" if warmup else ""
    print(f"\n{len(args.seeds)} seeds, {epochs} epochs x {base.train.steps_per_epoch} steps"
          f"{warmup_note}, {base.data.num_labels} labelled images\n")
    print("| method | mIoU mean | std | runs |\n|---|---:|---:|---|")
    for method in METHODS:
        values = results[method]
        std = statistics.stdev(values) if len(values) > 1 else 0.0
        listed = ", ".join(f"{v:.1f}" for v in values)
        print(f"| {method} | {statistics.mean(values):.1f} | {std:.1f} | {listed} |")


if __name__ == "__main__":
    main()
