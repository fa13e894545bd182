"""Entry point: `python -m folora.audit model=<base> tuned=<folder> [task=<task>] [eval=embedded|standard]`.

Did a fine-tune forget? The tuned folder (a PEFT adapter or a whole model, trained by any tool) is scored on the
eval suite against the base model's cached outcomes, paired document by document, and recorded as a run is
(results.json with `kind: audit`, outcomes.json.gz, a W&B run). Several folders (`tuned=[a,b,c]`) are audited
against one base evaluation and ranked by forgetting, with their pairwise paired comparisons (docs/audit.md).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from folora.errors import FoloraError

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@hydra.main(version_base="1.3", config_path="../conf", config_name="audit")
def main(cfg: DictConfig) -> None:
    from analysis.audits import write_ranking
    from folora.experiment.audit import run_audits

    out_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        folders = run_audits(cfg, out_dir)
        if len(folders) > 1:
            print("\n" + write_ranking(folders, out_dir), flush=True)
    except FoloraError as error:
        print(f"\nfolora: error: {error}\n(audit folder: {out_dir})", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
