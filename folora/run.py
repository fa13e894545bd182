"""Entry point: `python -m folora.run [overrides]`, or `-m` for a multirun sweep over config groups."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
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

    run_dir = Path(HydraConfig.get().runtime.output_dir)
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    try:
        run_experiment(cfg, run_dir)
    except FoloraError as error:
        print(f"\nfolora: error: {error}\n(run folder: {run_dir}; results.json records status=failed)", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
