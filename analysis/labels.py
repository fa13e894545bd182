"""How an experiment's cells are named and ordered wherever they are shown: a knob value as a label, the series a
table row, curve or colour stands for, the order of rows, and the two measures of learning."""

from __future__ import annotations

import math

import pandas as pd

# Learning, two ways: the target gain (the target eval items' paired change: what the tables headline, on a few
# dozen problems) and the decrease of the target validation loss (held-out task text: a finer measure of the same).
LEARNING = {"target_gain": "target gain", "val_loss_decrease": "target validation loss decrease"}


def knob_label(value) -> str:
    """A knob value as text: `0.002` for 2e-3, `` for a method's default (no value)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return f"{value:g}" if isinstance(value, float) else str(value)


def sort_key(value):
    """Numbers (and numeric labels) first in numeric order, then text; missing values last."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return (1, 0.0, str(value))
    return (2, 0.0, "") if math.isnan(number) else (0, number, "")


def series(part: pd.DataFrame) -> pd.Series:
    """What a curve, a colour or a heat-map row stands for: the method, or `method [variant]` in a grid of variants."""
    if "variant" not in part:
        return part["method"].astype(str)
    return pd.Series([str(m) if not isinstance(v, str) else f"{m} [{v}]"
                      for m, v in zip(part.method, part.variant, strict=True)], index=part.index, dtype=object)


def row_labels(part: pd.DataFrame) -> list[str]:
    """`method` (or `method [variant]`), with ` @knob` where it appears at several knob values."""
    names = series(part)
    several = part.assign(series=names).groupby("series").knob_value.nunique()
    return [s if several[s] <= 1 else f"{s} @{knob_label(v)}" for s, v in zip(names, part.knob_value, strict=True)]
