"""Hub-scale task configs, loaded from local stand-in files with the datasets' own columns (no network), and the
embedded tasks wired to their eval items."""

import json

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from folora.models import _ensure_chat_ready, tiny_tokenizer
from folora.tasks.data import load_task
from tests.conftest import REPO

ROWS = 10
STAND_INS = {
    "code-magicoder": lambda i: {"instruction": f"Write a function number {i}.", "response": f"def f{i}():\n    return {i}"},
    "code-codealpaca": lambda i: {"instruction": f"Write code {i}.", "input": f"x = {i}" if i % 2 else "",
                                  "output": f"print({i})"},
    "instruction-alpaca": lambda i: {"instruction": f"Name a colour {i}.", "input": "" if i % 2 else f"hint {i}",
                                     "output": f"Blue {i}."},
    "instruction-tulu3": lambda i: {"id": str(i), "source": "stand-in", "messages": [
        {"role": "system", "content": "Be brief."}, {"role": "user", "content": f"Say {i}."},
        {"role": "assistant", "content": f"{i}."}, {"role": "user", "content": "Again."},
        {"role": "assistant", "content": "Again."}]},
    "math-gsm8k": lambda i: {"question": f"What is {i} + 1?", "answer": f"{i} + 1 = {i + 1}\n#### {i + 1}"},
}


def compose_task(name: str, *overrides: str):
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return compose("config", overrides=[f"task={name}", *overrides]).task


@pytest.fixture(scope="module")
def tokenizer():
    tok = tiny_tokenizer(512)
    _ensure_chat_ready(tok)
    return tok


@pytest.mark.parametrize("name", sorted(STAND_INS))
def test_hub_task_loads_a_local_stand_in(name, tokenizer, tmp_path):
    path = tmp_path / f"{name}.jsonl"
    path.write_text("".join(json.dumps(STAND_INS[name](i)) + "\n" for i in range(ROWS)))
    cfg = compose_task(name, f"task.data_files={path}", "task.sizes.train=7", "task.sizes.validation=2")
    assert cfg.source == "hub" and cfg.name == name
    data = load_task(cfg, tokenizer)
    assert data.stats["train"]["examples"] == 7 and data.stats["validation"]["examples"] == 2
    texts = {split: {tokenizer.decode(e["input_ids"]) for e in rows} for split, rows in
             (("train", data.train), ("validation", data.validation))}
    if cfg.splits.train == cfg.splits.validation:  # one file, two splits: never the same example in both
        assert not texts["train"] & texts["validation"]


def test_alpaca_input_is_appended_and_tulu_takes_the_first_turns(tokenizer, tmp_path):
    from folora.tasks.data import _to_pair

    alpaca = compose_task("instruction-alpaca")
    assert _to_pair({"instruction": "Do X.", "input": "with Y", "output": "Done."}, alpaca.columns, alpaca, 0) == \
        ("Do X.\n\nwith Y", "Done.")
    assert _to_pair({"instruction": "Do X.", "input": "", "output": "Done."}, alpaca.columns, alpaca, 0) == \
        ("Do X.", "Done.")
    tulu = compose_task("instruction-tulu3")
    assert _to_pair(STAND_INS["instruction-tulu3"](3), tulu.columns, tulu, 0) == ("Say 3.", "3.")


def test_a_record_without_messages_is_refused_with_the_column_name():
    from folora.errors import FoloraError
    from folora.tasks.data import _to_pair

    tulu = compose_task("instruction-tulu3")
    with pytest.raises(FoloraError, match="task.columns.messages"):
        _to_pair({"conversation": []}, tulu.columns, tulu, 0)


@pytest.mark.parametrize("task", ["math", "code", "instruction"])
def test_embedded_tasks_name_items_of_the_embedded_suite(task):
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=[f"task={task}"])
    items = set(cfg.eval["items"])
    assert set(cfg.task.eval.target) <= items and set(cfg.task.eval.related) <= items


def test_drafts_are_generated_once_and_cached(tmp_path):
    from folora.models import load_model
    from folora.tasks.drafts import BaseModelDrafter

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=["model=tiny-random"])
    loaded = load_model(cfg.model)
    import torch

    drafter = BaseModelDrafter(loaded.model, loaded.tokenizer, device=torch.device("cpu"), cache_dir=tmp_path,
                               model_fingerprint=loaded.fingerprint, max_new_tokens=8, batch_size=2)
    first = drafter(["Say hi.", "Describe the sea.", "Name a city."])
    assert len(first) == 3 and list((tmp_path / "drafts").glob("*.json"))
    drafter.model = None  # a second call must not need the model
    assert drafter(["Say hi.", "Describe the sea.", "Name a city."]) == first
    assert OmegaConf.load(REPO / "conf/task/instruction.yaml").drafts == "base_model"


@pytest.mark.parametrize("task", ["math-gsm8k", "math-metamathqa", "code-magicoder", "code-codealpaca",
                                  "instruction-alpaca", "instruction-tulu3"])
def test_hub_tasks_name_items_of_the_standard_suite(task):
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=[f"task={task}", "eval=standard"])
    assert set(cfg.task.eval.target) | set(cfg.task.eval.related) <= set(cfg.eval["items"])
    assert set(cfg.eval.aggregates.forgetting_average) == {"hellaswag", "arc_challenge", "winogrande"}


def test_aggregates_average_their_items_and_are_not_preservation():
    from folora.evals import metrics
    from folora.evals.suite import aggregates

    scores = {name: {"value": v, "stderr": 0.03, "n": 100, "higher_is_better": True}
              for name, v in (("hellaswag", 0.4), ("arc_challenge", 0.3), ("winogrande", 0.5))}
    out = aggregates(scores, {"forgetting_average": ["hellaswag", "arc_challenge", "winogrande"]})
    assert out["forgetting_average"]["value"] == pytest.approx(0.4)
    assert out["forgetting_average"]["stderr"] == pytest.approx((3 * 0.03**2) ** 0.5 / 3)
    roles = metrics.roles([*scores, "forgetting_average"], [], [], aggregates=["forgetting_average"])
    assert roles["forgetting_average"] == "aggregate" and roles["hellaswag"] == "preservation"
