"""Headline numbers from per-item scores before and after fine-tuning.

- target_gain: mean over target items of (final - base), signed so that positive means better;
- retention per preservation item: final / base (base / final for lower-is-better items such as bits per byte);
- mean retention over preservation items.
Items a task names as related, and a suite's aggregates (means of other items), are reported but count neither as
target nor as preservation.
"""

from __future__ import annotations


def roles(items: list[str], target: list[str], related: list[str], aggregates: list[str] = ()) -> dict[str, str]:
    """target / related (named by the task), aggregate (a mean of other items, reported only), else preservation."""
    unknown = sorted((set(target) | set(related)) - set(items))
    if unknown:
        from folora.errors import FoloraError

        raise FoloraError(f"The task names eval items {unknown} that the eval suite does not have (it has {sorted(items)}). "
                          f"Pick an eval suite with these items or edit task.eval.target / task.eval.related.")
    return {item: "target" if item in target else "related" if item in related else
            "aggregate" if item in aggregates else "preservation" for item in items}


def retention(base: float, final: float, higher_is_better: bool) -> float | None:
    if higher_is_better:
        return final / base if base > 0 else None
    return base / final if final > 0 else None


def headline(base: dict[str, dict], final: dict[str, dict], item_roles: dict[str, str]) -> dict:
    gains = [_signed_delta(base[i], final[i]) for i, r in item_roles.items() if r == "target"]
    per_item = {i: retention(base[i]["value"], final[i]["value"], base[i]["higher_is_better"])
                for i, r in item_roles.items() if r == "preservation"}
    defined = [v for v in per_item.values() if v is not None]
    return {"target_gain": sum(gains) / len(gains) if gains else None,
            "retention": {"mean": sum(defined) / len(defined) if defined else None, "per_item": per_item}}


def _signed_delta(base: dict, final: dict) -> float:
    delta = final["value"] - base["value"]
    return delta if base["higher_is_better"] else -delta
