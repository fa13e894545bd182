"""Where a run computes: the device, the CPU threads, and the memory a finished phase leaves behind."""

from __future__ import annotations

import ctypes
import ctypes.util
import gc

import torch
from omegaconf import DictConfig

from folora.errors import require


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    require(name == "cpu" or torch.cuda.is_available(), f"device={name!r} was asked for but CUDA is not available; use device=cpu.")
    return torch.device(name)


def apply_threads(cfg: DictConfig) -> None:
    """The CPU threads `cfg.threads` asks for (null: torch's default, every core)."""
    if cfg.get("threads"):
        torch.set_num_threads(int(cfg.threads))


def _malloc_trim():
    """glibc's `malloc_trim`, or None where the C library has none (macOS, musl)."""
    try:
        return getattr(ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6"), "malloc_trim", None)
    except OSError:
        return None


MALLOC_TRIM = _malloc_trim()


def release_memory(device: torch.device) -> None:
    """Hand the memory a finished phase freed back to the system, so that the next phase's peak does not stack on
    it: glibc keeps freed heap pages mapped (after 40 training steps of SmolLM2-135M, 1.7 GiB beyond the 1.1 GiB
    in use), and CUDA's caching allocator its unused blocks. Within a phase nothing is released: its allocations
    reuse those pages, which is faster than asking the system again."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    if MALLOC_TRIM is not None:
        MALLOC_TRIM(0)
