"""Step time of methods side by side: `python -m folora.bench [model=smollm2-135m] [steps=8] [methods=lora,folora]`.

Each method wraps its own fresh copy of the model; then the methods take turns, one optimizer step each on the
same batch, so both see the same data and the same machine state. Prints median step time per method, tokens/s,
and the ratio to the first method; writes the figures as JSON under results/bench/.
"""

from __future__ import annotations

import platform
import statistics
import sys
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from folora.methods import MethodContext
from folora.models import cache_dir, load_model
from folora.results import write_json_atomic
from folora.runner import Phases
from folora.tasks.data import load_task
from folora.training import batches, token_loss_sum

REPO = Path(__file__).resolve().parents[1]


def parse(argv: list[str]) -> dict:
    options = {"model": "smollm2-135m", "steps": "8", "methods": "lora,folora", "batch_size": "8", "warmup": "2"}
    for arg in argv:
        key, _, value = arg.partition("=")
        if key not in options:
            raise SystemExit(f"unknown option {key!r}; options: {', '.join(options)}")
        options[key] = value
    return options


def main(argv: list[str]) -> dict:
    options = parse(argv)
    methods = options["methods"].split(",")
    torch.manual_seed(0)
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfgs = {m: compose("config", overrides=[f"model={options['model']}", f"method={m}"]) for m in methods}
    first = cfgs[methods[0]]
    device = torch.device("cpu")
    tokenizer = load_model(first.model).tokenizer
    task = load_task(first.task, tokenizer)
    prepared, timings = {}, {}
    for name, cfg in cfgs.items():
        loaded = load_model(cfg.model)
        method = instantiate(cfg.method)
        phases = Phases()
        ctx = MethodContext(tokenizer=tokenizer, train_examples=task.train, seed=0, device=device, cache_dir=cache_dir(),
                            model_fingerprint=loaded.fingerprint, phase=phases)
        start = time.perf_counter()
        model = method.prepare(loaded.model, ctx)
        timings[name] = {"prepare_s": time.perf_counter() - start, **phases.seconds}
        model.train()
        params = [p for p in model.parameters() if p.requires_grad]
        prepared[name] = (model, method.optimizer(params, cfg.train), method)
    stream = batches(task.train, int(options["batch_size"]), tokenizer.pad_token_id, seed=0)
    step_times = {name: [] for name in methods}
    tokens = []
    warmup, steps = int(options["warmup"]), int(options["steps"])
    for step in range(warmup + steps):
        batch = next(stream)
        tokens.append(int(batch["attention_mask"].sum()))
        for name, (model, optimizer, method) in prepared.items():
            start = time.perf_counter()
            loss = token_loss_sum(model, batch) / int((batch["labels"] != -100).sum())
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            method.on_step(step)
            if step >= warmup:
                step_times[name].append(time.perf_counter() - start)
    mean_tokens = statistics.mean(tokens[warmup:])
    reference = statistics.median(step_times[methods[0]])
    rows = {name: {"median_step_s": round(statistics.median(t), 4), "tokens_per_s": round(mean_tokens / statistics.median(t), 1),
                   "ratio_to_" + methods[0]: round(statistics.median(t) / reference, 4), **timings[name]}
            for name, t in step_times.items()}
    report = {"model": options["model"], "batch_size": int(options["batch_size"]), "steps": steps,
              "tokens_per_step": mean_tokens, "machine": platform.processor() or platform.machine(),
              "threads": torch.get_num_threads(), "torch": torch.__version__, "methods": rows}
    print(f"\nstep time, {options['model']}, batch {options['batch_size']} (~{mean_tokens:.0f} tokens), "
          f"median of {steps} steps, {torch.get_num_threads()} threads")
    for name, row in rows.items():
        print(f"  {name:10s} {row['median_step_s']:.3f} s/step  {row['tokens_per_s']:7.1f} tok/s  "
              f"x{row['ratio_to_' + methods[0]]:.3f}  prepare {row['prepare_s']:.1f} s")
    out = REPO / "results" / "bench" / f"step_time_{options['model']}.json"
    write_json_atomic(out, report)
    print(f"written: {out}")
    return report


if __name__ == "__main__":
    main(sys.argv[1:])
