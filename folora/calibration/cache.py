"""A method's calibration, computed once and reused by every run that would compute the same one.

FoLoRA's calibration (proxy samples, both covariances of every input group, the generalized eigenbases) depends on
the base model, the task's first training examples, the seed, the precision of its forward passes and a few of the
method's options, and on none of the options that only steer training: the gate, κ, A's initialization. A sweep
over κ, or an ablation of the gate, would compute the same bases again in every run; likewise LaLoRA's curvature in
a sweep over λ, which only scales its penalty. A method says what its
calibration depends on (`Method.calibration_identity`); the cache is keyed by that, the model's fingerprint,
the eval precision, the device type and the digest of the method's code and every folora module it imports
(`calibration_identity`, through folora/records/identity.py: an edit to that code computes anew), and hands a cached state to `prepare` as `ctx.calibration`, the path a resumed run takes, so the
restored calibration is bit-identical to the computed one. A method whose identity is None is not cached.

Files: `$FOLORA_CACHE/calibrations/<key>.pt` (FoLoRA at SmolLM2-135M: about 0.8 GB each; `make clean-cache` removes
them). Written atomically; a file that cannot be read is computed again.
"""

from __future__ import annotations

from pathlib import Path

import torch

from folora.records.identity import Identity, code_part, identity
from folora.records.io import write_atomic

FORMAT = 1


def calibration_identity(method: type, options: dict, *, model_fingerprint: str, precision: str,
                         device: torch.device) -> Identity:
    """What a calibration depends on: the method's own statement of it (`Method.calibration_identity`: the options
    it reads and fingerprints of the data), the precision and device type of its passes, the base model, and the
    code of the method's module with every folora module it imports."""
    return identity("calibration", config={"method": f"{method.__module__}.{method.__qualname__}", **options,
                                           "precision": precision, "device": device.type},
                    data={"model": model_fingerprint},
                    code=code_part(method.__module__, packages=("torch", "transformers", "peft")))


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
