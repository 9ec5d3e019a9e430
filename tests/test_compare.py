"""Tests for grin_engine.runs.compare: every method runs on the same data, each baseline's mask has the right size, the
random baseline is reproducible from its seed, the overlaps are real Jaccard values, and the base stays untouched."""

from __future__ import annotations

import json

import pytest
import torch

from grin_engine.events import Progress
from grin_engine.runs.compare import compare
from grin_engine.runs.methods import METHODS, parse_methods
from grin_engine.config import GrinConfig, GrinError
from grin_engine.method.influence import candidate_parameters
from grin_engine.method.selection import Selection, jaccard, random_selection


def _cfg(**overrides) -> GrinConfig:
    settings = dict(p=0.1, steps=2, grun_steps=2, batch_size=2, max_length=64, max_new_tokens=4, seed=0)
    settings.update(overrides)
    return GrinConfig(**settings)


def _checksum(model) -> float:
    return sum(p.double().sum().item() for p in model.state_dict().values())


def test_parse_methods():
    assert parse_methods("grin, GRUN,full,grin") == ["grin", "grun", "full"]
    with pytest.raises(GrinError, match="unknown nope"):
        parse_methods("grin,nope")
    with pytest.raises(GrinError, match="none given"):
        parse_methods(" , ")


def test_jaccard_by_hand():
    a = Selection(p=0.5, threshold=None, selected=2, candidates=4,
                  masks={"w": torch.tensor([True, True, False, False])})
    b = Selection(p=0.5, threshold=None, selected=2, candidates=4,
                  masks={"w": torch.tensor([False, True, True, False])})
    assert jaccard(a, b) == pytest.approx(1 / 3)
    assert jaccard(a, a) == 1.0


def test_random_mask_is_reproducible_from_its_seed(tiny):
    candidates = candidate_parameters(tiny.model)
    params = dict(tiny.model.named_parameters())
    first = random_selection(candidates, params, 0.05, seed=3)
    again = random_selection(candidates, params, 0.05, seed=3)
    other = random_selection(candidates, params, 0.05, seed=4)
    assert all(torch.equal(first.masks[n], again.masks[n]) for n in candidates)
    assert not all(torch.equal(first.masks[n], other.masks[n]) for n in candidates)


def test_every_method_on_the_same_data(tiny, forget_items, retain_items):
    checksum = _checksum(tiny.model)
    comparison = compare(tiny, forget_items, retain_items, _cfg(), list(METHODS))
    assert list(comparison.results) == list(METHODS) and not comparison.stopped
    n = sum(c.numel for c in candidate_parameters(tiny.model).values())
    k = round(0.1 * n)
    # each masked method (every registry entry that draws a mask) selects exactly round(p * n) weights; full trains
    # all of them
    masked = [m.name for m in METHODS.values() if m.mask in ("scores", "random")]
    assert comparison.masks_selected == {name: k for name in masked}
    for name in masked:
        assert comparison.results[name].selection["selected"] == k
    assert comparison.results["full"].selection["selected"] == n
    assert comparison.results["grun"].selection["kind"] == "grun"
    assert comparison.results["grun"].selection["trainable"] > 0
    # the baselines differ from GRIN in what they claim to
    assert comparison.results["grin-nonoise"].config["sigma2"] == 0.0
    assert comparison.results["grin"].config["sigma2"] == _cfg().sigma2
    assert 0.0 <= comparison.overlap["random"] < 0.5 and 0.0 < comparison.overlap["forget-grad"] <= 1.0
    # every method was evaluated on the same items, against the same before-evaluation
    befores = {json.dumps(r.metrics["before"], sort_keys=True) for r in comparison.results.values()}
    assert len(befores) == 1
    gates = comparison.results["grun"].gates
    assert len(gates["forget"]) == len(forget_items) and len(gates["retain"]) == len(retain_items)
    report = json.loads(json.dumps(comparison.to_report()))  # the report is plain JSON
    assert [row["method"] for row in report["table"]] == list(METHODS)
    for row in report["table"]:  # fluency beside the forget / retain metrics, before and after
        assert {"forget_fluency", "retain_fluency", "forget_fluency_before", "retain_fluency_before"} <= set(row)
        assert 0.0 <= row["forget_fluency"] <= 1.0
    assert set(report["generations"][0]) >= {"question", "answer", "before", *METHODS}
    assert _checksum(tiny.model) == checksum  # the base is only read


def test_grin_in_compare_is_the_same_run_as_grin_alone(tiny, forget_items, retain_items):
    """Same mask and same numbers as pipeline.run: the comparison adds no difference of its own."""
    from grin_engine.runs import pipeline

    alone = pipeline.run(tiny, forget_items, retain_items, _cfg())
    compared = compare(tiny, forget_items, retain_items, _cfg(), ["grin"]).results["grin"]
    assert compared.selection["selected"] == alone.selection["selected"]
    assert compared.losses == alone.losses
    for name, (index, values) in alone.patch.entries.items():
        other_index, other_values = compared.patch.entries[name]
        assert torch.equal(index, other_index) and torch.equal(values, other_values)


def test_stop_keeps_the_methods_already_finished(tiny, forget_items, retain_items):
    seen = []

    def on_progress(stage, done, total, *extra):
        seen.append(stage)

    comparison = compare(tiny, forget_items, retain_items, _cfg(), ["full", "grun"],
                         Progress(on_progress, lambda: any(s.startswith("grun/") for s in seen)))
    assert comparison.stopped
    assert not comparison.results["full"].stopped and comparison.results["grun"].stopped
    assert "before" in seen and "full/unlearn" in seen


def test_compare_in_place_equals_compare_on_copies_and_restores_the_base(tiny, forget_items, retain_items):
    """The CLI's compare trains the base itself, method after method: same results, base bit-identical after."""
    saved = {k: v.clone() for k, v in tiny.model.state_dict().items()}
    methods = ["grin", "grun", "full", "random"]
    on_copies = compare(tiny, forget_items, retain_items, _cfg(), methods)
    in_place = compare(tiny, forget_items, retain_items, _cfg(), methods, in_place=True)
    def without_time(table):
        return [{k: v for k, v in row.items() if k != "seconds"} for row in table]

    assert without_time(in_place.table()) == without_time(on_copies.table())
    assert in_place.generations() == on_copies.generations()
    assert in_place.overlap == on_copies.overlap
    for name, value in tiny.model.state_dict().items():
        assert torch.equal(value, saved[name]), name


def _kept_scores(tiny, forget_items, retain_items, cfg):
    from grin_engine.method.influence import compute_influence_scores
    from grin_engine.method.score_cache import TopScores
    from grin_engine.models import copy_model

    work = copy_model(tiny)
    scores = compute_influence_scores(work.model, work.tokenizer, forget_items, retain_items, cfg)
    return TopScores.from_scores(scores.scores, scores.candidates)


def test_compare_reuses_kept_scores_and_the_base_evaluation(tiny, forget_items, retain_items, monkeypatch):
    """Given the kept GRIN scores and the base evaluation, compare needs no gradients and no base answers, and
    gives the same runs as computing them itself."""
    from grin_engine.evaluation.evaluate import evaluate_both
    import grin_engine.runs.compare as compare_module
    from grin_engine.runs import masks

    cfg = _cfg()
    fresh = compare(tiny, forget_items, retain_items, cfg, ["grin", "random"])
    top = _kept_scores(tiny, forget_items, retain_items, cfg)
    before = evaluate_both(tiny.model, tiny.tokenizer, forget_items, retain_items, cfg)
    calls = []
    monkeypatch.setattr(masks, "gradient_pair", lambda *a, **k: calls.append("gradients"))
    monkeypatch.setattr(masks, "accumulate_gradients", lambda *a, **k: calls.append("gradients"))
    monkeypatch.setattr(compare_module, "evaluate", lambda *a, **k: calls.append("before"))
    reused = compare(tiny, forget_items, retain_items, cfg, ["grin", "random"], before=before, kept={"grin": top})
    assert calls == []
    assert reused.masks_selected == fresh.masks_selected and reused.overlap == fresh.overlap
    for name in ("grin", "random"):
        assert reused.results[name].losses == fresh.results[name].losses
        assert reused.results[name].metrics == fresh.results[name].metrics


def test_forget_grad_alone_forms_only_the_forget_gradients(tiny, forget_items, retain_items, monkeypatch):
    """The |G_f| mask needs no retain gradients: one gradient pass (the forget set's) instead of two, and the same
    scores as taking |G_f| from the pair that GRIN needs."""
    from grin_engine.method.influence import accumulate_gradients
    from grin_engine.runs import masks

    cfg = _cfg()
    both = [METHODS["grin"], METHODS["forget-grad"]]
    with_grin = masks.kept_scores(tiny, forget_items, retain_items, cfg, both, keep=1.0, copy=True)
    passes = []
    monkeypatch.setattr(masks, "accumulate_gradients",
                        lambda *a, **k: passes.append(1) or accumulate_gradients(*a, **k))
    alone = masks.kept_scores(tiny, forget_items, retain_items, cfg, [METHODS["forget-grad"]], keep=1.0, copy=True)
    assert len(passes) == 1 and set(alone) == {"forget-grad"}
    for name, values in with_grin["forget-grad"].values.items():  # keep = 1: every score, as values and indices
        assert torch.equal(alone["forget-grad"].values[name], values)
        assert torch.equal(alone["forget-grad"].indices[name], with_grin["forget-grad"].indices[name])
