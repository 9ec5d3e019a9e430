"""TOFU over a grid and tuned by one rule (grin_engine/benchmarks/tofu_grid.py), on a tiny random model."""

from __future__ import annotations

import json

import pytest

from grin_engine.benchmarks import tofu, tofu_grid
from grin_engine.cli.tables import format_tofu_grid
from grin_engine.config import GrinConfig, GrinError
from grin_engine.events import Progress


def tiny_recipe(**kw):
    return tofu.TofuRecipe(**{"epochs": 1, "batch_size": 16, "max_length": 64, "eval_items": 2, "max_new_tokens": 3,
                              **kw})


def test_parse_grid_and_points():
    assert tofu_grid.parse_grid("p=0.002,0.004 sigma2=1e-3 seed=0,1") == {"p": [0.002, 0.004], "sigma2": [0.001],
                                                                          "seed": [0, 1]}
    for bad in ("", "p", "p=", "q=1", "steps=1.5"):
        with pytest.raises(GrinError):
            tofu_grid.parse_grid(bad)
    points = tofu_grid.grid_points(["grin", "npo"], None)  # --tune: each row's own grid
    assert sum(p["row"] == "grin" for p in points) == 9 and sum(p["row"] == "npo" for p in points) == 9
    assert {k for p in points if p["row"] == "npo" for k in p} == {"row", "lr", "steps"}
    with pytest.raises(GrinError, match="npo does not read p"):  # all weights train: p means nothing there
        tofu_grid.grid_points(["npo"], {"p": [0.01]})


def _point(row, fq, mu, **knobs):
    return {"row": row, **knobs, "scores": {"forget_quality": fq, "model_utility": mu}}


def test_rule_highest_forget_quality_among_points_keeping_the_utility():
    points = [_point("npo", 0.9, 0.30, lr=2e-4), _point("npo", 0.4, 0.40, lr=5e-5), _point("npo", 0.2, 0.45, lr=1e-5)]
    chosen, keeps = tofu_grid.pick(points, target_utility=0.44)  # 0.9 x 0.44 = 0.396: the first point is out
    assert chosen["lr"] == 5e-5 and keeps
    chosen, keeps = tofu_grid.pick(points, target_utility=0.60)  # none keeps 0.54: the highest utility, marked
    assert chosen["lr"] == 1e-5 and not keeps
    assert tofu_grid.pick([], 0.5) == (None, False)


def fluent_rule_report() -> dict:
    """A tuned report from made-up scores: npo's best forget quality loops, grin never answers fluently."""
    from types import SimpleNamespace

    def scores(fq, mu, fluency):
        return {"forget_quality": fq, "model_utility": mu, "privleak": 0.0, "auc_min_k": 0.5, "auc_loss": 0.5,
                "over_unlearned": False, "splits": {"forget": {"rougeL_recall": 0.5, "fluency": fluency},
                                                    "retain": {"rougeL_recall": 0.4, "fluency": 1.0}}}

    made_up = {("npo", 1e-5): scores(0.01, 0.45, 1.0), ("npo", 5e-5): scores(0.5, 0.44, 0.2),
               ("npo", 2e-4): scores(0.9, 0.10, 0.95), ("grin", 1e-3): scores(0.3, 0.45, 0.1)}
    points = [{"row": row, "lr": lr} for row, lr in made_up]
    done = {tofu_grid.point_key(p): {**p, "scores": made_up[p["row"], p["lr"]], "seconds": 1.0} for p in points}
    target = scores(0.001, 0.45, 1.0)
    reference = {"recipe": {}, "config": {}, "fingerprint": "made-up"}
    return tofu_grid.grid_report({"target": target, "retain": target}, done, points, reference,
                                 SimpleNamespace(facts=dict), tune=True)


def test_fluent_rule_picks_among_points_whose_forget_answers_are_fluent():
    report = fluent_rule_report()
    assert report["chosen"]["npo"]["setting"] == "lr=5e-05"  # the rule: the highest forget quality, answers loop
    fluent = report["chosen_fluent"]["npo"]  # 2e-4 answers fluently but keeps no utility: the rule leaves it out
    assert (fluent["setting"], fluent["keeps_utility"], fluent["of"]) == ("lr=1e-05", True, "2 fluent of 3 points")
    assert fluent["scores"]["forget_quality"] == 0.01
    assert report["chosen_fluent"]["grin"] is None and report["fluent_rule"] == tofu_grid.FLUENT_RULE
    text = format_tofu_grid(report)
    assert "npo: lr=1e-05 (2 fluent of 3 points): forget quality 0.01" in text and "grin: no fluent point" in text


def test_grid_resumes_from_its_lines_and_picks_a_setting(tiny, tmp_path):
    recipe = tiny_recipe()
    cfg = GrinConfig(steps=1, max_new_tokens=3, max_length=64, batch_size=8)
    out = tmp_path / "grid.jsonl"
    grid = {"lr": [1e-5, 1e-3]}
    stages = set()
    report = tofu_grid.run_grid(tiny, recipe, ["graddiff"], cfg, out, grid, cache_dir=tmp_path / "cache",
                                progress=Progress(lambda stage, done, total, *extra: stages.add(stage)))
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["kind"] for r in lines] == ["reference", "point", "point"]
    assert report["complete"] and [p["lr"] for p in report["grid"]] == [1e-5, 1e-3]
    assert {"retain/forget/answers", "target/forget/answers", "graddiff/unlearn"} <= stages
    # the same command again: every point is in the file, so nothing is evaluated or unlearned again
    stages.clear()
    again = tofu_grid.run_grid(tiny, recipe, ["graddiff"], cfg, out, grid, cache_dir=tmp_path / "cache",
                               progress=Progress(lambda stage, done, total, *extra: stages.add(stage)))
    assert not {s for s in stages if s.endswith(("answers", "unlearn", "finetune"))}
    assert again["grid"] == report["grid"]
    # a grid over more values runs only the new point
    stages.clear()
    more = tofu_grid.run_grid(tiny, recipe, ["graddiff"], cfg, out, {"lr": [1e-5, 1e-3, 1e-4]},
                              cache_dir=tmp_path / "cache",
                              progress=Progress(lambda stage, done, total, *extra: stages.add(stage)))
    assert len(more["grid"]) == 3 and "target/forget/answers" not in stages and "graddiff/unlearn" in stages
    # another file over the same models shares their cached evaluation: only its own point is run
    stages.clear()
    tofu_grid.run_grid(tiny, recipe, ["npo"], cfg, tmp_path / "other.jsonl", {"lr": [1e-4]},
                       cache_dir=tmp_path / "cache",
                       progress=Progress(lambda stage, done, total, *extra: stages.add(stage)))
    assert "target/forget/answers" not in stages and "retain/forget/answers" not in stages and "npo/unlearn" in stages
    # run_points=False: the report of what the file holds, nothing run (not even the cached models loaded)
    stages.clear()
    partial = tofu_grid.run_grid(tiny, recipe, ["graddiff"], cfg, out, {"lr": [1e-5, 1e-3, 1e-4, 2e-4]},
                                 cache_dir=tmp_path / "missing-cache", run_points=False,
                                 progress=Progress(lambda stage, done, total, *extra: stages.add(stage)))
    assert not stages and not (tmp_path / "missing-cache").exists()
    assert (partial["finished"], partial["points"], partial["complete"]) == (3, 4, False)
    assert partial["grid"] == more["grid"] and partial["rows"]["target"] == more["rows"]["target"]
    with pytest.raises(GrinError, match="holds no finished grid"):
        tofu_grid.run_grid(tiny, recipe, ["graddiff"], cfg, tmp_path / "none.jsonl", grid, run_points=False)
    # another unlearning setting is another grid: refused rather than mixed in
    with pytest.raises(GrinError, match="holds another grid"):
        tofu_grid.run_grid(tiny, recipe, ["graddiff"], GrinConfig(steps=2, max_new_tokens=3, max_length=64), out,
                           grid, cache_dir=tmp_path / "cache")
    text = format_tofu_grid(more)
    assert "3 of 3 points" in text and "lr=0.001" in text


def test_tune_reports_each_rows_chosen_setting(tiny, tmp_path, monkeypatch):
    monkeypatch.setitem(tofu_grid.TUNE_GRIDS, "grin", {"p": [0.05], "lr": [1e-4, 1e-3]})  # a small grid
    recipe = tiny_recipe()
    cfg = GrinConfig(steps=1, max_new_tokens=3, max_length=64, batch_size=8)
    report = tofu_grid.run_grid(tiny, recipe, ["grin"], cfg, tmp_path / "tune.jsonl", None,
                                cache_dir=tmp_path / "cache")
    lines = [json.loads(line) for line in (tmp_path / "tune.jsonl").read_text().splitlines()][1:]
    assert all(set(p["unlearning"]["noise"]) == {"sigma2", "grad_norm_before", "grad_norm_after"} for p in lines)
    grin_points = [p for p in report["grid"] if p["row"] == "grin"]
    assert len(grin_points) == 2 and report["rule"] == tofu_grid.RULE
    chosen = report["chosen"]["grin"]
    best = max(grin_points, key=lambda p: p["model_utility"])
    assert chosen["setting"] in {p["setting"] for p in grin_points}
    if not chosen["keeps_utility"]:
        assert chosen["setting"] == best["setting"]
    assert set(report["rows"]) == {"target", "retain", "grin"}
    assert "chosen by the rule" in format_tofu_grid(report)


def test_bench_tune_table_bolds_each_chosen_point(tiny, tmp_path, monkeypatch):
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location(
        "tofu_tune_table", Path(__file__).resolve().parents[1] / "bench" / "tofu_tune_table.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    monkeypatch.setitem(tofu_grid.TUNE_GRIDS, "grin", {"p": [0.05], "lr": [1e-4, 1e-3]})
    report = tofu_grid.run_grid(tiny, tiny_recipe(), ["grin"], GrinConfig(steps=1, max_new_tokens=3, max_length=64),
                                tmp_path / "tune.jsonl", None, cache_dir=tmp_path / "cache")
    chosen = bench.chosen_table(report)
    assert [line.split(" | ")[0] for line in chosen[2:]] == ["| target", "| retain", "| grin"]
    assert f"{report['chosen']['grin']['setting']} (2 of 2 points)" in chosen[-1]
    grid = bench.grid_table(report)[2:]
    assert len(grid) == 2 and sum("**" in line for line in grid) == 1
    assert f"**{report['chosen']['grin']['setting']}**" in "".join(grid)
    fluent = bench.fluent_table(fluent_rule_report())[2:]
    assert fluent == ["| npo | lr=1e-05 (2 fluent of 3 points) | yes | 0.01 | 0.450 | 0.0 | 1.000 |",
                      "| grin | no fluent point (of 1 of 1 points) | - | - | - | - | - |"]


@pytest.mark.parametrize("rows, knob", [(["graddiff", "grin"], "steps"), (["grun"], "grun_steps")])
def test_points_that_differ_in_steps_train_once_and_equal_separate_runs(tiny, tmp_path, rows, knob):
    """A grid over steps trains each run once to its largest value, pausing at the others; a paused point's numbers
    are those of a separate run of that many steps (all weights; masked GRIN with its noise; GRUN's edits)."""
    recipe = tiny_recipe()
    cfg = GrinConfig(steps=1, max_new_tokens=3, max_length=64, batch_size=8, lr=1e-3, sigma2=1e-3, p=0.05,
                     grun_lr=1e-2)
    totals = []
    one_run = tofu_grid.run_grid(
        tiny, recipe, rows, cfg, tmp_path / "steps.jsonl", {knob: [1, 3]}, cache_dir=tmp_path / "cache",
        progress=Progress(lambda stage, done, total, *extra: totals.append(total) if "unlearn" in stage else None))
    assert set(totals) == {3} and len(totals) == 3 * len(rows)  # one run of 3 steps a row: nothing trained twice
    separate = [tofu_grid.run_grid(tiny, recipe, rows, cfg, tmp_path / f"alone-{steps}.jsonl", {knob: [steps]},
                                   cache_dir=tmp_path / "cache") for steps in (1, 3)]

    def forget_split(file, row, steps):
        return next(p for p in map(json.loads, (tmp_path / file).read_text().splitlines()[1:])
                    if p["row"] == row and p[knob] == steps)["scores"]["splits"]["forget"]

    for row in rows:
        assert forget_split("steps.jsonl", row, 1)["probability"] != forget_split("steps.jsonl", row, 3)["probability"]
        for steps in (1, 3):  # the paused point and the run's last one, each against a run of its own
            in_one_run, alone = forget_split("steps.jsonl", row, steps), forget_split(f"alone-{steps}.jsonl", row, steps)
            for metric in ("probability", "truth_ratio", "rougeL_recall"):
                assert in_one_run[metric] == pytest.approx(alone[metric], rel=1e-6, abs=1e-12), (row, steps, metric)
    assert [len(s["grid"]) for s in separate] == [len(rows)] * 2 and len(one_run["grid"]) == 2 * len(rows)
    lines = [json.loads(line) for line in (tmp_path / "steps.jsonl").read_text().splitlines()][1:]
    assert [(p["row"], p[knob], p["unlearning"]["steps"], p["unlearning"].get("trained_in_a_run_of"))
            for p in lines] == [(row, steps, steps, 3 if steps == 1 else None) for row in rows for steps in (1, 3)]
    grin_lines = [p for p in lines if p["row"] == "grin"]
    assert all(p["unlearning"]["noise"] == grin_lines[0]["unlearning"]["noise"] for p in grin_lines)  # noise once
