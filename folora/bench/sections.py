"""The timed sections of `make bench`. Every training figure comes from the framework's own `training_step`
(`folora.training.loop`), the one real runs execute; the plain PEFT loop is the comparison a user would write.

- train     the framework's loop and a plain PEFT + transformers loop, alternating on the same batches;
- overhead  LoRA and FoLoRA taking turns, one step each on the same batch; FoLoRA's calibration phases;
- eval      items/s for each item of the embedded suite; batched vs one-at-a-time generation;
- scaling   LoRA / FoLoRA step time and calibration over tiny-random models of growing width and rank.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from folora.bench.flops import sum_d_cubed, sum_d_squared
from folora.bench.timing import Clock
from folora.calibration.proxy import auto_proxy_sequences
from folora.methods.base import MethodContext
from folora.models import load_model
from folora.records.timing import Phases
from folora.tasks.data import IGNORE_INDEX, load_task
from folora.tasks.drafts import greedy_chat
from folora.training import precision
from folora.training.checkpoint import Checkpointer
from folora.training.loop import TrainSummary, batches, make_trainer, train, training_state, training_step

REPO = Path(__file__).resolve().parents[2]


def precision_overrides(name: str) -> list[str]:
    """The bench runs training, evaluation and calibration at one precision (`auto` resolves per device)."""
    return [f"train.precision={name}", f"eval.precision={name}"]


def config(*overrides: str) -> DictConfig:
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return compose("config", overrides=list(overrides))


def fixed_length(examples: list[dict], seq_len: int) -> list[dict]:
    """Examples cut to exactly `seq_len` tokens (shorter ones dropped), so every batch is batch x seq_len, unpadded."""
    return [{k: v[:seq_len] for k, v in e.items()} for e in examples if len(e["input_ids"]) >= seq_len
            and any(t != IGNORE_INDEX for t in e["labels"][:seq_len])]


def plain_peft_model(cfg: DictConfig, device: torch.device):
    """The loop a user writes from the PEFT README: get_peft_model, AdamW, the model's own loss."""
    from peft import LoraConfig, get_peft_model

    m = cfg.method
    lora = LoraConfig(r=int(m.rank), lora_alpha=float(m.alpha), lora_dropout=float(m.dropout),
                      target_modules=m.target_modules, task_type="CAUSAL_LM")
    model = get_peft_model(load_model(cfg.model).model, lora).to(device).train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=float(cfg.train.lr))
    return model, optimizer


def plain_steps(model, optimizer, stream, steps: int, device: torch.device, precision_used: str) -> int:
    """Plain PEFT steps at the same precision as the framework's (bf16 autocast is what a user would turn on)."""
    tokens = 0
    for _ in range(steps):
        batch = {k: v.to(device) for k, v in next(stream).items()}
        with precision.autocast(precision_used, device):
            loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        tokens += int(batch["attention_mask"].sum())
    return tokens


def framework_vs_plain(cfg: DictConfig, examples: list[dict], pad_id: int, device: torch.device, steps: int,
                       warmup: int, rounds: int = 3) -> dict:
    """Alternate the two loops, `rounds` times each, every round on the same first `steps` batches of the seed's
    stream; tokens/s is the best round of each (the least disturbed by anything else on the machine)."""
    method = instantiate(cfg.method)
    framework = method.prepare(load_model(cfg.model).model, None).to(device)  # LoRA needs no context
    plain, optimizer = plain_peft_model(cfg, device)
    train_cfg = OmegaConf.merge(cfg.train, {"steps": steps, "log_every": 10**9, "warmup_ratio": 0.0})
    silent = {"log": lambda *a, **k: None, "pad_id": pad_id, "device": device, "seed": 0}
    used = precision.resolve(cfg.train.precision, device)
    train(framework, method, examples, OmegaConf.merge(train_cfg, {"steps": warmup}), **silent)
    plain_steps(plain, optimizer, batches(examples, int(cfg.train.batch_size), pad_id, seed=0), warmup, device, used)
    clock, rates = Clock(device), {"framework": [], "plain": []}
    for _ in range(rounds):
        seconds = []
        with clock(seconds):
            summary = train(framework, method, examples, train_cfg, **silent)
        rates["framework"].append(summary.tokens / seconds[0])
        seconds = []
        with clock(seconds):
            tokens = plain_steps(plain, optimizer, batches(examples, int(cfg.train.batch_size), pad_id, seed=0), steps,
                                 device, used)
        rates["plain"].append(tokens / seconds[0])
    return {name: max(r) for name, r in rates.items()} | {"rounds": rates, "precision": used}


def step_time_side_by_side(cfgs: dict[str, DictConfig], task, tokenizer, device, steps: int, warmup: int,
                           calibration_cache: Path) -> dict:
    """Each method on its own copy of the model; they take turns, one step each on the same batch."""
    prepared, prepare = {}, {}
    for name, cfg in cfgs.items():
        loaded = load_model(cfg.model)
        method = instantiate(cfg.method)
        phases = Phases()
        ctx = MethodContext(tokenizer=tokenizer, train_examples=task.train, seed=0, device=device,
                            cache_dir=calibration_cache, model_fingerprint=loaded.fingerprint, phase=phases,
                            precision=precision.resolve(cfg.eval.precision, device))
        start = time.perf_counter()
        model = method.prepare(loaded.model.to(device), ctx).to(device).train()
        prepare[name] = {"prepare_s": time.perf_counter() - start, **phases.seconds}
        steps_cfg = OmegaConf.merge(cfg.train, {"steps": warmup + steps})
        prepared[name] = make_trainer(model, method, steps_cfg, device)
    first = next(iter(cfgs.values()))
    stream = batches(task.train, int(first.train.batch_size), tokenizer.pad_token_id, seed=0)
    clock, times, tokens = Clock(device), {name: [] for name in cfgs}, []
    for step in range(warmup + steps):
        batch = next(stream)
        tokens.append(int(batch["attention_mask"].sum()))
        for name, trainer in prepared.items():
            seconds = times[name] if step >= warmup else []
            with clock(seconds):
                training_step(trainer, [batch], step)
    per_step = {name: statistics.median(t) for name, t in times.items()}
    calibration = {name: trainer.method.summary().get("calibration", {}) for name, trainer in prepared.items()}
    with tempfile.TemporaryDirectory(dir=calibration_cache) as folder:
        saving = {name: checkpoint_cost(trainer, Path(folder) / name, int(cfgs[name].train.checkpoint_every),
                                        per_step[name]) for name, trainer in prepared.items()}
    return {"tokens_per_step": statistics.mean(tokens[warmup:]), "step_s": per_step, "prepare": prepare,
            "calibration": calibration, "checkpoint": saving}


def checkpoint_cost(trainer, folder: Path, every: int, step_s: float, repeats: int = 3) -> dict:
    """The run's own checkpoint writes (folora.training.checkpoint): the calibration once, the training state at each
    checkpoint (median of `repeats`), their sizes, and the state write as a share of the steps between two
    checkpoints at the default interval."""
    summary = TrainSummary(steps=1, tokens=0, wall_s=0.0)
    writer = Checkpointer(folder, {"config": {}, "code": {}}, every)
    calibration_s = writer.save_calibration(trainer.method.calibration_state())
    state_s = statistics.median(writer.save_state(training_state(trainer, summary, 1)) for _ in range(repeats))
    return {"calibration_s": calibration_s, "calibration_mb": writer.calibration_path.stat().st_size / 2**20,
            "state_s": state_s, "state_mb": writer.state_path.stat().st_size / 2**20, "every": every,
            "overhead_per_step": state_s / (every * step_s) if every else 0.0}


def eval_items(model, tokenizer, eval_cfg: DictConfig, precision_used: str) -> dict:
    """Each task group of the suite on its own, timed: items/s (items sharing one lm-eval task share its time)."""
    from folora.evals.suite import _group, evaluate_suite, suite_items

    figures = {}
    for (task, _, _), group in _group(suite_items(eval_cfg)).items():
        part = OmegaConf.merge(eval_cfg, {"items": None})
        part["items"] = {item.name: eval_cfg["items"][item.name] for item in group}
        start = time.perf_counter()
        scores = evaluate_suite(model, tokenizer, part, precision_used).scores
        seconds = time.perf_counter() - start
        n = max(s["n"] for s in scores.values())
        figures[task] = {"items": [i.name for i in group], "n": n, "seconds": seconds, "items_per_s": n / seconds,
                         "scores": {name: {"value": s["value"], "stderr": s["stderr"]} for name, s in scores.items()}}
    return figures


def generation_throughput(model, tokenizer, prompts: list[str], max_new_tokens: int, device, precision_used: str
                          ) -> dict:
    """Greedy generation with the KV cache: all prompts in one left-padded batch vs one prompt at a time."""
    figures = {}
    for name, chunks in {"batched": [prompts], "one_at_a_time": [[p] for p in prompts]}.items():
        start = time.perf_counter()
        with precision.autocast(precision_used, device):
            generated = sum(greedy_chat(model, tokenizer, chunk, max_new_tokens, device)[1] for chunk in chunks)
        seconds = time.perf_counter() - start
        figures[name] = {"tokens": generated, "seconds": seconds, "tokens_per_s": generated / seconds}
    figures["speedup"] = figures["batched"]["tokens_per_s"] / figures["one_at_a_time"]["tokens_per_s"]
    return figures


def tiny(width: int, rank: int, method: str, precision_name: str) -> DictConfig:
    return config("model=tiny-random", f"method={method}", f"method.rank={rank}", *precision_overrides(precision_name),
                  f"model.architecture.hidden_size={width}", f"model.architecture.intermediate_size={2 * width}",
                  "model.architecture.num_attention_heads=4", "model.architecture.num_key_value_heads=2",
                  "task.sizes.train=256", "task.sizes.validation=8")


def scaling(widths: list[int], ranks: list[int], device, steps: int, warmup: int, precision_name: str) -> list[dict]:
    rows = []
    middle = widths[len(widths) // 2]
    for width, rank in [(w, 16) for w in widths] + [(middle, r) for r in ranks if r != 16]:
        cfgs = {m: tiny(width, rank, m, precision_name) for m in ("lora", "folora")}
        loaded = load_model(cfgs["lora"].model)
        task = load_task(cfgs["lora"].task, loaded.tokenizer)
        with tempfile.TemporaryDirectory() as tmp:
            figures = step_time_side_by_side(cfgs, task, loaded.tokenizer, device, steps, warmup, Path(tmp))
        rows.append({"width": width, "rank": rank, "lora_step_s": figures["step_s"]["lora"],
                     "folora_step_s": figures["step_s"]["folora"],
                     "ratio": figures["step_s"]["folora"] / figures["step_s"]["lora"],
                     **calibration_split(figures["prepare"]["folora"], figures["calibration"]["folora"], loaded.model)})
    return rows


def calibration_split(phases: dict, stats: dict, model: torch.nn.Module) -> dict:
    """Proxy sampling, covariance pass and spectral solve in seconds, with the sizes they scale with."""
    both = phases.get("calibration/covariances and solve", 0.0)
    return {"proxy_sampling_s": phases.get("calibration/proxy sampling"), "covariances_s": both - stats.get("solve_s", 0.0),
            "solve_s": stats.get("solve_s", 0.0), "params": sum(p.numel() for p in model.parameters()),
            "sum_d_in_squared": sum_d_squared(model), "sum_d_in_cubed": sum_d_cubed(model)}


def calibration_tokens(widest: int) -> int:
    """Tokens the default FoLoRA calibration reads on a model whose widest adapted input is `widest`: the proxy
    sequences (`auto`: sized to that width) plus about 200 per task example."""
    folora = config("method=folora").method
    length, sequences = int(folora.proxy.length), folora.proxy.num_sequences
    if sequences == "auto":
        sequences = auto_proxy_sequences(widest, length, float(folora.proxy_tokens_per_width))
    return int(sequences) * length + int(folora.calibration.task_examples) * 200


def overhead(options: dict, device, steps: int, warmup: int, task, tokenizer, evaluation: dict) -> dict:
    cfgs = {m: config(f"model={options['model']}", f"method={m}", *precision_overrides(options["precision"]))
            for m in ("lora", "folora")}
    with tempfile.TemporaryDirectory() as tmp:  # a fresh cache: proxy sampling is measured cold
        figures = step_time_side_by_side(cfgs, task, tokenizer, device, steps, warmup, Path(tmp))
    prepare = figures["prepare"]["folora"]
    calibration = {k.removeprefix("calibration/"): v for k, v in prepare.items() if k.startswith("calibration/")}
    default_steps = int(cfgs["folora"].train.steps)
    eval_s = sum(f["seconds"] for f in evaluation.get("items", {}).values())
    calibration_s = sum(calibration.values())
    run_s = calibration_s + default_steps * figures["step_s"]["folora"] + eval_s
    return {"tokens_per_step": figures["tokens_per_step"], "step_s": figures["step_s"],
            "ratio": figures["step_s"]["folora"] / figures["step_s"]["lora"], "calibration_s": calibration,
            "checkpoint": figures["checkpoint"],
            "default_run_estimate_s": run_s, "default_run_formula": f"calibration + {default_steps} x FoLoRA step + "
            f"final eval ({'measured' if eval_s else 'not measured: run with sections=eval too'})",
            "calibration_share_cold": calibration_s / run_s,
            "calibration_share_warm": (calibration_s - calibration.get("proxy sampling", 0)) / run_s,
            "calibration_split": {"name": options["model"], **calibration_split(
                prepare, figures["calibration"]["folora"], load_model(cfgs["lora"].model).model)}}


def make_run_phases(model: str, precision_name: str, overrides: list[str] = ()) -> dict:
    """The default run through the real entry point, as `make run` runs it: first on an empty cache (cold), then
    again on the cache it filled (warm). Wall time of the whole process and the run's own phase table, and whether
    the warm run gave the cold one's numbers (loss curve, every score, KL), as the same config must."""
    figures, numbers = {}, {}
    with tempfile.TemporaryDirectory(prefix="folora-bench-run-") as cache:
        env = {**os.environ, "FOLORA_CACHE": cache}
        for label in ("cold", "warm"):
            run_dir = Path(cache) / f"run-{label}"
            command = [sys.executable, "-m", "folora.run", f"hydra.run.dir={run_dir}", f"model={model}",
                       *precision_overrides(precision_name), *overrides]
            start = time.perf_counter()
            process = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.DEVNULL)
            _, status, usage = os.wait4(process.pid, 0)   # this child's own resource use: its peak memory
            process.returncode = os.waitstatus_to_exitcode(status)
            if process.returncode:
                raise subprocess.CalledProcessError(process.returncode, command)
            results = json.loads((run_dir / "results.json").read_text())
            figures[label] = {"wall_s": time.perf_counter() - start, "peak_rss_gib": usage.ru_maxrss / 2 ** 20,
                              "phases_s": results["timing"]["phases_s"],
                              "phases_peak_rss_gib": results["timing"].get("phases_peak_rss_gib"),
                              "train_tokens_per_s": results["timing"]["train_tokens_per_s"],
                              "precision": results.get("precision")}
            numbers[label] = [results["train"]["loss_curve"], results["metrics"], results["kl_to_base"]]
    figures["warm"]["same_numbers_as_cold"] = numbers["warm"] == numbers["cold"]
    return figures
