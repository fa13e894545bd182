"""The generated code task: every emitted problem's reference passes its tests in the sandbox, a wrong solution
fails them, splits are disjoint by operation chain, and the eval scorers read completions as intended."""

import json

import pytest

from folora.evals.lm_tasks import folora_utils
from folora.evals.sandbox import check_function
from folora.tasks import code_problems
from scripts import build_eval_data as build_data


@pytest.fixture(scope="module")
def splits():
    return {split: code_problems.generate(split, size) for split, size in (("train", 300), ("validation", 40), ("test", 40))}


def test_reference_solutions_pass_their_tests_in_the_sandbox(splits):
    for problem in splits["test"][:12]:
        assert check_function(problem["solution"], problem["test"], problem["entry_point"]).passed, problem["task_id"]


def test_tests_tell_a_wrong_function_from_the_right_one(splits):
    for problem in splits["test"][:12]:
        constant = problem["prompt"] + "    return None\n"
        assert not check_function(constant, problem["test"], problem["entry_point"]).passed


def test_splits_are_disjoint_by_operation_chain_and_deterministic(splits):
    chains = {split: {p["chain"] for p in problems} for split, problems in splits.items()}
    assert not chains["train"] & chains["test"] and not chains["train"] & chains["validation"]
    assert not chains["validation"] & chains["test"]
    assert code_problems.generate("test", 40) == splits["test"]
    assert len({p["entry_point"] for p in splits["train"]}) == len(splits["train"])


def test_catalogue_covers_lists_strings_and_dicts_alone_and_composed(splits):
    kinds = {op.takes for op in code_problems.CATALOGUE}
    assert {"ints", "text", "words", "counts"} <= kinds
    lengths = {p["chain"].count(">") + 1 for p in splits["train"]}
    assert {1, 2, 3} <= lengths


def test_shipped_test_problems_are_held_out_from_training():
    shipped = [json.loads(line) for line in (build_data.DATA_DIR / "folora_code.jsonl").read_text().splitlines()]
    train = {p["chain"] for p in code_problems.generate("train", 2000)}
    assert shipped and not {p["chain"] for p in shipped} & train


def test_training_example_is_the_eval_format():
    problem = code_problems.generate("train", 1)[0]
    assert problem["prompt"] in problem["instruction"]
    assert folora_utils.completed_function(problem, problem["response"]) == problem["solution"]
    assert folora_utils.generated_code_pass(problem, [problem["response"]]) == {"pass@1": 1.0}
    fenced_whole = f"Here you go:\n```python\n{problem['solution']}```"
    assert folora_utils.generated_code_pass(problem, [fenced_whole]) == {"pass@1": 1.0}
    assert folora_utils.generated_code_pass(problem, ["    return None\n"]) == {"pass@1": 0.0}


@pytest.mark.parametrize(("response", "expected"), [
    ("Sure!\n```python\ndef f():\n    return 1\n```\nDone.", "def f():\n    return 1\n"),
    ("```\ndef f():\n    return 2\n```", "def f():\n    return 2\n"),
    ("```python\ndef f():\n    return 3\n", "def f():\n    return 3\n"),
    ("def f():\n    return 4\n", "def f():\n    return 4\n"),
])
def test_extract_code(response, expected):
    assert folora_utils.extract_code(response) == expected


def test_humaneval_scorer_runs_the_completion_against_the_tests():
    problem = next(json.loads(line) for line in (build_data.DATA_DIR / "folora_humaneval.jsonl").read_text().splitlines())
    assert folora_utils.humaneval_pass(problem, [problem["canonical_solution"]]) == {"pass@1": 1.0}
    assert folora_utils.humaneval_pass(problem, ["    return None\n"]) == {"pass@1": 0.0}
    assert folora_utils.humaneval_pass(problem, ["    while True:\n        pass\n"]) == {"pass@1": 0.0}
