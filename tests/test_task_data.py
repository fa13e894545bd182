"""Chat formatting with loss on the response only, and the hub loaders on local stand-in files."""

import json

import pytest
from omegaconf import OmegaConf

from folora.errors import FoloraError
from folora.models import tiny_tokenizer
from folora.tasks.data import IGNORE_INDEX, collate, encode_example, load_task, normalize_final_answer

CONF = "conf/task"


@pytest.fixture(scope="module")
def tokenizer():
    from folora.models import _ensure_chat_ready

    tok = tiny_tokenizer(512)
    _ensure_chat_ready(tok)
    return tok


def task_cfg(name: str, **overrides):
    """A task config as Hydra would compose it (the hub variants inherit from math.yaml)."""
    base = OmegaConf.load(f"{CONF}/math.yaml")
    own = OmegaConf.load(f"{CONF}/{name}.yaml") if name != "math" else OmegaConf.create()
    own.pop("defaults", None)
    return OmegaConf.merge(base, own, overrides)


def test_loss_falls_on_response_tokens_only(tokenizer):
    example = encode_example(tokenizer, "What is 2 + 3?", "2 + 3 = 5\n#### 5", max_length=256)
    prompt_ids = tokenizer.apply_chat_template([{"role": "user", "content": "What is 2 + 3?"}], add_generation_prompt=True,
                                               tokenize=True, return_dict=True)["input_ids"]
    n = len(prompt_ids)
    assert example["input_ids"][:n] == list(prompt_ids)
    assert example["labels"][:n] == [IGNORE_INDEX] * n
    assert example["labels"][n:] == example["input_ids"][n:]
    assert tokenizer.decode(example["input_ids"][n:]) == "2 + 3 = 5\n#### 5" + tokenizer.eos_token


def test_collate_pads_and_masks(tokenizer):
    a = encode_example(tokenizer, "q", "a", 64)
    b = encode_example(tokenizer, "a longer question here", "and a longer answer", 64)
    batch = collate([a, b], tokenizer.pad_token_id)
    assert batch["input_ids"].shape == batch["labels"].shape == batch["attention_mask"].shape
    assert int(batch["attention_mask"][0].sum()) == len(a["input_ids"])
    assert (batch["labels"][0, len(a["input_ids"]):] == IGNORE_INDEX).all()


def test_embedded_math_task(tokenizer):
    data = load_task(task_cfg("math", sizes={"train": 20, "validation": 5}), tokenizer)
    assert data.stats["train"]["examples"] == 20 and data.stats["validation"]["examples"] == 5
    assert data.stats["train"]["response_tokens"] > 0
    assert data.fingerprint == load_task(task_cfg("math", sizes={"train": 20, "validation": 5}), tokenizer).fingerprint


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_gsm8k_variant_on_a_local_stand_in(tmp_path, tokenizer):
    rows = [{"question": f"Tom has {i} apples and buys 2 more. How many?", "answer": f"{i} + 2 = {i + 2}\n#### {i + 2}"}
            for i in range(12)]
    files = {"train": _write_jsonl(tmp_path / "train.jsonl", rows[:8]), "test": _write_jsonl(tmp_path / "test.jsonl", rows[8:])}
    data = load_task(task_cfg("math-gsm8k", data_files=files, sizes={"train": 100, "validation": 100}), tokenizer)
    assert data.stats["train"]["examples"] == 8 and data.stats["validation"]["examples"] == 4
    text = tokenizer.decode(data.train[0]["input_ids"])
    assert "apples" in text and "####" in text


def test_metamathqa_variant_rewrites_the_final_answer(tmp_path, tokenizer):
    rows = [{"query": f"What is {i} times 3?", "response": f"{i} * 3 = {3 * i}.\nThe answer is: {3 * i}", "type": "GSM_Rephrased"}
            for i in range(10)]
    path = _write_jsonl(tmp_path / "metamath.jsonl", rows)
    data = load_task(task_cfg("math-metamathqa", data_files=path, sizes={"train": 6, "validation": 2}), tokenizer)
    decoded = [tokenizer.decode(e["input_ids"]) for e in data.train]
    assert all("#### " in d and "The answer is" not in d for d in decoded)


def test_normalize_final_answer():
    pattern = "^The answer is:?\\s*(.+?)\\s*$"
    assert normalize_final_answer("x = 4\nThe answer is: 4", pattern) == "x = 4\n#### 4"
    assert normalize_final_answer("no final line", pattern) == "no final line"


def test_missing_data_file_is_explained(tokenizer):
    with pytest.raises(FoloraError, match="Data file not found: /nonexistent/train.jsonl"):
        load_task(task_cfg("math-gsm8k", data_files={"train": "/nonexistent/train.jsonl", "test": "/x"}), tokenizer)


def test_malformed_data_file_is_explained(tmp_path, tokenizer):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "ok", "answer": "#### 1"}\n{this is not json\n')
    with pytest.raises(FoloraError, match="Could not read"):
        load_task(task_cfg("math-gsm8k", data_files=str(bad)), tokenizer)


def test_missing_column_is_explained(tmp_path, tokenizer):
    path = _write_jsonl(tmp_path / "cols.jsonl", [{"prompt": "q", "completion": "a"}] * 4)
    with pytest.raises(FoloraError, match="no column 'question'.*task.columns.prompt"):
        load_task(task_cfg("math-gsm8k", data_files=path), tokenizer)


def test_unsupported_file_type_is_explained(tmp_path, tokenizer):
    path = tmp_path / "data.txt"
    path.write_text("hello")
    with pytest.raises(FoloraError, match="'txt' files are not supported"):
        load_task(task_cfg("math-gsm8k", data_files=str(path)), tokenizer)
