"""The headline numbers of a run, from paired per-document outcomes before and after fine-tuning.

Every item of the suite has a role:

- `target`, `related`: named by the task (what fine-tuning is for, and what moves with it);
- `forgetting`: named by the suite (`eval.forgetting`), held-out general text scored in bits per byte;
- `aggregate`: a suite's mean of other items (e.g. Biderman et al.'s forgetting average), reported only;
- `diagnostic`: an item marked so (e.g. a zero-shot knowledge probe), reported with its change only;
- `preservation`: every other item — what the model could do and should keep.

Headlines (formulas and what each can and cannot see: docs/results.md):

- `target_gain`: mean over target items of the paired change, signed so that positive is better, with its interval;
- `forgetting` (lower is better): mean over the forgetting items of the paired bits-per-byte increase, with its
  interval — departure from the pretrained model that no capability item gaining through format can cancel;
- `kl_to_base`: mean per-prompt KL(base ‖ tuned) on held-out prompts, with its interval (measured by the runner);
- `preservation`: every preservation item's change normalized by its range above chance (so every item's change is
  in units of its own range, and a near-chance item weighs no more than any other; an accuracy falling below
  chance moves by more than 1), its mean overall and per kind, and how many items dropped or rose with an
  interval excluding zero.
"""

from __future__ import annotations

from folora.errors import FoloraError
from folora.evals import paired

ROLES = ("target", "related", "forgetting", "aggregate", "diagnostic", "preservation")


def roles(items: list[str], target: list[str], related: list[str], aggregates: list[str] = (),
          forgetting: list[str] = (), diagnostic: list[str] = ()) -> dict[str, str]:
    """Each item's role (see the module docstring); a task's target/related take precedence over the suite's."""
    unknown = sorted((set(target) | set(related) | set(forgetting)) - set(items))
    if unknown:
        raise FoloraError(f"Eval items {unknown} are named by the task or the suite's `forgetting` list, but the eval "
                          f"suite does not have them (it has {sorted(items)}). Pick an eval suite with these items or "
                          f"edit task.eval.target / task.eval.related / eval.forgetting.")
    order = (("target", target), ("related", related), ("forgetting", forgetting), ("aggregate", aggregates),
             ("diagnostic", diagnostic))
    return {item: next((role for role, names in order if item in names), "preservation") for item in items}


def retention(base: float, final: float, higher_is_better: bool) -> float | None:
    """after / before (before / after where lower is better): a per-item detail, never averaged into a headline."""
    if higher_is_better:
        return final / base if base > 0 else None
    return base / final if final > 0 else None


def item_changes(base: dict[str, dict], final: dict[str, dict], sources: dict[str, str],
                 n_resamples: int = paired.RESAMPLES, confidence: float = paired.CONFIDENCE) -> dict[str, dict]:
    """Per item with outcomes on both sides: the paired change `final − base` (raw units) and, for multiple choice,
    the gold margin's change, as `paired.Interval`s. `sources`: {item: the lm-eval task that scored it}
    (`suite.item_sources`; a record's: `analysis.compare.recorded_sources`), so that items on different documents
    resample independently and items of one task jointly (folora/evals/paired.py). It is required: without it,
    items of different tasks that number their documents alike would draw the same resamples."""
    out = {}
    for item in sorted(set(base) & set(final)):
        source = sources.get(item, "")
        out[item] = {"change": paired.score_change(base[item], final[item], n_resamples, confidence, source=source),
                     "margin_change": paired.margin_change(base[item], final[item], n_resamples, confidence,
                                                           source=source),
                     "chance": base[item].get("chance", 0.0)}
    return out


def headline(scores: dict[str, dict], changes: dict[str, dict], item_roles: dict[str, str],
             confidence: float = paired.CONFIDENCE) -> dict:
    """target_gain, forgetting and preservation (see the module docstring) from the per-item paired changes.

    `scores[item]` is the base score record (value, higher_is_better, kind); `changes[item]["change"]` its paired
    change. Items without outcomes (aggregates) are left out."""
    def signed(item: str) -> paired.Interval:
        change = changes[item]["change"]
        return change if scores[item]["higher_is_better"] else _negate(change)

    unpaired = sorted(i for i, r in item_roles.items() if r in ("target", "forgetting") and i not in changes)
    if unpaired:   # a headline over fewer items than it names would read as the whole of it
        raise FoloraError(f"Eval items {unpaired} are headline items (target or forgetting) without per-document "
                          f"outcomes on both sides, so no paired change can be computed for them. Name items the "
                          f"suite scores document by document (not aggregates) in task.eval.target / eval.forgetting.")
    by_role = {role: [i for i, r in item_roles.items() if r == role and i in changes] for role in ROLES}
    target = paired.mean_of([signed(i) for i in by_role["target"]], confidence=confidence) if by_role["target"] else None
    forgetting = None
    if by_role["forgetting"]:   # an increase (of bits per byte) is forgetting: the opposite of the better direction
        forgetting = paired.mean_of([_negate(signed(i)) for i in by_role["forgetting"]], confidence=confidence)
    return {"target_gain": target, "forgetting": forgetting,
            "preservation": preservation(scores, changes, by_role["preservation"], confidence)}


def normalized(item_score: dict, change: paired.Interval, chance: float) -> paired.Interval:
    """The signed change in units of the item's range: (1 − chance) for a score in [0, 1] (accuracy above chance),
    the base value for a lower-is-better score (a relative change)."""
    if item_score["higher_is_better"]:
        return _scaled(change, 1.0 / max(1e-9, 1.0 - chance))
    return _scaled(change, -1.0 / max(1e-9, abs(item_score["value"])))


def preservation(scores: dict[str, dict], changes: dict[str, dict], items: list[str],
                 confidence: float = paired.CONFIDENCE) -> dict:
    """The mean normalized change per kind of item (joint intervals), their mean over kinds (each kind weighs the
    same, so a benchmark reported as four correlated metrics does not outweigh one reported as one), and the items
    whose change is significantly negative (`dropped`) or positive (`rose`)."""
    if not items:
        return {"items": 0, "dropped": [], "rose": [], "mean_change": None, "by_kind": {}}
    parts = {i: normalized(scores[i], changes[i]["change"], changes[i].get("chance", 0.0)) for i in items}
    kinds: dict[str, list[str]] = {}
    for item in items:
        kinds.setdefault(scores[item].get("kind", "other"), []).append(item)
    by_kind = {kind: paired.mean_of([parts[i] for i in names], confidence=confidence)
               for kind, names in sorted(kinds.items())}
    return {"items": len(items),
            "dropped": [i for i, p in parts.items() if p.high < 0],
            "rose": [i for i, p in parts.items() if p.low > 0],
            "mean_change": paired.mean_of(list(by_kind.values()), confidence=confidence),
            "by_kind": {kind: {"items": kinds[kind], "mean_change": by_kind[kind]} for kind in by_kind},
            "normalized": parts}


def _negate(interval: paired.Interval) -> paired.Interval:
    return _scaled(interval, -1.0)


def _scaled(interval: paired.Interval, factor: float) -> paired.Interval:
    low, high = sorted((interval.low * factor, interval.high * factor))
    return paired.Interval(interval.value * factor, low, high, interval.replicates * factor)
