"""Checkpoints and exact resume, and stopping cleanly on a scheduler's signal.

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
import hashlib
import random
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from folora.errors import FoloraError
from folora.results import package_versions, write_atomic

FORMAT = 1
# Keys that change how a run is executed or reported, never what it computes: a checkpoint written with one value
# resumes under another (a sweep restarted with fewer threads, a different W&B mode, checkpoints kept or not).
EXECUTION_KEYS = ("threads", "skip_completed", "logger", "train.checkpoint_every", "train.keep_checkpoint",
                  "train.on_code_change", "experiment", "reuse_from", "calibration_cache")


class Interrupted(BaseException):
    """A stop signal arrived during training; the checkpoint of step `step` holds the run's state."""

    def __init__(self, signum: int, step: int):
        super().__init__(f"stopped by {signal.Signals(signum).name} after step {step}; a checkpoint of that step "
                         f"was written and the same command resumes from it")
        self.signum, self.step = signum, step


# --- stop signals ------------------------------------------------------------------------------------------------

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)
_stop = {"signal": None, "training": False}
_handed_over: dict[int, object] = {}   # signals a job scheduler's own handler also wants (submitit's USR2: requeue)


def install_stop_handlers() -> None:
    """SIGTERM and SIGUSR1: during training, finish the step, checkpoint and stop; elsewhere, stop at once (the run
    records status=failed, and a restart resumes from the last checkpoint). Under submitit (Hydra's Slurm or local
    launcher) SIGUSR2 is its timeout and preemption signal: the run checkpoints the same way, then hands the
    signal to submitit, which requeues the job; the requeued job resumes from the checkpoint."""
    previous = signal.getsignal(signal.SIGUSR2)
    under_submitit = callable(previous)
    for signum in STOP_SIGNALS:
        # submitit ignores SIGTERM on purpose: on preemption Slurm sends it before the requeue signal (USR2), and
        # stopping on it would end the job without a requeue
        if not (under_submitit and signum == signal.SIGTERM):
            signal.signal(signum, _on_stop_signal)
    if under_submitit:
        _handed_over[signal.SIGUSR2] = previous
        signal.signal(signal.SIGUSR2, _on_stop_signal)


def _on_stop_signal(signum, frame):
    if _stop["training"] and _stop["signal"] is None:
        _stop["signal"] = signum   # finish the step, checkpoint, stop
        return
    if _stop["training"] and signum not in _handed_over and _stop["signal"] in _handed_over:
        return                     # a requeue is already on its way: keep it
    hand_over(signum)              # outside training, or a second signal while a step hangs: stop now
    raise SystemExit(f"terminated by signal {signum}")


def hand_over(signum: int) -> None:
    """Pass a stop signal on to the scheduler's handler that was installed before ours (submitit requeues the job
    and exits); nothing for a signal no one else handles."""
    handler = _handed_over.get(signum)
    if handler is not None:
        handler(signum, None)


def stop_requested() -> int | None:
    return _stop["signal"]


class training_section:
    """While open, a stop signal waits for the end of the current step instead of stopping at once."""

    def __enter__(self):
        _stop["training"], _stop["signal"] = True, None

    def __exit__(self, *exc):
        _stop["training"] = False
        if _stop["signal"] is not None and exc[0] is None:   # a signal between the last check and the end
            hand_over(_stop["signal"])
            raise SystemExit(f"terminated by signal {_stop['signal']}")


# --- identity ----------------------------------------------------------------------------------------------------

def identity(cfg: DictConfig, repo: Path) -> dict:
    """What a checkpoint must match to be resumed: the resolved config (less the execution keys) and the code (a
    digest of its files, and the versions of the packages that compute)."""
    values = without_keys(flat_config(OmegaConf.to_container(cfg, resolve=True)), EXECUTION_KEYS)
    versions = package_versions()
    return {"config": values, "code": {"files": code_digest(repo),
                                       **{k: versions.get(k) for k in ("torch", "transformers", "peft", "folora")}}}


def without_keys(flat: dict, keys) -> dict:
    """A flat config less each of `keys` and everything under it."""
    return {k: v for k, v in flat.items() if not any(k == e or k.startswith(e + ".") for e in keys)}


def flat_config(tree, prefix: str = "") -> dict:
    """A nested config as {"a.b.c": value}; lists as their repr, so that two configs compare key by key."""
    if isinstance(tree, dict):
        out = {}
        for key, value in tree.items():
            out |= flat_config(value, f"{prefix}{key}.")
        return out
    return {prefix[:-1]: tree if not isinstance(tree, list) else repr(tree)}


CODE_FOLDERS = ("folora", "baselines", "conf")


def code_digest(repo: Path) -> str:
    """A digest of the code and configs a run executes (every source, config and shipped data file of `folora/`,
    `baselines/` and `conf/`): a commit that only adds results or docs leaves it unchanged, any edit to the code
    changes it."""
    digest = hashlib.sha256()
    for folder in CODE_FOLDERS:
        for path in sorted((repo / folder).rglob("*")):
            if path.is_file() and path.suffix in {".py", ".yaml", ".jsonl", ".json"} and "__pycache__" not in path.parts:
                digest.update(str(path.relative_to(repo)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


def _differences(saved: dict, current: dict) -> tuple[list[str], list[str]]:
    """(config differences, code differences) between a checkpoint's identity and the current run's. A key that only
    one side has was added or removed by a change of the code (its configs), so it counts as a code difference."""
    config, code = [], []
    for key in sorted(set(saved["config"]) | set(current["config"])):
        before, after = saved["config"].get(key, "<absent>"), current["config"].get(key, "<absent>")
        if before != after:
            side = code if "<absent>" in (before, after) else config
            side.append(f"{key}: {before!r} in the checkpoint, {after!r} now")
    for key in sorted(set(saved["code"]) | set(current["code"])):
        if saved["code"].get(key) != current["code"].get(key):
            code.append(f"code {key}: {saved['code'].get(key)} in the checkpoint, {current['code'].get(key)} now")
    return config, code


# --- the files -----------------------------------------------------------------------------------------------------

@dataclass
class Checkpointer:
    """The checkpoint folder of one run: writes, reads and checks its two files."""

    folder: Path
    identity: dict
    every: int = 0        # steps between checkpoints; 0: only when a stop signal arrives
    on_code_change: str = "refuse"   # a checkpoint of the same config written by other code: refuse | restart

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
        for path in (self.state_path, self.calibration_path):
            path.unlink(missing_ok=True)
        if self.folder.is_dir() and not any(self.folder.iterdir()):
            self.folder.rmdir()

    def _save(self, path: Path, payload: dict, what: str) -> float:
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
        config, code = _differences(payload["identity"], self.identity)
        if code and not config and self.on_code_change == "restart":
            print(f"[folora] the checkpoint in {self.folder} was written by other code ({'; '.join(code)}); "
                  f"train.on_code_change=restart: this run starts over with the current code", flush=True)
            self.remove()
            return None
        differences = config + code
        if differences:
            shown = "; ".join(differences[:8]) + (f"; and {len(differences) - 8} more" if len(differences) > 8 else "")
            raise FoloraError(f"The run folder holds a checkpoint of a different run ({shown}). Resume it with the "
                              f"config and code it was written with, or delete {self.folder} to start this run over"
                              + (" (or, for a code change only, set train.on_code_change=restart)." if not config else "."))
        return {k: v for k, v in payload.items() if k not in ("format", "identity")}


# --- RNG state ---------------------------------------------------------------------------------------------------

def rng_state() -> dict:
    """Python's, NumPy's and torch's generators (CUDA's too), in a form `torch.load(weights_only=True)` reads."""
    kind, key, pos, has_gauss, gauss = np.random.get_state()
    state = {"python": random.getstate(), "torch": torch.get_rng_state(),
             "numpy": {"kind": kind, "key": torch.from_numpy(key.astype(np.int64)), "pos": int(pos),
                       "has_gauss": int(has_gauss), "gauss": float(gauss)}}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["key"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
