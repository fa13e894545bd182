"""The headline metrics of a run and the one way an interval is written, for every table the project prints.

A run's record (results.json), its end-of-run table, `analysis.compare` and the rendered experiment tables all
name the same four headlines and write `value [low, high]` the same way, with `*` where the 95% interval
excludes zero."""

from __future__ import annotations

import math

HEADLINES = ("target_gain", "forgetting", "kl_to_base", "preservation")
SIGNED = ("target_gain", "forgetting", "preservation")   # read against zero: a sign, and `*` when zero is excluded


def _missing(x) -> bool:
    return x is None or (isinstance(x, float) and math.isnan(x))


def format_interval(value, low=None, high=None, *, digits: int = 4, signed: bool = True,
                    significant: bool | None = None, dagger: bool = False) -> str:
    """`+0.0123 [+0.0040, +0.0200] *`: the value, its interval where there is one (`†` after it where `dagger`),
    and `*` where the interval excludes zero. `significant` None: decided from the bounds for a signed metric,
    never for an unsigned one; True/False: as recorded. "-" for a missing value."""
    if _missing(value):
        return "-"
    sign = "+" if signed else ""
    text = f"{value:{sign}.{digits}f}"
    has_interval = not (_missing(low) or _missing(high))
    if has_interval:
        text += f" [{low:{sign}.{digits}f}, {high:{sign}.{digits}f}]" + ("†" if dagger else "")
    if significant is None:
        significant = signed and has_interval and (low > 0 or high < 0)
    return text + (" *" if significant else "")


def format_entry(entry: dict | None, *, digits: int = 4, signed: bool = True, mark: bool = True) -> str:
    """A recorded interval (`{"value", "ci", "significant"}`, results.json) written by `format_interval`;
    `mark=False` never adds `*` (a KL, which has no zero to exclude)."""
    if not entry or _missing(entry.get("value")):
        return "-"
    low, high = entry.get("ci") or (None, None)
    significant = bool(entry.get("significant")) if mark and "significant" in entry else (None if mark else False)
    return format_interval(entry["value"], low, high, digits=digits, signed=signed, significant=significant)
