"""`make bench`: where the time goes, measured side by side in one process and printed as a table.

    python -m folora.bench [model=smollm2-135m] [precision=auto] [steps=4] [warmup=1] [batch_size=8] [seq_len=128]
                           [sections=ceiling,train,overhead,eval,scaling,run,shapes8b] [out=results/bench]

1. ceiling   a large matmul (fp32; bf16 where the hardware has it) -> FLOP/s; the training FLOPs per token of the
             model under LoRA (forward + backward through a frozen base) -> the bound in tokens/s.
2. train     the framework's training loop (folora.training.loop.train, LoRA) and a plain PEFT + transformers loop
             written the way a user would write it, alternating on the same batches (batch x seq_len tokens):
             tokens/s, ratio to the bound, ratio to the plain loop.
3. overhead  LoRA and FoLoRA taking turns, one optimizer step each on the same batch of the default run: step
             time ratio; FoLoRA's calibration phases (proxy sampling cold, covariances, solve) in seconds and as a
             share of a default `make run` (estimated from this run's own figures; the formula is printed).
4. eval      items/s for each item of the embedded suite; generated tokens/s batched vs one prompt at a time.
5. scaling   LoRA / FoLoRA step time and FoLoRA calibration over tiny-random models of growing width and rank,
             and the cost predicted for an 8B model from fitted per-FLOP rates (superseded by the measured
             shapes8b section: docs/bench.md).
6. run       `python -m folora.run` with the defaults, as `make run` runs it, on an empty cache (cold: model
             conversion, base eval, proxy sampling) and again on the filled cache (warm): wall time and the phase
             table. Not in the default sections (it takes two default runs); ask with sections=run, and pass
             overrides for both runs with "run_overrides=train.steps=3 eval.limit=3".

7. shapes8b FoLoRA's spectral solve (seconds, peak memory) at Llama-3.1-8B input-group widths on synthetic
             covariances, and one gated optimizer step over 8B-shaped LoRA pairs against Adam (folora/bench/shapes8b.py):
             on a GPU the real widths and 32 layers, on CPU widths 1024-4096 and 2 layers ("shape_widths=",
             "shape_layers=" override). Not in the default sections.

`precision=auto|fp32|bf16` (default auto: bf16 where the hardware has it) applies to every section.

Writes everything as JSON to <out>/bench_<model>_<device>_<precision>.json (out: results/bench). On a CUDA machine the same command runs
unchanged: bf16 autocast, CUDA events for timing, model FLOP utilization against the measured bf16 peak.
"""

from __future__ import annotations

from pathlib import Path

import torch
from hydra.utils import get_method

from folora.bench.flops import LLAMA_8B, ceiling, predict_8b
from folora.bench.report import device_name, render
from folora.bench.sections import (
    REPO,
    calibration_tokens,
    config,
    eval_items,
    fixed_length,
    framework_vs_plain,
    generation_throughput,
    make_run_phases,
    overhead,
    precision_overrides,
    scaling,
)
from folora.bench.shapes8b import shapes_8b
from folora.models import load_model
from folora.records.io import write_json_atomic
from folora.records.run_record import package_versions
from folora.tasks.data import load_task
from folora.training import precision

OPTIONS = {"model": "smollm2-135m", "precision": "auto", "steps": "4", "warmup": "1", "batch_size": "8", "seq_len": "128",
           "sections": "ceiling,train,overhead,eval,scaling", "widths": "64,128,256,512", "ranks": "8,16,32", "run_overrides": "",
           "shape_widths": "", "shape_layers": "",
           "out": str(REPO / "results" / "bench")}


def parse(argv: list[str]) -> dict:
    options = dict(OPTIONS)
    for arg in argv:
        key, _, value = arg.partition("=")
        if key not in options:
            raise SystemExit(f"unknown option {key!r}; options: {', '.join(options)}")
        options[key] = value
    return options


def main(argv: list[str]) -> dict:
    options = parse(argv)
    sections = set(options["sections"].split(","))
    steps, warmup, seq_len = int(options["steps"]), int(options["warmup"]), int(options["seq_len"])
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    cfg = config(f"model={options['model']}", "method=lora", f"train.batch_size={options['batch_size']}",
                 *precision_overrides(options["precision"]))
    used = precision.resolve(options["precision"], device)
    loaded = load_model(cfg.model)
    tokenizer = loaded.tokenizer
    task = load_task(cfg.task, tokenizer)
    report = {"model": options["model"], "device": device_name(device), "threads": torch.get_num_threads(),
              "precision": used, "batch_size": int(options["batch_size"]), "seq_len": seq_len, "steps": steps, "versions": package_versions()}
    if "ceiling" in sections or "train" in sections:
        report["ceiling"] = ceiling(device, loaded.model, seq_len, int(cfg.method.rank), used)
    if "train" in sections:
        examples = fixed_length(task.train, seq_len)
        loops = framework_vs_plain(cfg, examples, tokenizer.pad_token_id, device, steps, warmup)
        bound = report["ceiling"]["bound_tokens_per_s"]
        report["train"] = loops | {"framework_to_bound": loops["framework"] / bound,
                                   "framework_to_plain": loops["framework"] / loops["plain"],
                                   "model_flops_utilization": loops["framework"] * report["ceiling"]["train_flops_per_token"]["total"]
                                   / report["ceiling"]["peak_flops"].get(used, report["ceiling"]["peak_flops"]["fp32"])}
    if "eval" in sections:
        model = loaded.model.to(device)
        records = get_method(cfg.task.generator)("validation", 16, seed=int(cfg.task.seed))
        prompts = [r[cfg.task.columns.prompt] for r in records]
        report["eval"] = {"items": eval_items(model, tokenizer, cfg.eval, used),
                          "generation": generation_throughput(model, tokenizer, prompts, 64, device, used)}
    if "overhead" in sections:
        report["overhead"] = overhead(options, device, steps, warmup, task, tokenizer, report.get("eval", {}))
    if "scaling" in sections:
        rows = scaling([int(w) for w in options["widths"].split(",")], [int(r) for r in options["ranks"].split(",")],
                       device, steps, warmup, options["precision"])
        reference = report.get("overhead", {}).get("calibration_split") or {**rows[-1], "name": "tiny-random"}
        report["scaling"] = {"rows": rows, "prediction_8b": predict_8b(reference, calibration_tokens(LLAMA_8B["intermediate"]))}
    if "shapes8b" in sections:   # GPU: the real widths and 32 layers; CPU: smaller solves, 2 layers
        cuda = device.type == "cuda"
        widths = [int(w) for w in (options["shape_widths"] or ("4096,14336" if cuda else "1024,2048,4096")).split(",")]
        layers = int(options["shape_layers"] or (32 if cuda else 2))
        report["shapes8b"] = shapes_8b(device, widths, layers, 1.0)
    if "run" in sections:
        report["run"] = make_run_phases(options["model"], options["precision"], options["run_overrides"].split())
    out = Path(options["out"]) / f"bench_{options['model']}_{device.type}_{used}.json"
    write_json_atomic(out, report)
    print(render(report))
    print(f"\nwritten: {out}")
    return report
