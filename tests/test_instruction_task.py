"""IFEval-style instruction data: edited drafts satisfy every constraint, splits hold out requests and constraint
combinations, and folora's checkers agree with IFEval's own (lm-eval's copy of google-research's code)."""

import json
import sys

import pytest

from folora.evals.lm_tasks import folora_utils
from folora.tasks import instructions as ins
from scripts import build_eval_data as build_data

DRAFT = "The answer is simple, and it is very good. It has a long history. People like it. The end is near."


def fake_drafter(requests):
    return [f"{DRAFT} {r}" for r in requests]


def test_every_training_response_meets_its_constraints():
    records = ins.generate("train", 200, draft=fake_drafter)
    assert len(records) == 200
    for r in records:
        assert all(ins.follows(r["response"], r["instruction_id_list"], r["kwargs"])), r


def test_splits_hold_out_requests_and_constraint_combinations():
    train = ins.generate("train", 300, draft=fake_drafter)
    test = ins.generate("test", 100, responses=None)
    assert not {r["request"] for r in train} & {r["request"] for r in test}
    combos = lambda rs: {"|".join(r["instruction_id_list"]) for r in rs}  # noqa: E731
    assert not combos(train) & combos(test)
    assert {len(r["instruction_id_list"]) for r in test} == {1, 2, 3}


def test_instruction_training_needs_a_drafter():
    with pytest.raises(ValueError, match="drafts from the base model"):
        ins.generate("train", 4)


def test_loose_accepts_what_strict_refuses_only_for_framing_lines():
    ids, kwargs = ["startend:end_checker"], [{"end_phrase": "Any other questions?"}]
    framed = "Here it is. Any other questions?\nHope this helps!"
    assert ins.score(framed, ids, kwargs).prompt_strict is False
    assert ins.score(framed, ids, kwargs).prompt_loose is True


def test_scorer_reports_ifevals_four_accuracies():
    doc = {"instruction_id_list": ["punctuation:no_comma", "change_case:english_lowercase"], "kwargs": json.dumps([{}, {}])}
    scores = folora_utils.instruction_scores(doc, ["all lower case and no commas here"])
    assert scores == {"prompt_level_strict_acc": True, "inst_level_strict_acc": [True, True],
                      "prompt_level_loose_acc": True, "inst_level_loose_acc": [True, True]}
    assert folora_utils.instruction_scores(doc, ["Upper, with commas"])["inst_level_strict_acc"] == [False, False]
    assert folora_utils.mean_of_all([[True, False], [True]]) == pytest.approx(2 / 3)


def test_shipped_test_prompts_equal_a_rebuild():
    shipped = (build_data.DATA_DIR / "folora_instruction.jsonl").read_text()
    assert shipped == build_data.to_jsonl(build_data.instruction_test())


@pytest.fixture(scope="module")
def ifeval(monkeypatch_module):
    """lm-eval's IFEval checkers, imported without their import-time NLTK download (none is needed by the
    instructions compared here: sentence counting, which uses NLTK's punkt model, is left out)."""
    nltk = pytest.importorskip("nltk")
    pytest.importorskip("langdetect")
    pytest.importorskip("immutabledict")
    monkeypatch_module.setattr(nltk, "download", lambda *a, **k: True)
    monkeypatch_module.setattr(nltk.data, "find", lambda *a, **k: True)
    from lm_eval.tasks.ifeval import instructions_registry

    return instructions_registry.INSTRUCTION_DICT


@pytest.fixture(scope="module")
def monkeypatch_module():
    mp = pytest.MonkeyPatch()
    yield mp
    mp.undo()
    for name in [m for m in sys.modules if m.startswith("lm_eval.tasks.ifeval")]:
        del sys.modules[name]


def test_checkers_agree_with_ifevals_own(ifeval):
    records = ins.generate("train", 400, draft=fake_drafter)
    wrong = ["Short, answer.", "THE ANSWER IS HERE AND IT IS LONG ENOUGH TO COUNT AS ENGLISH TEXT FOR SURE.",
             "* one\n* two\n* three", '{"a": 1}', "<<title>> P.S. hi [x] *y*", DRAFT]
    compared = 0
    for record in records:
        for ident, kwargs in zip(record["instruction_id_list"], record["kwargs"], strict=True):
            if ident == "length_constraints:number_sentences":
                continue
            checker = ifeval[ident](ident)
            checker.build_description(**kwargs)
            for response in [record["response"], *wrong]:
                ours = ins.BY_ID[ident].check(response, kwargs)
                assert ours == checker.check_following(response), (ident, kwargs, response)
                compared += 1
    assert compared > 1000
