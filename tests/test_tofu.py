"""The TOFU protocol (grin_engine/tofu.py) on a tiny random model: slices, caching, the report's shape and sense."""

from __future__ import annotations

import json
import math

import pytest

from grin_engine.evaluation import metrics
from grin_engine.benchmarks import tofu
from grin_engine.cli.tables import format_tofu
from grin_engine.events import Progress, Stopped
from grin_engine.config import GrinConfig, GrinError


def tiny_recipe(**kw):
    return tofu.TofuRecipe(**{"epochs": 1, "batch_size": 16, "max_length": 64, "eval_items": 2, "max_new_tokens": 3,
                              **kw})


def test_load_tofu_slices_authors():
    data = tofu.load_tofu(tofu.TofuRecipe(retain_authors=2, holdout_authors=3, eval_items=None))
    assert len(data.forget) == 40 and len(data.retain_train) == 40 and len(data.holdout) == 60
    assert data.facts["forget_authors"] == [198, 199] and data.facts["holdout_authors"] == [195, 196, 197]
    full = tofu._read("full.json")
    assert [it.question for it in data.holdout] == [it.question for it in full[195 * 20: 198 * 20]]
    # the retain evaluation items are the retain training authors' items, with paraphrased and perturbed answers
    assert [it.question for it in data.retain_eval] == [it.question for it in data.retain_train]
    assert all(it.paraphrased_answer and len(it.perturbed_answers) == 5 for it in data.forget + data.retain_eval)
    train = {it.question for it in data.forget + data.retain_train}
    assert not train & {it.question for it in data.holdout}  # no model sees the holdout authors


@pytest.mark.parametrize("kw", [{"forget": "forget10"}, {"retain_authors": 0}, {"retain_authors": 21},
                                {"holdout_authors": 0}, {"epochs": 0}, {"lr": -1.0}, {"eval_items": 0},
                                {"max_new_tokens": 0}])
def test_recipe_rejects_bad_values(kw):
    with pytest.raises(GrinError):
        tofu.TofuRecipe(**kw)


def test_parse_methods():
    assert tofu.parse_methods("grin, graddiff,npo,grin") == ["grin", "graddiff", "npo"]
    with pytest.raises(GrinError, match="unknown method"):
        tofu.parse_methods("grin,bogus")


def test_protocol_end_to_end_and_cache_reuse(tiny, tmp_path):
    recipe = tiny_recipe()
    cfg = GrinConfig(steps=1, p=0.05, max_new_tokens=3, max_length=64, batch_size=8)
    stages = set()
    report = tofu.run_tofu(tiny, recipe, ["grin", "graddiff"], cfg, cache_dir=tmp_path,
                           progress=Progress(lambda stage, done, total, *extra: stages.add(stage)))
    assert report["models"]["reused"] == {"target": False, "retain": False}
    assert {"target/finetune", "retain/finetune", "grin/influence", "grin/unlearn", "graddiff/unlearn",
            "target/forget/answers", "grin/holdout/nll"} <= stages
    rows = report["rows"]
    assert list(rows) == ["target", "retain", "grin", "graddiff"]
    assert rows["retain"]["forget_quality"] == pytest.approx(1.0)  # the reference against itself
    assert rows["retain"]["privleak"] == pytest.approx(0.0, abs=1e-6)
    for row in rows.values():
        assert 0 <= row["forget_quality"] <= 1 and 0 <= row["model_utility"] <= 1
        assert row["model_utility"] == pytest.approx(metrics.tofu_model_utility(row["utility_parts"]))
    json.dumps(report)  # the report is JSON
    assert all(0.0 <= row["splits"][split]["fluency"] <= 1.0 for row in rows.values() for split in tofu.EVAL_SPLITS)
    assert "sanity: forget ROUGE-L recall target" in format_tofu(report) and "forget FL" in format_tofu(report)
    # a second run reuses both fine-tuned models: no fine-tuning stage at all
    stages.clear()
    again = tofu.run_tofu(tiny, recipe, ["graddiff"], cfg, cache_dir=tmp_path,
                          progress=Progress(lambda stage, done, total, *extra: stages.add(stage)))
    assert again["models"]["reused"] == {"target": True, "retain": True}
    assert not {s for s in stages if s.endswith("finetune")}
    assert again["rows"]["target"]["model_utility"] == pytest.approx(rows["target"]["model_utility"], abs=1e-6)


def test_stop_keeps_complete_cached_models(tiny, tmp_path):
    recipe = tiny_recipe()
    cfg = GrinConfig(steps=1, max_new_tokens=2, max_length=64)
    calls = []

    def stop_in_retain(stage, done, total, *extra):
        calls.append(stage)

    with pytest.raises(Stopped):
        tofu.run_tofu(tiny, recipe, ["graddiff"], cfg, cache_dir=tmp_path,
                      progress=Progress(stop_in_retain, lambda: "retain/finetune" in calls))
    folders = sorted(p.name for p in tmp_path.iterdir())
    assert len(folders) == 1 and folders[0].startswith("target-")  # the finished target is cached, nothing half-written


def test_answers_are_as_long_as_the_cli_default_whatever_the_config(tiny, tmp_path, monkeypatch):
    """run_tofu from Python generates the recipe's 200 tokens, as `python -m grin_engine tofu` does, not GrinConfig's
    48 (the lab's quick view); the report's config says so."""
    from grin_engine.cli.parser import build_parser

    assert tofu.TofuRecipe().max_new_tokens == 200 == build_parser().parse_args(["tofu"]).max_new_tokens
    lengths = []
    real = tofu.generate_answers
    monkeypatch.setattr(tofu, "generate_answers",  # records the length asked for, generates 2 tokens (fast)
                        lambda m, t, q, n, *a, **k: lengths.append(n) or real(m, t, q, 2, *a, **k))
    report = tofu.run_tofu(tiny, tiny_recipe(max_new_tokens=200), ["graddiff"], GrinConfig(steps=1, max_length=64),
                           cache_dir=tmp_path)
    assert lengths and set(lengths) == {200} and report["unlearning_config"]["max_new_tokens"] == 200


def test_cache_key_depends_on_model_data_and_recipe(tiny):
    data = tofu.load_tofu(tofu.TofuRecipe())
    key = tofu.cache_key(tiny, data.retain_train, tofu.TofuRecipe(), "retain")
    assert key == tofu.cache_key(tiny, data.retain_train, tofu.TofuRecipe(eval_items=None), "retain")
    assert key != tofu.cache_key(tiny, data.retain_train, tofu.TofuRecipe(lr=tofu.TofuRecipe().lr * 2), "retain")
    assert key != tofu.cache_key(tiny, data.retain_train[:-1], tofu.TofuRecipe(), "retain")
    assert key != tofu.cache_key(tiny, data.retain_train, tofu.TofuRecipe(), "target")


def test_eval_items_caps_retain_real_authors_and_world_facts_not_forget():
    data = tofu.load_tofu(tofu.TofuRecipe(retain_authors=2, eval_items=5))
    assert len(data.retain_eval) == len(data.real_authors) == len(data.world_facts) == 5
    assert len(data.forget) == 40 and len(data.retain_train) == 40


def test_partial_reports_after_each_model(tiny, tmp_path):
    reports = []
    tofu.run_tofu(tiny, tiny_recipe(), ["graddiff", "npo"], GrinConfig(steps=1, max_new_tokens=2, max_length=64),
                  cache_dir=tmp_path, on_report=lambda r: reports.append((list(r["rows"]), r["complete"])))
    assert reports == [(["target", "retain"], False), (["target", "retain", "graddiff"], False),
                       (["target", "retain", "graddiff", "npo"], True)]


def test_truth_ratio_uses_the_paraphrase_where_there_is_one(tiny):
    """forget and retain: "correct" is the paraphrased answer (TOFU, open-unlearning's *_Q_A_PARA_Prob);
    real authors / world facts have none, so their answer is the correct one (ra_Q_A_Prob)."""
    from grin_engine.evaluation.evaluate import pair_nlls

    data = tofu.load_tofu(tiny_recipe())
    data.forget, data.retain_eval, data.holdout = data.forget[:2], data.retain_eval[:2], data.holdout[:2]
    raw = tofu.evaluate_model(tiny.model, tiny.tokenizer, data, max_new_tokens=2, max_length=64)
    for split, items in (("forget", data.forget), ("real_authors", data.real_authors)):
        answers = [it.paraphrased_answer or it.answer for it in items]
        sums, counts = pair_nlls(tiny.model, tiny.tokenizer, [(it.question, a) for it, a in zip(items, answers)],
                                 max_length=64)
        assert raw[split]["correct_nll"] == pytest.approx([s / c for s, c in zip(sums, counts)], rel=1e-4)
        sums, counts = pair_nlls(tiny.model, tiny.tokenizer, [(it.question, it.perturbed_answers[0]) for it in items],
                                 max_length=64)
        assert [w[0] for w in raw[split]["wrong_nll"]] == pytest.approx([s / c for s, c in zip(sums, counts)], rel=1e-4)
    answer_sums, answer_counts = pair_nlls(tiny.model, tiny.tokenizer, [(it.question, it.answer) for it in data.forget],
                                           max_length=64)
    assert [sum(t) for t in raw["forget"]["answer_nll"]] == pytest.approx(answer_sums, rel=1e-4)
    assert raw["forget"]["correct_nll"] != pytest.approx([s / c for s, c in zip(answer_sums, answer_counts)], rel=1e-3)


def _raw_with_ratios(ratios, n_other=2):
    """evaluate_model-shaped numbers whose forget truth ratios are `ratios` (correct NLL 1, wrong NLL 1 - ln R)."""
    import math

    def split(n, wrong):
        return {"generations": ["x"] * n, "answer_nll": [[1.0, 1.0]] * n, "correct_nll": [1.0] * n,
                "wrong_nll": [[w] for w in wrong]}

    raw = {s: split(n_other, [2.0] * n_other) for s in ("retain", "real_authors", "world_facts")}
    raw["forget"] = split(len(ratios), [1.0 - math.log(r) for r in ratios])
    raw["holdout"] = {"answer_nll": [[2.0, 2.0]] * 3}
    return raw


def test_forget_quality_is_ks_on_raw_ratios_against_the_retain_model():
    from scipy.stats import ks_2samp

    from grin_engine.data import QAItem

    item = QAItem("q", "a", perturbed_answers=["b"])
    data = tofu.TofuData(forget=[item] * 4, retain_train=[], retain_eval=[item] * 2, real_authors=[item] * 2,
                         world_facts=[item] * 2, holdout=[item] * 3)
    unlearned, reference = [0.5, 2.0, 0.25, 4.0], [0.5, 0.5, 0.25, 0.25]  # same once folded by min(R, 1/R)
    reference_raw = _raw_with_ratios(reference)
    row = tofu.score_model(_raw_with_ratios(unlearned), data, reference_raw, tofu.mia_scores(reference_raw))
    assert row["forget_quality"] == pytest.approx(ks_2samp(unlearned, reference).pvalue, rel=1e-6)
    assert row["forget_quality"] < 0.9  # the folded samples would give p = 1
    assert row["privleak"] == pytest.approx(0.0, abs=1e-6)
    assert row["utility_parts"]["retain_truth_ratio"] == pytest.approx(1 - math.e ** -1, rel=1e-6)
