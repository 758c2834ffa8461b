"""Where one training step spends its time: ResNet-101 DeepLabv3+, 321x321 crops, 2 labelled
+ 2 unlabelled images, the authors' loss settings, on this machine's CPU (or GPU if present).

The step of ``prcl.engine.step.prcl_step_losses`` is taken apart so that each phase can be
timed on its own: the teacher's pseudo-labels, the unlabelled augmentation, the student's
forward and backward, the losses' forward and backward (down to the network outputs), and the
two optimisers with the EMA update.

    .venv/bin/python benchmarks/step.py [--steps 3] [--encoder resnet101] [--size 321]
"""

from __future__ import annotations

import argparse
import copy
import time
from collections import defaultdict

import torch
import torch.nn.functional as F

from prcl.config import load_config
from prcl.data import mix, normalize, photometric, random_scale_crop
from prcl.engine.ema import ema_update
from prcl.engine.step import (
    contrastive_labels,
    prcl_loss_from_config,
    teacher_pseudo_labels,
    upsample,
)
from prcl.losses import pseudo_label_ce
from prcl.models import build_model


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=3, help="timed steps (after one warm-up)")
    parser.add_argument("--encoder", default="resnet101")
    parser.add_argument("--size", type=int, default=321)
    parser.add_argument("--batch", type=int, default=2)
    args = parser.parse_args()

    cfg = load_config("voc_662", [f"data.crop_size={args.size}"])
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    student = build_model(args.encoder, 21).to(device).train()
    teacher = copy.deepcopy(student).requires_grad_(False)
    groups = student.parameter_groups()
    optimizers = [torch.optim.SGD(groups[k], lr=lr, momentum=0.9, nesterov=True,
                                  weight_decay=5e-4)
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

        def augment(pseudo=pseudo, conf=conf):
            batch = random_scale_crop(images_u, pseudo, conf, s, (0.5, 1.5), generator,
                                      hflip=True)
            images, labels, confidence = mix(*batch, "classmix", generator)
            return photometric(images, generator), labels, confidence

        aug, aug_labels, aug_conf = timed("augmentation", augment)
        out_l, out_u = timed("student forward",
                             lambda aug=aug: (student(normalize(images_l)),
                                              student(normalize(aug))))

        def losses(out_l=out_l, out_u=out_u, aug_labels=aug_labels, aug_conf=aug_conf):
            sup = F.cross_entropy(upsample(out_l.logits, (s, s)), labels_l, ignore_index=255)
            unsup = pseudo_label_ce(upsample(out_u.logits, (s, s)), aug_labels, aug_conf)
            logits = torch.cat([out_l.logits, out_u.logits])
            part = contrastive_labels(labels_l, aug_labels, aug_conf, 0.7, logits.shape[-2:])
            contrastive = prcl_loss(torch.cat([out_l.mu, out_u.mu]),
                                    torch.cat([out_l.var, out_u.var]), part,
                                    logits.detach().softmax(1), generator)
            return sup + unsup + contrastive

        total = timed("loss forward", losses)
        outputs = [t for o in (out_l, out_u) for t in (o.logits, o.mu, o.var)]
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
          f"{b}+{b} images of {s}x{s}, {cfg.loss.num_queries} queries x "
          f"{cfg.loss.num_negatives} negatives; mean of {args.steps} steps after a warm-up\n")
    print("| phase | seconds | share |\n|---|---:|---:|")
    means = {k: sum(v[1:]) / len(v[1:]) for k, v in times.items()}
    total_time = sum(means.values())
    for name, value in means.items():
        print(f"| {name} | {value:.3f} | {value / total_time:.0%} |")
    print(f"| **step** | **{total_time:.3f}** | 100% |")


if __name__ == "__main__":
    main()
