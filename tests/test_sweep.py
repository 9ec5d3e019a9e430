"""Tests for grin_engine.runs.sweep: the grid gives each method only the knobs it reads, the shared work (the base
evaluation, the gradient pair) is done once per sweep, points stream to the JSON-lines file and a rerun skips them,
Stop keeps the finished points, and a point's seed changes its noise and random mask and nothing else."""

from __future__ import annotations

import json

import pytest
import torch

import grin_engine.runs.masks as masks_module
import grin_engine.runs.sweep as sweep_module
from grin_engine.config import GrinConfig, GrinError
from grin_engine.events import Progress
from grin_engine.method.influence import candidate_parameters
from grin_engine.runs.sweep import SweepGrid, output_paths, point_config, sweep, write_outputs


def _cfg(**overrides) -> GrinConfig:
    settings = dict(batch_size=2, max_length=64, max_new_tokens=4, seed=0)
    settings.update(overrides)
    return GrinConfig(**settings)


def _grid(**overrides) -> SweepGrid:
    settings = dict(methods=["grin", "random"], p=[0.05, 0.2], seeds=[0, 1], steps=[2], grun_steps=[2])
    settings.update(overrides)
    return SweepGrid(**settings)


def _checksum(model) -> float:
    return sum(p.double().sum().item() for p in model.state_dict().values())


def test_grid_gives_each_method_its_own_knobs():
    grid = SweepGrid(methods=["grin", "grin-nonoise", "full", "grun"], p=[0.01, 0.05], sigma2=[0, 1e-6],
                     seeds=[3, 4], grun_lr=[1e-2, 1e-3])
    points = grid.points()
    count = lambda m: sum(pt["method"] == m for pt in points)  # noqa: E731
    assert count("grin") == 2 * 2 * 2  # p x sigma2 x seeds
    assert count("grin-nonoise") == 2  # p only: no noise, no randomness, one seed
    assert count("full") == 1  # no p, no sigma2, no randomness
    assert count("grun") == 2 * 2  # its own learning rates x seeds
    assert all(pt["seed"] == 3 for pt in points if pt["method"] in ("full", "grin-nonoise"))
    assert all("p" not in pt and "sigma2" not in pt for pt in points if pt["method"] in ("full", "grun"))
    assert [pt.get("p") for pt in points][-5:] == [None] * 5  # ordered by p, the methods without p last
    with pytest.raises(GrinError, match="unknown nope"):
        SweepGrid(methods=["nope"])
    with pytest.raises(GrinError, match="at least one value for p"):
        SweepGrid(methods=["grin"], p=[])


def test_shared_work_is_done_once(tiny, forget_items, retain_items, monkeypatch, tmp_path):
    """One gradient pair (two gradient passes) and one base evaluation for the whole sweep; no run scores again."""
    calls = {"gradient_pair": 0, "evaluate": 0}
    real_pair, real_eval = masks_module.gradient_pair, sweep_module.evaluate

    def counting_pair(*args, **kwargs):
        calls["gradient_pair"] += 1
        return real_pair(*args, **kwargs)

    def counting_eval(*args, **kwargs):
        calls["evaluate"] += 1
        return real_eval(*args, **kwargs)

    def no_scores(*args, **kwargs):
        raise AssertionError("a point computed influence scores again")

    monkeypatch.setattr(masks_module, "gradient_pair", counting_pair)
    monkeypatch.setattr(sweep_module, "evaluate", counting_eval)
    monkeypatch.setattr("grin_engine.method.influence.compute_influence_scores", no_scores)
    checksum = _checksum(tiny.model)
    grid = _grid(methods=["grin", "forget-grad", "random", "full"])
    result = sweep(tiny, forget_items, retain_items, _cfg(), grid, tmp_path / "s.jsonl")
    assert len(result.points) == len(grid.points()) == 2 * 2 * 3 + 1 and not result.stopped
    assert calls == {"gradient_pair": 1, "evaluate": 1}
    assert _checksum(tiny.model) == checksum  # the base stays pristine
    n = sum(c.numel for c in candidate_parameters(tiny.model).values())
    for pt in result.points:
        if pt["method"] != "full":  # each masked point selects round(p * candidates) weights
            assert pt["selected"] == round(pt["p"] * n)
            assert pt["attention"] + pt["ffn"] == pt["selected"]
        assert pt["forget_keyword_accuracy"] is not None and pt["steps_done"] == 2


def test_points_stream_and_a_rerun_skips_them(tiny, forget_items, retain_items, monkeypatch, tmp_path):
    out = tmp_path / "sweep.jsonl"
    seen = []
    first = sweep(tiny, forget_items, retain_items, _cfg(), _grid(p=[0.05]), out,
                  on_point=lambda record, done, total: seen.append((json.loads(out.read_text().splitlines()[-1])["key"],
                                                                    record["key"], done, total)))
    assert [(a == b, d, t) for a, b, d, t in seen] == [(True, 1, 4), (True, 2, 4), (True, 3, 4), (True, 4, 4)]
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [line["kind"] for line in lines] == ["before"] + ["point"] * 4

    # the larger grid runs only its new points, without a new gradient pass or base evaluation
    calls = []
    monkeypatch.setattr(sweep_module, "evaluate", lambda *a, **k: pytest.fail("evaluated the base again"))
    real_run = sweep_module.run_method
    monkeypatch.setattr(sweep_module, "run_method",
                        lambda method, *a, **k: calls.append(method.name) or real_run(method, *a, **k))
    second = sweep(tiny, forget_items, retain_items, _cfg(), _grid(p=[0.05, 0.2]), out)
    assert second.skipped == 4 and len(calls) == 4 and len(second.points) == 8
    assert second.points[:4] == first.points  # the finished ones, read back as they were

    # everything finished: nothing runs at all
    monkeypatch.setattr(masks_module, "gradient_pair", lambda *a, **k: pytest.fail("gradients again"))
    third = sweep(tiny, forget_items, retain_items, _cfg(), _grid(p=[0.05, 0.2]), out)
    assert third.skipped == 8 and len(calls) == 4 and third.points == second.points

    # outputs: sweep.json with the frontier, sweep.csv with one row per point
    report = write_outputs(third, out, target="forget_keyword_accuracy<=1")
    _, json_path, csv_path = output_paths(out)
    assert json.loads(json_path.read_text())["frontier"]["auto_p"]["grin"]["p"] == 0.05
    assert len(csv_path.read_text().splitlines()) == 1 + 8 and "answers" not in csv_path.read_text().splitlines()[0]
    assert set(report["frontier"]["fronts"]) == {"grin", "random"}


def test_another_sweep_in_the_file_is_refused(tiny, forget_items, retain_items, tmp_path):
    out = tmp_path / "s.jsonl"
    sweep(tiny, forget_items, retain_items, _cfg(), _grid(p=[0.05], seeds=[0], methods=["grin"]), out)
    with pytest.raises(GrinError, match="holds another sweep"):
        sweep(tiny, forget_items, retain_items, _cfg(alpha=0.5), _grid(p=[0.05], seeds=[0], methods=["grin"]), out)
    with open(out, "a") as handle:  # a last line cut off by a kill is run again, not an error
        handle.write('{"kind": "point", "finger')
    assert sweep(tiny, forget_items, retain_items, _cfg(), _grid(p=[0.05], seeds=[0], methods=["grin"]),
                 out).skipped == 1
    with pytest.raises(GrinError, match="ending in .jsonl"):
        output_paths(tmp_path / "s.json")


def test_stop_keeps_the_finished_points(tiny, forget_items, retain_items, tmp_path):
    out = tmp_path / "s.jsonl"
    finished = []
    result = sweep(tiny, forget_items, retain_items, _cfg(), _grid(p=[0.05]), out,
                   on_point=lambda record, done, total: finished.append(record["key"]),
                   progress=Progress(should_stop=lambda: len(finished) >= 2))
    assert result.stopped and len(result.points) == 2 == len(out.read_text().splitlines()) - 1
    rest = sweep(tiny, forget_items, retain_items, _cfg(), _grid(p=[0.05]), out)
    assert rest.skipped == 2 and len(rest.points) == 4 and not rest.stopped


def test_seeds_change_noise_and_random_masks_and_nothing_else(tiny, forget_items, retain_items, monkeypatch):
    runs = []
    real_run = sweep_module.run_method

    def recording_run(method, base, forget, retain, cfg, before, selection, *args, **kwargs):
        runs.append((method.name, cfg, selection, before))
        return real_run(method, base, forget, retain, cfg, before, selection, *args, **kwargs)

    monkeypatch.setattr(sweep_module, "run_method", recording_run)
    result = sweep(tiny, forget_items, retain_items, _cfg(), _grid(p=[0.1], sigma2=[1e-2]))
    by = {(name, cfg.seed): (cfg, sel, before) for name, cfg, sel, before in runs}
    (g0, s0, b0), (g1, s1, b1) = by["grin", 0], by["grin", 1]
    # the configs differ in the seed only, and every run starts from the same base evaluation
    assert {k for k, v in g0.to_dict().items() if g1.to_dict()[k] != v} == {"seed"}
    assert all(before is b0 for _, _, _, before in runs)
    # the GRIN mask does not depend on the seed; the random mask does (same size)
    assert all(torch.equal(s0.masks[n], s1.masks[n]) for n in s0.masks)
    r0, r1 = by["random", 0][1], by["random", 1][1]
    assert r0.selected == r1.selected and not all(torch.equal(r0.masks[n], r1.masks[n]) for n in r0.masks)
    # the noise does: the two GRIN points end with different answer probabilities
    grin = {pt["seed"]: pt for pt in result.points if pt["method"] == "grin"}
    assert grin[0]["forget_probability"] != grin[1]["forget_probability"]
    assert grin[0]["selected"] == grin[1]["selected"]


def test_point_config_checks_each_value():
    with pytest.raises(GrinError, match="p must be"):
        point_config(_cfg(), {"method": "grin", "p": 2.0, "seed": 0})


def test_cli_sweep_on_a_local_model_then_the_rerun_skips(tmp_path, tiny_model_files):
    """A smoke grid's command shape (`sweep --p .. --methods grin,random --seeds 0 1 --steps 2`) through the CLI on a
    tiny local model: JSON lines + sweep.json + sweep.csv; the same command again runs nothing."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    folder, forget_file, retain_file = tiny_model_files
    repo = Path(__file__).resolve().parents[1]
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1",
               PYTHONPATH=str(repo) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    command = [sys.executable, "-m", "grin_engine", "sweep", "--model", str(folder), "--forget", str(forget_file),
               "--retain", str(retain_file), "--p", "0.05", "0.1",
               "--methods", "grin,random", "--seeds", "0", "1", "--steps", "2", "--batch-size", "2",
               "--max-new-tokens", "4", "--target", "forget_keyword_accuracy<=1", "--out", "s.jsonl"]
    first = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr[-2000:]
    lines = (tmp_path / "s.jsonl").read_text().splitlines()
    assert len(lines) == 1 + 8
    report = json.loads((tmp_path / "s.json").read_text())
    assert len(report["points"]) == 8 and report["frontier"]["auto_p"]["grin"]["p"] == 0.05
    csv_lines = (tmp_path / "s.csv").read_text().splitlines()
    assert len(csv_lines) == 9 and "forget_fluency" in csv_lines[0].split(",")
    assert all(0.0 <= point["forget_fluency"] <= 1.0 for point in report["points"])
    assert "auto-p grin" in first.stdout and "area between front and ideal corner" in first.stdout
    again = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "8 of 8 points finished (8 found in the file)" in again.stdout
    assert (tmp_path / "s.jsonl").read_text().splitlines() == lines


def test_in_place_sweep_gives_the_same_points_and_restores_the_base(tiny, forget_items, retain_items, tmp_path):
    state = {k: v.clone() for k, v in tiny.model.state_dict().items()}
    grid = _grid(methods=["grin", "random", "full"], p=[0.1])
    copies = sweep(tiny, forget_items, retain_items, _cfg(), grid)
    in_place = sweep(tiny, forget_items, retain_items, _cfg(), grid, in_place=True)
    assert all(torch.equal(v, tiny.model.state_dict()[k]) for k, v in state.items())
    strip = lambda pts: [{k: v for k, v in p.items() if not k.endswith("_s") and k != "seconds"} for p in pts]  # noqa: E731
    assert strip(copies.points) == strip(in_place.points)


def test_sweep_reuses_kept_scores_and_the_base_evaluation(tiny, forget_items, retain_items, tmp_path, monkeypatch):
    """Given the kept GRIN scores (covering every p of the grid) and the base evaluation, a sweep computes no
    gradients and no base answers, and its points equal those of a sweep that computed them itself."""
    from grin_engine.evaluation.evaluate import evaluate_both
    from grin_engine.method.influence import compute_influence_scores
    from grin_engine.method.score_cache import TopScores
    from grin_engine.models import copy_model

    cfg, grid = _cfg(), _grid(p=[0.01, 0.05], seeds=[0])
    fresh = sweep(tiny, forget_items, retain_items, cfg, grid, tmp_path / "fresh.jsonl")
    work = copy_model(tiny)
    scores = compute_influence_scores(work.model, work.tokenizer, forget_items, retain_items, cfg)
    top = TopScores.from_scores(scores.scores, scores.candidates)
    before = evaluate_both(tiny.model, tiny.tokenizer, forget_items, retain_items, cfg)
    calls = []
    monkeypatch.setattr(masks_module, "gradient_pair", lambda *a, **k: calls.append("gradients"))
    monkeypatch.setattr(masks_module, "accumulate_gradients", lambda *a, **k: calls.append("gradients"))
    monkeypatch.setattr(sweep_module, "evaluate", lambda *a, **k: calls.append("before"))
    reused = sweep(tiny, forget_items, retain_items, cfg, grid, tmp_path / "reused.jsonl", before=before,
                   kept={"grin": top})
    assert calls == []
    strip = ("seconds", "select_s", "unlearn_s", "eval_after_s")
    assert [{k: v for k, v in p.items() if k not in strip} for p in reused.points] == \
        [{k: v for k, v in p.items() if k not in strip} for p in fresh.points]
