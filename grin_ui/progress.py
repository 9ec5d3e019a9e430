"""One progress bar per action: every phase of the action on one bar, each weighted by its expected cost, with the
phase and its item counts in words and, after the first steps, an estimate of the time left.

An action's `Plan` lists its phases in order, each with an expected number of seconds = units of work x seconds
per unit. The bar's fraction is (expected seconds of the phases done + the current phase's share) / (all expected
seconds); the time left is the elapsed time scaled by that fraction, elapsed x (1 - f) / f, which is the remaining
expected seconds scaled by how fast this run has been so far compared with the expectation.

The seconds per unit (`COSTS`) start from a measurement on a 2-core CPU with the default model, one torch thread
(`python -m grin_engine run --max-items 16`, default settings; tests/data/recorded_runs.json): base answers 15.1 s
and answers after 18.9 s for 32 items each (0.53 s an answer), influence gradients 14.9 s for 32 items (0.47 s
each), unlearning 115.8 s for 20 steps (5.8 s each: a step is a forward and backward pass on 8 forget + 8 retain
rows, 0.36 s a row), the selection 0.2 s; the influence summary's 10 s is older and slower; model
loading's stages were measured here (locating 3 s, config 11 s, tokenizer 8 s, weights 33 s). The units are
per item of work as it is really done: an answer of 48 tokens, one item's gradients, one row of a training step
(a step trains on min(batch_size, n) forget rows, the refusal rows too for dpo, and as many retain rows unless the
loss is ga). The first run this server finishes replaces each default with what it measured, phase by phase
(`observe`), and later runs move it halfway, so the weights, the time left and the expected time shown before Run
follow the machine the app runs on.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

from grin_engine.runs.methods import METHODS

DEFAULT_COSTS = {"answer": 0.53, "gradient_item": 0.47, "step_row": 0.36, "select": 0.2, "summary": 10.0}
LOAD_SECONDS = {"locating": 3.0, "config": 11.0, "tokenizer": 8.0, "weights": 33.0, "placing": 0.5}
_lock = threading.Lock()
COSTS = dict(DEFAULT_COSTS)  # this server's seconds per unit, updated from finished runs (observe)
MEASURED: set[str] = set()  # the units this server has measured at least once


def step_rows(cfg, forget: int, retain: int) -> int:
    """The rows one training step runs forward and backward: a forget batch (twice for dpo: the refusals too) and a
    retain batch (none for ga, which ignores the retain set)."""
    rows = min(cfg.batch_size, forget) * (2 if cfg.loss == "dpo" else 1)
    return rows + (0 if cfg.loss == "ga" else min(cfg.batch_size, retain))


def answers(n: int, cfg) -> float:
    """n answers of cfg.max_new_tokens, counted in 48-token answers."""
    return n * cfg.max_new_tokens / 48


def observe(timings: dict, forget: int, retain: int, steps: int, cfg, checks: int = 0) -> None:
    """Update the seconds per unit from a finished run's timings (pipeline.RunResult.timings) on `forget` +
    `retain` items with `steps` steps and `checks` until-checks (each answered the forget set): the first
    measurement of a unit replaces the default, later ones move it halfway."""
    items, measured = forget + retain, {}
    answered = sum(timings.get(k) or 0.0 for k in ("eval_before_s", "eval_after_s"))
    n_answered = answers(items, cfg) * sum(1 for k in ("eval_before_s", "eval_after_s") if timings.get(k))
    if answered and n_answered:
        measured["answer"] = answered / n_answered
    if timings.get("scores_s") and items:
        measured["gradient_item"] = timings["scores_s"] / items
        if timings.get("select_s"):  # a selection from fresh scores (one from kept scores costs a fifth)
            measured["select"] = timings["select_s"]
    if timings.get("unlearn_s") and steps:
        until_s = checks * answers(forget, cfg) * measured.get("answer", cost("answer"))
        measured["step_row"] = max(0.0, timings["unlearn_s"] - until_s) / steps / step_rows(cfg, forget, retain)
    with _lock:
        for unit, value in measured.items():
            COSTS[unit] = value if unit not in MEASURED else 0.5 * COSTS[unit] + 0.5 * value
            MEASURED.add(unit)


def cost(unit: str) -> float:
    with _lock:
        return COSTS[unit]


@dataclass
class Phase:
    key: str  # the engine's stage name this phase listens to ("before", "influence", "grin/unlearn" ...)
    words: str  # what a person reads: "answering with the base model"
    seconds: float  # expected seconds: the phase's weight on the bar
    unit: str = "item"  # what done/total count, in words


class Plan:
    """The phases of one action; update(stage, done, total) -> (fraction of the whole action, one line of text)."""

    def __init__(self, phases: list[Phase]):
        self.phases = [p for p in phases if p.seconds > 0] or [Phase("work", "working", 1.0)]
        self.total = sum(p.seconds for p in self.phases)
        self.started = time.monotonic()
        self.index = 0
        self.last = (0.0, "")

    def expected_seconds(self) -> float:
        return self.total

    def update(self, stage: str, done: int, total: int) -> tuple[float, str]:
        keys = [p.key for p in self.phases]
        if stage in keys[self.index:]:
            self.index = keys.index(stage, self.index)
        elif stage in keys:  # an earlier phase's late event: the bar never goes back
            return self.last
        if total and done >= total and self.index + 1 < len(self.phases):
            # this phase is over: say what runs now (its first count may come only after its first batch)
            self.index += 1
            done = total = 0
        phase = self.phases[self.index]  # an unknown stage counts as the current phase's
        share = min(1.0, done / total) if total else 0.0
        fraction = (sum(p.seconds for p in self.phases[:self.index]) + share * phase.seconds) / self.total
        fraction = max(fraction, self.last[0])
        text = f"step {self.index + 1} of {len(self.phases)}: {phase.words}"
        text += f", {phase.unit} {done} of {total}" if total else (" ..." if phase.unit else "")
        self.last = (fraction, text + self.time_left(fraction))
        return self.last

    def time_left(self, fraction: float) -> str:
        elapsed = time.monotonic() - self.started
        if fraction < 0.02 or elapsed < 5:  # too early: the first steps give the pace
            return " — estimating the time left ..."
        return f" — about {format_seconds(elapsed * (1 - fraction) / fraction)} left"


def format_seconds(seconds: float) -> str:
    if seconds < 60:
        return f"{max(1, round(seconds))} s"
    if seconds < 3600:
        return f"{seconds / 60:.0f} min" if seconds >= 600 else f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def load_plan() -> Plan:
    return Plan([Phase(stage, f"loading the model: {stage}", s, "") for stage, s in LOAD_SECONDS.items()])


def influence_plan(forget: int, retain: int) -> Plan:
    return Plan([Phase("influence", f"influence gradients on {forget} forget + {retain} retain items",
                       (forget + retain) * cost("gradient_item"), "batch"),
                 Phase("summary", "summarising the scores (histograms, top 10% kept)", cost("summary"), "")])


def run_phases(prefix: str, words: str, forget: int, retain: int, cfg, scores_needed: bool,
               steps: int | None = None, step_share: float = 1.0) -> list[Phase]:
    """The phases of one unlearning run after the base evaluation: scores (when needed), selection, training (with
    its until-checks: the forget set answered every until_every steps), answering. `prefix` ("grin/") and `words`
    ("GRIN: ") name the method in a comparison."""
    steps = cfg.steps if steps is None else steps
    items, phases = forget + retain, []
    if scores_needed:
        phases.append(Phase(prefix + "influence", f"{words}influence gradients on {items} items",
                            items * cost("gradient_item"), "batch"))
    if cfg.use_mask:
        phases.append(Phase(prefix + "select", f"{words}selecting the top {100 * cfg.p:g}% of the weights",
                            cost("select") if scores_needed else 0.2 * cost("select"), ""))
    checks = (steps // cfg.until_every) * answers(forget, cfg) * cost("answer") if getattr(cfg, "until", None) \
        else 0.0
    phases.append(Phase(prefix + "unlearn", f"{words}unlearning" + (f" until {cfg.until}" if checks else ""),
                        steps * step_share * step_rows(cfg, forget, retain) * cost("step_row") + checks, "step"))
    phases.append(Phase(prefix + "after", f"{words}answering with the unlearned model ({items} questions)",
                        answers(items, cfg) * cost("answer"), "question"))
    return phases


def before_phase(items: int, cfg, cached: bool) -> list[Phase]:
    if cached:
        return []
    return [Phase("before", f"answering with the base model ({items} questions)",
                  answers(items, cfg) * cost("answer"), "question")]


def unlearn_plan(forget: int, retain: int, cfg, before_cached: bool, scores_cached: bool) -> Plan:
    return Plan(before_phase(forget + retain, cfg, before_cached)
                + run_phases("", "", forget, retain, cfg, not scores_cached))


def compare_plan(forget: int, retain: int, cfg, methods: list[str], before_cached: bool,
                 gradients_needed: bool) -> Plan:
    items = forget + retain
    phases = before_phase(items, cfg, before_cached)
    if gradients_needed:
        phases.append(Phase("gradients", f"gradients for the masks on {items} items",
                            items * cost("gradient_item"), "batch"))
    for method in (METHODS[name] for name in methods):
        words = method.label + ": "
        if method.mask == "grun":  # GRUN's steps cost about half of GRIN's (its own note in the layout)
            phases += [Phase("grun/unlearn", words + "training the gated edits",
                             cfg.grun_steps * step_rows(cfg, forget, retain) / 2 * cost("step_row"), "step"),
                       Phase("grun/after", words + f"answering ({items} questions)",
                             answers(items, cfg) * cost("answer"), "question")]
        else:
            phases += [p for p in run_phases(f"{method.name}/", words, forget, retain, method.configure(cfg), False)
                       if not p.key.endswith("/select")]
    return Plan(phases)
