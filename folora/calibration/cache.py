"""A method's calibration, computed once and reused by every run that would compute the same one.

FoLoRA's calibration (proxy samples, both covariances of every input group, the generalized eigenbases) depends on
the base model, the task's first training examples, the seed, the precision of its forward passes and a few of the
method's options, and on none of the options that only steer training: the gate, κ, A's initialization. A sweep
over κ, or an ablation of the gate, would compute the same bases again in every run; likewise LaLoRA's curvature in
a sweep over λ, which only scales its penalty. A method says what its
calibration depends on (`Method.calibration_identity`); the runner keys the cache with that, the model's fingerprint,
the eval precision, the device type and the digest of the code (`checkpoint.code_digest`: any edit to the code
computes anew), and hands a cached state to `prepare` as `ctx.calibration`, the path a resumed run takes, so the
restored calibration is bit-identical to the computed one. A method whose identity is None is not cached.

Files: `$FOLORA_CACHE/calibrations/<key>.pt` (FoLoRA at SmolLM2-135M: about 0.8 GB each; `make clean-cache` removes
them). Written atomically; a file that cannot be read is computed again.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

from folora.results import write_atomic

FORMAT = 1


def cache_key(identity: dict, *, model_fingerprint: str, precision: str, device: torch.device, code: str) -> str:
    """The file stem of a calibration: everything it depends on, hashed."""
    parts = {"identity": identity, "model": model_fingerprint, "precision": precision, "device": device.type,
             "code": code}
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:24]


def path_of(cache_dir: Path, key: str) -> Path:
    return Path(cache_dir) / "calibrations" / f"{key}.pt"


def load(cache_dir: Path, key: str) -> dict | None:
    """The cached calibration state, or None where there is none (or it cannot be read: computed again)."""
    path = path_of(cache_dir, key)
    if not path.is_file():
        return None
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # truncated or corrupted: the run computes it and writes it again
        return None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT or payload.get("key") != key:
        return None
    return payload["state"]


def save(cache_dir: Path, key: str, state: dict) -> Path:
    path = path_of(cache_dir, key)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, lambda handle: torch.save({"format": FORMAT, "key": key, "state": state}, handle))
    return path
