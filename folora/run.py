"""Entry point: `python -m folora.run [overrides]`, or `-m` for a multirun sweep over config groups."""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from folora.errors import FoloraError

# Nothing is fetched from a model or dataset hub unless the user turns these off deliberately.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _stop_on_sigterm(signum, frame):
    # A scheduler's SIGTERM (Slurm preemption, `kill`) becomes an exception, so the run records status=failed.
    raise SystemExit(f"terminated by signal {signum}")


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> None:
    from folora.runner import run_experiment

    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    if cfg.get("skip_completed") and completed(run_dir):
        print(f"[folora] {run_dir} already holds a completed results.json; skipped (skip_completed=true)", flush=True)
        return
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    try:
        run_experiment(cfg, run_dir)
    except FoloraError as error:
        print(f"\nfolora: error: {error}\n(run folder: {run_dir}; results.json records status=failed)", file=sys.stderr)
        if hydra_cfg.mode == RunMode.MULTIRUN:
            raise  # an exception, not an exit: Hydra marks this job failed and the sweep's other jobs still run
        sys.exit(2)


def completed(run_dir: Path) -> bool:
    """Whether the run folder holds a results.json that says `completed` (an interrupted sweep restarts past it)."""
    try:
        return json.loads((run_dir / "results.json").read_text()).get("status") == "completed"
    except (OSError, ValueError):
        return False


if __name__ == "__main__":
    main()
