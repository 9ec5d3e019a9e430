"""Tests for grin_engine.method.score_summary: the histogram preview agrees with the exact selection."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from grin_engine.method.influence import Candidate
from grin_engine.method.selection import select_top_fraction, summarize_selection
from grin_engine.method.score_summary import preview_selection, score_histograms


def _fake_scores(seed=0):
    g = torch.Generator().manual_seed(seed)
    shapes = {"model.layers.0.self_attn.q_proj.weight": (64, 32), "model.layers.0.mlp.up_proj.weight": (128, 32),
              "model.layers.1.self_attn.q_proj.weight": (64, 32), "model.layers.1.mlp.up_proj.weight": (128, 32)}
    scores, candidates = {}, {}
    for i, (name, shape) in enumerate(shapes.items()):
        # different layers have different score levels, over many orders of magnitude, like real scores
        scores[name] = torch.randn(shape, generator=g).mul(3).add(i).exp()
        layer, module = int(name.split(".")[2]), ".".join(name.split(".")[3:-1])
        candidates[name] = Candidate(name, layer, module, "attention" if "attn" in module else "ffn", scores[name].numel())
    return scores, candidates


def test_histograms_count_every_score():
    scores, candidates = _fake_scores()
    hist = score_histograms(scores, candidates, bins=256)
    assert hist.total.sum() == sum(s.numel() for s in scores.values())
    for name, s in scores.items():
        assert hist.counts[name].sum() == s.numel()
    assert len(hist.edges) == 257 and np.all(np.diff(hist.edges) > 0)


@pytest.mark.parametrize("p", [0.001, 0.01, 0.1, 0.5, 1.0])
def test_preview_matches_the_exact_selection(p):
    scores, candidates = _fake_scores()
    hist = score_histograms(scores, candidates, bins=2048)
    preview = preview_selection(hist, p)
    exact = summarize_selection(select_top_fraction(scores, p), candidates)
    n = exact["candidates"]
    assert preview["candidates"] == n and preview["preview"] is True
    # the total is round(p * n) up to one rounding per weight matrix
    assert abs(preview["selected"] - exact["selected"]) <= len(scores)
    boundary = max(int(c.max()) for c in hist.counts.values())  # at most one bin's worth per matrix can differ
    for row_p, row_e in zip(preview["by_layer"], exact["by_layer"]):
        assert (row_p["layer"], row_p["module"]) == (row_e["layer"], row_e["module"])
        assert abs(row_p["selected"] - row_e["selected"]) <= max(2, 0.05 * n * p, boundary // 50), (row_p, row_e)


def test_preview_follows_p():
    scores, candidates = _fake_scores(1)
    hist = score_histograms(scores, candidates)
    sizes = [preview_selection(hist, p)["selected"] for p in (0.001, 0.01, 0.1, 1.0)]
    assert sizes == sorted(sizes) and sizes[-1] == sum(s.numel() for s in scores.values())
