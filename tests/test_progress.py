"""Tests for grin_ui.progress: one bar per action over all its phases, weighted by cost, with words and time left."""

from __future__ import annotations

import pytest

from grin_engine.config import GrinConfig
from grin_ui import progress


def test_unlearn_plan_covers_every_phase_in_order_and_never_goes_back(monkeypatch):
    clock = [100.0]
    monkeypatch.setattr(progress.time, "monotonic", lambda: clock[0])
    monkeypatch.setattr(progress, "COSTS", dict(progress.DEFAULT_COSTS))  # not what earlier tests' apps observed
    cfg = GrinConfig(steps=20)
    plan = progress.unlearn_plan(16, 16, cfg, before_cached=False, scores_cached=False)
    assert [p.key for p in plan.phases] == ["before", "influence", "select", "unlearn", "after"]
    events = [("before", i, 32) for i in range(0, 33, 8)] + [("influence", i, 4) for i in range(5)] + \
        [("select", 0, 1)] + [("unlearn", i, 20) for i in range(21)] + [("after", i, 32) for i in range(0, 33, 8)]
    fractions, texts = [], []
    for stage, done, total in events:
        clock[0] += 3
        fraction, text = plan.update(stage, done, total)
        fractions.append(fraction)
        texts.append(text)
    assert fractions == sorted(fractions) and fractions[0] == 0 and fractions[-1] == pytest.approx(1)
    assert "step 1 of 5: answering with the base model (32 questions), question 0 of 32" in texts[0]
    assert "estimating the time left" in texts[0]  # too early for an estimate
    assert "step 4 of 5: unlearning, step 10 of 20" in texts[21] and "left" in texts[21]
    # unlearning weighs most, as measured: 20 steps cost more than answering and scoring together
    weights = {p.key: p.seconds for p in plan.phases}
    assert weights["unlearn"] > weights["before"] + weights["influence"]
    assert plan.update("before", 5, 32)[0] == fractions[-1]  # a late event of an earlier phase: no step back


def test_time_left_follows_the_pace_so_far(monkeypatch):
    clock = [0.0]
    monkeypatch.setattr(progress.time, "monotonic", lambda: clock[0])
    plan = progress.Plan([progress.Phase("a", "first", 10.0), progress.Phase("b", "second", 30.0)])
    clock[0] = 20.0  # the first quarter took 20 s: twice the expectation, so 60 s left
    fraction, text = plan.update("b", 0, 3)
    assert fraction == pytest.approx(0.25) and text.endswith("about 1.0 min left")


def test_cached_work_leaves_the_plan_and_observed_costs_replace_the_defaults(monkeypatch):
    monkeypatch.setattr(progress, "COSTS", dict(progress.DEFAULT_COSTS))
    cfg = GrinConfig()
    plan = progress.unlearn_plan(16, 16, cfg, before_cached=True, scores_cached=True)
    assert [p.key for p in plan.phases] == ["select", "unlearn", "after"]
    before = plan.expected_seconds()
    monkeypatch.setattr(progress, "MEASURED", set())
    progress.observe({"unlearn_s": 20.0, "eval_after_s": 32.0}, forget=16, retain=16, steps=20, cfg=cfg)
    assert progress.cost("answer") == pytest.approx(1.0)  # the first measurement replaces the default
    progress.observe({"eval_after_s": 96.0}, forget=16, retain=16, steps=0, cfg=cfg)
    assert progress.cost("answer") == pytest.approx((1.0 + 3.0) / 2)  # later ones move it halfway
    assert progress.cost("step_row") == pytest.approx(20.0 / 20 / 16)  # 8 forget + 8 retain rows a step
    assert progress.unlearn_plan(16, 16, cfg, True, True).expected_seconds() < before


def test_compare_plan_names_each_method():
    cfg = GrinConfig()
    plan = progress.compare_plan(4, 4, cfg, ["grin", "grun", "full"], before_cached=False, gradients_needed=False)
    keys = [p.key for p in plan.phases]
    assert keys == ["before", "grin/unlearn", "grin/after", "grun/unlearn", "grun/after", "full/unlearn",
                    "full/after"]
    assert plan.update("grun/unlearn", 3, 40)[1].startswith("step 4 of 7: GRUN: training the gated edits, step 3")


def test_load_plan_reports_each_stage():
    plan = progress.load_plan()
    texts = [plan.update(stage, 0, 0)[1] for stage in ("locating", "config", "tokenizer", "weights")]
    assert [t.split(":")[0] for t in texts] == [f"step {i} of 5" for i in range(1, 5)]
    assert "loading the model: weights" in texts[-1]


@pytest.mark.parametrize("seen, next_run", [("4", "16"), ("16", "4")])
def test_expected_time_after_one_recorded_run_is_within_1_5x_of_the_next(monkeypatch, seen, next_run):
    """A server that finished one default run (tests/data/recorded_runs.json: the default model on a 2-core CPU, 4
    and 16 items per set) expects the next run, at the other size, within 1.5x of the time it really took."""
    import json
    from pathlib import Path

    recorded = json.loads((Path(__file__).parent / "data" / "recorded_runs.json").read_text())["runs"]
    monkeypatch.setattr(progress, "COSTS", dict(progress.DEFAULT_COSTS))
    monkeypatch.setattr(progress, "MEASURED", set())

    def config(run):
        return GrinConfig(**{k: v for k, v in run["config"].items() if v is not None})

    first, second = recorded[seen], recorded[next_run]
    progress.observe(first["timings"], first["forget"], first["retain"], first["steps_done"], config(first),
                     checks=first["until_checks"])
    expected = progress.unlearn_plan(second["forget"], second["retain"], config(second), before_cached=False,
                                     scores_cached=False).expected_seconds()
    took = sum(second["timings"].values())
    assert took / 1.5 <= expected <= took * 1.5, (expected, took)
    # what a server that measured nothing yet expects: the defaults, measured on such a machine
    monkeypatch.setattr(progress, "COSTS", dict(progress.DEFAULT_COSTS))
    default = progress.unlearn_plan(second["forget"], second["retain"], config(second), False, False)
    assert took / 1.5 <= default.expected_seconds() <= took * 1.5, (default.expected_seconds(), took)
