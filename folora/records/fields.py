"""The fields of results.json that a run's scores decide, and the flat views of them a logger records.

Pure functions of the base and final scores and per-document outcomes: a run builds its record with them, and
`analysis.rescore` recomputes a written record with the same functions (schema: docs/results.md)."""

from __future__ import annotations

from folora.evals import metrics
from folora.records.headlines import HEADLINES


def scored_fields(base: dict, final: dict, base_outcomes: dict, final_outcomes: dict, item_roles: dict[str, str],
                  sources: dict[str, str]) -> dict:
    """The part of the record that the paired comparison decides, from the two sides' scores and per-document
    outcomes alone: every item's paired change, the roles, `target_gain`, `forgetting` and `preservation`
    (`analysis.rescore` recomputes exactly this for a record already written)."""
    changes = metrics.item_changes(base_outcomes, final_outcomes, sources)
    head = metrics.headline(base, changes, item_roles)
    return {
        "metrics": {item: item_record(base[item], final[item], changes.get(item), head["preservation"], item)
                    for item in final},
        "roles": item_roles,
        "target_gain": _interval(head["target_gain"]),
        "forgetting": _interval(head["forgetting"]) | {"items": [i for i, r in item_roles.items() if r == "forgetting"],
                                                       "unit": "bits per byte"},
        "preservation": _preservation(head["preservation"]),
    }


def item_record(base: dict, final: dict, change: dict | None, preservation: dict, item: str) -> dict:
    """One eval item in results.json: both scores, the paired change (and gold-margin change for multiple choice)
    with intervals, the normalized change of a preservation item, and after/before as a detail."""
    record = {"base": base, "final": final, "stderr": final["stderr"],
              "retention": metrics.retention(base["value"], final["value"], base["higher_is_better"])}
    if change is not None:
        record["change"] = change["change"].to_dict()
        if change["margin_change"] is not None:
            record["margin_change"] = change["margin_change"].to_dict()
    if item in preservation.get("normalized", {}):
        record["normalized_change"] = preservation["normalized"][item].to_dict()
    return record


def _interval(interval) -> dict:
    return interval.to_dict() if interval is not None else {"value": None, "ci": None, "significant": False}


def _preservation(head: dict) -> dict:
    return {"items": head["items"], "dropped": head["dropped"], "rose": head["rose"],
            "mean_change": _interval(head["mean_change"]),
            "by_kind": {kind: {"items": part["items"], "mean_change": _interval(part["mean_change"])}
                        for kind, part in head["by_kind"].items()}}


def eval_metrics(final: dict[str, float], kl_to_base: float) -> dict:
    """What a logger records of the final evaluation: every item's score and the KL to the base model."""
    return {f"eval/{item}": value for item, value in final.items()} | {"eval/kl_to_base": kl_to_base}


def summary_metrics(data: dict) -> dict:
    """For a logger's run summary, flat: the headline numbers with their interval bounds (`<name>_low`,
    `<name>_high`), the count of preservation items that dropped, and every item's paired change
    (`change/<item>`, with `change_low/<item>` and `change_high/<item>`)."""
    out = {}
    for name in HEADLINES:   # preservation's headline is its mean normalized change
        entry = data["preservation"]["mean_change"] if name == "preservation" else data.get(name)
        name = "preservation_mean_change" if name == "preservation" else name
        out |= _flat(entry, name, f"{name}_low", f"{name}_high")
    for item, record in data["metrics"].items():
        out |= _flat(record.get("change"), f"change/{item}", f"change_low/{item}", f"change_high/{item}")
    out["preservation_dropped"] = len(data["preservation"]["dropped"])
    return out


def _flat(entry: dict | None, value_key: str, low_key: str, high_key: str) -> dict:
    out = {value_key: (entry or {}).get("value")}
    if (entry or {}).get("ci"):
        out[low_key], out[high_key] = entry["ci"]
    return out
