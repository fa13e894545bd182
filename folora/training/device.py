"""Where a run computes: the device and the CPU threads."""

from __future__ import annotations

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
