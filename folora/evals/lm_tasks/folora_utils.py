"""Dataset loading for folora's embedded lm-eval tasks: JSONL files shipped beside this module.

lm-eval imports this file by path (`custom_dataset: !function folora_utils.load_local`), so it depends on
nothing but `datasets` and works with `lm_eval --include_path <this folder>` from any working directory.
"""

from pathlib import Path

import datasets

DATA_DIR = Path(__file__).parent / "data"


def load_local(data_file: str, **_metadata) -> datasets.DatasetDict:
    path = DATA_DIR / data_file
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; rebuild it with `python -m folora.evals.build_data`.")
    return datasets.DatasetDict({"test": datasets.load_dataset("json", data_files=str(path), split="train")})
