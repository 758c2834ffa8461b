"""The demo's comparison repeated over seeds: supervised baseline vs PRCL on the built-in
dataset, the same labelled subset, steps and labelled batch for both, at the demo's budget
(or a multiple of it). Each seed changes the labelled subset, the initialisation and the data
order. ``--all-labelled`` adds the upper bound: the baseline with every training image
labelled, on the same steps. ``--prcl-variant "KEY=VALUE ..."`` adds a row: PRCL with those
overrides on top, e.g. the 2024 extension's options (``"loss.prototypes=global
loss.virtual_negatives=16"``), so one table holds PRCL with and without them.

    .venv/bin/python benchmarks/synthetic.py [--seeds 0 1 2] [--epochs-factor 1] [--jobs 1]
                                             [--all-labelled] [--prcl-variant "K=V ..."]
                                             [KEY=VALUE ...]

Prints one line per run (its final mIoU and each class's IoU, background first: a class
near 0 is one that the run lost) and the mean and standard deviation of the final mIoU per
method.
With ``--jobs N`` the runs go to N processes at once, each with (CPU cores / N) threads. A
run's numbers depend on its thread count (the order of floating-point sums), so compare
tables made with the same --jobs; on a CPU ``make demo`` trains its two runs side by side
with half the cores each, as ``--jobs 2`` does (on a 2-core machine its numbers are seed 0's).
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
from prcl.engine.run_folder import last_evaluation


def run(method: str, seed: int, overrides: list[str],
        threads: int | None) -> tuple[float, int, float, list[float]]:
    """One training run: (final mIoU in percent, steps, seconds, final IoU of each class in
    percent, from the run's last evaluation in metrics.jsonl)."""
    if threads:
        torch.set_num_threads(threads)
    cfg = load_config("synthetic", [*overrides, f"train.method={method}", f"train.seed={seed}",
                                    f"data.split_seed={seed}"])
    started = time.perf_counter()
    result = train(cfg, progress=False, overwrite=True)
    seconds = time.perf_counter() - started
    class_iou = [iou * 100 for iou in last_evaluation(result.run_dir)["iou"]]
    return result.last_miou * 100, result.steps, seconds, class_iou


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("overrides", nargs="*", help="overrides of the synthetic config")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs-factor", type=float, default=1.0,
                        help="train this many times the demo's epochs (default 1)")
    parser.add_argument("--all-labelled", action="store_true",
                        help="also train the baseline with every training image labelled")
    parser.add_argument("--prcl-variant", default="", metavar='"KEY=VALUE ..."',
                        help="also train PRCL with these overrides on top")
    parser.add_argument("--jobs", type=int, default=1, help="runs at once, in processes")
    parser.add_argument("--out", default="runs/benchmark-synthetic")
    args = parser.parse_args()

    base = load_config("synthetic", args.overrides)
    epochs = round(base.train.epochs * args.epochs_factor)
    warmup = round(base.train.labelled_warmup_epochs * args.epochs_factor)
    every_image = base.data.synthetic.num_train
    # row name -> (method, extra overrides, run folder name)
    rows = {"supervised": ("supervised", [], "supervised"), "prcl": ("prcl", [], "prcl")}
    if args.all_labelled:
        rows[f"supervised, all {every_image} labelled"] = (
            "supervised", [f"data.num_labels={every_image}"], "supervised-all")
    if args.prcl_variant:
        variant = args.prcl_variant.split()
        load_config("synthetic", [*args.overrides, *variant])  # a bad key stops us here
        rows[f"prcl, {' '.join(variant)}"] = ("prcl", variant, "prcl-variant")
    # each row's own labelled warm-up (a variant may set one), scaled like the epochs
    row_warmup = {row: round(load_config("synthetic", [*args.overrides, *extra])
                             .train.labelled_warmup_epochs * args.epochs_factor)
                  for row, (_, extra, _) in rows.items()}
    runs = [(row, seed, [
        *args.overrides, *extra, f"train.epochs={epochs}", f"ramp.max_epoch={epochs}",
        f"train.eval_every={epochs}", f"train.labelled_warmup_epochs={row_warmup[row]}",
        f"train.out_dir={args.out}/{folder}-seed{seed}",
    ]) for row, (method, extra, folder) in sorted(rows.items(), key=lambda r: r[1][0] != "prcl")
        for seed in args.seeds]  # the slower PRCL runs first
    miou: dict[tuple[str, int], float] = {}

    def report(row: str, seed: int, outcome: tuple[float, int, float, list[float]]) -> None:
        miou[row, seed] = outcome[0]
        classes = " ".join(f"{iou:.0f}" for iou in outcome[3])
        print(f"seed {seed}  {row:<10}  mIoU {outcome[0]:5.1f}  (IoU per class {classes}; "
              f"{outcome[1]} steps, {outcome[2]:.0f} s)", flush=True)

    if args.jobs == 1:
        for row, seed, overrides in runs:
            report(row, seed, run(rows[row][0], seed, overrides, None))
    else:
        threads = max(1, (os.cpu_count() or 1) // args.jobs)
        spawn = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(args.jobs, mp_context=spawn) as pool:
            futures = {pool.submit(run, rows[row][0], seed, overrides, threads): (row, seed)
                       for row, seed, overrides in runs}
            for future in as_completed(futures):
                report(*futures[future], future.result())
    warmup_note = f" (PRCL: the first {warmup} on labels only)" if warmup else ""
    print(f"\n{len(args.seeds)} seeds, {epochs} epochs x {base.train.steps_per_epoch} steps"
          f"{warmup_note}, {base.data.num_labels} labelled images\n")
    print("| method | mIoU mean | std | min | seeds " + ", ".join(map(str, args.seeds)) + " |")
    print("|---|---:|---:|---:|---|")
    for row in rows:
        values = [miou[row, seed] for seed in args.seeds]
        std = statistics.stdev(values) if len(values) > 1 else 0.0
        listed = ", ".join(f"{v:.1f}" for v in values)
        print(f"| {row} | {statistics.mean(values):.1f} | {std:.1f} | {min(values):.1f} | "
              f"{listed} |")
    for row in (r for r in rows if r.startswith("prcl")):
        gains = [miou[row, s] - miou["supervised", s] for s in args.seeds]
        print(f"\n{row} - supervised per seed: {', '.join(f'{g:+.1f}' for g in gains)} "
              f"(mean {statistics.mean(gains):+.1f}, smallest {min(gains):+.1f})")


if __name__ == "__main__":
    main()
