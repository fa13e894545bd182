"""The eval data shipped in the package equals a rebuild from its sources, and lm-eval can load every task."""

import json

import pytest

from folora.tasks import math_problems
from scripts import build_eval_data as build_data


def shipped(name: str) -> str:
    return (build_data.DATA_DIR / f"{name}.jsonl").read_text(encoding="utf-8")


def records(name: str) -> list[dict]:
    return [json.loads(line) for line in shipped(name).splitlines()]


@pytest.mark.parametrize("name", sorted(build_data.BUILDERS))
def test_shipped_file_equals_a_rebuild(name):
    manifest = json.loads((build_data.DATA_DIR / "MANIFEST.json").read_text())
    source = build_data.VERSIONED.get(name)
    if source and manifest[source] != build_data.source_versions()[source]:
        pytest.skip(f"{name} was built with {source} {manifest[source]}, this machine has {build_data.source_versions()[source]}")
    for file_name, rebuilt in build_data.data_files(name, build_data.BUILDERS[name]()).items():
        assert shipped(file_name.removesuffix(".jsonl")) == build_data.to_jsonl(rebuilt), \
            f"{file_name} is stale: run `python -m scripts.build_eval_data`"


@pytest.mark.parametrize("probe", ["folora_capitals", "folora_continents", "folora_currencies", "folora_elements"])
def test_few_shot_pool_is_disjoint_from_scored_items(probe):
    """A few-shot prompt can only draw from the pool, so it never contains the question being scored."""
    scored, pool = records(probe), records(f"{probe}_fewshot")
    assert len(pool) == build_data.FEWSHOT_POOL and len(scored) > 100
    assert not {r["question"] for r in scored} & {r["question"] for r in pool}


def test_few_shot_prompts_never_contain_the_scored_item():
    """Through lm-eval itself: every few-shot context of the probe is built from other questions only."""
    from lm_eval.tasks import TaskManager

    from folora.evals.suite import LOCAL_TASKS

    task = TaskManager(include_path=str(LOCAL_TASKS), include_defaults=False).load_task_or_group(
        ["folora_capitals_fewshot"])["folora_capitals_fewshot"]
    task.set_fewshot_seed(seed=0)
    docs = list(task.test_docs())
    for doc in docs[:40]:
        context = task.fewshot_context(doc, num_fewshot=task.config.num_fewshot)
        assert context.count("Question:") == task.config.num_fewshot + 1
        assert context.count(doc["question"]) == 1 and context.rstrip().endswith("Answer:")


def test_math_test_split_is_disjoint_from_training_data():
    test = [json.loads(line) for line in shipped("folora_math").splitlines()]
    train = math_problems.generate("train", 2000, seed=0)
    validation = math_problems.generate("validation", 200, seed=0)
    math_problems.check_disjoint({"train": train, "validation": validation, "test": test})


def test_kl_prompts_are_held_out_from_bits_per_byte_documents():
    bpb = {json.loads(line)["text"] for name in ("folora_prose_bpb", "folora_code_bpb") for line in shipped(name).splitlines()}
    for line in shipped("kl_prompts").splitlines():
        text = json.loads(line)["text"]
        assert not any(text[:200] in doc for doc in bpb)


def test_lm_eval_loads_every_shipped_task():
    from lm_eval.tasks import TaskManager

    from folora.evals.suite import LOCAL_TASKS

    manager = TaskManager(include_path=str(LOCAL_TASKS), include_defaults=False)
    names = [p.stem for p in LOCAL_TASKS.glob("folora_*.yaml")]
    tasks = manager.load_task_or_group(names)
    assert set(names) <= set(tasks) and len(names) >= 14
    for name in names:
        assert len(list(tasks[name].test_docs())) > 0
