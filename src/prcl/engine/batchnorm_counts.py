"""BatchNorm's batch counters, counted in Python during a step (docs/method.md section 7).

Every BatchNorm layer adds 1 to its ``num_batches_tracked`` on each forward pass in training
mode: one tiny kernel per layer and pass (about 300 per PRCL step of a ResNet-101, two
student passes and the teacher's), for a counter that nothing reads while ``momentum`` is
set. ``BatchNormCounts.deferred`` lets the layers count in Python meanwhile and adds the
counts afterwards, one foreach call per distinct count: the counters end exactly where the
per-pass additions would have left them.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm


class _CallCount:
    """Stands in for one layer's ``num_batches_tracked`` while deferred: BatchNorm's forward
    only calls ``add_(1)`` on it when ``momentum`` is set."""

    def __init__(self) -> None:
        self.calls = 0

    def add_(self, value: int) -> _CallCount:
        self.calls += value
        return self


class BatchNormCounts:
    """The BatchNorm layers of ``networks`` whose counter only counts (running statistics
    tracked, ``momentum`` set); each layer once, however many networks share it."""

    def __init__(self, *networks: nn.Module) -> None:
        layers = {id(m): m for net in networks for m in net.modules()
                  if isinstance(m, _BatchNorm) and m.track_running_stats
                  and m.momentum is not None and m.num_batches_tracked is not None}
        self.layers = list(layers.values())

    @contextmanager
    def deferred(self) -> Iterator[None]:
        """Inside: forward passes count in Python; on leaving, the counters are added to.
        Nothing inside may read the counters as tensors (``state_dict``, ``buffers()``)."""
        counters = [m.num_batches_tracked for m in self.layers]
        stand_ins = [_CallCount() for _ in self.layers]
        for layer, stand_in in zip(self.layers, stand_ins, strict=True):
            layer._buffers["num_batches_tracked"] = stand_in
        try:
            yield
        finally:
            by_calls: dict[int, list[torch.Tensor]] = defaultdict(list)
            for layer, counter, stand_in in zip(self.layers, counters, stand_ins, strict=True):
                layer._buffers["num_batches_tracked"] = counter
                if stand_in.calls:
                    by_calls[stand_in.calls].append(counter)
            for calls, group in by_calls.items():
                torch._foreach_add_(group, calls)
