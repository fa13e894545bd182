"""The printed table of `make bench` and the machine's name in it."""

from __future__ import annotations

import platform

import torch


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine()} ({torch.backends.cpu.get_cpu_capability()}), " \
           f"{torch.get_num_threads()} threads"


def _score_text(score: dict) -> str:
    return f"{score['value']:.4f}" + (f" ± {score['stderr']:.4f}" if score.get("stderr") is not None else "")


def render(report: dict) -> str:
    lines = [f"folora bench — {report['model']} on {report['device']}, {report.get('precision', 'fp32')}, batch "
             f"{report['batch_size']} x {report['seq_len']} tokens, torch {report['versions']['torch']}", ""]
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
                  f"  framework loop (folora.training.loop.train, LoRA): {t['framework']:7.1f} tokens/s  "
                  f"= {t['framework_to_bound']:.2f} of the bound, MFU {t['model_flops_utilization']:.2f}",
                  f"  plain PEFT + transformers loop:               {t['plain']:7.1f} tokens/s  "
                  f"framework/plain = {t['framework_to_plain']:.3f}", ""]
    if "overhead" in report:
        o = report["overhead"]
        lines += [f"FoLoRA overhead (default batches, ~{o['tokens_per_step']:.0f} tokens/step, median of steps)",
                  f"  LoRA {o['step_s']['lora']:.3f} s/step, FoLoRA {o['step_s']['folora']:.3f} s/step: ratio {o['ratio']:.3f}"]
        lines += [f"  calibration/{k}: {v:.1f} s" for k, v in o["calibration_s"].items()]
        lines += [f"  default make run ≈ {o['default_run_estimate_s']:.0f} s ({o['default_run_formula']}); calibration "
                  f"share {o['calibration_share_cold']:.1%} cold, {o['calibration_share_warm']:.1%} with the proxy cached"]
        for name, c in o.get("checkpoint", {}).items():
            lines.append(f"  checkpoint, {name}: state {c['state_mb']:.0f} MB in {c['state_s']:.2f} s (every {c['every']} "
                         f"steps: {c['overhead_per_step']:.1%} of training time); calibration {c['calibration_mb']:.0f} MB "
                         f"in {c['calibration_s']:.2f} s, once")
        lines.append("")
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
    if "shapes8b" in report:
        r = report["shapes8b"]
        lines += [f"FoLoRA at Llama-3.1-8B shapes ({r['scale']} scale; synthetic power-law covariances, full bases)",
                  "  width  top_k  solve s   peak GiB"]
        lines += [f"  {x['width']:5d}  {x['top_k']:5d}  {x['solve_s']:7.2f}  "
                  f"{x['peak_gib'] if x['peak_gib'] is None else round(x['peak_gib'], 2)}" for x in r["solve"]]
        if "proxy" in r:
            chosen = r["proxy"]["llama_8b"]
            lines += [f"  proxy, num_sequences: auto at the 8B widest input {chosen['widest']}: {chosen['sequences']} "
                      f"sequences x {chosen['length']} = {chosen['tokens']} tokens",
                      "  width  proxy  tokens  effective rank  unheld directions  largest |v|"]
            lines += [f"  {x['width']:5d}  {x['proxy']:>5s}  {x['tokens']:6d}  {x['effective_rank']:14.1f}  "
                      f"{x['below_damping']:17d}  {x['basis_norm_max']:11.1f}" for x in r["proxy"]["rows"]]
        for st in (r["step"], r.get("step_spectral"), r.get("step_top_k")):
            if st:
                lines += [f"  optimizer step, {st['layers']} layer(s) of LoRA pairs (rank 16, 7 projections), bases "
                          f"{st.get('bases', 'd/4 top-k, float32')}, {st.get('coordinates', 'spectral')} coordinates: gated {st['gated_step_s']:.3f} s, Adam "
                          f"{st['adam_step_s']:.3f} s (x{st['ratio']:.1f}); for 32 layers "
                          f"{st['gated_step_s_32_layers']:.2f} s vs {st['adam_step_s_32_layers']:.2f} s"]
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
    if "run" in report:
        runs = report["run"]
        names = list(dict.fromkeys(name for figures in runs.values() for name in figures["phases_s"]))
        lines += ["", "make run (the default run through python -m folora.run), seconds"]
        lines += [f"  {'phase':42s} " + "  ".join(f"{label:>7s}" for label in runs)]
        lines += [f"  {name:42s} " + "  ".join(f"{figures['phases_s'].get(name, 0.0):7.1f}" for figures in runs.values())
                  for name in names]
        lines += [f"  {'whole process (wall)':42s} " + "  ".join(f"{f['wall_s']:7.1f}" for f in runs.values()),
                  f"  {'training tokens/s':42s} " + "  ".join(f"{f['train_tokens_per_s']:7.1f}" for f in runs.values())]
        if all("peak_rss_gib" in f for f in runs.values()):
            lines += [f"  {'peak resident memory (GiB)':42s} " + "  ".join(f"{f['peak_rss_gib']:7.2f}" for f in runs.values())]
        if "same_numbers_as_cold" in runs.get("warm", {}):
            lines += [f"  the warm run's numbers equal the cold run's: {runs['warm']['same_numbers_as_cold']}"]
    return "\n".join(lines)
