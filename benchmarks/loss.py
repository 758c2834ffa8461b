"""PRCL loss at VOC scale: the vectorised ``PRCLLoss`` against the loop implementation.

Usage: ``.venv/bin/python benchmarks/loss.py`` (about a minute on a 2-core CPU).

Setting: batch 4 at 81x81 (stride 4 of 321 crops), 256 dims, 21 classes of which 6 present,
10% of pixels not taking part, 256 queries, 512 negatives, temperature 100.

Each measurement runs in a fresh subprocess with the same seeded inputs, 2 threads and
``OMP_WAIT_POLICY=PASSIVE`` unless the environment sets it (on a busy machine, spinning OpenMP
threads otherwise wait whole timeslices for each other at every op): one warm-up
forward+backward, then a timed one. The two implementations alternate over 2 rounds so that a
change in machine load hits both; the table gives the median (mean) of the 2 timed passes and
the larger peak.
Peak memory: the peak resident set size (``VmHWM``) is reset through
``/proc/self/clear_refs`` after the inputs are built and the warm-up has run; the figure is
``VmHWM`` after the timed passes minus ``VmRSS`` before them, i.e. the peak growth caused by
the loss: activations, autograd buffers and the gradients of mu and var (2 x 27 MiB, which
both implementations need). Linux only.
"""

import json
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from prcl_reference import loop_prcl_loss

from prcl.losses import PRCLLoss

BATCH, DIMS, SIZE, CLASSES, PRESENT = 4, 256, 81, 21, 6
QUERIES, NEGATIVES, TEMPERATURE = 256, 512, 100.0
REPEATS, ROUNDS = 1, 2


def voc_scale_inputs(seed: int = 0):
    """mu, var [4, 256, 81, 81] (leaf tensors), labels [4, 81, 81], probs [4, 21, 81, 81]."""
    g = torch.Generator().manual_seed(seed)
    shape = (BATCH, DIMS, SIZE, SIZE)
    mu = torch.randn(shape, generator=g).requires_grad_()
    var = torch.rand(shape, generator=g).mul_(0.9).add_(0.05).requires_grad_()
    present = torch.randperm(CLASSES, generator=g)[:PRESENT]
    labels = present[torch.randint(PRESENT, (BATCH, SIZE, SIZE), generator=g)]
    labels[torch.rand(BATCH, SIZE, SIZE, generator=g) < 0.1] = -1
    probs = torch.randn(BATCH, CLASSES, SIZE, SIZE, generator=g).mul_(3).softmax(1)
    return mu, var, labels, probs


def _kib(field: str) -> int:
    return int(re.search(rf"{field}:\s+(\d+) kB", Path("/proc/self/status").read_text())[1])


def worker(name: str) -> dict:
    """Time and measure one implementation in this (fresh) process."""
    torch.set_num_threads(2)
    mu, var, labels, probs = voc_scale_inputs()
    prcl = PRCLLoss(QUERIES, NEGATIVES, TEMPERATURE)

    def step(seed: int) -> float:
        mu.grad = var.grad = None
        g = torch.Generator().manual_seed(seed)
        if name == "vectorised":
            loss = prcl(mu, var, labels, probs, generator=g)
        else:
            loss = loop_prcl_loss(mu, var, labels, probs, QUERIES, NEGATIVES, TEMPERATURE,
                                  generator=g)
        loss.backward()
        return loss.item()

    step(0)
    mu.grad = var.grad = None
    Path("/proc/self/clear_refs").write_text("5")
    rss_before = _kib("VmRSS")
    seconds, values = [], []
    for seed in range(1, REPEATS + 1):
        start = time.perf_counter()
        values.append(step(seed))
        seconds.append(time.perf_counter() - start)
    peak_mib = (_kib("VmHWM") - rss_before) / 1024
    return {"seconds": seconds, "peak_mib": peak_mib, "losses": values}


def measure(env: dict) -> dict:
    """Alternate fresh worker processes; summarise each implementation over its runs."""
    runs = {"vectorised": [], "loop": []}
    for _ in range(ROUNDS):
        for name, measured in runs.items():
            out = subprocess.run([sys.executable, __file__, name], capture_output=True,
                                 text=True, check=True, env=env).stdout
            measured.append(json.loads(out.strip().splitlines()[-1]))
    return {
        name: {"seconds": statistics.median(t for m in measured for t in m["seconds"]),
               "peak_mib": max(m["peak_mib"] for m in measured),
               "loss": statistics.mean(v for m in measured for v in m["losses"])}
        for name, measured in runs.items()
    }


def main() -> None:
    env = {**os.environ, "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE")}
    load_before = os.getloadavg()[0]
    results = measure(env)
    vec, loop = results["vectorised"], results["loop"]
    print(f"PRCL loss, forward+backward, batch {BATCH} at {SIZE}x{SIZE}, {DIMS} dims, "
          f"{CLASSES} classes ({PRESENT} present), {QUERIES} queries, {NEGATIVES} negatives, "
          f"2 threads, OMP_WAIT_POLICY={env['OMP_WAIT_POLICY']}, torch {torch.__version__}, "
          f"load average {load_before:.1f} before / {os.getloadavg()[0]:.1f} after\n")
    print(f"| implementation | forward+backward (s, median of {REPEATS * ROUNDS}) "
          "| peak memory (MiB) | mean loss |")
    print("|---|---:|---:|---:|")
    for name, r in results.items():
        print(f"| {name} | {r['seconds']:.3f} | {r['peak_mib']:.0f} | {r['loss']:.4f} |")
    print(f"| **loop / vectorised** | **{loop['seconds'] / vec['seconds']:.1f}x** "
          f"| **{loop['peak_mib'] / vec['peak_mib']:.1f}x** | |")


if __name__ == "__main__":
    if len(sys.argv) > 1:
        print(json.dumps(worker(sys.argv[1])))
    else:
        main()
