"""What solving FoLoRA's generalized eigenproblems in float32 instead of float64 would change:
`python -m scripts.solve_precision [HYDRA OVERRIDES] [--out FILE.json]` (default: the embedded model's FoLoRA).

It runs FoLoRA's own calibration (proxy samples from the cache when there, both covariances of every input group)
and solves each group twice, at float64 (what runs use) and at float32, from the same fp32 covariances. Per group
it reports the largest difference between the two solves' gates g(λ) at the configured gate, κ and τ, the largest
relative difference of the eigenvalues above 1e-3 · λ_max, how far the gated step operator V diag(g) (PV)ᵀ moved
(Frobenius norm, relative), and each solve's seconds. A group whose gates differ by more than 1e-4 needs float64.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from folora.fo_lora.gated_adam import gate
from folora.fo_lora.spectral import solve
from scripts.folora_calibration import run_calibration

GATE_TOLERANCE = 1e-4


def compare(c_t: torch.Tensor, c_p: torch.Tensor, damping: float, top_k: int | None, cfg) -> dict:
    timings, bases = {}, {}
    for name, dtype in (("float64", torch.float64), ("float32", torch.float32)):
        started = time.perf_counter()
        bases[name] = solve(c_t, c_p, damping=damping, top_k=top_k, dtype=torch.float64, compute_dtype=dtype)
        timings[name] = time.perf_counter() - started
    exact, fast = bases["float64"], bases["float32"]
    gates = {name: gate(b.lam, cfg.gate, float(cfg.kappa), float(cfg.tau)) for name, b in bases.items()}
    above = exact.lam > 1e-3 * exact.lam.max()
    operator = {name: (b.V * gates[name]) @ b.PV.T for name, b in bases.items()}
    return {"dim": c_t.shape[0], "kept": exact.k, "gate_max_diff": float((gates["float64"] - gates["float32"]).abs().max()),
            "lambda_max_rel_diff": float(((fast.lam - exact.lam).abs() / exact.lam)[above].max()),
            "operator_rel_diff": float(torch.linalg.norm(operator["float32"] - operator["float64"])
                                       / torch.linalg.norm(operator["float64"])),
            "damping": [exact.damping, fast.damping], "seconds": {k: round(v, 6) for k, v in timings.items()}}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m scripts.solve_precision", description=__doc__.splitlines()[0])
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. model=tiny-random")
    parser.add_argument("--out", type=Path, help="write the per-group figures here as JSON")
    args = parser.parse_args(argv)
    groups: dict[str, dict] = {}

    def compare_both(cfg, c_t, c_p, options, basis):
        key = f"group{len(groups)}"
        groups[key] = compare(c_t, c_p, options.get("damping", 1e-4), options.get("top_k"), cfg.method)
        print(key, json.dumps(groups[key]), flush=True)

    run_calibration(args.overrides, compare_both)
    worst = max(groups.values(), key=lambda g: g["gate_max_diff"])
    summary = {"groups": len(groups), "gate_max_diff": worst["gate_max_diff"],
               "groups_needing_float64": sum(g["gate_max_diff"] > GATE_TOLERANCE for g in groups.values()),
               "lambda_max_rel_diff": max(g["lambda_max_rel_diff"] for g in groups.values()),
               "operator_rel_diff_max": max(g["operator_rel_diff"] for g in groups.values()),
               "seconds": {name: round(sum(g["seconds"][name] for g in groups.values()), 4)
                           for name in ("float64", "float32")}}
    print(json.dumps(summary, indent=1))
    if args.out:
        args.out.write_text(json.dumps({"summary": summary, "groups": groups}, indent=1))


if __name__ == "__main__":
    main()
