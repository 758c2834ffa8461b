"""Endless, resumable training loaders.

Training draws batches forever (steps, not epochs, drive the schedule). Each sample index comes
with its own augmentation seed, derived from (run seed, pass, rank, position), so the data a
run sees depends on nothing but the seed and how many samples it has consumed: a resumed run
continues with exactly the batches an uninterrupted run would have drawn, whatever the number
of DataLoader workers.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler


def sample_seed(*keys: int) -> int:
    """A well-mixed 63-bit seed from integer keys."""
    return int(np.random.SeedSequence(list(keys)).generate_state(2, np.uint64)[0] >> np.uint64(1))


class InfiniteSampler(Sampler[tuple[int, int]]):
    """Shuffled passes over ``size`` items without end, yielding (index, augmentation seed).

    Pass p is a permutation seeded by (seed, p); with ``world_size`` ranks it is padded to a
    multiple of the world size and rank r takes every world_size-th index from position r, as
    ``DistributedSampler`` does. ``start`` skips the samples this rank already consumed.
    """

    def __init__(self, size: int, seed: int, rank: int = 0, world_size: int = 1,
                 start: int = 0) -> None:
        if size <= 0:
            raise ValueError("cannot sample from an empty dataset")
        self.size, self.seed, self.rank, self.world_size = size, seed, rank, world_size
        self.per_rank = math.ceil(size / world_size)
        self.start = start

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch, offset = divmod(self.start, self.per_rank)
        while True:
            order = torch.randperm(self.size, generator=torch.Generator().manual_seed(
                sample_seed(self.seed, epoch)))
            order = order.repeat(math.ceil(self.per_rank * self.world_size / self.size))
            mine = order[: self.per_rank * self.world_size][self.rank :: self.world_size]
            for position in range(offset, self.per_rank):
                yield int(mine[position]), sample_seed(self.seed, epoch, self.rank, position)
            epoch, offset = epoch + 1, 0


class SeededSamples(Dataset):
    """``dataset[index]`` run with torch's global RNG seeded by the sample's own seed (and
    restored afterwards), so random augmentations inside the dataset are reproducible."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, item: tuple[int, int]):
        index, seed = item
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return self.dataset[index]


def endless_loader(
    dataset: Dataset,
    batch_size: int,
    seed: int,
    rank: int = 0,
    world_size: int = 1,
    start: int = 0,
    num_workers: int = 0,
    pin_memory: bool = False,
) -> Iterator:
    """An iterator of batches that never ends; ``start``: samples this rank already used."""
    sampler = InfiniteSampler(len(dataset), seed, rank, world_size, start)
    loader = DataLoader(
        SeededSamples(dataset),
        batch_size=batch_size,
        sampler=sampler,
        num_workers=num_workers,
        pin_memory=pin_memory,
        drop_last=True,
        persistent_workers=num_workers > 0,
    )
    return iter(loader)


def worker_error_message(error: BaseException) -> str:
    """The message of an error raised inside a DataLoader worker, without the worker's
    traceback that torch writes around it when it raises it again in the main process."""
    text = str(error)
    if not text.startswith("Caught "):
        return text
    last = text.strip().splitlines()[-1]  # "prcl.errors.DataError: <the message>"
    return last.split(": ", 1)[1] if ": " in last else last
