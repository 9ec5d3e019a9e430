"""Unlearn until forgotten (DESIGN.md §2.11): the until-check the training loop asks after its steps.

`run --until forget_keyword_accuracy<=0.25` (targets.py holds the grammar): every `until_every` steps the training
loop asks a `ForgetCheck` whether the forget set already meets the target (measured on the model as it is after that
step) and ends unlearning as soon as it does. The check measures exactly what the final evaluation measures on the
forget split (same greedy answers with cfg.max_new_tokens, same keywords, same answer NLLs), so a run that stopped on
the target reports it met after. It only ever looks at the forget set: retain is what the early stop is meant to save,
not what decides it.
"""

from __future__ import annotations

from ..errors import GrinError
from ..targets import Target, parse_target
from . import metrics
from .evaluate import generate_answers, pair_nlls


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


def until_check(model, tokenizer, forget: list, cfg) -> ForgetCheck | None:
    """The until-check of cfg.until on the model being trained (None when no target is set)."""
    if cfg.until is None:
        return None
    return ForgetCheck(parse_target(cfg.until), model, tokenizer, forget, cfg.max_new_tokens, cfg.max_length,
                       cfg.until_every)
