"""Images/s of the batched unlabelled pipeline against a per-image PIL pipeline
(docs/method.md 7.3-7.5).

Both pipelines do the same work on the same batch: random scale, pad, crop and horizontal
flip (p 0.5) of image, pseudo-label and confidence; classmix with the next image of the batch;
colour jitter (p 0.8) and Gaussian blur (p 0.5). The PIL pipeline is the leanest per-image
way to do it with PIL: each image to PIL once, through every step, back to tensors once.
With ``--authors`` a third run takes the route of the authors' code, which does more: two
round trips per image (geometry, then jitter, blur and flip after the mix), each
un-normalising the image and converting image, label and confidence to 8-bit PIL images and
back, and normalising again. Rounds of the runs alternate in one run so that a busy machine
slows them alike.

    python benchmarks/augment.py [--batch 16] [--sizes 321 128] [--seeds 8] [--repeats 8]
                                 [--threads 2] [--stages] [--authors]
"""

from __future__ import annotations

import argparse
import os
import random
import time

import numpy as np
import torch
import torchvision.transforms as T
import torchvision.transforms.functional as TF
from PIL import Image, ImageFilter

from prcl.data import IGNORE_INDEX, mix, photometric, random_scale_crop, strong_augment
from prcl.data.transforms import IMAGENET_MEAN, IMAGENET_STD, normalize

SCALE_RANGE = (0.5, 1.5)


def make_batch(batch: int, size: int, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """A batch shaped like the teacher's output: blocky pseudo-labels, smooth confidence."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.randint(0, 21, (batch, 1, 8, 8), generator=g).float()
    labels = torch.nn.functional.interpolate(coarse, size=(size, size), mode="nearest")[:, 0]
    images = torch.rand(batch, 3, size, size, generator=g)
    confidence = torch.rand(batch, size, size, generator=g)
    return images, labels.long(), confidence


def batched_pipeline(images, labels, confidence, crop, generator):
    """The library's pipeline as the trainer runs it: one call for the whole batch."""
    return strong_augment(images, labels, confidence, crop, SCALE_RANGE, "classmix", generator)


def _pil_geometry(image, label, conf, crop):
    """Per-image scale, pad (reflect / 255 / 0), crop and flip (p 0.5) with PIL."""
    width, height = image.size
    s = random.uniform(*SCALE_RANGE)
    size = (max(int(width * s), 1), max(int(height * s), 1))
    image = image.resize(size, Image.BILINEAR)
    label = label.resize(size, Image.NEAREST)
    conf = conf.resize(size, Image.NEAREST)
    pad_w, pad_h = max(crop - size[0], 0), max(crop - size[1], 0)
    if pad_w or pad_h:
        image = TF.pad(image, [0, 0, pad_w, pad_h], padding_mode="reflect")
        label = TF.pad(label, [0, 0, pad_w, pad_h], fill=IGNORE_INDEX)
        conf = TF.pad(conf, [0, 0, pad_w, pad_h], fill=0)
    top, left, h, w = T.RandomCrop.get_params(image, (crop, crop))
    out = [TF.crop(x, top, left, h, w) for x in (image, label, conf)]
    if random.random() < 0.5:
        out = [TF.hflip(x) for x in out]
    return out


def _classmix(arrays, i, channels: int = -1):
    """Image i keeps a random half of its classes and takes the rest from image i + 1; the
    image's channels are its last axis (PIL's layout) or, with channels 0, its first."""
    image, label, conf = arrays[i]
    p_image, p_label, p_conf = arrays[(i + 1) % len(arrays)]
    classes = [c for c in np.unique(label) if c not in (IGNORE_INDEX, -1)]
    keep = np.isin(label, random.sample(classes, len(classes) // 2))
    return (np.where(np.expand_dims(keep, channels), image, p_image),
            np.where(keep, label, p_label), np.where(keep, conf, p_conf))


def pil_pipeline(images, labels, confidence, crop, jitter):
    """The per-image PIL pipeline doing the same work."""
    arrays = []
    for image, label, conf in zip(images, labels, confidence, strict=True):
        pil = (TF.to_pil_image(image), Image.fromarray(label.numpy().astype(np.uint8)),
               Image.fromarray(conf.numpy()))
        arrays.append([np.asarray(x) for x in _pil_geometry(*pil, crop)])
    out_images, out_labels, out_conf = [], [], []
    for i in range(len(arrays)):
        image, label, conf = _classmix(arrays, i)
        image = Image.fromarray(image)
        if random.random() < 0.8:
            image = jitter(image)
        if random.random() < 0.5:
            image = image.filter(ImageFilter.GaussianBlur(radius=random.uniform(0.15, 1.15)))
        out_images.append(TF.to_tensor(image))
        out_labels.append(torch.from_numpy(label.astype(np.int64)))
        out_conf.append(torch.from_numpy(conf))
    return torch.stack(out_images), torch.stack(out_labels), torch.stack(out_conf)


def _authors_to_pil(image, label, conf):
    """One image of the authors' route to PIL: the normalised image back to [0, 1] (two
    normalisations), then image, label / 255 and confidence as 8-bit PIL images."""
    image = TF.normalize(image, [0.0] * 3, [1.0 / s for s in IMAGENET_STD])
    image = TF.normalize(image, [-m for m in IMAGENET_MEAN], [1.0] * 3)
    return (TF.to_pil_image(image), TF.to_pil_image((label.float() / 255.0)[None]),
            TF.to_pil_image(conf[None]))


def _authors_to_tensors(image, label, conf):
    """And back: to tensors, the label times 255 with 255 as -1, the image normalised."""
    label = (TF.to_tensor(label) * 255).long()[0]
    label[label == 255] = -1
    return (TF.normalize(TF.to_tensor(image), IMAGENET_MEAN, IMAGENET_STD), label,
            TF.to_tensor(conf)[0])


def authors_pipeline(images, labels, confidence, crop, jitter):
    """The same work by the route of the authors' code (images normalised): per image to
    PIL, scale, pad, crop and flip, back to tensors; classmix on the tensors; per image to
    PIL again, a resize and a crop to the same size, jitter and blur, back to tensors."""
    first = [_authors_to_tensors(*_pil_geometry(*_authors_to_pil(*x), crop))
             for x in zip(images, labels, confidence, strict=True)]
    arrays = [[t.numpy() for t in x] for x in first]
    out = []
    for i in range(len(arrays)):
        image, label, conf = (torch.from_numpy(x) for x in _classmix(arrays, i, channels=0))
        image, label, conf = _authors_to_pil(image, label, conf)
        image, label, conf = (TF.crop(TF.resize(x, [crop, crop]), 0, 0, crop, crop)
                              for x in (image, label, conf))
        if random.random() < 0.8:
            image = jitter(image)
        if random.random() < 0.5:
            image = image.filter(ImageFilter.GaussianBlur(radius=random.uniform(0.15, 1.15)))
        out.append(_authors_to_tensors(image, label, conf))
    return tuple(torch.stack(x) for x in zip(*out, strict=True))


def stage_runs(images, labels, confidence, size: int, seeds: int) -> dict:
    """The batched pipeline's three steps as separate runs of seed -> None, each on the
    output of the one before for that seed (computed once here)."""
    def generator(seed: int) -> torch.Generator:
        return torch.Generator().manual_seed(seed)

    cropped = [random_scale_crop(images, labels, confidence, size, SCALE_RANGE, generator(s),
                                 hflip=True) for s in range(seeds)]
    mixed = [mix(*cropped[s], mode="classmix", generator=generator(s)) for s in range(seeds)]
    return {
        "geometry": lambda s: random_scale_crop(images, labels, confidence, size, SCALE_RANGE,
                                                generator(s), hflip=True),
        "mix": lambda s: mix(*cropped[s], mode="classmix", generator=generator(s)),
        "photometric": lambda s: photometric(mixed[s][0], generator(s)),
    }


def measure(batch: int, size: int, seeds: int, repeats: int, stages: bool = False,
            authors: bool = False) -> dict[str, float]:
    """Seconds per batch of the batched and the PIL pipeline (with ``stages`` also of the
    batched pipeline's steps, with ``authors`` of the authors' route). Round r draws its
    random choices from seed r in every pipeline; rounds of the runs alternate, every seed
    runs `repeats` times and its fastest time counts (as timeit does), so load from other
    processes on a shared machine does not decide, while the average over seeds keeps the
    random work (how many images are blurred, the scales) fair."""
    images, labels, confidence = make_batch(batch, size)
    jitter = T.ColorJitter((0.75, 1.25), (0.75, 1.25), (0.75, 1.25), (-0.25, 0.25))

    def batched(seed: int) -> None:
        generator = torch.Generator().manual_seed(seed)
        batched_pipeline(images, labels, confidence, size, generator)

    def pil(seed: int) -> None:
        random.seed(seed)
        torch.manual_seed(seed)
        pil_pipeline(images, labels, confidence, size, jitter)

    def authors_route(seed: int) -> None:
        random.seed(seed)
        torch.manual_seed(seed)
        authors_pipeline(normalised, labels, confidence, size, jitter)

    runs = {"batched": batched, "pil": pil}
    if authors:
        normalised = normalize(images)  # the authors' route starts from normalised images
        runs["authors"] = authors_route
    if stages:
        runs.update(stage_runs(images, labels, confidence, size, seeds))
    best = {name: [float("inf")] * seeds for name in runs}
    for run in runs.values():
        run(0)
    for _ in range(repeats):
        for seed in range(seeds):
            for name, run in runs.items():
                start = time.perf_counter()
                run(seed)
                best[name][seed] = min(best[name][seed], time.perf_counter() - start)
    return {name: sum(times) / seeds for name, times in best.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--sizes", type=int, nargs="+", default=[321, 128])
    parser.add_argument("--seeds", type=int, default=8, help="rounds of random choices")
    parser.add_argument("--repeats", type=int, default=8, help="timings per round")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--stages", action="store_true",
                        help="also time the batched pipeline's geometry, mix and photometric")
    parser.add_argument("--authors", action="store_true",
                        help="also time the same work by the route of the authors' code")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    # OpenMP's wait policy decides what the batched pipeline's many short parallel operators
    # cost: PASSIVE (what prcl's CLI sets for training) puts the second thread to sleep after
    # each, and waking it costs more than a small operator.
    policy = os.environ.get("OMP_WAIT_POLICY", "unset")
    print(f"batch {args.batch}, {args.threads} threads, OMP_WAIT_POLICY={policy}, "
          f"scale {SCALE_RANGE}, classmix, CPU")
    authors = " authors' route (img/s) | ratio |" if args.authors else ""
    print(f"| crop | batched (img/s) | per-image PIL (img/s) | ratio |{authors}")
    print("|---:|---:|---:|---:|" + ("---:|---:|" if args.authors else ""))
    results = {size: measure(args.batch, size, args.seeds, args.repeats, args.stages,
                             args.authors) for size in args.sizes}
    for size, seconds in results.items():
        rate = {name: args.batch / t for name, t in seconds.items()}
        row = f"| {size} | {rate['batched']:.0f} | {rate['pil']:.0f} | "
        row += f"{rate['batched'] / rate['pil']:.1f}x |"
        if args.authors:
            row += f" {rate['authors']:.0f} | {rate['batched'] / rate['authors']:.1f}x |"
        print(row)
    if args.stages:
        print("\n| crop | geometry (ms) | mix (ms) | photometric (ms) | whole batched (ms) |")
        print("|---:|---:|---:|---:|---:|")
        for size, seconds in results.items():
            ms = {name: f"{1000 * t:.1f}" for name, t in seconds.items()}
            print(f"| {size} | {ms['geometry']} | {ms['mix']} | {ms['photometric']} | "
                  f"{ms['batched']} |")


if __name__ == "__main__":
    main()
