"""The demo's comparison repeated over seeds: supervised baseline vs PRCL on the built-in
dataset, 1/16 of the labels, the same labelled subset, steps and labelled batch for both.
Each seed changes the labelled subset, the initialisation and the data order.

    .venv/bin/python benchmarks/synthetic.py [--seeds 0 1 2] [KEY=VALUE ...]

Prints one line per run and the mean and standard deviation of the final mIoU per method.
"""

from __future__ import annotations

import argparse
import statistics
import time

from prcl.config import load_config
from prcl.engine import train

METHODS = ("supervised", "prcl")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("overrides", nargs="*", help="overrides of the synthetic config")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs-factor", type=float, default=2.0,
                        help="train this many times the demo's epochs (default 2)")
    parser.add_argument("--out", default="runs/benchmark-synthetic")
    args = parser.parse_args()

    base = load_config("synthetic", args.overrides)
    epochs = round(base.train.epochs * args.epochs_factor)
    warmup = round(base.train.labelled_warmup_epochs * args.epochs_factor)
    results: dict[str, list[float]] = {m: [] for m in METHODS}
    for seed in args.seeds:
        for method in METHODS:
            cfg = load_config("synthetic", [
                *args.overrides, f"train.method={method}", f"train.seed={seed}",
                f"data.split_seed={seed}", f"train.epochs={epochs}", f"ramp.max_epoch={epochs}",
                f"train.eval_every={epochs}", f"train.labelled_warmup_epochs={warmup}",
                f"train.out_dir={args.out}/{method}-seed{seed}",
            ])
            started = time.perf_counter()
            result = train(cfg, progress=False)
            results[method].append(result.last_miou * 100)
            print(f"seed {seed}  {method:<10}  mIoU {result.last_miou * 100:5.1f}  "
                  f"({result.steps} steps, {time.perf_counter() - started:.0f} s)", flush=True)
    warmup_note = f" (PRCL: the first {warmup} on labels only)" if warmup else ""
    print(f"\n{len(args.seeds)} seeds, {epochs} epochs x {base.train.steps_per_epoch} steps"
          f"{warmup_note}, {base.data.num_labels} labelled images\n")
    print("| method | mIoU mean | std | runs |\n|---|---:|---:|---|")
    for method in METHODS:
        values = results[method]
        std = statistics.stdev(values) if len(values) > 1 else 0.0
        runs = ", ".join(f"{v:.1f}" for v in values)
        print(f"| {method} | {statistics.mean(values):.1f} | {std:.1f} | {runs} |")


if __name__ == "__main__":
    main()
