"""What one PRCL training step costs: ResNet-101 DeepLabv3+, 321x321 crops, 2 labelled + 2
unlabelled images by default, the VOC config's loss and optimiser settings.

The step timed is the trainer's own ``Trainer.train_step`` (teacher pseudo-labels, the
unlabelled augmentation, the student on both batches, the losses, backward, the guarded fused SGD
steps, the EMA) on random images, with the run's settings: ``--amp`` (train.amp),
``--compile`` (train.compile), ``--memory-format`` (train.memory_format), ``--student-pass``
(train.student_pass: the authors' two passes, or one joint pass). It prints ms per
step, images per second (labelled + unlabelled), the peak memory (CUDA: the allocator's peak;
CPU: the process's peak resident size) and, on CUDA, the share of the step during which the
GPU ran kernels (kernel time from the profiler over wall time between CUDA events).
``--phases`` prints, instead, where an eager step's time goes, phase by phase (each phase
synchronised, so on a GPU the sum exceeds the step).

    .venv/bin/python benchmarks/step.py [--device auto] [--batch 2] [--amp auto] [--compile]
        [--student-pass separate] [--steps 5] [--encoder resnet101] [--size 321] [--phases]
"""

from __future__ import annotations

import argparse
import copy
import resource
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import torch
import torch.nn.functional as F

from prcl.config import CHOICES, load_config
from prcl.data import VOC_CLASSES, DataBundle, strong_augment
from prcl.engine import Trainer
from prcl.engine.ema import ema_update
from prcl.engine.step import (
    contrastive_labels,
    prcl_loss_from_config,
    student_outputs,
    teacher_pseudo_labels,
    upsample,
)
from prcl.losses import pseudo_label_ce
from prcl.models import build_model


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_trainer(args: argparse.Namespace, out_dir: Path) -> Trainer:
    """A trainer with the VOC config's settings and no dataset (the batches are random)."""
    cfg = load_config("voc_662", [
        f"data.crop_size={args.size}", f"data.batch_size={args.batch}",
        f"optim.reference_batch_size={args.batch}", f"model.encoder={args.encoder}",
        "model.pretrained=null", f"train.device={args.device}", f"train.amp={args.amp}",
        f"train.compile={str(args.compile).lower()}",
        f"train.memory_format={args.memory_format}", f"train.out_dir={out_dir}",
        f"train.student_pass={args.student_pass}",
        "train.labelled_warmup_epochs=0",
    ])
    names = list(VOC_CLASSES)
    data = DataBundle([], [], [], len(names), names, [], [], [], out_dir)
    return Trainer(cfg, data=data, progress=False)


def random_batch(trainer: Trainer, b: int, s: int) -> tuple[torch.Tensor, ...]:
    """images_l [b, 3, s, s], labels_l [b, s, s] (6 classes), images_u [b, 3, s, s]."""
    device = trainer.rt.device
    g = torch.Generator(device).manual_seed(0)
    images_l = torch.rand(b, 3, s, s, device=device, generator=g)
    labels_l = torch.randint(0, 6, (b, s, s), device=device, generator=g)
    images_u = torch.rand(b, 3, s, s, device=device, generator=g)
    return images_l, labels_l, images_u


def gpu_busy_share(trainer: Trainer, batch: tuple[torch.Tensor, ...], steps: int) -> float:
    """Kernel time over wall time for ``steps`` steps (CUPTI through the profiler; kernels of
    one stream do not overlap, so their durations add up to the busy time)."""
    from torch.profiler import ProfilerActivity, profile

    device = trainer.rt.device
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(steps):
            trainer.train_step(*batch)
        end.record()
        sync(device)
    wall_us = start.elapsed_time(end) * 1e3
    kernel_us = sum(e.device_time for e in prof.events()
                    if e.device_type == torch.autograd.DeviceType.CUDA)
    return kernel_us / wall_us


def whole_step(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as out_dir:
        trainer = bench_trainer(args, Path(out_dir))
        device = trainer.rt.device
        batch = random_batch(trainer, args.batch, args.size)
        started = time.perf_counter()
        for _ in range(args.warmup):
            trainer.train_step(*batch)
        sync(device)
        warmup_s = time.perf_counter() - started
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            start.record()
        started = time.perf_counter()
        for _ in range(args.steps):
            trainer.train_step(*batch)
        if device.type == "cuda":
            end.record()
        sync(device)
        seconds = (start.elapsed_time(end) / 1e3 if device.type == "cuda"
                   else time.perf_counter() - started) / args.steps
        if device.type == "cuda":
            peak = f"{torch.cuda.max_memory_allocated(device) / 2**30:.2f} GiB (CUDA allocator)"
            busy = f"{gpu_busy_share(trainer, batch, min(args.steps, 3)):.0%}"
        else:
            rss_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            peak = f"{rss_kib / 2**20:.2f} GiB (process peak RSS)"
            busy = "n/a on the CPU"
        name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
        print(f"device {device} ({name}), torch {torch.__version__}, "
              f"{torch.get_num_threads()} CPU threads, {args.encoder}, {args.batch}+{args.batch} "
              f"images of {args.size}x{args.size}, amp {trainer.amp or 'none'}, "
              f"compile {args.compile}, memory format {args.memory_format}, student pass "
              f"{args.student_pass}; mean of "
              f"{args.steps} steps after {args.warmup} warm-up steps ({warmup_s:.1f} s)\n")
        print("| ms/step | images/s | peak memory | GPU busy |\n|---:|---:|---|---:|")
        print(f"| {seconds * 1e3:.1f} | {2 * args.batch / seconds:.1f} | {peak} | {busy} |")


def phases(args: argparse.Namespace) -> None:
    """Each phase of an eager fp32 step timed on its own (the optimisers here are the
    trainer's SGD settings without the guard)."""
    cfg = load_config("voc_662", [f"data.crop_size={args.size}"])
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available()
                          else "cpu" if args.device == "auto" else args.device)
    torch.manual_seed(0)
    student = build_model(args.encoder, 21).to(device).train()
    teacher = copy.deepcopy(student).requires_grad_(False)
    groups = student.parameter_groups()
    optimizers = [torch.optim.SGD(groups[k], lr=lr, momentum=0.9, nesterov=True,
                                  weight_decay=5e-4, fused=True)
                  for k, lr in (("network", 3.2e-3), ("probability_head", 5e-5))]
    prcl_loss = prcl_loss_from_config(cfg.loss)
    generator = torch.Generator(device).manual_seed(0)
    b, s = args.batch, args.size
    images_l = torch.rand(b, 3, s, s, device=device)
    labels_l = torch.randint(0, 6, (b, s, s), device=device)
    images_u = torch.rand(b, 3, s, s, device=device)

    times: dict[str, list[float]] = defaultdict(list)

    def timed(name: str, fn):
        sync(device)
        start = time.perf_counter()
        result = fn()
        sync(device)
        times[name].append(time.perf_counter() - start)
        return result

    for step in range(args.steps + 1):
        pseudo, conf = timed("teacher", lambda: teacher_pseudo_labels(teacher, images_u))

        aug, aug_labels, aug_conf = timed("augmentation", lambda pseudo=pseudo, conf=conf:
                                          strong_augment(images_u, pseudo, conf, s, (0.5, 1.5),
                                                         "classmix", generator))
        outputs = timed("student forward", lambda aug=aug: student_outputs(
            student, images_l, aug, args.student_pass))

        def losses(outputs=outputs, aug_labels=aug_labels, aug_conf=aug_conf):
            logits, mu, var = outputs
            sup = F.cross_entropy(upsample(logits[:b], (s, s)), labels_l, ignore_index=255)
            unsup = pseudo_label_ce(upsample(logits[b:], (s, s)), aug_labels, aug_conf)
            part = contrastive_labels(labels_l, aug_labels, aug_conf, 0.7, logits.shape[-2:])
            contrastive = prcl_loss(mu, var, part, logits.detach().softmax(1), generator)
            return sup + unsup + contrastive

        total = timed("loss forward", losses)
        grads = timed("loss backward",
                      lambda total=total, outputs=outputs: torch.autograd.grad(
                          total, outputs, allow_unused=True))
        timed("student backward", lambda outputs=outputs, grads=grads: torch.autograd.backward(
            [o for o, g in zip(outputs, grads, strict=True) if g is not None],
            [g for g in grads if g is not None]))

        def optimise(step=step):
            for opt in optimizers:
                opt.step()
                opt.zero_grad(set_to_none=True)
            ema_update(teacher, student, step, 0.99)

        timed("optimiser + EMA", optimise)

    print(f"device {device}, {torch.get_num_threads()} threads, {args.encoder}, "
          f"{b}+{b} images of {s}x{s}, student pass {args.student_pass}, "
          f"{cfg.loss.num_queries} queries x "
          f"{cfg.loss.num_negatives} negatives; mean of {args.steps} steps after a warm-up\n")
    print("| phase | seconds | share |\n|---|---:|---:|")
    means = {k: sum(v[1:]) / len(v[1:]) for k, v in times.items()}
    total_time = sum(means.values())
    for name, value in means.items():
        print(f"| {name} | {value:.3f} | {value / total_time:.0%} |")
    print(f"| **step** | **{total_time:.3f}** | 100% |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    parser.add_argument("--batch", type=int, default=2, help="labelled (= unlabelled) images")
    parser.add_argument("--amp", default="auto", choices=CHOICES["train.amp"])
    parser.add_argument("--compile", action="store_true", help="train.compile=true")
    parser.add_argument("--memory-format", default="auto",
                        choices=CHOICES["train.memory_format"])
    parser.add_argument("--student-pass", default="separate",
                        choices=CHOICES["train.student_pass"], help="train.student_pass")
    parser.add_argument("--steps", type=int, default=5, help="timed steps")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    parser.add_argument("--encoder", default="resnet101")
    parser.add_argument("--size", type=int, default=321)
    parser.add_argument("--phases", action="store_true",
                        help="time each phase of an eager fp32 step instead")
    args = parser.parse_args()
    if args.steps < 1 or args.warmup < 1 or args.batch < 1:
        sys.exit("--steps, --warmup and --batch must be at least 1")
    (phases if args.phases else whole_step)(args)


if __name__ == "__main__":
    main()
