"""`python -m folora.audit`: fine-tunes made outside folora (a plain transformers + PEFT loop, a full model folder)
and a folora run's own adapter, audited through the real entry point against a base model; bad folders refused
with one message each, before any result is written."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import REPO, read_results, tiny_architecture
from tests.wandb_offline import read_run

pytestmark = pytest.mark.integration

EVAL = ["eval.limit=3", "eval.kl.max_tokens=16", "logger=none"]
TASK = ["task=math", "task.sizes.train=64", "task.sizes.validation=8", "val_examples=4"]


def run_audit(out: Path, *overrides: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "folora.audit", f"hydra.run.dir={out}", *overrides]
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600, env=dict(os.environ))


def composed_audit(*overrides: str):
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return compose(config_name="audit", overrides=list(overrides))


@pytest.fixture(scope="module")
def base_folder(tmp_path_factory):
    """A tiny Qwen2 (q/k/v biases, untied head) with the tiny tokenizer, saved as a model folder: the base, loaded
    by `model.source=pretrained` as a hub model would be."""
    from folora.models import tiny_tokenizer

    folder = tmp_path_factory.mktemp("base") / "tiny-qwen2"
    tokenizer = tiny_tokenizer(512)
    tiny_architecture("qwen2", len(tokenizer)).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def base_model(folder: Path) -> list[str]:
    return ["model=qwen2.5-0.5b-instruct", f"model.path={folder}", "model.name=tiny-qwen2"]


def plain_peft_adapter(base: Path, out: Path, rank: int = 4, steps: int = 6) -> Path:
    """A LoRA adapter trained by a plain loop (transformers + PEFT + torch AdamW, no folora code), saved with its
    tokenizer as TRL does."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(1)
    tokenizer = AutoTokenizer.from_pretrained(base)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32),
                           LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=["q_proj", "v_proj", "down_proj"]))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=5e-3)
    batch = tokenizer(["Question: what is 12 + 30? Answer: 42.", "Natalia sold 48 clips in April."], return_tensors="pt",
                      padding=True)
    for _ in range(steps):
        loss = model(**batch, labels=batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def perturbed_model_folder(base: Path, out: Path) -> Path:
    """A whole model folder: the base with one projection moved, saved by transformers (no tokenizer: the base's)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    with torch.no_grad():
        generator = torch.Generator().manual_seed(2)
        weight = model.model.layers[0].mlp.down_proj.weight
        weight.add_(0.5 * weight.std() * torch.randn(weight.shape, generator=generator))
    model.save_pretrained(out)
    return out


def test_a_plain_peft_adapter_and_a_model_folder_are_audited_and_ranked(base_folder, tmp_path):
    adapter = plain_peft_adapter(base_folder, tmp_path / "plain-lora")
    full = perturbed_model_folder(base_folder, tmp_path / "full-ft")
    out = tmp_path / "audit"
    process = run_audit(out, *base_model(base_folder), f"tuned=[{adapter},{full}]", *TASK, *EVAL, "logger=wandb")
    assert process.returncode == 0, process.stderr[-3000:]
    assert process.stdout.count("base scores computed and cached") + process.stdout.count("base scores from cache") == 1
    for name, kind in (("plain-lora", "adapter"), ("full-ft", "model")):
        record = read_results(out / name)
        assert record["status"] == "completed" and record["kind"] == "audit", name
        assert record["tuned"]["kind"] == kind and len(record["tuned"]["fingerprint"]) == 64
        assert record["roles"]["math_strict"] == "target" and record["roles"]["prose_bpb"] == "forgetting"
        low, high = record["forgetting"]["ci"]
        assert low <= record["forgetting"]["value"] <= high
        assert record["kl_to_base"]["value"] > 0 and len(record["kl_to_base"]["per_prompt"]) > 0
        assert record["validation_loss"]["base"] > 0 and record["validation_loss"]["tuned"] > 0
        assert record["data"]["model"]["name"] == "tiny-qwen2"
        assert (out / name / "outcomes.json.gz").is_file() and (out / name / "config.yaml").is_file()
        (offline,) = (out / name / "wandb").glob("offline-run-*")      # one W&B run per audit, its summary the record's
        (logged,) = offline.glob("*.wandb")
        summary = read_run(logged)["summary"]
        assert summary["status"] == "completed" and summary["forgetting"] == record["forgetting"]["value"]
    ranking = json.loads((out / "ranking.json").read_text())
    forgetting = [row["headline"]["forgetting"]["value"] for row in ranking["ranked"]]
    assert forgetting == sorted(forgetting) and len(ranking["pairs"]) == 1
    pair = ranking["pairs"][0]["difference"]["forgetting"]
    assert pair["value"] == pytest.approx(forgetting[1] - forgetting[0], abs=1e-5)
    assert "Ranked by forgetting" in process.stdout and (out / "ranking.md").read_text().count("| 1 |") == 1


def test_without_a_task_every_item_is_preservation(base_folder, tmp_path, capsys):
    from folora.experiment.audit import run_audits

    full = perturbed_model_folder(base_folder, tmp_path / "full-ft")
    out = tmp_path / "audit"
    assert run_audits(composed_audit(*base_model(base_folder), f"tuned={full}", *EVAL), out) == [out]
    record = read_results(out)
    assert record["target_gain"]["value"] is None and "target" not in record["roles"].values()
    assert record["roles"]["math_strict"] == "preservation" and record["validation_loss"]["tuned"] is None
    printed = capsys.readouterr().out
    assert "forgetting" in printed and "preservation" in printed


# --- bad input ---------------------------------------------------------------------------------------------------


def refused(base: Path, tuned: str) -> str:
    """The message an audit of `tuned` against `base` stops with (in-process; the entry point prints it, exit 2)."""
    from folora.errors import FoloraError
    from folora.experiment.audit import run_audits

    with pytest.raises(FoloraError) as error:
        run_audits(composed_audit(*base_model(base), f"tuned={tuned}", *EVAL), base.parent / "unused")
    return str(error.value)


def test_an_adapter_for_another_base_is_refused(base_folder, tmp_path):
    from folora.models import tiny_tokenizer

    other = tmp_path / "other-base"
    tiny_architecture("llama", len(tiny_tokenizer(512))).save_pretrained(other)   # hidden 32, other layer names
    tiny_tokenizer(512).save_pretrained(other)
    adapter = plain_peft_adapter(other, tmp_path / "llama-lora", steps=1)
    wide = tmp_path / "wide-base"
    from transformers import Qwen2Config, Qwen2ForCausalLM
    Qwen2ForCausalLM(Qwen2Config(vocab_size=len(tiny_tokenizer(512)), hidden_size=48, intermediate_size=64,
                                 num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)).save_pretrained(wide)
    tiny_tokenizer(512).save_pretrained(wide)
    wide_adapter = plain_peft_adapter(wide, tmp_path / "wide-lora", steps=1)
    message = refused(base_folder, str(wide_adapter))
    assert "wide-lora" in message and "does not fit model=tiny-qwen2" in message
    message = refused(base_folder, str(adapter))
    assert "llama-lora" in message and "model_type llama against qwen2" in message


def test_a_model_folder_of_another_architecture_is_refused(base_folder, tmp_path):
    from folora.models import tiny_tokenizer

    other = tmp_path / "gpt2-ft"
    tiny_architecture("gpt2", len(tiny_tokenizer(512))).save_pretrained(other)
    message = refused(base_folder, str(other))
    assert "gpt2-ft" in message and "not a fine-tune of model=tiny-qwen2" in message and "model_type" in message


def test_a_tokenizer_with_another_vocabulary_is_refused(base_folder, tmp_path):
    from folora.models import tiny_tokenizer

    adapter = plain_peft_adapter(base_folder, tmp_path / "lora", steps=1)
    tiny_tokenizer(600).save_pretrained(adapter)   # overwrites the tokenizer saved with it
    message = refused(base_folder, str(adapter))
    assert "vocabulary differs" in message and "lora" in message


def test_missing_and_empty_folders_and_uncached_hub_ids_are_refused(base_folder, tmp_path):
    assert "no such folder" in refused(base_folder, str(tmp_path / "nowhere"))
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("not a model")
    message = refused(base_folder, str(tmp_path / "empty"))
    assert "neither a PEFT adapter" in message and "notes.txt" in message
    message = refused(base_folder, "someone/never-downloaded-adapter")
    assert "not a hub id in the local Hugging Face cache" in message and "huggingface-cli download" in message


def test_the_entry_point_exits_2_and_writes_no_completed_result(base_folder, tmp_path):
    out = tmp_path / "audit"
    process = run_audit(out, *base_model(base_folder), f"tuned={tmp_path / 'nowhere'}", *EVAL)
    assert process.returncode == 2
    assert "folora: error: tuned=" in process.stderr and "Traceback" not in process.stderr
    assert read_results(out) is None
