"""What proxy-sampling settings do to FoLoRA's calibration, side by side, without training:
`python -m scripts.proxy_spectrum --setting NAME=OVERRIDES ... [--common OVERRIDES] [--out FILE.json]`.

Each setting is a name and space-separated Hydra overrides on top of `method=folora` (and the `--common` ones), e.g.
`--setting today= --setting rationale="method.proxy.top_p=1.0 method.proxy.stop_at_eos=true method.proxy.start=chat"`.
For each, FoLoRA's own calibration runs (proxy samples from the cache when there) and every input group's solve is
intercepted. Per group, from the trace-normalized C_p in float64 (mean eigenvalue 1): its effective rank, how many
eigenvalues lie below the damping ε, the longest basis vector (‖v‖ = 1/√(λ_p + ε) for an eigenvector of C_p alone;
1/√ε is the ceiling), and the gates g(λ) at the configured κ: their mean and the share open (g > 0.5). Per setting,
the proxy's size and diversity. Across settings, per group, how far the mean gates moved.
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import statistics
from pathlib import Path

import torch

from folora.fo_lora.gated_adam import gate
from folora.fo_lora.spectral import trace_normalize
from scripts.folora_calibration import run_calibration


def group_figures(c_p: torch.Tensor, basis, cfg) -> dict:
    """One group's proxy spectrum (float64) and gates."""
    c = trace_normalize(c_p.double())
    lam_p = torch.linalg.eigvalsh((c + c.T) / 2).clamp_min(0)
    share = lam_p / lam_p.sum()
    share = share[share > 0]
    g = gate(basis.lam.double(), cfg.gate, float(cfg.kappa), float(cfg.tau))
    return {"dim": c.shape[0], "effective_rank": float((-(share * share.log()).sum()).exp()),
            "below_damping": int((lam_p < basis.damping).sum()), "damping": basis.damping,
            "lambda_p_median": float(lam_p.median()), "lambda_p_max": float(lam_p.max()),
            "basis_norm_max": float(basis.V.double().norm(dim=0).max()),
            "gate_mean": float(g.mean()), "gate_open": float((g > 0.5).double().mean())}


def calibrate(overrides: list[str]) -> dict:
    """Run FoLoRA's calibration under these overrides; return the proxy's stats and every group's figures."""
    groups: dict[str, dict] = {}

    def record(cfg, c_t, c_p, options, basis):
        groups[f"group{len(groups)}"] = group_figures(c_p, basis, cfg.method)

    _, method = run_calibration(overrides, record)
    names = list(method.bases)   # the groups in the order they were solved
    groups = dict(zip(names, groups.values(), strict=True))
    proxy = method.calibration_stats["proxy"]
    return {"proxy": {k: proxy[k] for k in ("sequences", "tokens", "length_mean", "distinct_1", "distinct_2",
                                            "distinct_3", "example") if k in proxy},
            "groups": groups, "summary": summarize(groups)}


def summarize(groups: dict[str, dict]) -> dict:
    values = list(groups.values())
    return {"groups": len(values),
            "effective_rank_share_median": statistics.median(g["effective_rank"] / g["dim"] for g in values),
            "groups_with_directions_below_damping": sum(g["below_damping"] > 0 for g in values),
            "directions_below_damping": sum(g["below_damping"] for g in values),
            "basis_norm_max": max(g["basis_norm_max"] for g in values),
            "gate_mean": statistics.fmean(g["gate_mean"] for g in values),
            "gate_open": statistics.fmean(g["gate_open"] for g in values)}


def compare(reference: dict, other: dict) -> dict:
    """Per group, the change of the mean gate; their correlation across groups."""
    keys = [k for k in reference["groups"] if k in other["groups"]]
    a = [reference["groups"][k]["gate_mean"] for k in keys]
    b = [other["groups"][k]["gate_mean"] for k in keys]
    moved = [abs(x - y) for x, y in zip(a, b, strict=True)]
    return {"gate_mean_abs_change_mean": statistics.fmean(moved), "gate_mean_abs_change_max": max(moved),
            "gate_mean_correlation": statistics.correlation(a, b) if len(keys) > 2 else math.nan}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m scripts.proxy_spectrum", description=__doc__.splitlines()[0])
    parser.add_argument("--setting", action="append", required=True, metavar="NAME=OVERRIDES",
                        help="a named proxy setting: NAME=space-separated Hydra overrides (may be empty)")
    parser.add_argument("--common", default="", help="overrides for every setting, e.g. 'model=tiny-random'")
    parser.add_argument("--out", type=Path, help="write every figure here as JSON")
    args = parser.parse_args(argv)
    settings = {}
    for item in args.setting:
        name, _, overrides = item.partition("=")
        settings[name] = shlex.split(overrides)
    results = {}
    for name, overrides in settings.items():
        results[name] = calibrate([*shlex.split(args.common), *overrides])
        print(name, json.dumps({"proxy": results[name]["proxy"], "summary": results[name]["summary"]}, indent=1),
              flush=True)
    first = next(iter(results))
    comparisons = {name: compare(results[first], r) for name, r in results.items() if name != first}
    for name, c in comparisons.items():
        print(f"{name} against {first}:", json.dumps(c), flush=True)
    if args.out:
        args.out.write_text(json.dumps({"settings": settings, "results": results, "against_first": comparisons},
                                       indent=1))


if __name__ == "__main__":
    main()
