"""Is it really gone? Attacks on an unlearned model (DESIGN.md §8): what every attack shares.

Unlearning is usually judged by greedy answers to the very questions it trained on. That overstates forgetting:
a few steps of fine-tuning on related data (Hu et al., arXiv 2406.13356; Deeb & Roger, arXiv 2410.08827), a 4-bit
quantisation (Zhang et al., arXiv 2410.16454), a forced answer start, a reworded question, or sampling instead of
greedy decoding (arXiv 2410.19482) can bring the "forgotten" answers back. Each attack here takes an unlearned
model (the base plus a run's patch, always on a private copy: the base and the run stay as they were) and measures
the forget metrics again. One registry, `ATTACKS` (attacks/__init__.py), gathered from one module per family (relearn, quantisation,
prompting, sampling): a new attack is one function and one entry in its family's `ATTACKS` (docs/CONTRIBUTING.md).

Every attack reports, per group of items ("forget", "retain", or the relearning halves "forget_A" / "forget_B"),
the metric values after the attack next to the same items' values before unlearning and after unlearning, and

    recovery = (attacked - unlearned) / (before - unlearned)      (0: nothing came back, 1: all of it)

per metric (`recovery()`; None where before == unlearned: nothing was forgotten, so nothing can come back).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch

from ..data import QAItem
from ..errors import GrinError
from ..evaluation.evaluate import evaluate_split
from ..events import Progress
from ..method.grun import GrunState
from ..method.patch import WeightPatch, unlearned_copy
from ..models import LoadedModel

MAX_RELEARN_STEPS = 500  # bounds that keep one visitor's attack from holding a shared machine for hours
MAX_SAMPLES = 64
RECOVERY_TOLERANCE = 1e-12  # |before - unlearned| below this counts as "nothing was forgotten"
FORCED_PREFIX = "Sure, here is the answer:"


@dataclass
class AttackConfig:
    """The attacks' own settings (the run's GrinConfig gives seed, batch size and generation length)."""
    relearn_steps: int = 10  # fine-tuning steps on half A of the forget set (a few minutes on a 2-core CPU)
    relearn_lr: float = 5e-5  # a tenth of the unlearning lr: a "small" step for this model size
    samples: int = 8  # answers sampled per forget question
    temperature: float = 1.0
    group_size: int = 32  # round-to-nearest quantisation: one scale per this many weights of a row (GGUF's block)
    prefix: str = FORCED_PREFIX

    def __post_init__(self):
        for name, most in (("relearn_steps", MAX_RELEARN_STEPS), ("samples", MAX_SAMPLES), ("group_size", 4096)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= most:
                raise GrinError(f"attack {name.replace('_', ' ')} must be a whole number from 1 to {most}, "
                                f"got {value!r}")
        for name in ("relearn_lr", "temperature"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not (math.isfinite(value)
                                                                                       and value > 0):
                raise GrinError(f"attack {name.replace('_', ' ')} must be a number > 0, got {value!r}")
        if not isinstance(self.prefix, str) or not self.prefix.strip():
            raise GrinError("attack prefix: give the text the forced answer starts with")


@dataclass
class Unlearned:
    """One unlearned model to attack: a run's patch and what the run measured before and after unlearning."""
    method: str  # "grin", "full", "grun" ... (a label for reports)
    patch: WeightPatch | GrunState
    metrics_per_item: dict  # RunResult.metrics_per_item: {"before"|"after": {split: {metric: [per item]}}}
    generations: list[dict]  # RunResult.generations: split, question, answer, before, after

    @classmethod
    def of(cls, method: str, result) -> "Unlearned":
        if result.patch is None or result.stopped:
            raise GrinError(f"attack: the {method} run has no unlearned model (stopped, or its patch was not kept)")
        return cls(method, result.patch, result.metrics_per_item, result.generations)

    def answers(self, split: str, when: str = "after") -> list[str]:
        return [g[when] for g in self.generations if g["split"] == split]


@dataclass
class AttackResult:
    attack: str
    method: str
    metrics: dict = field(default_factory=dict)  # group -> metric -> value after the attack
    baseline: dict = field(default_factory=dict)  # group -> {"before": {metric: v}, "unlearned": {metric: v}}
    recovery: dict = field(default_factory=dict)  # group -> metric -> recovery (None: undefined)
    answers: list[dict] = field(default_factory=list)  # forget questions: the unlearned and the attacked answer
    details: dict = field(default_factory=dict)  # what else the attack measured (split, survival, samples ...)
    seconds: float = 0.0
    skipped: str | None = None  # why the attack could not run on this data or model

    def to_dict(self) -> dict:
        return asdict(self)


# ---------------------------------------------------------------------------------------------------------------------
# Pure pieces: recovery, the split


def recovery(before: float | None, unlearned: float | None, attacked: float | None) -> float | None:
    """(attacked - unlearned) / (before - unlearned): the share of what unlearning removed that the attack restored.

    0 = nothing came back, 1 = all of it; it is not clipped (below 0: the attack removed even more; above 1: it
    overshot the base model). None when any value is missing, or when before == unlearned (to 1e-12): unlearning
    changed nothing on this metric, so there is nothing to recover and any ratio would be noise divided by zero.
    """
    if before is None or unlearned is None or attacked is None:
        return None
    gap = before - unlearned
    if abs(gap) <= RECOVERY_TOLERANCE:
        return None
    return (attacked - unlearned) / gap


def split_halves(n: int, seed: int) -> tuple[list[int], list[int]]:
    """Indices of halves A and B of n items: a permutation seeded with `seed`, A its first n // 2, both sorted."""
    if n < 2:
        raise GrinError(f"relearn: the forget set needs at least 2 items to split in halves, it has {n}")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(int(seed))).tolist()
    return sorted(order[: n // 2]), sorted(order[n // 2:])


def _subset_mean(values: list, indices: list[int]) -> float | None:
    picked = [values[i] for i in indices if values[i] is not None]
    return float(sum(picked) / len(picked)) if picked else None


def _baseline(unlearned: Unlearned, split: str, indices: list[int] | None = None) -> dict:
    """Before / unlearned metric values of the split's items (all of them, or those at `indices`)."""
    out = {}
    for when, key in (("before", "before"), ("unlearned", "after")):
        per_metric = (unlearned.metrics_per_item.get(key) or {}).get(split) or {}
        out[when] = {m: _subset_mean(v, indices if indices is not None else list(range(len(v))))
                     for m, v in per_metric.items()}
    return out


def _values(evaluation: dict) -> dict:
    return {m: r.value for m, r in evaluation["metrics"].items()}


def _finish(result: AttackResult) -> AttackResult:
    """Fill in the recovery of every metric of every group from `metrics` and `baseline`."""
    for group, values in result.metrics.items():
        base = result.baseline.get(group, {})
        result.recovery[group] = {m: recovery(base.get("before", {}).get(m), base.get("unlearned", {}).get(m), v)
                                  for m, v in values.items()}
    return result


# ---------------------------------------------------------------------------------------------------------------------
# The attacks. Each: attack(ctx) -> AttackResult, on a private copy of the unlearned model.


@dataclass
class Context:
    """What one attack on one unlearned model works with."""
    base: LoadedModel
    unlearned: Unlearned
    forget: list[QAItem]
    retain: list[QAItem]
    cfg: object  # the run's GrinConfig
    acfg: AttackConfig
    progress: Progress  # reports as "<method>/<attack>" and carries the user's Stop (events.py)
    attack: str  # the attack's name, its progress stage
    cache: dict  # shared by the unlearned models of one call: what the base model gives under an attack
    _model: LoadedModel | None = None

    def model(self) -> LoadedModel:
        """The unlearned model (base + patch on a copy), built once and shared by the attacks that only read it."""
        if self._model is None:
            self._model = unlearned_copy(self.base, self.unlearned.patch)
        return self._model

    def evaluate(self, loaded: LoadedModel, items: list[QAItem], split: str, tokenizer=None) -> dict:
        return evaluate_split(loaded.model, tokenizer or loaded.tokenizer, items, split, self.cfg.max_new_tokens,
                              self.cfg.max_length, on_batch=self.on_batch, layout=self.cfg.label_layout)

    def on_batch(self, done: int, total: int) -> None:
        """Progress of the attack's own loops, reported as its stage; raises Stopped on Stop."""
        self.progress(self.attack, done, total)


def _answers(questions: list[str], unlearned: list[str], attacked: list[str]) -> list[dict]:
    return [{"question": q, "unlearned": u, "attacked": a} for q, u, a in zip(questions, unlearned, attacked)]

