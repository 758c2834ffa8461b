"""What each part of PRCL adds, over seeds, on any config: the supervised baseline, the
baseline with every training image labelled, the mean teacher (PRCL without its contrastive
term), PRCL, and PRCL with the 2024 extension's global prototypes and virtual negatives; each
seed changes the labelled subset, the initialisation and the data order.

    .venv/bin/python benchmarks/methods.py CONFIG [KEY=VALUE ...] [--seeds 0 1 2]
        [--rows supervised all_labelled mean_teacher prcl prcl_gdp_vn]
        [--variant NAME METHOD KEY=VALUE ...] [--epochs-factor 1] [--jobs 1] [--out DIR]

e.g. ``benchmarks/methods.py synthetic --jobs 2`` (the demo's budget) or ``benchmarks/methods.py
camvid_23 data.root=/data/CamVid --jobs 2``. ``--variant`` adds a row of METHOD with more
overrides (repeatable), e.g. ``--variant t0.5 prcl loss.temperature=0.5``.

Prints a line per run as it ends (final mIoU, each class's IoU; for the contrastive term its
loss over chance, the positive's probability and the mean sigma^2, medians over the second
half of the run), then per row the mean, standard deviation and per-seed mIoU, the per-seed
differences that say what each part adds, and for every row with the contrastive term the
share of the gradient on the decoder feature that comes from it (``feature_gradient_shares``).
A finished run found in its folder, with every setting its method reads the same, is read,
not trained again (``--retrain`` trains it anew), so a table can be built from runs made one
by one, and a change to the contrastive term's settings retrains the PRCL rows alone. With
``--jobs N`` the runs go to N processes at once, each with (CPU cores / N) threads
(``--threads`` sets it); a run's numbers depend on its thread count, so compare tables made
with the same thread count.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import os
import statistics
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

import torch
import yaml

from prcl.config import Config, config_to_dict, load_config
from prcl.data import build_datasets, open_layout
from prcl.engine import train
from prcl.engine.checkpoint import load_checkpoint, model_from_checkpoint
from prcl.engine.loaders import endless_loader
from prcl.engine.run_folder import last_evaluation
from prcl.engine.step import prcl_loss_from_config, prcl_step_losses

ROWS = ("supervised", "all_labelled", "mean_teacher", "prcl", "prcl_gdp_vn")
GDP_VN = ["loss.prototypes=global", "loss.virtual_negatives=16"]
DIFFERENCES = (("mean_teacher", "supervised"), ("prcl", "supervised"), ("prcl", "mean_teacher"))


@dataclass
class Outcome:
    miou: float
    """Final mIoU, percent."""
    class_iou: list[float]
    seconds: float
    term: dict[str, float] = field(default_factory=dict)
    """The contrastive term's medians over the run's second half (PRCL rows)."""
    gradient: dict[str, float] = field(default_factory=dict)
    """``feature_gradient_shares`` of the final network (PRCL rows)."""


def term_medians(run_dir: Path) -> dict[str, float]:
    """Medians of the logged contrastive_vs_chance, positive_probability and mean_variance over
    the second half of the logged steps that scored anchors, and the mean lambda_c."""
    logs = [r["train"] for r in map(json.loads, (run_dir / "metrics.jsonl").open())
            if "train" in r]
    scored = [t for t in logs if "contrastive_vs_chance" in t]
    if not scored:
        return {}
    half = scored[len(scored) // 2:]
    keys = ("contrastive_vs_chance", "positive_probability", "mean_variance")
    medians = {k: statistics.median(t[k] for t in half) for k in keys}
    medians["mean_lambda_c"] = statistics.mean(t["lambda_c"] for t in scored)
    return medians


def feature_gradient_shares(cfg: Config, run_dir: Path, batches: int = 4) -> dict[str, float]:
    """How much of the gradient on the decoder feature (the 304-channel map every head reads)
    comes from each loss, for the final student and teacher of a run, on ``batches`` training
    steps' batches (no update): the mean L2 norms of d loss / d feature for the supervised,
    pseudo-label and contrastive losses (at lambda_c = 1), and ``contrastive_share``, the
    contrastive norm over the sum of the three."""
    ckpt = load_checkpoint(run_dir / "last.pth")
    student = model_from_checkpoint(ckpt, "student")[0].train()
    teacher = model_from_checkpoint(ckpt, "teacher")[0]
    teacher.train(cfg.train.teacher_batchnorm == "own")
    data = build_datasets(cfg.data)
    labelled = endless_loader(data.labelled, cfg.data.batch_size, 11, 0, 1, 0, 0, False)
    unlabelled = endless_loader(data.unlabelled, cfg.data.unlabeled_batch_size
                                or cfg.data.batch_size, 12, 0, 1, 0, 0, False)
    loss = prcl_loss_from_config(cfg.loss)
    generator = torch.Generator().manual_seed(0)
    features: list[torch.Tensor] = []
    hook = student.classifier.register_forward_pre_hook(lambda _, args: features.append(args[0]))
    norms = {"supervised": [], "unsupervised": [], "contrastive": []}
    try:
        for _ in range(batches):
            images_l, labels_l = next(labelled)
            losses = prcl_step_losses(student, teacher, images_l, labels_l, next(unlabelled), cfg,
                                      loss, 1.0, generator, contextlib.nullcontext())
            for name in norms:
                grad = torch.autograd.grad(getattr(losses, name), features[-1],
                                           retain_graph=True, allow_unused=True)[0]
                norms[name].append(0.0 if grad is None else grad.norm().item())
    finally:
        hook.remove()
    mean = {f"grad_{k}": statistics.mean(v) for k, v in norms.items()}
    total = sum(mean.values())
    mean["contrastive_share"] = mean["grad_contrastive"] / total if total else 0.0
    return mean


CONTRASTIVE_KEYS = ("weak_threshold", "strong_threshold", "temperature", "num_queries",
                    "num_negatives", "prototypes", "gdp_forgetting", "virtual_negatives",
                    "virtual_radius")
"""The loss keys that only the contrastive term reads."""


def read_settings(config: dict) -> dict:
    """A config (as dicts) without the keys its method never reads, without the run's folder
    and without ``train.eval_every`` (evaluating does not change what a run trains): the
    baseline reads no ``loss`` or ``ramp`` key, the mean teacher no contrastive one
    (``CONTRASTIVE_KEYS``) and no ``ramp``."""
    method = config["train"]["method"]
    kept = {k: v for k, v in config.items() if method == "prcl" or k != "ramp"}
    kept["train"] = {k: v for k, v in config["train"].items()
                     if k not in ("out_dir", "eval_every")}
    if method == "supervised":
        kept.pop("loss")
    elif method == "mean_teacher":
        kept["loss"] = {k: v for k, v in config["loss"].items() if k not in CONTRASTIVE_KEYS}
    return kept


def finished(cfg: Config, run_dir: Path) -> dict | None:
    """The last evaluation of a run in ``run_dir`` that trained its last step with ``cfg``,
    every key its method reads the same (``read_settings``), else None."""
    done = last_evaluation(run_dir)
    saved = run_dir / "config.yaml"
    if done is None or not saved.is_file():
        return None
    same = read_settings(yaml.safe_load(saved.read_text())) == read_settings(config_to_dict(cfg))
    return done if same and done["step"] == cfg.train.epochs * cfg.train.steps_per_epoch else None


def run(config: str, overrides: list[str], threads: int | None, retrain: bool) -> Outcome:
    """One training run (or the finished run already in its folder)."""
    if threads:
        torch.set_num_threads(threads)
    cfg = load_config(config, overrides)
    run_dir = Path(cfg.train.out_dir)
    done = None if retrain else finished(cfg, run_dir)
    seconds = float("nan")
    if done is None:
        started = time.perf_counter()
        train(cfg, progress=False, overwrite=True)
        seconds = time.perf_counter() - started
        done = last_evaluation(run_dir)
    outcome = Outcome(done["miou"] * 100, [iou * 100 for iou in done["iou"]], seconds)
    if cfg.train.method == "prcl":
        outcome.term = term_medians(run_dir)
        outcome.gradient = feature_gradient_shares(cfg, run_dir)
    return outcome


def row_overrides(config: str, overrides: list[str], variants: list[list[str]]
                  ) -> dict[str, tuple[str, list[str]]]:
    """Row name -> (method, overrides of that row)."""
    base = load_config(config, overrides)
    if base.data.dataset == "synthetic":
        every_image = base.data.synthetic.num_train
    else:
        every_image = len(open_layout(base.data).labelled_candidates())
    rows = {
        "supervised": ("supervised", []),
        "all_labelled": ("supervised", [f"data.num_labels={every_image}"]),
        "mean_teacher": ("mean_teacher", []),
        "prcl": ("prcl", []),
        "prcl_gdp_vn": ("prcl", GDP_VN),
    }
    for name, method, *extra in variants:
        load_config(config, [*overrides, *extra])  # a bad key stops us here
        rows[name] = (method, extra)
    return rows


def schedule(cfg: Config, factor: float) -> list[str]:
    """Overrides that scale a run's epochs (and its ramp and labelled warm-up) by ``factor``
    and evaluate once, at the end."""
    epochs = round(cfg.train.epochs * factor)
    return [f"train.epochs={epochs}", f"ramp.max_epoch={round(cfg.ramp.max_epoch * factor)}",
            f"train.eval_every={epochs}",
            f"train.labelled_warmup_epochs={round(cfg.train.labelled_warmup_epochs * factor)}"]


def report_run(row: str, seed: int, outcome: Outcome) -> None:
    classes = " ".join(f"{iou:.0f}" for iou in outcome.class_iou)
    term = ""
    if outcome.term:
        t = outcome.term
        term = (f"; contrastive/chance {t['contrastive_vs_chance']:.4f}, positive p "
                f"{t['positive_probability']:.4f}, sigma^2 {t['mean_variance']:.3f}, "
                f"gradient share {outcome.gradient['contrastive_share']:.3f}")
    took = "read" if outcome.seconds != outcome.seconds else f"{outcome.seconds:.0f} s"
    print(f"seed {seed}  {row:<14} mIoU {outcome.miou:5.1f}  (IoU per class {classes}; "
          f"{took}{term})", flush=True)


def summary(rows: list[str], seeds: list[int], results: dict[tuple[str, int], Outcome]) -> None:
    print("\n| row | mIoU mean ± std | min | seeds " + ", ".join(map(str, seeds)) + " |")
    print("|---|---:|---:|---|")
    for row in rows:
        values = [results[row, s].miou for s in seeds]
        std = statistics.stdev(values) if len(values) > 1 else 0.0
        print(f"| {row} | {statistics.mean(values):.1f} ± {std:.1f} | {min(values):.1f} | "
              f"{', '.join(f'{v:.1f}' for v in values)} |")
    pairs = [*DIFFERENCES, *((r, "supervised") for r in rows if r not in ROWS)]
    for a, b in ((a, b) for a, b in pairs if a in rows and b in rows):
        gains = [results[a, s].miou - results[b, s].miou for s in seeds]
        print(f"{a} - {b} per seed: {', '.join(f'{g:+.1f}' for g in gains)} (mean "
              f"{statistics.mean(gains):+.1f}, smallest {min(gains):+.1f})")
    for row in rows:
        shares = [results[row, s].gradient.get("contrastive_share") for s in seeds]
        if all(v is not None for v in shares):
            lam = statistics.mean(results[row, s].term["mean_lambda_c"] for s in seeds)
            print(f"{row}: contrastive share of the feature gradient at lambda_c = 1 "
                  f"{statistics.mean(shares):.3f} (seeds {', '.join(f'{v:.3f}' for v in shares)})"
                  f"; mean lambda_c over the run {lam:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("config", help="a built-in config or a YAML file")
    parser.add_argument("overrides", nargs="*", help="overrides for every run")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--rows", nargs="*", default=list(ROWS), choices=ROWS,
                        help="the standard rows to run (default: all; none: the variants alone)")
    parser.add_argument("--variant", nargs="+", action="append", default=[],
                        metavar="NAME METHOD [KEY=VALUE]",
                        help="one more row: METHOD with these overrides (repeatable)")
    parser.add_argument("--epochs-factor", type=float, default=1.0,
                        help="train this many times the config's epochs (default 1)")
    parser.add_argument("--jobs", type=int, default=1, help="runs at once, in processes")
    parser.add_argument("--threads", type=int,
                        help="threads per run (default: CPU cores / jobs)")
    parser.add_argument("--retrain", action="store_true",
                        help="train again runs whose folder holds a finished run")
    parser.add_argument("--out", help="folder of the runs (default runs/methods-CONFIG)")
    args = parser.parse_args()
    if any(len(v) < 2 for v in args.variant):
        parser.error("--variant needs a NAME and a METHOD")

    out = args.out or f"runs/methods-{Path(args.config).stem}"
    base = load_config(args.config, args.overrides)
    rows = row_overrides(args.config, args.overrides, args.variant)
    names = [*args.rows, *(v[0] for v in args.variant)]
    runs = [(row, seed, [*args.overrides, *rows[row][1], f"train.method={rows[row][0]}",
                         f"train.seed={seed}", f"data.split_seed={seed}",
                         *schedule(load_config(args.config, [*args.overrides, *rows[row][1]]),
                                   args.epochs_factor),
                         f"train.out_dir={out}/{row}-seed{seed}"])
            for row in sorted(names, key=lambda r: rows[r][0] == "supervised")  # slow ones first
            for seed in args.seeds]
    results: dict[tuple[str, int], Outcome] = {}
    threads = args.threads or max(1, (os.cpu_count() or 1) // args.jobs)
    if args.jobs == 1:
        for row, seed, overrides in runs:
            results[row, seed] = run(args.config, overrides, threads, args.retrain)
            report_run(row, seed, results[row, seed])
    else:
        spawn = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(args.jobs, mp_context=spawn) as pool:
            futures = {pool.submit(run, args.config, overrides, threads, args.retrain):
                       (row, seed) for row, seed, overrides in runs}
            for future in as_completed(futures):
                results[futures[future]] = future.result()
                report_run(*futures[future], results[futures[future]])
    steps = round(base.train.epochs * args.epochs_factor) * base.train.steps_per_epoch
    print(f"\n{args.config}: {len(args.seeds)} seeds, {steps} steps, {base.data.num_labels} "
          "labelled images")
    summary(names, args.seeds, results)


if __name__ == "__main__":
    main()
