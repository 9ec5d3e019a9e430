"""Tests for grin_engine.runs.pipeline: one whole run on a tiny model, the report contract, a base that stays untouched,
determinism, and a selection that matches p."""

from __future__ import annotations

import json
import math

import pytest
import torch

from grin_engine.runs import pipeline
from grin_engine.config import GrinConfig
from grin_engine.data import QAItem
from grin_engine.events import Progress
from grin_engine.method.influence import compute_influence_scores
from grin_engine.method import unlearn as unlearn_module


METRICS = {"rougeL_recall", "keyword_accuracy", "probability", "fluency"}


def _cfg(use_mask: bool, **overrides) -> GrinConfig:
    settings = dict(loss="graddiff", p=0.1, sigma2=1e-4, use_mask=use_mask, lr=1e-2, steps=3, batch_size=2,
                    max_length=64, max_new_tokens=4, seed=0)
    settings.update(overrides)
    return GrinConfig(**settings)


def _snapshot(model) -> dict[str, torch.Tensor]:
    return {name: value.detach().clone() for name, value in model.state_dict().items()}


@pytest.fixture(scope="module")
def runs():
    """Each setting run twice on a fresh tiny model (module scope: the runs are shared by the tests below)."""
    from conftest import FORGET, RETAIN, build_tokenizer, tiny_llama
    from grin_engine.models import LoadedModel

    tokenizer = build_tokenizer()
    out = {}
    for use_mask in (True, False):
        results = []
        for _ in range(2):
            base = LoadedModel(model=tiny_llama(len(tokenizer)), tokenizer=tokenizer, name="tiny", source="local",
                               device=torch.device("cpu"), dtype=torch.float32)
            before = _snapshot(base.model)
            result = pipeline.run(base, list(FORGET), list(RETAIN), _cfg(use_mask))
            results.append((result, before, _snapshot(base.model)))
        out[use_mask] = results
    return out


@pytest.mark.parametrize("use_mask", [True, False])
def test_report_contract(runs, use_mask):
    result = runs[use_mask][0][0]
    report = result.to_report()
    assert {"config", "selection", "metrics", "generations", "losses", "timings"} <= set(report)

    assert report["config"] == _cfg(use_mask).to_dict()

    sel = report["selection"]
    assert {"p", "selected", "candidates", "fraction", "by_kind", "by_layer"} <= set(sel)
    assert set(sel["by_kind"]) == {"attention", "ffn"}
    for kind in ("attention", "ffn"):
        assert set(sel["by_kind"][kind]) == {"selected", "total"}
        assert 0 <= sel["by_kind"][kind]["selected"] <= sel["by_kind"][kind]["total"]
    assert sel["by_kind"]["attention"]["total"] + sel["by_kind"]["ffn"]["total"] == sel["candidates"]
    assert sel["by_kind"]["attention"]["selected"] + sel["by_kind"]["ffn"]["selected"] == sel["selected"]
    assert len(sel["by_layer"]) == 2 * 7
    for row in sel["by_layer"]:
        assert set(row) == {"layer", "module", "kind", "selected", "total"}
        assert row["layer"] in (0, 1) and row["kind"] in ("attention", "ffn")
    assert sum(row["selected"] for row in sel["by_layer"]) == sel["selected"]
    assert sum(row["total"] for row in sel["by_layer"]) == sel["candidates"]
    assert sel["fraction"] == pytest.approx(sel["selected"] / sel["candidates"])

    assert set(report["metrics"]) == {"before", "after"}
    for when in ("before", "after"):
        assert set(report["metrics"][when]) == {"forget", "retain"}
        for split in ("forget", "retain"):
            values = report["metrics"][when][split]
            assert METRICS <= set(values), values
            for name in METRICS:
                assert isinstance(values[name], float) and 0.0 <= values[name] <= 1.0, (when, split, name)

    assert set(report["fluency"]) == {"before", "after"}  # the two parts of fluency and each answer's reason
    for when in ("before", "after"):
        for split in ("forget", "retain"):
            parts = report["fluency"][when][split]
            assert len(parts["reasons"]) == 4 and set(parts["reasons"]) <= {"fluent", "loop", "non_answer"}
            assert parts["reasons"].count("loop") / 4 == parts["looping"]
            assert parts["reasons"].count("fluent") / 4 == pytest.approx(report["metrics"][when][split]["fluency"])

    generations = report["generations"]
    assert len(generations) == 8
    assert [g["split"] for g in generations] == ["forget"] * 4 + ["retain"] * 4
    for g in generations:
        assert set(g) >= {"split", "question", "answer", "before", "after"}
        assert isinstance(g["before"], str) and isinstance(g["after"], str)

    assert len(report["losses"]) == 3
    assert all(math.isfinite(loss) for loss in report["losses"])
    assert {"scores_s", "select_s", "unlearn_s", "eval_s"} <= set(report["timings"])
    assert all(value >= 0 for value in report["timings"].values())
    assert report["stopped"] is False


@pytest.mark.parametrize("use_mask", [True, False])
def test_report_is_strict_json(runs, use_mask):
    """The report is a contract read by other tools: NaN / Infinity are not JSON (RFC 8259; JavaScript's JSON.parse
    rejects them), so a value that does not exist must be null."""
    report = runs[use_mask][0][0].to_report()
    text = json.dumps(report, allow_nan=False)
    assert json.loads(text)["losses"] == report["losses"]


def test_selection_fraction_matches_p(runs):
    sel = runs[True][0][0].to_report()["selection"]
    assert sel["p"] == 0.1
    assert abs(sel["fraction"] - 0.1) <= 0.005 * 0.1, sel["fraction"]
    assert 0 < sel["selected"] < sel["candidates"]


def test_select_summary_equals_the_summary_of_select(tiny, forget_items, retain_items):
    """`score` summarises without keeping masks (select_summary); the summary must be select's, ties included."""
    from grin_engine.method.selection import select_summary, select_top_fraction, summarize_selection

    influence = compute_influence_scores(tiny.model, tiny.tokenizer, forget_items, retain_items, _cfg(True))
    first = next(iter(influence.scores))
    influence.scores[first][:2] = influence.scores[first].max()  # a tie at the top
    for p in (1e-4, 0.01, 0.1, 0.5, 1.0):
        assert select_summary(influence.scores, influence.candidates, p) == summarize_selection(
            select_top_fraction(influence.scores, p), influence.candidates), p


def test_no_mask_selects_every_candidate(runs):
    sel = runs[False][0][0].to_report()["selection"]
    assert sel["selected"] == sel["candidates"] and sel["fraction"] == 1.0
    assert runs[False][0][0].timings["scores_s"] == 0.0


@pytest.mark.parametrize("use_mask", [True, False])
def test_base_model_is_untouched(runs, use_mask):
    for _, before, after in runs[use_mask]:
        assert set(before) == set(after)
        for name, value in before.items():
            assert torch.equal(after[name], value), name


@pytest.mark.parametrize("use_mask", [True, False])
def test_same_seed_same_run(runs, use_mask):
    (a, _, _), (b, _, _) = runs[use_mask]
    assert a.losses == b.losses
    assert a.metrics == b.metrics
    assert a.metrics_per_item == b.metrics_per_item
    assert json.dumps(a.selection) == json.dumps(b.selection)  # as text: a NaN threshold is not == itself
    assert [g["after"] for g in a.generations] == [g["after"] for g in b.generations]


def test_unlearning_moved_the_run_copy(tiny, forget_items, retain_items):
    before = _snapshot(tiny.model)
    result = pipeline.run(tiny, forget_items, retain_items, _cfg(True), keep_model=True)
    work = result.unlearned_model
    assert work is not None and work.model is not tiny.model
    changed = [n for n, v in work.model.state_dict().items() if not torch.equal(v, before[n])]
    assert changed and all("layers" in n for n in changed)
    for name, value in tiny.model.state_dict().items():
        assert torch.equal(value, before[name]), name


def test_progress_and_stop(tiny, forget_items, retain_items):
    events = []
    result = pipeline.run(tiny, forget_items, retain_items, _cfg(True, steps=5),
                          Progress(lambda stage, done, total, *loss: events.append((stage, done, total, loss)),
                                   lambda: sum(e[0] == "unlearn" for e in events) >= 2))
    stages = [e[0] for e in events]
    assert stages[0] == "before" and stages[-1] == "unlearn"  # a stopped run does not go on to evaluate
    assert "influence" in stages
    unlearn_events = [e for e in events if e[0] == "unlearn"]
    assert [(e[1], e[2]) for e in unlearn_events] == [(1, 5), (2, 5)]
    assert [e[3][0] for e in unlearn_events] == result.losses
    assert result.stopped is True and result.to_report()["stopped"] is True
    assert len(result.losses) == 2
    assert result.metrics["after"] is None and result.generations == [] and result.unlearned_model is None
    assert result.metrics["before"]["forget"]["keyword_accuracy"] is not None
    assert result.fluency["after"] is None and len(result.fluency["before"]["forget"]["reasons"]) == 4


def test_stop_during_influence_ends_before_any_training(tiny, forget_items, retain_items):
    before = {k: v.clone() for k, v in tiny.model.state_dict().items()}
    events = []
    result = pipeline.run(tiny, forget_items, retain_items, _cfg(True, steps=5), keep_model=True,
                          progress=Progress(lambda stage, *rest: events.append(stage), lambda: "influence" in events))
    assert result.stopped and "unlearn" not in events and result.losses == []
    assert result.unlearned_model is None
    assert all(torch.equal(v, before[k]) for k, v in tiny.model.state_dict().items())


def test_truth_ratio_reported_when_items_have_perturbed_answers(tiny):
    forget = [QAItem("Who is the headmaster of Hogwarts?", "Albus Dumbledore is the headmaster.", ["Dumbledore"],
                     "The headmaster is Albus Dumbledore.", ["Severus Snape is the headmaster.",
                                                             "Harry is the headmaster."])]
    retain = [QAItem("What colour is the sky?", "The sky is blue.", ["blue"], "Blue is the sky.",
                     ["The sky is green."])]
    result = pipeline.run(tiny, forget, retain, _cfg(True, steps=1))
    for when in ("before", "after"):
        for split in ("forget", "retain"):
            value = result.metrics[when][split]["truth_ratio"]
            assert 0.0 <= value <= 1.0, (when, split, value)


@pytest.mark.parametrize("empty", ["forget", "retain"])
def test_empty_sets_are_refused(tiny, forget_items, retain_items, empty):
    from grin_engine.config import GrinError

    forget = [] if empty == "forget" else forget_items
    retain = [] if empty == "retain" else retain_items
    with pytest.raises(GrinError, match=f"the {empty} set has no items"):
        pipeline.run(tiny, forget, retain, _cfg(True))
    with pytest.raises(GrinError, match=f"the {empty} set has no items"):
        compute_influence_scores(tiny.model, tiny.tokenizer, forget, retain, _cfg(True))


def test_run_grun_result_rebuilds_the_unlearned_model(tiny, forget_items, retain_items):
    """GRUN's patch (CPU data) attached to a fresh copy answers exactly as the trained model did."""
    import pickle

    from grin_engine.evaluation.evaluate import generate_answers, shown_answer
    from grin_engine.method.patch import unlearned_copy

    weights = _snapshot(tiny.model)
    cfg = _cfg(True, grun_loss="idk", grun_lr=5e-2, grun_steps=5)
    result = pipeline.run_grun(tiny, forget_items, retain_items, cfg)
    assert len(result.losses) == 5 and result.selection["kind"] == "grun"
    assert set(result.gates) == {"forget", "retain"} and len(result.gates["forget"]) == len(forget_items)
    pickle.dumps(result.patch)  # crosses a process boundary in the app (ZeroGPU)
    rebuilt = unlearned_copy(tiny, result.patch)
    after = [g["after"] for g in result.generations if g["split"] == "forget"]
    questions = [it.question for it in forget_items]
    answers, cut = generate_answers(rebuilt.model, rebuilt.tokenizer, questions, cfg.max_new_tokens, return_cut=True)
    assert [shown_answer(a, c) for a, c in zip(answers, cut)] == after  # as shown: marked where cut
    assert all(torch.equal(v, weights[k]) for k, v in tiny.model.state_dict().items())
    assert result.to_report()["gates"] == result.gates


@pytest.mark.parametrize("before_noise", [False, True])
def test_pi_ref_after_or_before_the_noise(tiny, forget_items, retain_items, monkeypatch, before_noise):
    """pi_ref of NPO/DPO: the model after GRIN's noise (ours, default) or before it (open-unlearning's)."""
    import copy as _copy

    from grin_engine.method.influence import candidate_parameters
    from grin_engine.method.selection import random_selection
    from grin_engine.method.losses import answer_logprob

    original = _copy.deepcopy(tiny.model)
    seen = {}
    real_attach = unlearn_module.attach_reference

    def recording_attach(model, batches):
        real_attach(model, batches)
        seen["ref_logp"] = batches[0]["ref_logp"].clone()
        seen["noised"] = _copy.deepcopy(model)

    monkeypatch.setattr(unlearn_module, "attach_reference", recording_attach)
    work = _copy.deepcopy(tiny.model)
    candidates = candidate_parameters(work)
    selection = random_selection(candidates, dict(work.named_parameters()), 0.5, seed=0)
    cfg = GrinConfig(loss="npo", sigma2=1e-2, steps=1, batch_size=4, ref_before_noise=before_noise, max_length=64)
    noised = _copy.deepcopy(work)
    from grin_engine.method.noise import inject_noise
    inject_noise(dict(noised.named_parameters()), selection.masks, cfg.sigma2, cfg.seed)
    unlearn_module.unlearn_selected(work, tiny.tokenizer, forget_items, retain_items, cfg, list(candidates),
                              selection.masks)
    from grin_engine.data import forget_batches
    batch = forget_batches(tiny.tokenizer, forget_items, 4, 64, cfg.seed)[0]
    with torch.no_grad():
        before, after = answer_logprob(original, batch), answer_logprob(noised, batch)
    assert (before - after).abs().max() > 1e-3  # the noise is large enough to tell the two apart
    expected = before if before_noise else after
    assert torch.allclose(seen["ref_logp"], expected, atol=1e-5)


def test_retain_collapse_warns_with_the_numbers():
    from grin_engine.runs.pipeline import retain_collapse

    held = {"before": {"retain": {"keyword_accuracy": 1.0, "rougeL_recall": 0.8}},
            "after": {"retain": {"keyword_accuracy": 0.9, "rougeL_recall": 0.7}}}
    assert retain_collapse(held) is None
    fell = {"before": {"retain": {"keyword_accuracy": 1.0, "rougeL_recall": 0.8}},
            "after": {"retain": {"keyword_accuracy": 0.0, "rougeL_recall": 0.1}}}
    warning = retain_collapse(fell)
    assert "keyword accuracy 1.00 -> 0.00" in warning and "rougeL recall 0.80 -> 0.10" in warning
    assert retain_collapse({"before": {"retain": {"keyword_accuracy": 1.0}}, "after": None}) is None  # stopped


@pytest.mark.parametrize("loss, use_mask, until", [("npo", True, None), ("graddiff", False, None),
                                                    ("idk", True, "forget_keyword_accuracy<=1")])
def test_training_in_pieces_gives_the_numbers_of_one_run(tiny, forget_items, retain_items, loss, use_mask, until):
    """A run trained in three pieces, its state pickled between them (a ZeroGPU Space's GPU calls), each piece on a
    fresh copy of the base: the same losses, the same weights and the same report as one uninterrupted run."""
    import pickle

    from grin_engine.models import copy_model
    from grin_engine.runs.masks import choose_mask

    cfg = _cfg(use_mask, loss=loss, steps=7, until=until, until_every=3)
    before, _ = pipeline.evaluate(tiny, forget_items, retain_items, cfg, Progress(), "before")
    whole_work = copy_model(tiny)
    mask = choose_mask(whole_work, forget_items, retain_items, cfg, keep=0.5)
    whole = pipeline.finish(tiny, whole_work, forget_items, retain_items, cfg, mask, before, keep_model=True)

    state = None
    for last_step in (2, 5):
        work = copy_model(tiny)
        piece_mask = choose_mask(work, forget_items, retain_items, cfg, kept=mask.top, keep=0.5)
        trained = pipeline.train(work, forget_items, retain_items, cfg, piece_mask, Progress(), state, last_step)
        state = pickle.loads(pickle.dumps(trained.state))
        assert all(t.device.type == "cpu" for t in state.values)
    work = copy_model(tiny)
    piece_mask = choose_mask(work, forget_items, retain_items, cfg, kept=mask.top, keep=0.5)
    pieces = pipeline.finish(tiny, work, forget_items, retain_items, cfg, piece_mask, before, keep_model=True,
                             resume=state)

    assert pieces.losses == whole.losses
    assert pieces.metrics == whole.metrics and pieces.until == whole.until and pieces.noise == whole.noise
    for (name, a), b in zip(whole.unlearned_model.model.state_dict().items(),
                            pieces.unlearned_model.model.state_dict().values()):
        assert torch.equal(a, b), name
    if until:  # the target holds at the first check: the later pieces restore the weights and take no step
        assert whole.until["stopped_at"] == 3 and len(pieces.losses) == 3
