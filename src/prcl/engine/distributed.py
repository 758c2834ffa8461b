"""Several processes with torchrun: process group, cross-rank sums and the class-mix partner.

``torchrun --nproc_per_node=N -m prcl train ...`` sets RANK, WORLD_SIZE, LOCAL_RANK and the
rendezvous address; ``setup_runtime`` reads them and starts the process group (NCCL on CUDA,
gloo on CPU). Without torchrun the run is a single process and nothing here communicates.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from prcl.errors import PrclError


@dataclass(frozen=True)
class Runtime:
    device: torch.device
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def select_device(name: str, local_rank: int = 0) -> torch.device:
    """``auto``: this process's GPU when CUDA is present, else the CPU. A device this machine
    does not have raises ``PrclError`` naming those it has."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", local_rank)
    present = available_devices()
    if device.type != "cpu" and str(device) not in present:
        raise PrclError(f"train.device={name}, but this machine (or this build of PyTorch) "
                        f"has no {device}: use one of {', '.join(present)}, or auto")
    return device


def available_devices() -> list[str]:
    """The devices PyTorch can use here: cpu, cuda:0 ... cuda:N-1, mps."""
    found = ["cpu", *(f"cuda:{i}" for i in range(torch.cuda.device_count()))]
    if torch.backends.mps.is_available():
        found.append("mps")
    return found


def setup_runtime(device: str = "auto") -> Runtime:
    """Join the process group that torchrun describes in the environment, if any."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    chosen = select_device(device, local_rank)
    if chosen.type == "cuda":
        torch.cuda.set_device(chosen)
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if chosen.type == "cuda" else "gloo")
    rank = dist.get_rank() if dist.is_initialized() else 0
    return Runtime(chosen, rank, world_size, local_rank)


def all_reduce_sum(tensor: Tensor) -> Tensor:
    """Sum ``tensor`` over every rank (in place) and return it; the PRCL loss passes its
    per-class sums through this so prototypes see every rank's pixels (docs/method.md 4)."""
    dist.all_reduce(tensor)
    return tensor


def average_buffers(module: nn.Module) -> None:
    """Average floating-point buffers (BatchNorm statistics) over ranks, so every rank holds
    the same network before it is evaluated or saved."""
    buffers = [b for b in module.buffers() if b.is_floating_point()]
    if not buffers:
        return
    flat = torch.cat([b.reshape(-1) for b in buffers])
    dist.all_reduce(flat)
    flat /= dist.get_world_size()
    offset = 0
    for b in buffers:
        b.copy_(flat[offset:offset + b.numel()].view_as(b))
        offset += b.numel()


def gather_objects(obj: Any) -> list[Any]:
    """``[obj of rank 0, obj of rank 1, ...]`` on every rank; ``[obj]`` in a single process."""
    if not dist.is_initialized():
        return [obj]
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, obj)
    return gathered


def gathered_partners(*tensors: Tensor) -> tuple[Tensor, ...]:
    """For class-mix across ranks (docs/method.md section 9): gather every rank's batch, number
    the images globally (rank r holds r*B ... r*B + B - 1), and return for each local image i
    the image (r*B + i + 1) mod (W*B) of the gathered batch, with its label and confidence.
    The authors index the gathered batch modulo the per-GPU batch, so most partners come from
    the first GPU; here each image's partner is its global successor."""
    rank, world = dist.get_rank(), dist.get_world_size()
    partners = []
    for t in tensors:
        gathered = [torch.empty_like(t) for _ in range(world)]
        dist.all_gather(gathered, t.contiguous())
        everything = torch.cat(gathered)
        b = t.shape[0]
        index = (torch.arange(b, device=t.device) + rank * b + 1) % (world * b)
        partners.append(everything[index])
    return tuple(partners)
