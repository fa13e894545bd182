"""Dataset loading for folora's embedded lm-eval tasks: JSONL files shipped beside this module.

lm-eval imports this file by path (`custom_dataset: !function folora_utils.load_local`), so loading depends on
nothing but `datasets` and works with `lm_eval --include_path <this folder>` from any working directory. Scoring
code runs completions in folora's sandbox and checks instructions with folora's checkers, so those tasks need the
folora package installed.
"""

import re
from pathlib import Path

import datasets

DATA_DIR = Path(__file__).parent / "data"


def load_local(data_file: str, fewshot_file: str | None = None, **_metadata) -> datasets.DatasetDict:
    """The `test` split from `data_file`; with `fewshot_file`, a `fewshot` split (the pool few-shot examples are
    drawn from, disjoint from the scored records)."""
    splits = {"test": data_file} | ({"fewshot": fewshot_file} if fewshot_file else {})
    return datasets.DatasetDict({split: _load_jsonl(name) for split, name in splits.items()})


def _load_jsonl(name: str) -> datasets.Dataset:
    path = DATA_DIR / name
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; rebuild it with `python -m scripts.build_eval_data`.")
    return datasets.load_dataset("json", data_files=str(path), split="train")


# --- code: completions run in folora's sandbox (folora/evals/sandbox.py) ---------------------------------------

CODE_BLOCK = re.compile(r"```(?:python|py)?\s*\n(.*?)(?:```|\Z)", re.DOTALL)


def extract_code(response: str) -> str:
    """The first fenced code block of a chat answer (an unterminated one counts), else the whole answer."""
    match = CODE_BLOCK.search(response)
    return match.group(1) if match else response


def humaneval_pass(doc: dict, results: list[str]) -> dict:
    from folora.evals.sandbox import check_function

    program = doc["prompt"] + results[0]
    return {"pass@1": float(check_function(program, doc["test"], doc["entry_point"]).passed)}


def completed_function(doc: dict, response: str) -> str:
    """The program to test: the answer itself where it defines the whole function, else the prompt + the answer
    as the function's body (what the task asks for)."""
    code = extract_code(response)
    if re.search(rf"^def {re.escape(doc['entry_point'])}\(", code, re.MULTILINE):
        return code
    return doc["prompt"] + code


def generated_code_pass(doc: dict, results: list[str]) -> dict:
    from folora.evals.sandbox import check_function

    return {"pass@1": float(check_function(completed_function(doc, results[0]), doc["test"], doc["entry_point"]).passed)}


# --- instruction following: IFEval's four accuracies with folora's offline checkers ----------------------------


def instruction_scores(doc: dict, results: list[str]) -> dict:
    import json

    from folora.tasks.instructions import score

    kwargs = json.loads(doc["kwargs"]) if isinstance(doc["kwargs"], str) else doc["kwargs"]
    scores = score(results[0], list(doc["instruction_id_list"]), kwargs)
    return {"prompt_level_strict_acc": scores.prompt_strict, "inst_level_strict_acc": scores.inst_strict,
            "prompt_level_loose_acc": scores.prompt_loose, "inst_level_loose_acc": scores.inst_loose}


def mean_of_all(items: list[list[bool]]) -> float:
    """Instruction-level accuracy: every instruction of every prompt counts once."""
    flat = [x for sublist in items for x in sublist]
    return sum(flat) / len(flat)
