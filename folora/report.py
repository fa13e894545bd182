"""The table printed at the end of a run: every eval item before and after, then the headline numbers."""

from __future__ import annotations


def _fmt(score: dict | None) -> str:
    if score is None or score.get("value") is None:
        return "-"
    stderr = score.get("stderr")
    return f"{score['value']:.4f}" + (f" ± {stderr:.4f}" if stderr is not None else "")


def render(result: dict) -> str:
    metrics, roles = result["metrics"], result["roles"]
    rows = [("item", "role", "n", "base", "final", "delta", "retention")]
    for item, score in metrics.items():
        retained = result["retention"]["per_item"].get(item)
        rows.append((item, roles.get(item, "-"), str(score["final"]["n"]), _fmt(score["base"]), _fmt(score["final"]),
                     f"{score['final']['value'] - score['base']['value']:+.4f}",
                     f"{retained:.3f}" if retained is not None else "-"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=False)) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    gain, mean_retention = result["target_gain"], result["retention"]["mean"]
    kl = result["kl_to_base"]
    lines += ["",
              f"target_gain  {gain:+.4f}" if gain is not None else "target_gain  -",
              f"retention    {mean_retention:.4f}" if mean_retention is not None else "retention    -",
              f"kl_to_base   {_fmt(kl)}  (nats/token)"]
    return "\n".join(lines)
