"""The table printed at the end of a run: every eval item before and after with its paired change, then the
headline numbers with their 95% intervals. `*` marks a change whose interval excludes zero."""

from __future__ import annotations

from folora.records.headlines import format_entry as interval


def _fmt(score: dict | None, digits: int = 4) -> str:
    if score is None or score.get("value") is None:
        return "-"
    stderr = score.get("stderr")
    return f"{score['value']:.{digits}f}" + (f" ± {stderr:.{digits}f}" if stderr is not None else "")


def render(result: dict) -> str:
    metrics, roles = result["metrics"], result["roles"]
    rows = [("item", "role", "n", "base", "final", "change [95% CI]", "gold margin change (nats)")]
    for item, score in metrics.items():
        rows.append((item, roles.get(item, "-"), str(score["final"]["n"]), _fmt(score["base"]), _fmt(score["final"]),
                     interval(score.get("change")), interval(score.get("margin_change"), digits=3)))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    forgetting, kl, kept = result["forgetting"], result["kl_to_base"], result["preservation"]
    lines += ["",
              f"target_gain   {interval(result['target_gain'])}   (mean change of {_names(roles, 'target')})",
              f"forgetting    {interval(forgetting)}   (bits-per-byte increase on {', '.join(forgetting.get('items', []))}; "
              f"lower is better)",
              f"kl_to_base    {interval(kl, signed=False, mark=False)}   (nats/token, held-out prompts)",
              f"preservation  {interval(kept['mean_change'])}   (mean over kinds of the normalized change, {kept['items']} items)"]
    for kind, part in kept["by_kind"].items():
        lines.append(f"  {kind:<12}{interval(part['mean_change'])}   ({', '.join(part['items'])})")
    lines.append(f"  dropped: {', '.join(kept['dropped']) or 'none'}; rose: {', '.join(kept['rose']) or 'none'}   "
                 f"(interval excludes zero)")
    return "\n".join(lines)


def _names(roles: dict, role: str) -> str:
    return ", ".join(i for i, r in roles.items() if r == role) or "-"
