"""Tests for `run --until` (grin_engine.evaluation.until.ForgetCheck and the hook in the training loops): the check measures
only every `until_every` steps, ends training at the first step where the target holds, reports that step, runs
every step when the target never holds, and bad settings fail with a clear message."""

from __future__ import annotations

import pytest

from grin_engine.config import GrinConfig, GrinError
from grin_engine.evaluation import until
from grin_engine.runs.pipeline import run, run_grun
from grin_engine.evaluation.until import ForgetCheck
from grin_engine.targets import parse_conditions, parse_target


def _cfg(**overrides) -> GrinConfig:
    settings = dict(p=0.1, steps=6, grun_steps=6, batch_size=2, max_length=64, max_new_tokens=4, seed=0)
    settings.update(overrides)
    return GrinConfig(**settings)


def test_check_measures_every_n_steps_only(tiny, forget_items):
    check = ForgetCheck(parse_target("forget_probability<=0"), tiny.model, tiny.tokenizer, forget_items, 4, 64,
                        every=3)
    assert [check(step) for step in range(1, 7)] == [False] * 6  # a probability is never <= 0
    assert [s for s, _ in check.history] == [3, 6] and check.stopped_at is None
    assert all(0 < v["forget_probability"] < 1 for _, v in check.history)


def test_target_that_holds_stops_at_the_first_check(tiny, forget_items, retain_items):
    result = run(tiny, forget_items, retain_items, _cfg(until="forget_probability<=1", until_every=2))
    assert len(result.losses) == 2  # trained 2 of 6 steps
    report = result.to_report()["until"]
    assert report["stopped_at"] == 2 and report["target"] == "forget_probability<=1"
    assert [c["step"] for c in report["checks"]] == [2]


def test_target_that_never_holds_runs_every_step(tiny, forget_items, retain_items):
    result = run(tiny, forget_items, retain_items, _cfg(until="forget_keyword_accuracy<0", until_every=2))
    assert len(result.losses) == 6
    assert result.until["stopped_at"] is None and [c["step"] for c in result.until["checks"]] == [2, 4, 6]
    assert run(tiny, forget_items, retain_items, _cfg()).until is None  # no target: no check


@pytest.mark.parametrize("layout", ["answer_eos", "chat_turn"])
def test_check_value_is_the_evaluation_metric(tiny, forget_items, retain_items, layout):
    """Checked after the last step, the check's value equals the after-evaluation of the same model (whose NLLs
    cover the tokens of the run's label layout)."""
    result = run(tiny, forget_items, retain_items, _cfg(steps=2, until="forget_probability<0", until_every=2,
                                                         label_layout=layout))
    assert result.until["checks"][-1]["value"] == pytest.approx(result.metrics["after"]["forget"]["probability"])


def test_grun_stops_too(tiny, forget_items, retain_items):
    result = run_grun(tiny, forget_items, retain_items, _cfg(until="forget_probability<=1", until_every=1))
    assert len(result.losses) == 1 and result.until["stopped_at"] == 1


def test_conditions_must_all_hold_and_each_is_reported(tiny, forget_items, retain_items):
    target = "forget_probability<=1 and forget_fluency>1"  # the second never holds
    result = run(tiny, forget_items, retain_items, _cfg(steps=4, until=target, until_every=2))
    assert len(result.losses) == 4 and result.until["stopped_at"] is None and result.until["target"] == target
    checks = result.until["checks"]
    assert [c["step"] for c in checks] == [2, 4] and all("value" not in c for c in checks)
    assert all(set(c["values"]) == {"forget_probability", "forget_fluency"} for c in checks)
    after = result.metrics["after"]["forget"]  # checked after the last step: the after-evaluation's numbers
    assert checks[-1]["values"]["forget_fluency"] == pytest.approx(after["fluency"])
    assert checks[-1]["values"]["forget_probability"] == pytest.approx(after["probability"])
    held = run(tiny, forget_items, retain_items, _cfg(until="forget_probability<=1 and forget_fluency>=0"))
    assert held.until["stopped_at"] == 2 and len(held.losses) == 2


def test_answer_conditions_share_one_generation_per_check(tiny, forget_items, monkeypatch):
    calls = []
    generate = until.generate_answers
    monkeypatch.setattr(until, "generate_answers", lambda *a, **k: calls.append(1) or generate(*a, **k))
    target = parse_conditions("forget_keyword_accuracy<=1 and forget_rougeL_recall<=1 and forget_fluency>=0")
    check = ForgetCheck(target, tiny.model, tiny.tokenizer, forget_items, 4, 64, every=1)
    assert check(1) and check.stopped_at == 1 and len(calls) == 1
    assert set(check.history[0][1]) == {"forget_keyword_accuracy", "forget_rougeL_recall", "forget_fluency"}
    assert check.report()["target"] == str(target)


def test_single_target_report_keeps_its_value(tiny, forget_items):
    check = ForgetCheck(parse_target("forget_fluency>=0"), tiny.model, tiny.tokenizer, forget_items, 4, 64, every=1)
    assert check(1)
    [entry] = check.report()["checks"]
    assert entry["step"] == 1 and entry["value"] == entry["values"]["forget_fluency"]


@pytest.mark.parametrize("settings, message", [
    (dict(until="retain_keyword_accuracy>=0.9"), "forget set only"),
    (dict(until="forget_keyword_accuracy<=0.25 and retain_fluency>=0.9"), "forget set only"),
    (dict(until="forget_keyword_accuracy<=0.25 and forget_fluent>=0.9"), "unknown metric"),
    (dict(until="forget_keyword_accuracy=0.2"), "METRIC<=NUMBER"),
    (dict(until="forget_probability<=0.1", until_every=0), "until_every"),
])
def test_bad_until_settings(settings, message):
    with pytest.raises(GrinError, match=message):
        _cfg(**settings)
