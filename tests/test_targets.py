"""Tests for grin_engine.targets: the target grammar, one condition (`forget_keyword_accuracy<=0.25`) or several
joined with "and" (`--until`)."""

from __future__ import annotations

import pytest

from grin_engine.errors import GrinError
from grin_engine.targets import Conditions, Target, parse_conditions, parse_target


def test_parse_target():
    assert parse_target(" forget_keyword_accuracy <= 0.25 ") == Target("forget", "keyword_accuracy", "<=", 0.25)
    assert parse_target("retain_rougeL_recall>0.5").met(0.6)
    assert not parse_target("forget_probability<0.1").met(None)
    with pytest.raises(GrinError, match="unknown metric"):
        parse_target("forget_accuracy<=0.2")
    with pytest.raises(GrinError, match="METRIC<=NUMBER"):
        parse_target("forget_keyword_accuracy=0.2")
    with pytest.raises(GrinError, match="finite"):
        parse_target("forget_probability<=inf")


def test_fluency_is_a_target_metric():
    assert parse_target("forget_fluency>=0.9") == Target("forget", "fluency", ">=", 0.9)


def test_conditions_parse_hold_together_and_round_trip():
    text = "forget_keyword_accuracy<=0.25 and forget_fluency>=0.9"
    conditions = parse_conditions(text)
    assert conditions == Conditions((Target("forget", "keyword_accuracy", "<=", 0.25),
                                     Target("forget", "fluency", ">=", 0.9)))
    assert str(conditions) == text and parse_conditions(str(conditions)) == conditions
    assert conditions.columns == ["forget_keyword_accuracy", "forget_fluency"]
    assert conditions.met({"forget_keyword_accuracy": 0.2, "forget_fluency": 0.95})
    assert not conditions.met({"forget_keyword_accuracy": 0.2, "forget_fluency": 0.5})  # forgotten by gibberish
    assert not conditions.met({"forget_keyword_accuracy": 0.2})  # a value not measured: not met
    # spacing and the case of "and" do not matter
    assert parse_conditions(" forget_keyword_accuracy <= 0.25  AND forget_fluency>=0.9 ") == conditions


def test_one_condition_is_the_plain_target():
    assert parse_conditions("forget_probability<0.1") == Conditions((parse_target("forget_probability<0.1"),))
    assert str(parse_conditions("forget_probability<0.1")) == "forget_probability<0.1"


@pytest.mark.parametrize("text, message", [
    ("forget_keyword_accuracy<=0.25 and", "METRIC<=NUMBER"),
    ("forget_keyword_accuracy<=0.25 and forget_fluent>=0.9", "unknown metric"),
    ("", "METRIC<=NUMBER"),
])
def test_bad_conditions(text, message):
    with pytest.raises(GrinError, match=message):
        parse_conditions(text)


def test_a_single_target_refuses_and():
    """auto-p (`sweep --target`) ranks settings on one metric: a conjunction there is a clear error."""
    with pytest.raises(GrinError, match="one condition here"):
        parse_target("forget_keyword_accuracy<=0.25 and forget_fluency>=0.9")
