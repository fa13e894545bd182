"""Metric extraction (lm-eval's own filters with the math task's config) and the headline numbers."""

import math
from pathlib import Path

import pytest
import yaml
from lm_eval.api.metrics import exact_match_hf_evaluate
from lm_eval.filters.extraction import RegexFilter

from folora import metrics
from folora.errors import FoloraError
from folora.evals.suite import bits_per_byte_stderr

TASK_YAML = Path(__file__).resolve().parents[1] / "folora/evals/lm_tasks/folora_math.yaml"


class _Loader(yaml.SafeLoader):
    pass


_Loader.add_constructor("!function", lambda loader, node: loader.construct_scalar(node))


@pytest.fixture(scope="module")
def math_task():
    return yaml.load(TASK_YAML.read_text(), Loader=_Loader)


def score(math_task, filter_name: str, response: str, target: str) -> float:
    spec = next(f for f in math_task["filter_list"] if f["name"] == filter_name)["filter"][0]
    regex = RegexFilter(regex_pattern=spec["regex_pattern"], group_select=spec.get("group_select", 0))
    extracted = list(regex.apply([[response]], [{}]))[0][0]
    metric = math_task["metric_list"][0]
    return exact_match_hf_evaluate([extracted], [target], ignore_case=metric["ignore_case"],
                                   ignore_punctuation=metric["ignore_punctuation"],
                                   regexes_to_ignore=metric["regexes_to_ignore"])["exact_match"]


@pytest.mark.parametrize(("response", "target", "strict", "flexible"), [
    ("3 * 4 = 12\n12 + 5 = 17\n#### 17", "17", 1.0, 1.0),
    ("So the answer is 17.", "17", 0.0, 1.0),
    ("#### 1,234", "1234", 1.0, 1.0),
    ("#### 18\nThe answer is 18, not 17", "17", 0.0, 1.0),
    ("#### -5", "-5", 1.0, 1.0),
    ("I do not know.", "17", 0.0, 0.0),
])
def test_strict_and_flexible_extraction(math_task, response, target, strict, flexible):
    assert score(math_task, "strict-match", response, target) == strict
    assert score(math_task, "flexible-extract", response, target) == flexible


def test_bits_per_byte_stderr_matches_a_direct_delta_method():
    docs = ["a" * 100, "b" * 300, "c" * 200, "d" * 50]
    nll = [80.0, 150.0, 120.0, 60.0]
    samples = [{"filtered_resps": [-x], "target": d} for x, d in zip(nll, docs, strict=False)]
    b = [len(d) for d in docs]
    ratio = sum(nll) / sum(b)
    n = len(b)
    expected = math.sqrt(sum((x - ratio * y) ** 2 for x, y in zip(nll, b, strict=False)) / (n - 1) / n) / (sum(b) / n) / math.log(2)
    assert bits_per_byte_stderr(samples) == pytest.approx(expected)
    assert bits_per_byte_stderr(samples[:1]) is None


def test_headline_numbers():
    base = {"t": {"value": 0.2, "higher_is_better": True}, "p": {"value": 0.8, "higher_is_better": True},
            "bpb": {"value": 1.0, "higher_is_better": False}, "r": {"value": 0.1, "higher_is_better": True}}
    final = {"t": {"value": 0.5, "higher_is_better": True}, "p": {"value": 0.6, "higher_is_better": True},
             "bpb": {"value": 1.25, "higher_is_better": False}, "r": {"value": 0.9, "higher_is_better": True}}
    roles = metrics.roles(list(base), ["t"], ["r"])
    assert roles == {"t": "target", "p": "preservation", "bpb": "preservation", "r": "related"}
    head = metrics.headline(base, final, roles)
    assert head["target_gain"] == pytest.approx(0.3)
    assert head["retention"]["per_item"] == pytest.approx({"p": 0.75, "bpb": 0.8})
    assert head["retention"]["mean"] == pytest.approx(0.775)


def test_retention_with_a_zero_base_is_undefined():
    assert metrics.retention(0.0, 0.5, True) is None


def test_task_naming_unknown_items_is_refused():
    with pytest.raises(FoloraError, match=r"\['nope'\]"):
        metrics.roles(["a"], ["nope"], [])
