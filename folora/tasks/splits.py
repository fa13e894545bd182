"""Train / validation / test by a hash of a key (a question, an operation chain, a request): an item's split is a
function of its text, so no item can land in two splits, whatever the seed or the requested sizes."""

from __future__ import annotations

import hashlib

SPLIT_BUCKETS = {"train": (0, 80), "validation": (80, 90), "test": (90, 100)}


def split_of(key: str) -> str:
    bucket = int(hashlib.sha256(key.encode()).hexdigest(), 16) % 100
    return next(name for name, (low, high) in SPLIT_BUCKETS.items() if low <= bucket < high)


def check_split_name(split: str) -> None:
    if split not in SPLIT_BUCKETS:
        raise ValueError(f"unknown split {split!r}; choose from {sorted(SPLIT_BUCKETS)}")
