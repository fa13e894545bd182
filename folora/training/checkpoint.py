"""Checkpoints and exact resume (stop signals: folora/training/signals.py).

A run checkpoints into `<run folder>/checkpoint/` every `train.checkpoint_every` steps, and when SIGTERM or SIGUSR1
arrives (Slurm's preemption and time-limit warnings): the current step finishes, the checkpoint is written, and
the run stops with `status: interrupted`. Two files, each written atomically:

- `calibration.pt`, once after the method's `prepare`: what the method computed from data (FoLoRA's bases and
  covariances, LaLoRA's anchor and curvature), so a resumed run calibrates nothing again;
- `state.pt`, at each checkpoint: the trainable weights, the optimizer state (FoLoRA's spectral moments
  included), the schedule, every RNG state, the position in the training stream, the method's training-time
  state, and the loss curve, log records, trajectory and training time so far. (A resumed run's `timing` is that
  of the resumed process: phases done before the stop are not counted again.)

Starting the same config on that folder (a sweep restarted with `skip_completed=true`, a requeued Slurm job, or
`python -m folora.run ... hydra.run.dir=<folder>`) continues from the checkpoint. On CPU the resumed run's loss
curve and final scores are identical to an uninterrupted run's. A checkpoint written by a different config or
code version, or one that cannot be read, is refused with a message: it is never mixed into a run silently.
The checkpoint is removed when the run completes (`train.keep_checkpoint=true` keeps it).
"""

from __future__ import annotations

import errno
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from folora.errors import FoloraError
from folora.records.identity import (
    EXECUTION_KEYS,
    differences,
    flat_config,
    identity,
    package_versions,
    tree_digest,
    without_keys,
)
from folora.records.io import write_atomic
from folora.records.run_record import NUMERICS

FORMAT = 2   # 2: the identity's parts as folora.records.identity builds them


def checkpoint_identity(cfg: DictConfig, repo: Path) -> dict:
    """What a checkpoint must match to be resumed: the resolved config (less the execution keys) and the code (the
    digest of every file a run executes, and the versions of the packages that compute)."""
    values = without_keys(flat_config(OmegaConf.to_container(cfg, resolve=True)), EXECUTION_KEYS)
    code = {"files": tree_digest(repo), "numerics": NUMERICS,
            **package_versions(("torch", "transformers", "peft", "folora"))}
    return identity("checkpoint", config=values, code=code).parts


@dataclass
class Checkpointer:
    """The checkpoint folder of one run: writes, reads and checks its two files."""

    folder: Path
    identity: dict
    every: int = 0        # steps between checkpoints; 0: only when a stop signal arrives
    on_code_change: str = "refuse"   # a checkpoint of the same config written by other code: refuse | restart
    writer: bool = True   # false on the ranks of a distributed run other than rank 0: they read, rank 0 writes

    @property
    def state_path(self) -> Path:
        return self.folder / "state.pt"

    @property
    def calibration_path(self) -> Path:
        return self.folder / "calibration.pt"

    def due(self, step: int, total: int) -> bool:
        """A checkpoint every `every` steps before the last (and, decided by the loop, when a stop signal arrived)."""
        return self.every > 0 and step % self.every == 0 and step < total

    def save_state(self, state: dict) -> float:
        """Write the training state; the seconds it took."""
        return self._save(self.state_path, state, f"the checkpoint of step {state['step']}")

    def save_calibration(self, state: dict) -> float:
        return self._save(self.calibration_path, state, "the method's calibration")

    def load_state(self) -> dict | None:
        return self._load(self.state_path)

    def load_calibration(self) -> dict | None:
        return self._load(self.calibration_path)

    def remove(self) -> None:
        if not self.writer:
            return
        for path in (self.state_path, self.calibration_path):
            path.unlink(missing_ok=True)
        if self.folder.is_dir() and not any(self.folder.iterdir()):
            self.folder.rmdir()

    def _save(self, path: Path, payload: dict, what: str) -> float:
        if not self.writer:
            return 0.0
        start = time.perf_counter()
        try:
            write_atomic(path, lambda handle: torch.save({"format": FORMAT, "identity": self.identity, **payload}, handle))
        except OSError as error:
            kept = "the previous checkpoint is kept" if path.exists() else "no checkpoint was written before"
            advice = ("free disk space" if error.errno == errno.ENOSPC else
                      "make the run folder writable" if error.errno in (errno.EACCES, errno.EPERM, errno.EROFS) else
                      "check the run folder")
            raise FoloraError(f"Could not write {what} to {path}: {error.strerror or error}. {kept.capitalize()}; "
                              f"{advice} and run the same command again to resume.") from error
        return time.perf_counter() - start

    def _load(self, path: Path) -> dict | None:
        if not path.is_file():
            return None
        try:
            payload = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:  # truncated, corrupted, or not a checkpoint at all
            raise FoloraError(f"The checkpoint {path} cannot be read ({type(error).__name__}: {str(error)[:200]}). "
                              f"Delete {self.folder} to start this run over.") from None
        if not isinstance(payload, dict) or payload.get("format") != FORMAT or "identity" not in payload:
            raise FoloraError(f"{path} is not a folora checkpoint of format {FORMAT}. Delete {self.folder} to start "
                              f"this run over.")
        config, code = differences(payload["identity"], self.identity)
        if code and not config and self.on_code_change == "restart":
            print(f"[folora] the checkpoint in {self.folder} was written by other code ({'; '.join(code)}); "
                  f"train.on_code_change=restart: this run starts over with the current code", flush=True)
            self.remove()
            return None
        found = config + code
        if found:
            shown = "; ".join(found[:8]) + (f"; and {len(found) - 8} more" if len(found) > 8 else "")
            raise FoloraError(f"The run folder holds a checkpoint of a different run ({shown}). Resume it with the "
                              f"config and code it was written with, or delete {self.folder} to start this run over"
                              + (" (or, for a code change only, set train.on_code_change=restart)." if not config else "."))
        return {k: v for k, v in payload.items() if k not in ("format", "identity")}
