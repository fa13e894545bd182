"""Timing blocks of work: perf_counter on CPU, CUDA events on a GPU."""

from __future__ import annotations

import contextlib
import time

import torch


class Clock:
    """Seconds of a block of work: perf_counter on CPU, CUDA events (after a synchronize) on a GPU."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"

    @contextlib.contextmanager
    def __call__(self, into: list):
        if self.cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            yield
            end.record()
            torch.cuda.synchronize()
            into.append(start.elapsed_time(end) / 1000)
        else:
            start = time.perf_counter()
            yield
            into.append(time.perf_counter() - start)
