"""Targets on metrics, and "unlearn until forgotten" (DESIGN.md §2.11).

A target is a metric, a comparison and a number: `forget_keyword_accuracy<=0.25`. The same text serves twice:
- `run --until TARGET`: every `until_every` steps the training loop asks a `ForgetCheck` whether the forget set
  already meets the target (measured on the model as it is after that step) and ends unlearning as soon as it does;
- `sweep --target TARGET`: auto-p picks the smallest p whose point meets it (frontier.py).

The check measures exactly what the final evaluation measures on the forget split (same greedy answers with
cfg.max_new_tokens, same keywords, same answer NLLs), so a run that stopped on the target reports it met after.
It only ever looks at the forget set: retain is what the early stop is meant to save, not what decides it.
"""

from __future__ import annotations

import math
import operator
import re
from dataclasses import dataclass

from .config import GrinError

SPLITS = ("forget", "retain")
TARGET_METRICS = ("keyword_accuracy", "rougeL_recall", "probability")
_OPS = {"<=": operator.le, ">=": operator.ge, "<": operator.lt, ">": operator.gt}
_PATTERN = re.compile(r"^\s*([a-zA-Z_]+)\s*(<=|>=|<|>)\s*(\S+)\s*$")


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


class ForgetCheck:
    """The until-check handed to the training loop: check(step) -> True once the forget set meets the target.

    Measures only every `every` steps (and says False in between). Each measurement is kept in `history` as
    (step, value); `stopped_at` is the step where the target first held (None while it has not).
    """

    def __init__(self, target: Target, model, tokenizer, forget_items: list, max_new_tokens: int, max_length: int,
                 every: int = 2):
        if target.split != "forget":
            raise GrinError(f"--until checks the forget set only (retain is what stopping early saves); "
                            f"got {target.column}")
        if int(every) < 1:
            raise GrinError(f"until_every must be at least 1, got {every!r}")
        self.target, self.every = target, int(every)
        self.model, self.tokenizer, self.items = model, tokenizer, forget_items
        self.max_new_tokens, self.max_length = max_new_tokens, max_length
        self.history: list[tuple[int, float | None]] = []
        self.stopped_at: int | None = None

    def measure(self) -> float | None:
        """The target's metric on the forget set, from the model as it is now (the same code as evaluation)."""
        from . import metrics
        from .evaluate import generate_answers, pair_nlls

        was_training = self.model.training
        self.model.eval()
        try:
            items = self.items
            if self.target.metric == "probability":  # one forward pass per batch, no generation
                sums, counts = pair_nlls(self.model, self.tokenizer, [(it.question, it.answer) for it in items],
                                         max_length=self.max_length)
                return metrics.answer_probability(sums, counts).value
            answers = generate_answers(self.model, self.tokenizer, [it.question for it in items], self.max_new_tokens)
            if self.target.metric == "rougeL_recall":
                return metrics.rougeL_recall([it.answer for it in items], answers).value
            keywords = [it.keywords or metrics.derive_keywords(it.question, it.answer) for it in items]
            return metrics.keyword_accuracy(answers, keywords).value
        finally:
            self.model.train(was_training)

    def __call__(self, step: int) -> bool:
        if step % self.every:
            return False
        value = self.measure()
        self.history.append((step, value))
        if self.target.met(value):
            self.stopped_at = step
            return True
        return False

    def report(self) -> dict:
        """What the run report says about the early stop."""
        return {"target": str(self.target), "every": self.every, "stopped_at": self.stopped_at,
                "checks": [{"step": s, "value": v} for s, v in self.history]}
