"""Tests for grin_engine.runs.methods: each comparison method's scores against a hand computation on a tiny model,
and a method added to the registry runs in compare and sweep with no other edit."""

from __future__ import annotations

import pytest
import torch

from grin_engine.config import GrinConfig
from grin_engine.data import qa_batches
from grin_engine.method.influence import accumulate_gradients, candidate_parameters
from grin_engine.method.selection import jaccard, select_top_fraction
from grin_engine.runs import masks
from grin_engine.runs.compare import compare
from grin_engine.runs.methods import METHODS, Gradients
from grin_engine.runs.sweep import SweepGrid, sweep


def _cfg(**overrides) -> GrinConfig:
    settings = dict(p=0.05, steps=2, batch_size=2, max_length=64, max_new_tokens=4, seed=0)
    settings.update(overrides)
    return GrinConfig(**settings)


def _gradients(tiny, items, cfg):
    names = list(candidate_parameters(tiny.model))
    batches = qa_batches(tiny.tokenizer, items, cfg.batch_size, cfg.max_length)
    return accumulate_gradients(tiny.model, batches, names)


def test_snip_scores_are_weight_times_forget_gradient(tiny, forget_items, retain_items):
    cfg = _cfg()
    g_f = _gradients(tiny, forget_items, cfg)
    weights = dict(tiny.model.named_parameters())
    by_hand = {n: (weights[n].detach() * g).abs() for n, g in g_f.items()}
    for in_place in (False, True):
        given = {n: g.clone() for n, g in g_f.items()}
        scores = METHODS["snip"].scores(Gradients(given, None), weights, cfg, in_place)
        for name, expected in by_hand.items():
            assert torch.equal(scores[name], expected), (name, in_place)
    # the kept scores the masks come from: the same top p as selecting from the hand-made scores
    tops = masks.kept_scores(tiny, forget_items, retain_items, cfg, [METHODS["snip"]], keep=cfg.p, copy=True)
    selection = masks.method_selection(METHODS["snip"], tops, tiny, cfg)
    expected = select_top_fraction(by_hand, cfg.p)
    assert all(torch.equal(selection.masks[n], expected.masks[n]) for n in by_hand)
    assert not METHODS["snip"].uses_retain  # G_f only: no retain pass is formed for it


def test_fisher_ratio_scores_are_the_ratio_of_squared_gradients(tiny, forget_items, retain_items):
    cfg = _cfg()
    g_f, g_r = _gradients(tiny, forget_items, cfg), _gradients(tiny, retain_items, cfg)
    weights = dict(tiny.model.named_parameters())
    by_hand = {n: g_f[n] ** 2 / (g_r[n] ** 2 + cfg.eps) for n in g_f}
    for in_place in (False, True):
        given = Gradients({n: g.clone() for n, g in g_f.items()}, {n: g.clone() for n, g in g_r.items()})
        scores = METHODS["fisher-ratio"].scores(given, weights, cfg, in_place)
        for name, expected in by_hand.items():
            torch.testing.assert_close(scores[name], expected, rtol=1e-6, atol=0)
    assert METHODS["fisher-ratio"].uses_retain
    # it is not GRIN's ratio under another name: with a large eps the two masks differ
    big_eps = _cfg(eps=1e-2)
    tops = masks.kept_scores(tiny, forget_items, retain_items, big_eps, [METHODS["grin"], METHODS["fisher-ratio"]],
                             keep=big_eps.p, copy=True)
    grin, fisher = (masks.method_selection(METHODS[n], tops, tiny, big_eps) for n in ("grin", "fisher-ratio"))
    assert jaccard(grin, fisher) < 1.0


@pytest.mark.parametrize("name", [m.name for m in METHODS.values() if m.scores is not None and m.name != "grin"])
def test_a_registered_method_runs_in_compare_and_sweep(tiny, forget_items, retain_items, tmp_path, name):
    """Registered once, a mask method is compared (with its overlap with GRIN's mask) and swept."""
    comparison = compare(tiny, forget_items, retain_items, _cfg(), ["grin", name])
    result = comparison.results[name]
    assert not result.stopped and result.selection["selected"] == comparison.masks_selected["grin"]
    assert 0.0 <= comparison.overlap[name] <= 1.0
    swept = sweep(tiny, forget_items, retain_items, _cfg(), SweepGrid(methods=[name], p=[0.02, 0.05], seeds=[0],
                                                                      steps=[1]), tmp_path / "s.jsonl")
    assert [pt["method"] for pt in swept.points] == [name, name] and not swept.stopped


def test_overlap_is_the_jaccard_of_the_two_masks(tiny, forget_items, retain_items):
    cfg = _cfg()
    tops = masks.kept_scores(tiny, forget_items, retain_items, cfg, [METHODS["grin"], METHODS["snip"]], keep=cfg.p,
                             copy=True)
    grin, snip = (masks.method_selection(METHODS[n], tops, tiny, cfg) for n in ("grin", "snip"))
    comparison = compare(tiny, forget_items, retain_items, cfg, ["grin", "snip"])
    assert comparison.overlap["snip"] == pytest.approx(jaccard(grin, snip))
