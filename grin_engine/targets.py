"""Targets on metrics: `forget_keyword_accuracy<=0.25` is a split, a metric, a comparison and a number.

The same text serves twice (DESIGN.md §2.11): `run --until TARGET` stops unlearning once the forget set meets it
(evaluation/until.py measures it during training), and `sweep --target TARGET` lets auto-p pick the smallest p whose
point meets it (runs/frontier.py). `--until` may also join targets with "and" (`Conditions`):
`forget_keyword_accuracy<=0.25 and forget_fluency>=0.9` holds once both do, so forgetting by gibberish does not count.
This module is only the grammar: it imports nothing of the engine but its error.
"""

from __future__ import annotations

import math
import operator
import re
from dataclasses import dataclass

from .errors import GrinError

SPLITS = ("forget", "retain")
TARGET_METRICS = ("keyword_accuracy", "rougeL_recall", "probability", "fluency")
_OPS = {"<=": operator.le, ">=": operator.ge, "<": operator.lt, ">": operator.gt}
_PATTERN = re.compile(r"^\s*([a-zA-Z_]+)\s*(<=|>=|<|>)\s*(\S+)\s*$")
_AND = re.compile(r"\s+and\s+", re.IGNORECASE)


@dataclass(frozen=True)
class Target:
    split: str  # "forget" or "retain"
    metric: str  # a name in TARGET_METRICS
    op: str  # "<=", ">=", "<" or ">"
    value: float

    @property
    def column(self) -> str:
        """The name of the metric's column in a sweep point / compare table: forget_keyword_accuracy."""
        return f"{self.split}_{self.metric}"

    def met(self, value: float | None) -> bool:
        return value is not None and _OPS[self.op](value, self.value)

    def __str__(self) -> str:
        return f"{self.column}{self.op}{self.value:g}"


def parse_target(text: str) -> Target:
    """'forget_keyword_accuracy<=0.25' -> Target('forget', 'keyword_accuracy', '<=', 0.25)."""
    names = ", ".join(f"{s}_{m}" for s in SPLITS for m in TARGET_METRICS)
    if len(_AND.split(str(text or "").strip())) > 1:
        raise GrinError(f"target: one condition here (METRIC<=NUMBER); only --until joins conditions with 'and'; "
                        f"got {text!r}")
    match = _PATTERN.match(str(text or ""))
    if not match:
        raise GrinError(f"target: write it as METRIC<=NUMBER (or >=, <, >), e.g. forget_keyword_accuracy<=0.25; "
                        f"got {text!r}")
    column, op, number = match.groups()
    split, _, metric = column.partition("_")
    if split not in SPLITS or metric not in TARGET_METRICS:
        raise GrinError(f"target: unknown metric {column!r}; choose from {names}")
    try:
        value = float(number)
    except ValueError:
        raise GrinError(f"target: {number!r} is not a number") from None
    if not math.isfinite(value):
        raise GrinError(f"target: the number must be finite, got {number!r}")
    return Target(split, metric, op, value)


@dataclass(frozen=True)
class Conditions:
    """Targets that must all hold: `forget_keyword_accuracy<=0.25 and forget_fluency>=0.9` (one target alone is
    the plain case)."""
    targets: tuple[Target, ...]

    @property
    def columns(self) -> list[str]:
        """The metric columns the targets name, each once, in order."""
        return list(dict.fromkeys(t.column for t in self.targets))

    def met(self, values: dict[str, float | None]) -> bool:
        """True when every target holds on its column's value in `values` (a missing value: not met)."""
        return all(t.met(values.get(t.column)) for t in self.targets)

    def __str__(self) -> str:
        return " and ".join(str(t) for t in self.targets)


def parse_conditions(text: str) -> Conditions:
    """'forget_keyword_accuracy<=0.25 and forget_fluency>=0.9' -> Conditions of both targets (parse_target each)."""
    return Conditions(tuple(parse_target(part) for part in _AND.split(str(text or "").strip())))
