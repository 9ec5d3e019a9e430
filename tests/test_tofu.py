"""The TOFU protocol (grin_engine/tofu.py) on a tiny random model: slices, caching, the report's shape and sense."""

from __future__ import annotations

import json

import pytest

from grin_engine import metrics, tofu
from grin_engine.config import GrinConfig, GrinError


def tiny_recipe(**kw):
    return tofu.TofuRecipe(**{"epochs": 1, "batch_size": 16, "max_length": 64, "eval_items": 2, **kw})


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
                                {"holdout_authors": 0}, {"epochs": 0}, {"lr": -1.0}, {"eval_items": 0}])
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
                           on_progress=lambda stage, done, total, *extra: stages.add(stage))
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
    assert "sanity: forget ROUGE-L recall target" in tofu.format_table(report)
    # a second run reuses both fine-tuned models: no fine-tuning stage at all
    stages.clear()
    again = tofu.run_tofu(tiny, recipe, ["graddiff"], cfg, cache_dir=tmp_path,
                          on_progress=lambda stage, done, total, *extra: stages.add(stage))
    assert again["models"]["reused"] == {"target": True, "retain": True}
    assert not {s for s in stages if s.endswith("finetune")}
    assert again["rows"]["target"]["model_utility"] == pytest.approx(rows["target"]["model_utility"], abs=1e-6)


def test_stop_keeps_complete_cached_models(tiny, tmp_path):
    recipe = tiny_recipe()
    cfg = GrinConfig(steps=1, max_new_tokens=2, max_length=64)
    calls = []

    def stop_in_retain(stage, done, total, *extra):
        calls.append(stage)

    with pytest.raises(tofu.Stopped):
        tofu.run_tofu(tiny, recipe, ["graddiff"], cfg, cache_dir=tmp_path, on_progress=stop_in_retain,
                      should_stop=lambda: "retain/finetune" in calls)
    folders = sorted(p.name for p in tmp_path.iterdir())
    assert len(folders) == 1 and folders[0].startswith("target-")  # the finished target is cached, nothing half-written


def test_cache_key_depends_on_model_data_and_recipe(tiny):
    data = tofu.load_tofu(tofu.TofuRecipe())
    key = tofu.cache_key(tiny, data.retain_train, tofu.TofuRecipe(), "retain")
    assert key == tofu.cache_key(tiny, data.retain_train, tofu.TofuRecipe(eval_items=None), "retain")
    assert key != tofu.cache_key(tiny, data.retain_train, tofu.TofuRecipe(lr=1e-4), "retain")
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
