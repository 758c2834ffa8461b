"""The ``prcl`` command line: a thin layer over the library.

Each sub-command has an ``_add_<name>`` function that declares its arguments and a
``_run_<name>`` function that calls the library. Errors a user can fix (a missing file, a bad
config key) print one clear line and exit with status 2.
"""

from __future__ import annotations

import argparse
import os
import sys

# OpenMP threads that spin while they wait stall every parallel op when the CPU is shared
# (DataLoader workers, other jobs): several-fold slower steps on a 2-core machine. Sleeping
# waiters cost little otherwise. Set before torch is imported; an explicit value wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from prcl import __version__
from prcl.errors import PrclError


def _add_convert_official(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "convert-official",
        help="convert the authors' best_model.pth into a prcl checkpoint",
        description="Read a checkpoint written by the authors' PRCL code and save our network "
        "with its weights (the authors' uncer_head becomes our probability head).",
    )
    p.add_argument("input", help="the authors' checkpoint (best_model.pth)")
    p.add_argument("output", help="where to write the converted weights")
    p.add_argument("--num-classes", type=int, default=21)
    p.add_argument("--which", choices=("model", "ema"), default="ema",
                   help="the student ('model') or the mean teacher ('ema', default)")


def _run_convert_official(args: argparse.Namespace) -> int:
    from prcl.config import load_config
    from prcl.engine.checkpoint import atomic_save, make_checkpoint
    from prcl.files import refuse_overwriting_inputs
    from prcl.models import load_official

    refuse_overwriting_inputs(args.output, [args.input], "output")
    model = load_official(args.input, args.num_classes, args.which)
    dataset = {21: "voc_662", 19: "cityscapes_150"}.get(args.num_classes, "voc_662")
    deep_stem = "encoder.conv1.0.weight" in model.state_dict()
    encoder = "resnet101_deepstem" if deep_stem else "resnet101"
    cfg = load_config(dataset, [f"model.encoder={encoder}", "model.pretrained=null"])
    atomic_save(make_checkpoint(cfg, model, model), args.output)
    print(f"wrote {args.output}: the authors' '{args.which}' weights as a prcl checkpoint "
          f"({encoder}, {args.num_classes} classes, data settings from {dataset})")
    return 0


def _split_config_and_overrides(items: list[str]) -> tuple[str | None, list[str]]:
    """``[CONFIG] [a.b=value ...]``: the first item is the config unless it has an '='."""
    if items and "=" not in items[0]:
        return items[0], items[1:]
    return None, items


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train PRCL (or the supervised baseline) from a config",
        description="Train from a YAML config or a built-in one (default: synthetic), with "
        "a.b=value overrides, e.g. `prcl train voc_662 data.root=/data/VOC2012 "
        "train.method=supervised`. Under torchrun every process runs this command.",
    )
    p.add_argument("config", nargs="*", metavar="[CONFIG] [KEY=VALUE ...]",
                   help="config file or built-in name, then overrides")
    p.add_argument("--resume", metavar="CHECKPOINT",
                   help="continue the run that wrote this last.pth, in that file's folder "
                   "(its config is used; overrides still apply, train.out_dir too)")
    p.add_argument("--overwrite", action="store_true",
                   help="start over in a folder that holds another run: its files are deleted")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _run_train(args: argparse.Namespace) -> int:
    import math
    from pathlib import Path

    from prcl.config import load_config
    from prcl.engine.checkpoint import checkpoint_config, load_checkpoint
    from prcl.engine.run_folder import edited_config_keys
    from prcl.engine.trainer import train

    name, overrides = _split_config_and_overrides(args.config)
    resume = None
    if args.resume:
        if name is not None:
            raise PrclError("with --resume the run's own config is used: give only overrides")
        resume = load_checkpoint(args.resume)
        folder = Path(args.resume).parent
        if not any(o.startswith("train.out_dir=") for o in overrides):
            overrides = [*overrides, f"train.out_dir={folder}"]
        cfg = checkpoint_config(resume, overrides)
        edited = edited_config_keys(folder, cfg, overrides)
        if edited:
            print(f"note: {folder / 'config.yaml'} differs from the config the run continues "
                  f"with in {'; '.join(edited)}. --resume uses the checkpoint's config and the "
                  "command line's overrides (give key=value to change a key); config.yaml is "
                  "rewritten to it", file=sys.stderr)
    else:
        cfg = load_config(name, overrides)
    result = train(cfg, resume=resume, progress=not args.no_progress, overwrite=args.overwrite)
    if result.rank != 0:
        return 0
    if result.complete:
        final = (f"final mIoU {result.last_miou * 100:.1f}, "
                 if math.isfinite(result.last_miou) else "")
        print(f"{result.run_dir} is complete: {cfg.train.method} trained all {result.steps} "
              f"steps ({final}best {result.best_miou * 100:.1f}); nothing to do. To train "
              f"longer, resume with train.epochs above {cfg.train.epochs}")
    else:
        print(f"{cfg.train.method}  mIoU {result.last_miou * 100:.1f}  (best "
              f"{result.best_miou * 100:.1f}, {result.steps} steps, {result.skipped_steps} "
              f"skipped) -> {result.run_dir}")
    return 0


def _add_evaluate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "evaluate",
        help="mIoU of a checkpoint on its validation set",
        description="Evaluate a checkpoint (the teacher by default) on the whole validation "
        "set: whole images or a sliding window (eval.mode), optional flip. Prints per-class "
        "IoU and writes them as JSON.",
    )
    p.add_argument("checkpoint")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="e.g. data.root=/data/VOC2012 eval.flip=true")
    p.add_argument("--which", choices=("teacher", "student"), default="teacher")
    p.add_argument("--json", metavar="PATH",
                   help="where to write the scores (default: next to the checkpoint)")


def _run_evaluate(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from prcl.data import build_val_dataset
    from prcl.engine.checkpoint import (
        checkpoint_class_names,
        checkpoint_config,
        load_checkpoint,
        model_from_checkpoint,
    )
    from prcl.engine.distributed import select_device
    from prcl.evaluation import evaluate
    from prcl.files import atomic_write

    ckpt = load_checkpoint(args.checkpoint)
    cfg = checkpoint_config(ckpt, args.overrides)
    out = Path(args.json or Path(args.checkpoint).with_suffix(".eval.json"))
    _check_writable(out, "--json", [args.checkpoint])
    model, _ = model_from_checkpoint(ckpt, args.which)
    val, class_names = build_val_dataset(cfg.data)
    trained = checkpoint_class_names(ckpt)
    if len(class_names) != ckpt["num_classes"]:
        raise PrclError(
            f"{args.checkpoint} predicts {ckpt['num_classes']} classes ({', '.join(trained)}) "
            f"but the dataset has {len(class_names)} ({', '.join(class_names)}); evaluate it on "
            "the kind of data it was trained on (data.dataset=..., data.root=...)"
        )
    if class_names != trained:
        print(f"note: the dataset names its classes {', '.join(class_names)}; the checkpoint "
              f"was trained with {', '.join(trained)}", file=sys.stderr)
    device = select_device(cfg.train.device)
    scores = evaluate(model.to(device), val, ckpt["num_classes"], cfg.eval, device,
                      num_workers=min(cfg.data.num_workers, 2))
    print(scores.table(class_names))
    text = json.dumps({"checkpoint": str(args.checkpoint), "which": args.which,
                       "miou": scores.miou, "iou": scores.iou, "class_names": class_names,
                       "images": len(val), "eval": vars(cfg.eval)}, indent=2)
    atomic_write(out, lambda f: f.write(text.encode()))
    print(f"wrote {out}")
    return 0


def _check_writable(path, option: str, inputs: list[str]) -> None:
    """Refuse, before any work, a path that cannot be written (a folder, no permission) or
    that is one of the command's ``inputs``."""
    from prcl.files import refuse_overwriting_inputs

    refuse_overwriting_inputs(path, inputs, option)
    if path.is_dir():
        raise PrclError(f"{option} {path} is a folder; give a file name")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise PrclError(f"{option} {path}: cannot make its folder ({exc.strerror})") from None
    target = path if path.exists() else path.parent
    if not os.access(target, os.W_OK):
        raise PrclError(f"{option} {path} cannot be written: {target} is not writable")


def _add_predict(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "predict",
        help="masks, overlays and uncertainty maps for images",
        description="For each image: <name>_mask.png (palette PNG of class indices), "
        "<name>_overlay.png, and <name>_uncertainty.png, a heatmap of the mean variance "
        "sigma^2 of each pixel's representation (bright = uncertain), all at the image's own "
        "size; a network trained with data.image_scale predicts at that scale. CHECKPOINT may be a "
        "file written by `prcl export` (.onnx, run in onnxruntime: pip install 'prcl[onnx]').",
    )
    p.add_argument("checkpoint", help="a prcl checkpoint (.pth) or an exported .onnx file")
    p.add_argument("images", nargs="+", help="image files or folders of images")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--which", choices=("teacher", "student"), default="teacher",
                   help="the network of a checkpoint to use")


def _run_predict(args: argparse.Namespace) -> int:
    from prcl.predict import predict_files

    written, failed, images = predict_files(args.checkpoint, args.images, args.out, args.which)
    print(f"wrote {len(written)} files for {images} images to {args.out}")
    for line in failed:
        print(f"prcl predict: skipped {line}", file=sys.stderr)
    return 1 if failed else 0


def _add_export(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export",
        help="export a checkpoint's network to ONNX or TorchScript",
        description="Write the teacher (or --which student) in eval mode: input images "
        "[batch, 3, height, width] normalised with ImageNet's mean and std, outputs the class "
        "probabilities and the per-pixel uncertainty (mean sigma^2) at input size; batch, "
        "height and width dynamic. Class names and normalisation go into the file's metadata. "
        "The export is compared with PyTorch at another input size before it is written. "
        "ONNX needs pip install 'prcl[onnx]'.",
    )
    p.add_argument("checkpoint")
    p.add_argument("--out", required=True, help="the file to write, e.g. model.onnx")
    p.add_argument("--format", choices=("onnx", "torchscript"),
                   help="default: from --out's extension (.onnx; .pt, .pts or .torchscript)")
    p.add_argument("--which", choices=("teacher", "student"), default="teacher")
    p.add_argument("--no-uncertainty", action="store_true",
                   help="output the probabilities only (skips the probability head)")


def _run_export(args: argparse.Namespace) -> int:
    from pathlib import Path

    from prcl.export import export_checkpoint, format_for

    fmt = format_for(args.out, args.format)
    _check_writable(Path(args.out), "--out", [args.checkpoint])
    result = export_checkpoint(args.checkpoint, args.out, fmt, args.which,
                               uncertainty=not args.no_uncertainty)
    print(f"wrote {result.path} ({fmt}, the {args.which}): outputs "
          f"{', '.join(result.outputs)}; within {result.max_difference:.1g} of PyTorch")
    return 0


def _add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="supervised baseline vs PRCL on the built-in dataset (what `make demo` runs)",
        description="Train the supervised baseline and PRCL on the built-in synthetic dataset "
        "with the same labelled subset and steps, print both mIoUs and write a figure.",
    )
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="overrides of the synthetic config, e.g. train.epochs=4")
    p.add_argument("--out", default="runs/demo", help="output folder (default: runs/demo)")


def _run_demo(args: argparse.Namespace) -> int:
    from prcl.demo import run_demo

    run_demo(args.out, args.overrides)
    return 0


def _add_check_data(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "check-data",
        help="check a dataset: image counts, class histogram and every problem",
        description="Read every image and mask the config would train and validate on and "
        "report the image counts per split, the class histogram and every problem at once "
        "(exit status 1 if there is any), e.g. `prcl check-data voc_662 "
        "data.root=/data/VOC2012`.",
    )
    p.add_argument("config", nargs="*", metavar="[CONFIG] [KEY=VALUE ...]",
                   help="config file or built-in name (default: synthetic), then overrides")


def _run_check_data(args: argparse.Namespace) -> int:
    from prcl.config import load_config
    from prcl.data.check import check_data, format_report

    name, overrides = _split_config_and_overrides(args.config)
    cfg = load_config(name, overrides)
    report = check_data(cfg.data, progress=lambda line: print(line, file=sys.stderr))
    print(format_report(report))
    return 0 if report.ok else 1


def _add_splits(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "splits",
        help="write deterministic labelled/unlabelled split lists in the authors' layout",
        description="Draw the labelled images from the training set of the config's dataset "
        "(seeded, so the same counts and seeds give the same lists anywhere) and write "
        "OUT/<num_labels>/<seed>/{labeled,unlabeled,valid}_filename.txt; then train with "
        "data.split_dir=OUT. E.g. `prcl splits voc_662 data.root=/data/VOC2012 --out splits "
        "--num-labels 92 183 366 --seeds 0 1 2`.",
    )
    p.add_argument("config", nargs="*", metavar="[CONFIG] [KEY=VALUE ...]",
                   help="config file or built-in name (default: synthetic), then overrides")
    p.add_argument("--out", required=True, help="folder to write the split lists into")
    p.add_argument("--num-labels", type=int, nargs="+", metavar="N",
                   help="labelled image counts (default: the config's data.num_labels)")
    p.add_argument("--seeds", type=int, nargs="+", metavar="S",
                   help="split seeds (default: the config's data.split_seed)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace existing lists that differ")


def _run_splits(args: argparse.Namespace) -> int:
    from prcl.config import load_config
    from prcl.data import generate_split, open_layout, write_split

    name, overrides = _split_config_and_overrides(args.config)
    cfg = load_config(name, overrides).data
    layout = open_layout(cfg)
    candidates, train_ids, val_ids = (
        layout.labelled_candidates(), layout.train_ids(), layout.val_ids()
    )
    for num_labels in args.num_labels or [cfg.num_labels]:
        for seed in args.seeds or [cfg.split_seed]:
            split = generate_split(candidates, train_ids, num_labels, seed)
            folder = write_split(split, args.out, num_labels, seed, val_ids, args.overwrite)
            print(f"wrote {folder}: {len(split.labelled)} labelled, {len(split.unlabelled)} "
                  f"unlabelled, {len(val_ids)} validation ids")
    return 0


COMMANDS = {
    "train": (_add_train, _run_train),
    "evaluate": (_add_evaluate, _run_evaluate),
    "predict": (_add_predict, _run_predict),
    "export": (_add_export, _run_export),
    "demo": (_add_demo, _run_demo),
    "convert-official": (_add_convert_official, _run_convert_official),
    "check-data": (_add_check_data, _run_check_data),
    "splits": (_add_splits, _run_splits),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="prcl",
        description="Semi-supervised semantic segmentation with PRCL.",
    )
    parser.add_argument("--version", action="version", version=f"prcl {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add, _ in COMMANDS.values():
        add(sub)
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line, with ``KEY=VALUE`` overrides allowed on either side of options
    (argparse alone stops a positional list at the first option)."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    listed = "config" if hasattr(args, "config") else "overrides"
    stray = [e for e in extra if e.startswith("-") or "=" not in e or not hasattr(args, listed)]
    if stray:
        parser.error(f"unrecognized arguments: {' '.join(stray)}")
    if extra:
        getattr(args, listed).extend(extra)
    return args


def main(argv: list[str] | None = None) -> int:
    """Run a command. A problem the user can fix (a ``PrclError``, or the system refusing a
    file: a full disk, a read-only folder) ends with one line and exit status 2;
    ``PRCL_DEBUG=1`` shows the traceback instead."""
    args = parse_args(argv)
    run = COMMANDS[args.command][1]
    try:
        return run(args)
    except (PrclError, OSError) as exc:
        if os.environ.get("PRCL_DEBUG") == "1":
            raise
        print(f"prcl {args.command}: error: {_one_line(exc)}", file=sys.stderr)
        return getattr(exc, "exit_code", 2)


def _one_line(exc: BaseException) -> str:
    if isinstance(exc, OSError) and not isinstance(exc, PrclError) and exc.strerror:
        where = f"{exc.filename}: " if exc.filename else ""
        return f"{where}{exc.strerror} (the system refused it: check the path, its "\
            "permissions and the free disk space)"
    return str(exc)
