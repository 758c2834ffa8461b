"""PRCL loss at VOC scale: the vectorised ``PRCLLoss`` against the loop implementation, and
the cost of the 2024 extension's options (global prototypes + virtual negatives) on top.

Usage: ``.venv/bin/python benchmarks/loss.py`` (about four minutes on a busy 2-core CPU).

Setting: batch 4 at 81x81 (stride 4 of 321 crops), 256 dims, 21 classes of which 6 present,
10% of pixels not taking part, 256 queries, 512 negatives, temperature 100. "GDP + VN" adds
``prototypes="global"`` and 32 virtual negatives per anchor and other class from global
prototypes that have seen all 21 classes, i.e. 640 virtual negatives per anchor next to the
512 real ones. Every vectorised loss first sees a batch holding every class (so the GDP holds
21 classes), then one warm-up pass on the VOC-scale batch.

Every worker is a fresh subprocess with the same seeded inputs, 2 threads and
``OMP_WAIT_POLICY=PASSIVE`` unless the environment sets it (on a busy machine, spinning OpenMP
threads otherwise wait whole timeslices for each other at every op).
Time: forward+backward. The two vectorised losses alternate pass by pass inside one process
(5 passes each, in 2 processes), so that a change in machine load hits both; the loop runs one
timed pass in each of 2 processes. The table gives the best pass of each, in wall-clock time
and in the process's CPU time (which a busy machine disturbs less: waiting for a core does not
count).
Peak memory, one fresh process per implementation: the peak resident set size (``VmHWM``) is
reset through ``/proc/self/clear_refs`` after the inputs are built and the warm-up has run;
the figure is ``VmHWM`` after one pass minus ``VmRSS`` before it, i.e. the peak growth caused
by the loss: activations, autograd buffers and the gradients of mu and var (2 x 27 MiB, which
every implementation needs). These workers run with ``MALLOC_MMAP_THRESHOLD_=131072``: glibc
then maps every large block afresh and returns it when freed, instead of keeping the blocks of
the warm-up (its default, adaptive threshold), which would hide the pass's peak in memory
already counted in ``VmRSS``; the timing workers keep the default. Linux only.
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
VIRTUAL, RADIUS = 32, 1.0
PASSES, PROCESSES = 5, 2
NAMES = {"vectorised": "`PRCLLoss`", "gdp_vn": f"`PRCLLoss`, GDP + VN (K = {VIRTUAL})",
         "loop": "loop (`tests/prcl_reference.py`)"}


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


def _losses(mu, var, labels, probs, names):
    """name -> ``f(seed) -> loss value``: one forward+backward of that implementation, after
    its warm-up."""
    extension = {"prototypes": "global", "virtual_negatives": VIRTUAL, "virtual_radius": RADIUS}
    every_class = torch.arange(BATCH * SIZE * SIZE).remainder(CLASSES).view_as(labels)
    passes = {}
    for name in names:
        if name == "loop":
            def one_pass(seed):
                return loop_prcl_loss(mu, var, labels, probs, QUERIES, NEGATIVES, TEMPERATURE,
                                      generator=torch.Generator().manual_seed(seed))
        else:
            prcl = PRCLLoss(QUERIES, NEGATIVES, TEMPERATURE,
                            **(extension if name == "gdp_vn" else {}))
            prcl(mu, var, every_class, probs, generator=torch.Generator().manual_seed(0))
            if name == "gdp_vn":
                assert prcl.global_prototypes.summary()["gdp_classes_seen"] == CLASSES

            def one_pass(seed, prcl=prcl):
                return prcl(mu, var, labels, probs, generator=torch.Generator().manual_seed(seed))

        def step(seed, one_pass=one_pass):
            mu.grad = var.grad = None
            loss = one_pass(seed)
            loss.backward()
            return loss.item()

        step(0)
        passes[name] = step
    return passes


def worker(mode: str) -> dict:
    """``time``: alternate the vectorised losses; ``time-loop``; ``memory-NAME``."""
    torch.set_num_threads(2)
    mu, var, labels, probs = voc_scale_inputs()
    if mode.startswith("memory-"):
        name = mode.removeprefix("memory-")
        step = _losses(mu, var, labels, probs, [name])[name]
        mu.grad = var.grad = None
        Path("/proc/self/clear_refs").write_text("5")
        rss_before = _kib("VmRSS")
        step(1)
        return {name: {"peak_mib": (_kib("VmHWM") - rss_before) / 1024}}
    names = ["loop"] if mode == "time-loop" else ["vectorised", "gdp_vn"]
    passes = _losses(mu, var, labels, probs, names)
    out = {name: {"seconds": [], "cpu_seconds": [], "losses": []} for name in names}
    for seed in range(1, (1 if mode == "time-loop" else PASSES) + 1):
        for name in names if seed % 2 else names[::-1]:
            start, start_cpu = time.perf_counter(), time.process_time()
            out[name]["losses"].append(passes[name](seed))
            out[name]["cpu_seconds"].append(time.process_time() - start_cpu)
            out[name]["seconds"].append(time.perf_counter() - start)
    return out


def measure(env: dict) -> dict:
    """Run the workers; best time, peak memory and mean loss of each implementation."""
    memory_env = {**env, "MALLOC_MMAP_THRESHOLD_": "131072"}
    jobs = [("time", env), ("time-loop", env)] * PROCESSES + [
        (f"memory-{name}", memory_env) for name in NAMES]
    merged = {name: {"seconds": [], "cpu_seconds": [], "losses": []} for name in NAMES}
    for mode, job_env in jobs:
        out = subprocess.run([sys.executable, __file__, mode], capture_output=True, text=True,
                             check=True, env=job_env).stdout
        for name, values in json.loads(out.strip().splitlines()[-1]).items():
            for key, value in values.items():
                merged[name][key] = value if key == "peak_mib" else merged[name][key] + value
    return {name: {"seconds": min(m["seconds"]), "cpu_seconds": min(m["cpu_seconds"]),
                   "peak_mib": m["peak_mib"], "loss": statistics.mean(m["losses"])}
            for name, m in merged.items()}


def main() -> None:
    env = {**os.environ, "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE")}
    load_before = os.getloadavg()[0]
    results = measure(env)
    vec, gdp, loop = results["vectorised"], results["gdp_vn"], results["loop"]
    print(f"PRCL loss, forward+backward, batch {BATCH} at {SIZE}x{SIZE}, {DIMS} dims, "
          f"{CLASSES} classes ({PRESENT} present), {QUERIES} queries, {NEGATIVES} negatives, "
          f"2 threads, OMP_WAIT_POLICY={env['OMP_WAIT_POLICY']}, torch {torch.__version__}, "
          f"load average {load_before:.1f} before / {os.getloadavg()[0]:.1f} after\n")
    print("| implementation | forward+backward (s, best) | CPU time (s, best) "
          "| peak memory (MiB) | mean loss |")
    print("|---|---:|---:|---:|---:|")
    for name, r in results.items():
        print(f"| {NAMES[name]} | {r['seconds']:.3f} | {r['cpu_seconds']:.3f} "
              f"| {r['peak_mib']:.0f} | {r['loss']:.4f} |")
    for label, a, b, digits in (("loop / vectorised", loop, vec, 1),
                                ("GDP + VN / vectorised", gdp, vec, 2)):
        print(f"| **{label}** | **{a['seconds'] / b['seconds']:.{digits}f}x** "
              f"| **{a['cpu_seconds'] / b['cpu_seconds']:.{digits}f}x** "
              f"| **{a['peak_mib'] / b['peak_mib']:.{digits}f}x** | |")
    print(f"\nGDP + VN cost {gdp['seconds'] / vec['seconds'] - 1:+.1%} time "
          f"({gdp['cpu_seconds'] / vec['cpu_seconds'] - 1:+.1%} CPU time) and "
          f"{gdp['peak_mib'] / vec['peak_mib'] - 1:+.1%} memory on top of the loss "
          f"({gdp['peak_mib'] - vec['peak_mib']:+.1f} MiB)")


if __name__ == "__main__":
    if len(sys.argv) > 1:
        print(json.dumps(worker(sys.argv[1])))
    else:
        main()
