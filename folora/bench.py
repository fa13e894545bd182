"""`make bench`: where the time goes, measured side by side in one process and printed as a table.

    python -m folora.bench [model=smollm2-135m] [steps=4] [warmup=1] [batch_size=8] [seq_len=128]
                           [sections=ceiling,train,overhead,eval,scaling]

1. ceiling   a large matmul (fp32; bf16 where the hardware has it) -> FLOP/s; the training FLOPs per token of the
             model under LoRA (forward + backward through a frozen base) -> the bound in tokens/s.
2. train     the framework's training loop (folora.training.train, LoRA) and a plain PEFT + transformers loop
             written the way a user would write it, alternating on the same batches (batch x seq_len tokens):
             tokens/s, ratio to the bound, ratio to the plain loop.
3. overhead  LoRA and FoLoRA taking turns, one optimizer step each on the same batch of the default run: step
             time ratio; FoLoRA's calibration phases (proxy sampling cold, covariances, solve) in seconds and as a
             share of a default `make run` (estimated from this run's own figures; the formula is printed).
4. eval      items/s for each item of the embedded suite; generated tokens/s batched vs one prompt at a time.
5. scaling   LoRA / FoLoRA step time and FoLoRA calibration over tiny-random models of growing width and rank,
             and the cost predicted for an 8B model from fitted per-FLOP rates (docs/bench.md explains the model).

Writes everything as JSON to results/bench/bench_<model>_<device>.json. On a CUDA machine the same command runs
unchanged: bf16 autocast, CUDA events for timing, model FLOP utilization against the measured bf16 peak.
"""

from __future__ import annotations

import contextlib
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from hydra.utils import get_method, instantiate
from omegaconf import DictConfig, OmegaConf

from folora.methods import MethodContext
from folora.models import load_model
from folora.results import package_versions, write_json_atomic
from folora.runner import Phases
from folora.tasks.data import load_task
from folora.tasks.drafts import greedy_chat
from folora.training import batches, token_loss_sum, train

REPO = Path(__file__).resolve().parents[1]
OPTIONS = {"model": "smollm2-135m", "steps": "4", "warmup": "1", "batch_size": "8", "seq_len": "128",
           "sections": "ceiling,train,overhead,eval,scaling", "widths": "64,128,256,512", "ranks": "8,16,32",
           "out": str(REPO / "results" / "bench")}


def parse(argv: list[str]) -> dict:
    options = dict(OPTIONS)
    for arg in argv:
        key, _, value = arg.partition("=")
        if key not in options:
            raise SystemExit(f"unknown option {key!r}; options: {', '.join(options)}")
        options[key] = value
    return options


def config(*overrides: str) -> DictConfig:
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return compose("config", overrides=list(overrides))


class Clock:
    """Seconds of a block of work: perf_counter on CPU, CUDA events (after a synchronize) on a GPU."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"

    @contextlib.contextmanager
    def __call__(self, into: list):
        if self.cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            yield
            end.record()
            torch.cuda.synchronize()
            into.append(start.elapsed_time(end) / 1000)
        else:
            start = time.perf_counter()
            yield
            into.append(time.perf_counter() - start)


def autocast(device: torch.device):
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()


# --- 1. the machine's ceiling and the model's FLOPs per token ---------------------------------------------------


def has_fast_bf16(device: torch.device) -> bool:
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    capability = torch.backends.cpu.get_cpu_capability()
    return "AMX" in capability or "BF16" in capability  # AVX2 / plain AVX512 emulate bf16 slower than fp32


def matmul_flops(device: torch.device, dtype: torch.dtype, size: int, repeats: int = 5) -> float:
    """Best-of-`repeats` FLOP/s of an n x n x n matmul."""
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    clock, seconds = Clock(device), []
    torch.matmul(a, b)
    for _ in range(repeats):
        with clock(seconds):
            torch.matmul(a, b)
    return 2 * size**3 / min(seconds)


def lora_training_flops_per_token(model: torch.nn.Module, seq_len: int, rank: int) -> dict:
    """FLOPs per token of one LoRA training step through a frozen base (the usual 2-FLOPs-per-multiply-add count).

    Every linear layer (the output head included) costs 2·in·out forward and 2·in·out backward for the gradient
    with respect to its input; the frozen weight needs no weight gradient, so a frozen base costs 4N, not 6N.
    Attention scores and the weighted sum cost 2·2·T·d per token per layer forward (T the sequence length, causal
    masking not subtracted: SDPA computes the full square on CPU), twice that backward. Each LoRA pair costs
    2·r·(in+out) forward, and twice that backward plus its weight gradients (2·r·(in+out) again).
    `model` is the base model, before adapters are attached (its adapter layers would be counted as base layers)."""
    if hasattr(model, "peft_config"):
        raise ValueError("lora_training_flops_per_token counts a base model; pass it before get_peft_model wraps it")
    head = model.get_output_embeddings()
    linear = sum(m.in_features * m.out_features for m in model.modules()
                 if isinstance(m, torch.nn.Linear) and m is not head)
    lora = sum(rank * (m.in_features + m.out_features) for m in model.modules()
               if isinstance(m, torch.nn.Linear) and m is not head)
    head_size = head.weight.numel()
    cfg = model.config
    attention_dim = cfg.num_attention_heads * getattr(cfg, "head_dim", cfg.hidden_size // cfg.num_attention_heads)
    attention = 2 * 2 * seq_len * attention_dim * cfg.num_hidden_layers
    figures = {"linear": 4 * linear, "head": 4 * head_size, "attention": 3 * attention, "lora": 2 * lora + 4 * lora}
    return figures | {"total": sum(figures.values()), "params_linear": linear, "params_head": head_size}


def ceiling(device: torch.device, model: torch.nn.Module, seq_len: int, rank: int) -> dict:
    size = 4096 if device.type == "cuda" else 2048
    peaks = {"fp32": matmul_flops(device, torch.float32, size)}
    if has_fast_bf16(device):
        peaks["bf16"] = matmul_flops(device, torch.bfloat16, size)
    flops = lora_training_flops_per_token(model, seq_len, rank)
    peak = peaks.get("bf16", peaks["fp32"]) if device.type == "cuda" else peaks["fp32"]
    return {"matmul_size": size, "peak_flops": peaks, "train_flops_per_token": flops,
            "bound_tokens_per_s": peak / flops["total"], "bound_dtype": "bf16" if peak is peaks.get("bf16") else "fp32"}


# --- 2. the framework's loop against a plain PEFT loop ----------------------------------------------------------


def fixed_length(examples: list[dict], seq_len: int) -> list[dict]:
    """Examples cut to exactly `seq_len` tokens (shorter ones dropped), so every batch is batch x seq_len, unpadded."""
    return [{k: v[:seq_len] for k, v in e.items()} for e in examples if len(e["input_ids"]) >= seq_len
            and any(t != -100 for t in e["labels"][:seq_len])]


def plain_peft_model(cfg: DictConfig, device: torch.device):
    """The loop a user writes from the PEFT README: get_peft_model, AdamW, the model's own loss."""
    from peft import LoraConfig, get_peft_model

    m = cfg.method
    lora = LoraConfig(r=int(m.rank), lora_alpha=float(m.alpha), lora_dropout=float(m.dropout),
                      target_modules=m.target_modules, task_type="CAUSAL_LM")
    model = get_peft_model(load_model(cfg.model).model, lora).to(device).train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=float(cfg.train.lr))
    return model, optimizer


def plain_steps(model, optimizer, stream, steps: int, device: torch.device) -> int:
    tokens = 0
    for _ in range(steps):
        batch = {k: v.to(device) for k, v in next(stream).items()}
        with autocast(device):
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
    train(framework, method, examples, OmegaConf.merge(train_cfg, {"steps": warmup}), **silent)
    plain_steps(plain, optimizer, batches(examples, int(cfg.train.batch_size), pad_id, seed=0), warmup, device)
    clock, rates = Clock(device), {"framework": [], "plain": []}
    for _ in range(rounds):
        seconds = []
        with clock(seconds):
            summary = train(framework, method, examples, train_cfg, **silent)
        rates["framework"].append(summary.tokens / seconds[0])
        seconds = []
        with clock(seconds):
            tokens = plain_steps(plain, optimizer, batches(examples, int(cfg.train.batch_size), pad_id, seed=0), steps,
                                 device)
        rates["plain"].append(tokens / seconds[0])
    return {name: max(r) for name, r in rates.items()} | {"rounds": rates}


# --- 3. FoLoRA's overhead: step time and calibration -----------------------------------------------------------


def step_time_side_by_side(cfgs: dict[str, DictConfig], task, tokenizer, device, steps: int, warmup: int,
                           calibration_cache: Path) -> dict:
    """Each method on its own copy of the model; they take turns, one step each on the same batch."""
    prepared, prepare = {}, {}
    for name, cfg in cfgs.items():
        loaded = load_model(cfg.model)
        method = instantiate(cfg.method)
        phases = Phases()
        ctx = MethodContext(tokenizer=tokenizer, train_examples=task.train, seed=0, device=device,
                            cache_dir=calibration_cache, model_fingerprint=loaded.fingerprint, phase=phases)
        start = time.perf_counter()
        model = method.prepare(loaded.model.to(device), ctx).to(device).train()
        prepare[name] = {"prepare_s": time.perf_counter() - start, **phases.seconds}
        params = [p for p in model.parameters() if p.requires_grad]
        prepared[name] = (model, method.optimizer(params, cfg.train), method)
    first = next(iter(cfgs.values()))
    stream = batches(task.train, int(first.train.batch_size), tokenizer.pad_token_id, seed=0)
    clock, times, tokens = Clock(device), {name: [] for name in cfgs}, []
    for step in range(warmup + steps):
        batch = {k: v.to(device) for k, v in next(stream).items()}
        tokens.append(int(batch["attention_mask"].sum()))
        for name, (model, optimizer, method) in prepared.items():
            seconds = times[name] if step >= warmup else []
            with clock(seconds):
                with autocast(device):
                    loss = token_loss_sum(model, batch) / int((batch["labels"][:, 1:] != -100).sum())
                penalty = method.regularizer(model)
                (loss + penalty if penalty is not None else loss).backward()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                method.on_step(step)
    per_step = {name: statistics.median(t) for name, t in times.items()}
    calibration = {name: method.summary().get("calibration", {}) for name, (_, _, method) in prepared.items()}
    return {"tokens_per_step": statistics.mean(tokens[warmup:]), "step_s": per_step, "prepare": prepare,
            "calibration": calibration}


# --- 4. evaluation throughput ----------------------------------------------------------------------------------


def eval_items(model, tokenizer, eval_cfg: DictConfig) -> dict:
    """Each task group of the suite on its own, timed: items/s (items sharing one lm-eval task share its time)."""
    from folora.evals.suite import _group, evaluate_suite, suite_items

    figures = {}
    for (task, _, _), group in _group(suite_items(eval_cfg)).items():
        part = OmegaConf.merge(eval_cfg, {"items": None})
        part["items"] = {item.name: eval_cfg["items"][item.name] for item in group}
        start = time.perf_counter()
        scores = evaluate_suite(model, tokenizer, part)
        seconds = time.perf_counter() - start
        n = max(s["n"] for s in scores.values())
        figures[task] = {"items": [i.name for i in group], "n": n, "seconds": seconds, "items_per_s": n / seconds,
                         "scores": {name: {"value": s["value"], "stderr": s["stderr"]} for name, s in scores.items()}}
    return figures


def generation_throughput(model, tokenizer, prompts: list[str], max_new_tokens: int, device) -> dict:
    """Greedy generation with the KV cache: all prompts in one left-padded batch vs one prompt at a time."""
    figures = {}
    for name, chunks in {"batched": [prompts], "one_at_a_time": [[p] for p in prompts]}.items():
        start = time.perf_counter()
        generated = sum(greedy_chat(model, tokenizer, chunk, max_new_tokens, device)[1] for chunk in chunks)
        seconds = time.perf_counter() - start
        figures[name] = {"tokens": generated, "seconds": seconds, "tokens_per_s": generated / seconds}
    figures["speedup"] = figures["batched"]["tokens_per_s"] / figures["one_at_a_time"]["tokens_per_s"]
    return figures


# --- 5. scaling over width and rank ---------------------------------------------------------------------------


def tiny(width: int, rank: int, method: str) -> DictConfig:
    return config("model=tiny-random", f"method={method}", f"method.rank={rank}",
                  f"model.architecture.hidden_size={width}", f"model.architecture.intermediate_size={2 * width}",
                  "model.architecture.num_attention_heads=4", "model.architecture.num_key_value_heads=2",
                  "task.sizes.train=256", "task.sizes.validation=8")


def scaling(widths: list[int], ranks: list[int], device, steps: int, warmup: int) -> list[dict]:
    rows = []
    middle = widths[len(widths) // 2]
    for width, rank in [(w, 16) for w in widths] + [(middle, r) for r in ranks if r != 16]:
        cfgs = {m: tiny(width, rank, m) for m in ("lora", "folora")}
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
            "sum_d_in_squared": _sum_d_squared(model), "sum_d_in_cubed": _sum_d_cubed(model)}


def calibration_tokens(cfg: DictConfig) -> int:
    """Tokens the default FoLoRA calibration reads: the proxy sequences plus about 200 per task example."""
    folora = config("method=folora").method
    return int(folora.proxy.num_sequences) * int(folora.proxy.length) + int(folora.calibration.task_examples) * 200


def _input_dims(model: torch.nn.Module) -> list[int]:
    """One d_in per input group (q/k/v share an input, gate/up share one): the sizes of the spectral solves."""
    cfg = model.config
    return [cfg.hidden_size, cfg.hidden_size, cfg.hidden_size, cfg.intermediate_size] * cfg.num_hidden_layers


def _sum_d_cubed(model) -> int:
    return sum(d**3 for d in _input_dims(model))


def _sum_d_squared(model) -> int:
    return sum(d**2 for d in _input_dims(model))


LLAMA_8B = {"hidden": 4096, "intermediate": 14336, "layers": 32, "params": 8.0e9}


def predict_8b(reference: dict, tokens: int) -> dict:
    """FoLoRA's calibration for Llama-3.1-8B on this machine, from the measured rates of the reference model:
    the covariance pass costs forward FLOPs (2·N per token) plus the outer products (2·Σ d_in² per token); the
    full-basis solve (Cholesky + eigh in float64) costs a constant times Σ d_in³."""
    dims = [LLAMA_8B["hidden"]] * 3 + [LLAMA_8B["intermediate"]]
    sum_d2, sum_d3 = (LLAMA_8B["layers"] * sum(d**p for d in dims) for p in (2, 3))
    cov_rate = reference["covariances_s"] / (tokens * (2 * reference["params"] + 2 * reference["sum_d_in_squared"]))
    solve_rate = reference["solve_s"] / reference["sum_d_in_cubed"]
    return {"reference": reference["name"], "calibration_tokens": tokens,
            "seconds_per_covariance_flop": cov_rate, "seconds_per_solve_d3": solve_rate,
            "covariances_s": cov_rate * tokens * (2 * LLAMA_8B["params"] + 2 * sum_d2), "solve_s": solve_rate * sum_d3}


# --- the run ---------------------------------------------------------------------------------------------------


def main(argv: list[str]) -> dict:
    options = parse(argv)
    sections = set(options["sections"].split(","))
    steps, warmup, seq_len = int(options["steps"]), int(options["warmup"]), int(options["seq_len"])
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    cfg = config(f"model={options['model']}", "method=lora", f"train.batch_size={options['batch_size']}")
    loaded = load_model(cfg.model)
    tokenizer = loaded.tokenizer
    task = load_task(cfg.task, tokenizer)
    report = {"model": options["model"], "device": _device_name(device), "threads": torch.get_num_threads(),
              "batch_size": int(options["batch_size"]), "seq_len": seq_len, "steps": steps, "versions": package_versions()}
    if "ceiling" in sections or "train" in sections:
        report["ceiling"] = ceiling(device, loaded.model, seq_len, int(cfg.method.rank))
    if "train" in sections:
        examples = fixed_length(task.train, seq_len)
        loops = framework_vs_plain(cfg, examples, tokenizer.pad_token_id, device, steps, warmup)
        bound = report["ceiling"]["bound_tokens_per_s"]
        report["train"] = loops | {"framework_to_bound": loops["framework"] / bound,
                                   "framework_to_plain": loops["framework"] / loops["plain"],
                                   "model_flops_utilization": loops["framework"] * report["ceiling"]["train_flops_per_token"]["total"]
                                   / max(report["ceiling"]["peak_flops"].values())}
    if "eval" in sections:
        model = loaded.model.to(device)
        records = get_method(cfg.task.generator)("validation", 16, seed=int(cfg.task.seed))
        prompts = [r[cfg.task.columns.prompt] for r in records]
        report["eval"] = {"items": eval_items(model, tokenizer, cfg.eval),
                          "generation": generation_throughput(model, tokenizer, prompts, 64, device)}
    if "overhead" in sections:
        report["overhead"] = overhead(options, device, steps, warmup, task, tokenizer, report.get("eval", {}))
    if "scaling" in sections:
        rows = scaling([int(w) for w in options["widths"].split(",")], [int(r) for r in options["ranks"].split(",")],
                       device, steps, warmup)
        reference = report.get("overhead", {}).get("calibration_split") or {**rows[-1], "name": "tiny-random"}
        report["scaling"] = {"rows": rows, "prediction_8b": predict_8b(reference, calibration_tokens(cfg))}
    out = Path(options["out"]) / f"bench_{options['model']}_{device.type}.json"
    write_json_atomic(out, report)
    print(render(report))
    print(f"\nwritten: {out}")
    return report


def overhead(options: dict, device, steps: int, warmup: int, task, tokenizer, evaluation: dict) -> dict:
    cfgs = {m: config(f"model={options['model']}", f"method={m}") for m in ("lora", "folora")}
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
            "default_run_estimate_s": run_s, "default_run_formula": f"calibration + {default_steps} x FoLoRA step + "
            f"final eval ({'measured' if eval_s else 'not measured: run with sections=eval too'})",
            "calibration_share_cold": calibration_s / run_s,
            "calibration_share_warm": (calibration_s - calibration.get("proxy sampling", 0)) / run_s,
            "calibration_split": {"name": options["model"], **calibration_split(
                prepare, figures["calibration"]["folora"], load_model(cfgs["lora"].model).model)}}


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine()} ({torch.backends.cpu.get_cpu_capability()}), " \
           f"{torch.get_num_threads()} threads"


def _score_text(score: dict) -> str:
    return f"{score['value']:.4f}" + (f" ± {score['stderr']:.4f}" if score.get("stderr") is not None else "")


def render(report: dict) -> str:
    lines = [f"folora bench — {report['model']} on {report['device']}, batch {report['batch_size']} x "
             f"{report['seq_len']} tokens, torch {report['versions']['torch']}", ""]
    if "ceiling" in report:
        c = report["ceiling"]
        flops = c["train_flops_per_token"]
        lines += ["ceiling"] + [f"  matmul {k} {c['matmul_size']}^3: {v / 1e9:8.1f} GFLOP/s" for k, v in c["peak_flops"].items()]
        lines += [f"  LoRA training FLOPs/token: {flops['total'] / 1e6:.0f} M (linear {flops['linear'] / 1e6:.0f}, "
                  f"head {flops['head'] / 1e6:.0f}, attention {flops['attention'] / 1e6:.0f}, adapters {flops['lora'] / 1e6:.0f})",
                  f"  bound ({c['bound_dtype']}): {c['bound_tokens_per_s']:.1f} tokens/s", ""]
    if "train" in report:
        t = report["train"]
        lines += ["training throughput (same batches, best of 3 alternating rounds)",
                  f"  framework loop (folora.training.train, LoRA): {t['framework']:7.1f} tokens/s  "
                  f"= {t['framework_to_bound']:.2f} of the bound, MFU {t['model_flops_utilization']:.2f}",
                  f"  plain PEFT + transformers loop:               {t['plain']:7.1f} tokens/s  "
                  f"framework/plain = {t['framework_to_plain']:.3f}", ""]
    if "overhead" in report:
        o = report["overhead"]
        lines += [f"FoLoRA overhead (default batches, ~{o['tokens_per_step']:.0f} tokens/step, median of steps)",
                  f"  LoRA {o['step_s']['lora']:.3f} s/step, FoLoRA {o['step_s']['folora']:.3f} s/step: ratio {o['ratio']:.3f}"]
        lines += [f"  calibration/{k}: {v:.1f} s" for k, v in o["calibration_s"].items()]
        lines += [f"  default make run ≈ {o['default_run_estimate_s']:.0f} s ({o['default_run_formula']}); calibration "
                  f"share {o['calibration_share_cold']:.1%} cold, {o['calibration_share_warm']:.1%} with the proxy cached", ""]
    if report.get("eval"):
        e = report["eval"]
        lines += ["evaluation (base model scores ± stderr)"]
        for task, f in e.get("items", {}).items():
            lines.append(f"  {task:20s} n={f['n']:4d}  {f['seconds']:6.1f} s  {f['items_per_s']:6.2f} items/s")
            lines += [f"      {name:28s} {_score_text(s)}" for name, s in f.get("scores", {}).items()]
        total = sum(f["seconds"] for f in e.get("items", {}).values())
        lines.append(f"  whole suite: {total:.0f} s")
        if "generation" in e:
            g = e["generation"]
            lines += [f"  generation, greedy, KV cache: batched {g['batched']['tokens_per_s']:.1f} tokens/s, one at a "
                      f"time {g['one_at_a_time']['tokens_per_s']:.1f} tokens/s (x{g['speedup']:.2f})"]
        lines.append("")
    if "scaling" in report:
        lines += ["scaling (tiny-random Llama, 2 layers, MLP = 2 x width)",
                  "  width  rank  LoRA s/step  FoLoRA s/step  ratio  proxy s  cov s    solve s  Σd³"]
        lines += [f"  {r['width']:5d}  {r['rank']:4d}  {r['lora_step_s']:11.4f}  {r['folora_step_s']:13.4f}  {r['ratio']:5.3f}  "
                  f"{r['proxy_sampling_s'] or 0:7.2f}  {r['covariances_s']:7.3f}  {r['solve_s']:7.3f}  {r['sum_d_in_cubed']:.2e}"
                  for r in report["scaling"]["rows"]]
        p = report["scaling"]["prediction_8b"]
        lines += [f"  Llama-3.1-8B on this machine, from the rates of {p['reference']}: covariances ≈ "
                  f"{p['covariances_s'] / 60:.0f} min, full-basis solve ≈ {p['solve_s'] / 3600:.1f} h"]
    return "\n".join(lines)


if __name__ == "__main__":
    main(sys.argv[1:])

