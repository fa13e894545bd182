"""The math word-problem generator: deterministic, disjoint splits, every answer recomputed from the problem."""

import re

import pytest

from folora.tasks import math_problems as mp

SIZES = {"train": 600, "validation": 150, "test": 150}


@pytest.fixture(scope="module")
def splits():
    return {split: mp.generate(split, size, seed=0) for split, size in SIZES.items()}


def test_deterministic():
    assert mp.generate("train", 50, seed=3) == mp.generate("train", 50, seed=3)
    assert mp.generate("train", 50, seed=3) != mp.generate("train", 50, seed=4)


def test_splits_are_disjoint_by_construction(splits):
    mp.check_disjoint(splits)
    for split, records in splits.items():
        assert all(mp.split_of(r["question"]) == split for r in records)
        assert len({r["question"] for r in records}) == len(records)


def test_check_disjoint_catches_overlap(splits):
    with pytest.raises(ValueError, match="appears in both"):
        mp.check_disjoint({"train": splits["train"][:3], "test": splits["train"][2:4]})


def test_every_answer_is_recomputed_from_the_program(splits):
    for record in splits["train"]:
        values = mp.run_program(record["program"])
        assert values[-1] == record["final"]
        assert all(isinstance(v, int) and v > 0 for v in values), record
        assert record["answer"].endswith(f"#### {record['final']}")


def test_solution_lines_are_true_equations(splits):
    equation = re.compile(r"(\d+) ([-+*/]) (\d+)(?: \+ (\d+))? = (\d+)")
    for record in splits["test"]:
        found = equation.findall(record["answer"])
        assert len(found) == len(record["program"])
        for a, op, b, c, result in found:
            value = {"+": int(a) + int(b), "-": int(a) - int(b), "*": int(a) * int(b), "/": int(a) / int(b)}[op]
            value += int(c) if c else 0
            assert value == int(result), record["answer"]


def test_program_literals_come_from_the_question(splits):
    """The answer is derivable from the text: every number the program uses is stated in the question."""
    for record in splits["validation"]:
        words = {"half": "2", "third": "3", "fourth": "4", "fifth": "5"}
        stated = set(re.findall(r"\d+", record["question"])) | {n for w, n in words.items() if w in record["question"]}
        for expr in record["program"]:
            for literal in re.findall(r"(?<![r\d])\d+", expr):
                assert literal in stated, (literal, record["question"])


def test_variety(splits):
    families = {r["family"] for r in splits["train"]}
    assert len(families) == len(mp.FAMILIES)
    assert len({r["question"].split()[0] for r in splits["train"]}) > 20


def test_unknown_split_is_refused():
    with pytest.raises(ValueError, match="unknown split"):
        mp.generate("dev", 3)
