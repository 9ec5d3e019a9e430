"""Tests for grin_engine.runs.frontier on hand-made points: the Pareto front, the area to the ideal corner (by hand), its
spread over seeds, and auto-p (the target syntax itself: tests/test_targets.py)."""

from __future__ import annotations

import statistics

import pytest

from grin_engine.runs.frontier import aggregate, area_to_ideal, auto_p, method_areas, pareto_front, summarize
from grin_engine.targets import parse_target

F, R = "forget_keyword_accuracy", "retain_keyword_accuracy"


def pt(method, forget, retain, seed=0, **knobs):
    return {"method": method, "seed": seed, F: forget, R: retain, **knobs}


def test_pareto_front_keeps_only_the_undominated_sorted_by_forget():
    rows = [{"forget": f, "retain": r} for f, r in [(0.1, 0.5), (0.2, 0.9), (0.3, 0.8), (0.05, 0.2), (0.2, 0.4),
                                                    (0.1, 0.5)]]
    front = pareto_front(rows)
    assert [(r["forget"], r["retain"]) for r in front] == [(0.05, 0.2), (0.1, 0.5), (0.2, 0.9)]
    assert front[1] is rows[0]  # of equal points the first is kept


@pytest.mark.parametrize("front, area", [
    ([(0.2, 0.6)], 1 - 0.8 * 0.6),                       # one point: 1 - (1 - f) * r
    ([(0.0, 0.5), (0.5, 1.0)], 1 - (0.5 * 0.5 + 0.5 * 1.0)),
    ([(0.0, 1.0)], 0.0),                                 # the ideal corner itself
    ([], 1.0),                                           # nothing: the whole square
    ([(-0.5, 1.5)], 0.0),                                # values are clipped to [0, 1]
    ([(0.2, 0.6), (0.3, 0.5)], 1 - 0.8 * 0.6),           # a dominated point adds nothing
])
def test_area_to_ideal_by_hand(front, area):
    assert area_to_ideal([{"forget": f, "retain": r} for f, r in front]) == pytest.approx(area)


def test_areas_per_seed_and_their_spread():
    points = [pt("grin", 0.2, 0.6, seed=0, p=0.01), pt("grin", 0.9, 0.9, seed=0, p=0.05),
              pt("grin", 0.0, 0.5, seed=1, p=0.01), pt("grin", 0.5, 1.0, seed=1, p=0.05),
              pt("full", 0.0, 0.2, seed=0)]
    areas = method_areas(points, F, R)
    seed0 = 1 - (0.7 * 0.6 + 0.1 * 0.9)
    seed1 = 1 - (0.5 * 0.5 + 0.5 * 1.0)
    assert areas["grin"]["n"] == 2
    assert areas["grin"]["mean"] == pytest.approx((seed0 + seed1) / 2)
    assert areas["grin"]["std"] == pytest.approx(statistics.stdev([seed0, seed1]))
    assert areas["full"] == {"mean": pytest.approx(1 - 0.2), "std": 0.0, "n": 1,
                             "per_seed": [{"seed": 0, "area": pytest.approx(0.8)}]}


def test_aggregate_over_seeds():
    points = [pt("grin", 0.2, 0.6, seed=0, p=0.01, sigma2=1e-6), pt("grin", 0.4, 0.8, seed=1, p=0.01, sigma2=1e-6),
              pt("grin", 0.1, 0.5, seed=0, p=0.05, sigma2=1e-6), pt("random", None, 0.5, seed=0, p=0.01)]
    rows = aggregate(points, F, R)
    assert len(rows) == 2  # the point without a forget value is left out
    first = rows[0]
    assert (first["method"], first["p"], first["n"]) == ("grin", 0.01, 2)
    assert first["forget"] == pytest.approx(0.3) and first["retain"] == pytest.approx(0.7)
    assert first["forget_std"] == pytest.approx(statistics.stdev([0.2, 0.4]))


def test_auto_p_smallest_p_meeting_the_target_then_best_retain():
    points = [pt("grin", 0.5, 0.95, p=0.001, sigma2=1e-6),     # misses the target
              pt("grin", 0.2, 0.70, p=0.01, sigma2=1e-6),
              pt("grin", 0.1, 0.80, p=0.01, sigma2=1e-5),      # same p, better retain: the pick
              pt("grin", 0.0, 0.99, p=0.05, sigma2=1e-6),      # better retain but a larger p
              pt("random", 0.2, 0.9, seed=0, p=0.01), pt("random", 0.4, 0.9, seed=1, p=0.01),  # mean 0.3: misses
              pt("full", 0.0, 0.4)]                            # no p: no auto-p
    target = parse_target("forget_keyword_accuracy<=0.25")
    picks = auto_p(aggregate(points, target.column, R), target)
    assert set(picks) == {"grin", "random"}
    assert (picks["grin"]["p"], picks["grin"]["sigma2"]) == (0.01, 1e-5)
    assert picks["random"] is None
    summary = summarize(points, F, R, target)
    assert summary["auto_p"]["grin"]["sigma2"] == 1e-5 and summary["target"] == "forget_keyword_accuracy<=0.25"
    assert [r["p"] for r in summary["fronts"]["grin"]] == [0.05]  # (0.0, 0.99) dominates the rest
