"""Metric extraction (lm-eval's own filters with the math task's config) and the headline numbers from paired outcomes."""

import math
from pathlib import Path

import numpy as np
import pytest
import yaml
from lm_eval.api.metrics import exact_match_hf_evaluate
from lm_eval.filters.extraction import RegexFilter

from folora.errors import FoloraError
from folora.evals import metrics, paired
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


def outcome(values, den=None, scale=1.0, **extra) -> dict:
    n = len(values)
    return {"doc_id": list(range(n)), "num": [float(v) for v in values], "den": [1.0] * n if den is None else [float(d) for d in den],
            "scale": scale, **extra}


def scores_of(outcomes: dict, higher: dict, kinds: dict) -> dict:
    from folora.evals.outcomes import score

    return {i: {"value": score(o), "higher_is_better": higher.get(i, True), "kind": kinds.get(i, "other")}
            for i, o in outcomes.items()}


def test_forgetting_is_seen_when_every_capability_item_improves():
    """A synthetic run worse on every held-out document: forgetting > 0 with an interval excluding zero, although the
    target and every preservation item improve (the format gain that once read as 8% retention)."""
    rng = np.random.default_rng(0)
    nbytes = rng.integers(200, 600, size=64).astype(float)
    nll_base = nbytes * rng.uniform(0.5, 0.9, size=64)
    base = {"t": outcome(rng.random(48) < 0.1), "cap": outcome(rng.random(64) < 0.6), "code": outcome(rng.random(32) < 0.3),
            "prose_bpb": outcome(nll_base, den=nbytes, scale=1 / math.log(2))}
    final = {"t": outcome(np.maximum(base["t"]["num"], rng.random(48) < 0.4)),
             "cap": outcome(np.maximum(base["cap"]["num"], rng.random(64) < 0.3)),
             "code": outcome(np.maximum(base["code"]["num"], rng.random(32) < 0.2)),
             "prose_bpb": outcome(nll_base * 1.03, den=nbytes, scale=1 / math.log(2))}   # 3% worse on every document
    item_roles = metrics.roles(list(base), ["t"], [], forgetting=["prose_bpb"])
    assert item_roles == {"t": "target", "cap": "preservation", "code": "preservation", "prose_bpb": "forgetting"}
    changes = metrics.item_changes(base, final, {})
    head = metrics.headline(scores_of(base, {"prose_bpb": False}, {"cap": "knowledge", "code": "code"}), changes, item_roles)
    assert head["target_gain"].value > 0 and head["preservation"]["mean_change"].value > 0
    assert head["preservation"]["rose"] and not head["preservation"]["dropped"]
    forgetting = head["forgetting"]
    expected = 0.03 * nll_base.sum() / nbytes.sum() / math.log(2)
    assert forgetting.value == pytest.approx(expected) and forgetting.low > 0 and forgetting.excludes_zero


def test_a_headline_item_without_outcomes_stops_instead_of_shrinking_the_headline():
    """Forgetting names prose and code bits per byte; with code's outcomes missing it would silently become the
    prose change alone while the record still listed both items."""
    base = {"prose_bpb": outcome([1.0, 2.0], den=[10.0, 10.0])}
    final = {"prose_bpb": outcome([1.1, 2.2], den=[10.0, 10.0])}
    item_roles = metrics.roles(["prose_bpb", "code_bpb"], [], [], forgetting=["prose_bpb", "code_bpb"])
    scores = scores_of(base | {"code_bpb": base["prose_bpb"]}, {"prose_bpb": False, "code_bpb": False}, {})
    with pytest.raises(FoloraError, match=r"\['code_bpb'\] are headline items"):
        metrics.headline(scores, metrics.item_changes(base, final, {}), item_roles)


def test_a_low_base_item_cannot_dominate_the_preservation_aggregate():
    """3 -> 5 correct of 32 read as retention 1.67 once; normalized by the item's range it is +0.0625 and cannot
    outweigh a drop of 8 of 32 on a well-known item."""
    low_before = [1] * 3 + [0] * 29
    low_after = [1] * 5 + [0] * 27
    known_before = [1] * 28 + [0] * 4
    known_after = [1] * 20 + [0] * 12
    base = {"low": outcome(low_before), "known": outcome(known_before)}
    final = {"low": outcome(low_after), "known": outcome(known_after)}
    item_roles = metrics.roles(list(base), [], [])
    head = metrics.headline(scores_of(base, {}, {"low": "knowledge", "known": "knowledge"}), metrics.item_changes(base, final, {}),
                            item_roles)
    kept = head["preservation"]
    assert kept["mean_change"].value == pytest.approx((2 / 32 - 8 / 32) / 2) and kept["mean_change"].value < 0
    assert kept["dropped"] == ["known"] and kept["rose"] == []
    assert metrics.retention(3 / 32, 5 / 32, True) == pytest.approx(5 / 3)   # the ratio it replaces, a detail only


def test_chance_normalization_of_multiple_choice_items():
    change = paired.Interval(0.15, 0.05, 0.25, np.array([0.15]))
    scaled = metrics.normalized({"value": 0.5, "higher_is_better": True}, change, chance=0.25)
    assert (scaled.value, scaled.low, scaled.high) == pytest.approx((0.2, 0.05 / 0.75, 0.25 / 0.75))
    worse = metrics.normalized({"value": 2.0, "higher_is_better": False}, change, chance=0.0)
    assert (worse.value, worse.low, worse.high) == pytest.approx((-0.075, -0.125, -0.025))


def test_items_on_the_same_documents_are_resampled_jointly():
    """Two items on the same documents draw the same resamples: the mean of an item and its mirror image has a
    zero-width interval, which independent resampling could not give."""
    rng = np.random.default_rng(1)
    x = rng.random(40) < 0.5
    up = metrics.item_changes({"a": outcome(np.zeros(40))}, {"a": outcome(x)}, {})["a"]["change"]
    down = metrics.item_changes({"b": outcome(x)}, {"b": outcome(np.zeros(40))}, {})["b"]["change"]
    joint = paired.mean_of([up, down])
    assert joint.value == pytest.approx(0.0) and joint.low == pytest.approx(0.0) and joint.high == pytest.approx(0.0)


def test_retention_with_a_zero_base_is_undefined():
    assert metrics.retention(0.0, 0.5, True) is None


def test_task_naming_unknown_items_is_refused():
    with pytest.raises(FoloraError, match=r"\['nope'\]"):
        metrics.roles(["a"], ["nope"], [])
    with pytest.raises(FoloraError, match=r"\['gone'\]"):
        metrics.roles(["a"], [], [], forgetting=["gone"])


def test_roles_precedence():
    assert metrics.roles(["t", "f", "g", "d", "p"], ["t"], [], aggregates=["g"], forgetting=["f"], diagnostic=["d"]) == {
        "t": "target", "f": "forgetting", "g": "aggregate", "d": "diagnostic", "p": "preservation"}
