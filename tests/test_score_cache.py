"""Tests for grin_engine.method.score_cache: a selection from the kept top scores equals a fresh one bit for bit, at every p
up to the kept fraction (ties at the threshold included), and the key changes with everything the scores read."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from grin_engine.runs import pipeline
from grin_engine.config import GrinConfig
from grin_engine.method.influence import Candidate
from grin_engine.method.selection import select_top_fraction
from grin_engine.models import copy_model
from grin_engine.method.score_cache import KEEP, TopScores, evaluation_key, score_key
from grin_engine.events import Progress
from grin_engine.method.influence import compute_influence_scores
from grin_engine.runs.masks import choose_mask

P_VALUES = [1e-4, 0.001, 0.003, 0.01, 0.05, 0.0999, 0.1]


def _same_selection(a, b) -> None:
    assert a.threshold == b.threshold  # the same float, not approximately
    assert (a.selected, a.candidates, a.p) == (b.selected, b.candidates, b.p)
    assert set(a.masks) == set(b.masks)
    for name in a.masks:
        assert a.masks[name].shape == b.masks[name].shape
        assert torch.equal(a.masks[name], b.masks[name]), name


def _scores(seed: int, ties: bool) -> tuple[dict, dict]:
    generator = torch.Generator().manual_seed(seed)
    shapes = {"a.weight": (64, 48), "b.weight": (300,), "c.weight": (17, 29), "d.weight": (5, 5)}
    scores = {}
    for name, shape in shapes.items():
        values = torch.rand(shape, generator=generator) ** 4
        if ties:  # coarse values: many scores equal the threshold
            values = (values * 20).round() / 20
        scores[name] = values
    candidates = {name: Candidate(name, 0, name, "ffn", t.numel()) for name, t in scores.items()}
    return scores, candidates


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("seed", [0, 1])
def test_select_equals_a_fresh_selection_at_every_kept_p(seed, ties):
    scores, candidates = _scores(seed, ties)
    top = TopScores.from_scores(scores, candidates, keep=KEEP)
    assert top.kept < top.n  # it really keeps only the top
    for p in P_VALUES:
        assert top.covers(p)
        _same_selection(top.select(p), select_top_fraction(scores, p))


def test_above_the_kept_fraction_is_refused():
    scores, candidates = _scores(0, False)
    top = TopScores.from_scores(scores, candidates, keep=0.05)
    assert top.covers(0.05) and not top.covers(0.2)
    with pytest.raises(ValueError, match="compute the scores again"):
        top.select(0.2)


def test_memory_is_the_kept_entries_only():
    scores, candidates = _scores(0, False)
    top = TopScores.from_scores(scores, candidates, keep=0.1)
    assert top.nbytes() == top.kept * (4 + 4)  # float32 value + int32 index each
    assert top.kept == round(0.1 * top.n)  # no ties in continuous scores


def test_real_scores_of_a_tiny_model_select_exactly(tiny, forget_items, retain_items):
    cfg = GrinConfig()
    work = copy_model(tiny)
    influence = compute_influence_scores(work.model, work.tokenizer, forget_items, retain_items, cfg)
    top = TopScores.from_scores(influence.scores, influence.candidates, seconds=influence.seconds)
    for p in (0.001, 0.01, 0.1):
        fresh = select_top_fraction(influence.scores, p)
        cached = top.select(p)
        _same_selection(cached, fresh)


def test_a_run_from_cached_scores_equals_a_fresh_run(tiny, forget_items, retain_items):
    """The mask, the losses and the unlearned weights are the same whether the run computed its scores or got them."""
    cfg = GrinConfig(steps=2, p=0.02)
    work = copy_model(tiny)
    influence = compute_influence_scores(work.model, work.tokenizer, forget_items, retain_items, cfg)
    top = TopScores.from_scores(influence.scores, influence.candidates)
    fresh = pipeline.run(tiny, forget_items, retain_items, cfg)
    before, _ = pipeline.evaluate(tiny, forget_items, retain_items, cfg, Progress(), "before")
    work = copy_model(tiny)  # the app's way: the stages, with the kept scores handed to choose_mask
    cached = pipeline.finish(tiny, work, forget_items, retain_items, cfg, choose_mask(work, forget_items,
                                                                                      retain_items, cfg, kept=top),
                             before)
    assert fresh.losses == cached.losses
    assert fresh.selection["selected"] == cached.selection["selected"]
    assert set(fresh.patch.entries) == set(cached.patch.entries)
    for name, (index, value) in fresh.patch.entries.items():
        other_index, other_value = cached.patch.entries[name]
        assert torch.equal(index, other_index) and torch.equal(value, other_value), name


def test_key_follows_what_the_scores_depend_on(forget_items, retain_items):
    cfg = GrinConfig()
    key = score_key("default", forget_items, retain_items, cfg)
    assert key == score_key("default", list(forget_items), list(retain_items), GrinConfig())
    assert key != score_key("other", forget_items, retain_items, cfg)
    assert key != score_key("default", forget_items[:-1], retain_items, cfg)
    assert key != score_key("default", retain_items, forget_items, cfg)
    for change in ({"eps": 1e-6}, {"grad_mean": "item"}, {"label_layout": "chat_turn"}, {"max_length": 128},
                   {"include_embeddings": True}, {"batch_size": 4}):
        assert key != score_key("default", forget_items, retain_items, replace(cfg, **change)), change
    # what the scores do not read leaves the key alone: p, steps, lr, the method
    assert key == score_key("default", forget_items, retain_items, replace(cfg, p=0.05, steps=3, lr=1e-3))


def test_evaluation_key_follows_the_label_layout(forget_items, retain_items):
    """The base evaluation's NLLs cover the tokens of cfg.label_layout, so a kept evaluation of the other is not reused."""
    cfg = GrinConfig()
    key = evaluation_key("default", forget_items, retain_items, cfg)
    assert key != evaluation_key("default", forget_items, retain_items, replace(cfg, label_layout="chat_turn"))
    assert key == evaluation_key("default", forget_items, retain_items, replace(cfg, p=0.05, steps=3))
