"""`make bench` on the tiny model: the FLOP count that sets the bound agrees with PyTorch's own FLOP counter, and
the benchmark writes its figures (speed itself is reported, never asserted)."""

import json

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from folora import bench
from folora.bench import flops, sections
from folora.methods.build import build_method
from folora.models import load_model
from folora.tasks.data import collate, load_task
from folora.training.loop import token_loss_sum


def test_training_flops_per_token_match_pytorchs_flop_counter():
    cfg = sections.config("model=tiny-random", "method=lora", "model.architecture.hidden_size=128",
                       "model.architecture.intermediate_size=256", "model.architecture.num_hidden_layers=6",
                       "task.sizes.train=32", "task.sizes.validation=8")
    loaded = load_model(cfg.model)
    predicted = flops.lora_training_flops_per_token(loaded.model, 160, int(cfg.method.rank))
    examples = sections.fixed_length(load_task(cfg.task, loaded.tokenizer).train, 160)[:4]
    batch = collate(examples, loaded.tokenizer.pad_token_id)
    model = build_method(cfg.method).prepare(loaded.model, None).train()
    with FlopCounterMode(display=False) as counter:  # the head on every position, as the count assumes
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), batch["labels"][:, 1:].flatten(),
                                          ignore_index=-100, reduction="sum").backward()
    counts = counter.get_flop_counts()["Global"]
    tokens = batch["attention_mask"].sum().item()
    # On CPU the fused attention kernel is not counted by FlopCounterMode: compare the matmuls (linear layers, head,
    # adapters). The analytic count also charges the input gradient of the first layer's q/k/v, which autograd
    # skips because the embeddings are frozen: about 1/(2·layers) of the attention projections, hence 2%.
    matmuls = predicted["total"] - predicted["attention"]
    assert set(map(str, counts)) == {"aten.mm"}
    assert matmuls == pytest.approx(counter.get_total_flops() / tokens, rel=0.02)
    assert matmuls >= counter.get_total_flops() / tokens


def test_bench_writes_its_figures(tmp_path):
    report = bench.main(["model=tiny-random", "sections=ceiling,train", "steps=1", "warmup=1", "seq_len=160",
                         f"out={tmp_path}"])
    written = json.loads(next(tmp_path.glob("bench_tiny-random_cpu_*.json")).read_text())
    assert written["train"]["framework"] > 0 and written["train"]["plain"] > 0
    assert written["ceiling"]["peak_flops"]["fp32"] > 0
    assert report["train"]["framework_to_plain"] == pytest.approx(report["train"]["framework"] / report["train"]["plain"])


def test_unknown_options_are_refused():
    with pytest.raises(SystemExit, match="unknown option 'stepz'"):
        bench.parse(["stepz=3"])


def test_fixed_length_batches_are_unpadded():
    examples = [{"input_ids": list(range(10)), "labels": [-100] * 5 + list(range(5))},
                {"input_ids": list(range(4)), "labels": list(range(4))}]
    assert sections.fixed_length(examples, 8) == [{"input_ids": list(range(8)), "labels": [-100] * 5 + [0, 1, 2]}]
    assert torch.equal(collate(sections.fixed_length(examples, 8), 0)["attention_mask"], torch.ones(1, 8, dtype=torch.long))


def test_the_loss_skips_the_head_only_where_no_response_token_is_predicted():
    """token_loss_sum runs the output head from the first response position on: same loss, fewer FLOPs."""
    cfg = sections.config("model=tiny-random", "method=lora", "task.sizes.train=16", "task.sizes.validation=8")
    loaded = load_model(cfg.model)
    batch = collate(load_task(cfg.task, loaded.tokenizer).train[:4], loaded.tokenizer.pad_token_id)
    model = loaded.model.eval()
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        full = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), batch["labels"][:, 1:].flatten(),
                                                 ignore_index=-100, reduction="sum")
        assert token_loss_sum(model, batch) == pytest.approx(float(full), rel=1e-5)
    with FlopCounterMode(display=False) as skipped, torch.no_grad():
        token_loss_sum(model, batch)
    with FlopCounterMode(display=False) as every, torch.no_grad():
        model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    assert skipped.get_total_flops() < every.get_total_flops()


def test_generation_throughput_counts_generated_tokens_both_ways():
    cfg = sections.config("model=tiny-random")
    loaded = load_model(cfg.model)
    figures = sections.generation_throughput(loaded.model, loaded.tokenizer, ["Say hi.", "Name a longer river please."],
                                          6, torch.device("cpu"), "bf16")
    assert figures["batched"]["tokens"] > 0 and figures["one_at_a_time"]["tokens"] > 0  # pads not counted
    assert figures["speedup"] > 0


@pytest.mark.slow   # two runs through the entry point, each with two suite evaluations: minutes even on tiny-random
def test_bench_times_the_default_run_cold_and_warm(tmp_path):
    """The `run` section drives `python -m folora.run` twice on one fresh cache: the warm run finds the base eval
    cached, gives the cold run's numbers, and the phase table of each is reported."""
    report = bench.main(["model=tiny-random", "sections=run", f"out={tmp_path}", "run_overrides=train.steps=2 "
                         "train.batch_size=4 eval.limit=2 eval.kl.max_tokens=8 task.sizes.train=32 task.sizes.validation=8 "
                         "logger=none train.val_examples=2 method.proxy.num_sequences=8"])
    cold, warm = report["run"]["cold"], report["run"]["warm"]
    assert cold["wall_s"] > 0 and warm["wall_s"] > 0
    assert 0.1 < cold["peak_rss_gib"] < 24 and max(cold["phases_peak_rss_gib"].values()) <= cold["peak_rss_gib"]
    assert {"load model", "base eval", "train", "final eval"} <= set(cold["phases_s"])
    assert warm["phases_s"]["base eval"] < cold["phases_s"]["base eval"]
    assert cold["precision"]["train"] in ("fp32", "bf16")
    assert warm["same_numbers_as_cold"] is True
    assert "make run" in bench.render(report) and "equal the cold run's: True" in bench.render(report)


def test_the_run_table_lists_every_phase_of_both_runs():
    report = {"model": "m", "device": "d", "batch_size": 8, "seq_len": 128, "versions": {"torch": "x"},
              "run": {"cold": {"wall_s": 300.0, "phases_s": {"load model": 20.0, "base eval": 100.0, "train": 90.0},
                               "train_tokens_per_s": 301.0, "peak_rss_gib": 2.5},
                      "warm": {"wall_s": 200.0, "phases_s": {"load model": 2.0, "base eval": 0.1, "train": 91.0},
                               "train_tokens_per_s": 299.0, "peak_rss_gib": 2.25}}}
    text = bench.render(report)
    assert "base eval" in text and "100.0" in text and "0.1" in text and "whole process (wall)" in text
    assert "peak resident memory (GiB)" in text and "2.50" in text and "2.25" in text
    assert text.count("\n  load model") == 1


def test_the_overhead_section_times_the_runs_own_checkpoint_writes(tmp_path):
    report = bench.main(["model=tiny-random", "sections=overhead", "steps=1", "warmup=0", f"out={tmp_path}"])
    for method in ("lora", "folora"):
        figures = report["overhead"]["checkpoint"][method]
        assert figures["state_mb"] > 0 and figures["state_s"] > 0 and figures["every"] == 10
        assert figures["overhead_per_step"] == figures["state_s"] / (10 * report["overhead"]["step_s"][method])
    # FoLoRA's calibration (its bases) is saved once; LoRA has none to save but the file still marks the run
    assert report["overhead"]["checkpoint"]["folora"]["calibration_mb"] > report["overhead"]["checkpoint"]["lora"]["calibration_mb"]


def test_the_8b_shapes_section_solves_and_steps_at_small_widths(tmp_path):
    report = bench.main(["model=tiny-random", "sections=shapes8b", "shape_widths=64,128", "shape_layers=1",
                         f"out={tmp_path}"])
    solves = report["shapes8b"]["solve"]
    assert [s["width"] for s in solves] == [64, 128] and [s["top_k"] for s in solves] == [64, 128]   # full bases
    assert all(s["solve_s"] > 0 for s in solves)
    step = report["shapes8b"]["step"]
    assert step["layers"] == 1 and step["gated_step_s"] > 0 and step["adam_step_s"] > 0
    assert step["gated_step_s_32_layers"] == step["gated_step_s"] * 32
    assert step["bases"] == "full, bfloat16" and report["shapes8b"]["step_top_k"]["bases"] == "d/4 top-k, float32"
    assert step["coordinates"] == "weight" and report["shapes8b"]["step_spectral"]["coordinates"] == "spectral"
    proxy = report["shapes8b"]["proxy"]
    assert proxy["llama_8b"] == {"widest": 14336, "length": 96, "sequences": 598, "tokens": 598 * 96}
    rows = {(x["width"], x["proxy"]): x for x in proxy["rows"]}
    for width in (64, 128):   # half the width's tokens leave directions unheld, and their basis vectors long
        assert rows[width, "auto"]["below_damping"] == 0 and rows[width, "half"]["below_damping"] >= width // 2
        assert rows[width, "half"]["basis_norm_max"] > 10 * rows[width, "auto"]["basis_norm_max"]
    assert "num_sequences: auto" in bench.render(report)
