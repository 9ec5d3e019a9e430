"""Unlearn until forgotten (DESIGN.md §2.11): the until-check the training loop asks after its steps.

`run --until forget_keyword_accuracy<=0.25` (targets.py holds the grammar): every `until_every` steps the training
loop asks a `ForgetCheck` whether the forget set already meets the target (measured on the model as it is after that
step) and ends unlearning as soon as it does. Targets joined with "and" (`forget_keyword_accuracy<=0.25 and
forget_fluency>=0.9`) must all hold; the answer metrics among them share one generation per check. The check
measures exactly what the final evaluation measures on the forget split (same greedy answers with
cfg.max_new_tokens, same keywords, same answer NLLs, the same metric code), so a run that stopped on the target
reports it met after. It only ever looks at the forget set: retain is what the early stop is meant to save, not
what decides it.
"""

from __future__ import annotations

from ..errors import GrinError
from ..targets import Conditions, Target, parse_conditions
from . import metrics
from .evaluate import answer_metrics, generate_answers, pair_nlls


class ForgetCheck:
    """The until-check handed to the training loop: check(step) -> True once the forget set meets the target(s).

    Measures only every `every` steps (and says False in between). Each measurement is kept in `history` as
    (step, {column: value}), one value per target; `stopped_at` is the step where the targets first held (None
    while they have not).
    """

    def __init__(self, target: Target | Conditions, model, tokenizer, forget_items: list, max_new_tokens: int,
                 max_length: int, every: int = 2, layout: str = "answer_eos"):
        self.target = target if isinstance(target, Conditions) else Conditions((target,))
        off_forget = [str(t) for t in self.target.targets if t.split != "forget"]
        if off_forget:
            raise GrinError(f"--until checks the forget set only (retain is what stopping early saves); "
                            f"got {', '.join(off_forget)}")
        if int(every) < 1:
            raise GrinError(f"until_every must be at least 1, got {every!r}")
        self.every = int(every)
        self.model, self.tokenizer, self.items = model, tokenizer, forget_items
        self.max_new_tokens, self.max_length, self.layout = max_new_tokens, max_length, layout
        self.history: list[tuple[int, dict[str, float | None]]] = []
        self.stopped_at: int | None = None

    def measure(self) -> dict[str, float | None]:
        """Each target's metric on the forget set, by column, from the model as it is now (the evaluation's code):
        the probability from one forward pass per batch, the answer metrics from one generation."""
        was_training = self.model.training
        self.model.eval()
        try:
            items, wanted = self.items, {t.metric for t in self.target.targets}
            values: dict[str, float | None] = {}
            if "probability" in wanted:
                sums, counts = pair_nlls(self.model, self.tokenizer, [(it.question, it.answer) for it in items],
                                         max_length=self.max_length, layout=self.layout)
                values["probability"] = metrics.answer_probability(sums, counts).value
            if wanted - {"probability"}:
                answers = generate_answers(self.model, self.tokenizer, [it.question for it in items],
                                           self.max_new_tokens)
                values.update({name: result.value for name, result in answer_metrics(items, answers).items()})
            return {t.column: values[t.metric] for t in self.target.targets}
        finally:
            self.model.train(was_training)

    def __call__(self, step: int) -> bool:
        if step % self.every:
            return False
        values = self.measure()
        self.history.append((step, values))
        if self.target.met(values):
            self.stopped_at = step
            return True
        return False

    def report(self) -> dict:
        """What the run report says about the early stop: per check its step and each target's value ("values",
        by column); with one target also that value alone ("value")."""
        single = len(self.target.columns) == 1
        return {"target": str(self.target), "every": self.every, "stopped_at": self.stopped_at,
                "checks": [{"step": s, **({"value": v[self.target.columns[0]]} if single else {}), "values": v}
                           for s, v in self.history]}


def until_check(model, tokenizer, forget: list, cfg) -> ForgetCheck | None:
    """The until-check of cfg.until on the model being trained (None when no target is set)."""
    if cfg.until is None:
        return None
    return ForgetCheck(parse_conditions(cfg.until), model, tokenizer, forget, cfg.max_new_tokens, cfg.max_length,
                       cfg.until_every, cfg.label_layout)
