"""TOFU over a grid of settings, and each method tuned by one stated rule (DESIGN.md §7).

    python -m grin_engine tofu --forget forget01 --methods grin,graddiff,npo --tune --out tofu_tune.jsonl
    python -m grin_engine tofu --forget forget01 --methods grin --loss dpo \\
        --grid "p=0.002,0.004,0.006,0.008 sigma2=1e-3 seed=0,1" --out tofu_p.jsonl

A point is a row of the TOFU table (a comparison method, or a loss name: that loss on all weights) with some knob
values. Every point is unlearned from the same target model, evaluated with the TOFU protocol and scored against
the same retain model (benchmarks/tofu.py). The target and retain models are fine-tuned once and evaluated once
(both cached, shared by every grid over them): their raw numbers are the file's first line. Each finished point is one more JSON line, so a stopped run
resumes where it stopped, and the lines can be committed as they come. Points that differ only in their steps train
once, to the largest value, and are evaluated at each smaller one on the way (`unlearning_runs`): the same numbers as
separate runs (constant learning rate; step t's batches depend on t only), at the training cost of one.

`--tune` crosses each method's own small grid (TUNE_GRIDS, 9 points) and picks its setting by RULE:
    among a method's points with model utility >= 0.9 x the target's, the highest forget quality (ties: the higher
    model utility); a method with no such point is shown at its highest-utility point, marked "no point keeps".
The rule reads only the target and the retain model, as a paper picking its settings on the data it reports
(TOFU has no separate validation authors; the rule and the grid are fixed before any point is run).
Beside it, FLUENT_RULE: the same among only the points whose forget answers are fluent (`chosen_fluent`). Forget
quality rewards an answer distribution that moved, and answers that loop have moved, so a method can win RULE by
gibberish; the two picks side by side show whether it did.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, replace
from pathlib import Path

from ..config import GrinConfig
from ..errors import GrinError
from ..events import Progress, as_progress
from ..models import LoadedModel
from ..runs.methods import METHODS
from ..runs.sweep import append_line, read_lines
from .tofu import (DEFAULT_CACHE, PUBLISHED, TofuRecipe, load_tofu, mia_scores, reference_models, score_model,
                   timed_evaluation, unlearn_method)

UTILITY_KEPT = 0.9  # RULE's share of the target's model utility a point must keep
RULE = (f"among a method's points with model utility >= {UTILITY_KEPT} x the target's, the highest forget quality "
        f"(ties: the higher model utility)")
FLUENCY_KEPT = 0.9  # FLUENT_RULE's forget fluency (DESIGN.md §4): the look-alike pairs' bar
FLUENT_RULE = f"the same among only the points whose forget answers have fluency >= {FLUENCY_KEPT}"
LOSS_GRID = {"lr": [1e-5, 5e-5, 2e-4], "steps": [5, 10, 20]}  # all-weight losses: open-unlearning's lr and up
TUNE_GRIDS = {  # method -> {knob: values}; a loss name uses LOSS_GRID
    "grin": {"p": [0.01, 0.05, 0.2], "lr": [5e-4, 2e-3, 5e-3]},  # few weights train: larger steps than all-weight
    "grun": {"grun_lr": [3e-3, 1e-2, 3e-2], "grun_steps": [10, 20, 40]},
}
KNOB_TYPES = {"p": float, "sigma2": float, "lr": float, "steps": int, "seed": int, "grun_lr": float,
              "grun_steps": int, "alpha": float, "beta": float, "gamma": float}


def row_knobs(row: str) -> tuple[str, ...]:
    """The knobs a row reads: its comparison method's (a loss name: `full`'s), and alpha/beta/gamma (the loss)."""
    method = METHODS.get(row, METHODS["full"])
    return (*method.knobs, "seed", "alpha", "beta", "gamma")


def parse_grid(text: str) -> dict[str, list]:
    """'p=0.002,0.004 sigma2=1e-3 seed=0,1' -> {"p": [0.002, 0.004], "sigma2": [0.001], "seed": [0, 1]}."""
    grid = {}
    for part in str(text).split():
        knob, _, values = part.partition("=")
        if knob not in KNOB_TYPES or not values:
            raise GrinError(f"--grid: give knob=v1,v2 with a knob of {', '.join(KNOB_TYPES)}; got {part!r}")
        try:
            grid[knob] = list(dict.fromkeys(KNOB_TYPES[knob](v) for v in values.split(",")))
        except ValueError:
            raise GrinError(f"--grid: {knob} takes {KNOB_TYPES[knob].__name__} values, got {values!r}") from None
    if not grid:
        raise GrinError("--grid: give at least one knob=values")
    return grid


def grid_points(rows: list[str], grid: dict[str, list] | None) -> list[dict]:
    """Every point: each row crossed with the grid's knobs it reads (grid None: its TUNE_GRIDS entry)."""
    points = []
    for row in rows:
        axes = TUNE_GRIDS.get(row, LOSS_GRID if row not in METHODS or row == "full" else {}) if grid is None else grid
        unread = [k for k in axes if k not in row_knobs(row)]
        if unread:
            raise GrinError(f"tofu grid: {row} does not read {', '.join(unread)} (it reads {', '.join(row_knobs(row))})")
        combos = [{"row": row}]
        for knob, values in axes.items():
            combos = [{**c, knob: v} for c in combos for v in values]
        points += combos
    return points


def point_key(point: dict) -> str:
    return json.dumps(point, sort_keys=True)


def fingerprint(base: LoadedModel, recipe: TofuRecipe, cfg: GrinConfig) -> str:
    """What two files' points must share to be comparable: the model, the recipe and every unlearning setting."""
    text = json.dumps({"model": base.name, "recipe": asdict(recipe), "config": cfg.to_dict()}, sort_keys=True,
                      default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def run_grid(base: LoadedModel, recipe: TofuRecipe, rows: list[str], cfg: GrinConfig, out: str | Path,
             grid: dict[str, list] | None = None, cache_dir: str | Path = DEFAULT_CACHE,
             progress: Progress | None = None, on_point=None, run_points: bool = True) -> dict:
    """Run every point of the grid not yet in `out` (JSON lines) and return the report (see the module docstring).
    on_point(report) receives the report after each finished point. run_points=False runs nothing: the report of
    the points `out` already holds (a long tune's table while it still runs, or after it was stopped)."""
    cfg = replace(cfg, max_new_tokens=recipe.max_new_tokens)
    progress = as_progress(progress)
    out = Path(out)
    points = grid_points(rows, grid)
    fp = fingerprint(base, recipe, cfg)
    reference, done = read_lines(out, fp, head="reference", what="tofu grid")
    data = load_tofu(recipe)
    if not run_points:
        if reference is None:
            raise GrinError(f"tofu grid: {out} holds no finished grid with these settings yet; run it first")
        return grid_report(scored_references(reference, data)[0], done, points, reference, base, tune=grid is None)
    timings = {}
    models, folders, reused = reference_models(base, recipe, data, cache_dir, None, None, progress, timings)
    if reference is None:
        raws = cached_reference_raws(models, folders, data, recipe, cache_dir, progress, timings)
        reference = {"kind": "reference", "fingerprint": fp, "recipe": asdict(recipe), "config": cfg.to_dict(),
                     "folders": folders, "timings": dict(timings), "raws": raws}
        append_line(out, reference)
    raws = reference["raws"]
    rows_of, reference_mia = scored_references(reference, data)
    del models["retain"]

    def finish(point: dict, work: LoadedModel, facts: dict, clock: dict) -> None:
        """Evaluate and score the unlearned model of `point`, and write its line."""
        unlearn_s = time.perf_counter() - clock["start"] - clock["evaluating"]  # not the earlier pauses' evaluation
        evaluation_start = time.perf_counter()
        raw = timed_evaluation(point["row"], work, data, recipe, progress, timings)
        clock["evaluating"] += time.perf_counter() - evaluation_start
        key = point_key(point)
        done[key] = {"kind": "point", "fingerprint": fp, "key": key, **point,
                     "scores": score_model(raw, data, raws["retain"], reference_mia), "unlearning": facts,
                     "unlearn_s": unlearn_s, "seconds": unlearn_s + time.perf_counter() - evaluation_start,
                     "forget_answers": raw["forget"]["generations"][:5],
                     "real_author_answers": raw["real_authors"]["generations"][:5]}
        append_line(out, done[key])
        if on_point is not None:
            on_point(grid_report(rows_of, done, points, reference, base, tune=grid is None))

    for run in unlearning_runs(points, done, cfg):
        last, clock = run[-1], {"start": time.perf_counter(), "evaluating": 0.0}
        knob = steps_knob(last["row"])
        by_steps = {p.get(knob): p for p in run}

        def paused(work, facts, by_steps=by_steps, clock=clock, last=last, knob=knob):
            finish(by_steps[facts["steps"]], work, {**facts, "trained_in_a_run_of": last[knob]}, clock)

        work, detach, facts = unlearn_method(models["target"], last["row"], data,
                                             replace(cfg, **{k: v for k, v in last.items() if k != "row"}),
                                             progress.within(last["row"]),
                                             pause_at=tuple(p[knob] for p in run[:-1]), on_pause=paused)
        progress.check()
        finish(last, work, facts, clock)
        detach()
        del work
    return grid_report(rows_of, done, points, reference, base, tune=grid is None)


def steps_knob(row: str) -> str:
    """The knob that counts a row's training steps."""
    return "grun_steps" if METHODS.get(row, METHODS["full"]).mask == "grun" else "steps"


def unlearning_runs(points: list[dict], done: dict, cfg: GrinConfig) -> list[list[dict]]:
    """The unfinished points as unlearning runs, each run's points by steps. Points that differ only in their steps
    (fixed-step training) make one run: trained once to the largest, paused at the others (tofu.unlearn_method),
    which gives each the numbers of its own run. Any other point is a run of its own."""
    runs = {}
    for point in points:
        if point_key(point) in done:
            continue
        knob = steps_knob(point["row"])
        shared = point_key({k: v for k, v in point.items() if k != knob}) if knob in point and not cfg.until else None
        runs.setdefault(shared or point_key(point), []).append(point)
    return [sorted(run, key=lambda p: p.get(steps_knob(p["row"]), 0)) for run in runs.values()]


def scored_references(reference: dict, data) -> tuple[dict, dict]:
    """({"target", "retain"}: their scored rows, the retain model's MIA scores every point's privleak is against)."""
    raws = reference["raws"]
    reference_mia = mia_scores(raws["retain"])
    return {name: score_model(raws[name], data, raws["retain"], reference_mia) for name in ("target", "retain")}, \
        reference_mia


def cached_reference_raws(models: dict, folders: dict, data, recipe: TofuRecipe, cache_dir: str | Path,
                          progress: Progress, timings: dict) -> dict:
    """The retain model's and the target's raw evaluation, computed once per pair of fine-tuned models and recipe
    and kept next to them in the cache (JSON), so every grid over them (another loss, another knob) shares it."""
    key = hashlib.sha256(json.dumps({"folders": folders, "recipe": asdict(recipe)}, sort_keys=True).encode())
    path = Path(cache_dir) / f"evaluation-{key.hexdigest()[:16]}.json"
    if path.is_file():
        return json.loads(path.read_text())
    raws = {name: timed_evaluation(name, models[name], data, recipe, progress, timings) for name in ("retain", "target")}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(raws))
    tmp.replace(path)
    return raws


def pick(points: list[dict], target_utility: float) -> tuple[dict | None, bool]:
    """RULE over one method's finished points: (the chosen point, whether it keeps the utility)."""
    if not points:
        return None, False
    keeping = [p for p in points if p["scores"]["model_utility"] >= UTILITY_KEPT * target_utility]
    if keeping:
        return max(keeping, key=lambda p: (p["scores"].get("forget_quality") or 0.0, p["scores"]["model_utility"])), True
    return max(points, key=lambda p: p["scores"]["model_utility"]), False


def setting(point: dict) -> str:
    return " ".join(f"{k}={point[k]:g}" for k in point if k in KNOB_TYPES)


def grid_report(reference_rows: dict, done: dict, points: list[dict], reference: dict, base: LoadedModel,
                tune: bool) -> dict:
    """The report: every finished point (`grid`), and with tune the chosen point of each row (`rows`, `chosen`)."""
    finished = [done[point_key(p)] for p in points if point_key(p) in done]
    report = {"protocol": "TOFU (DESIGN.md §7)", "model": base.facts(), "recipe": reference["recipe"],
              "unlearning_config": reference["config"], "fingerprint": reference["fingerprint"],
              "grid": [{"row": p["row"], "setting": setting(p), **{k: p[k] for k in p if k in KNOB_TYPES},
                        **{k: v for k, v in p["scores"].items() if k not in ("splits", "utility_parts")},
                        "forget_rougeL_recall": p["scores"]["splits"]["forget"]["rougeL_recall"],
                        "forget_fluency": p["scores"]["splits"]["forget"].get("fluency"),
                        "seconds": p["seconds"]} for p in finished],
              "points": len(points), "finished": len(finished), "complete": len(finished) == len(points),
              "published": PUBLISHED, "rows": dict(reference_rows), "timings": dict(reference.get("timings", {}))}
    if tune:
        report["rule"], report["fluent_rule"] = RULE, FLUENT_RULE
        report["chosen"], report["chosen_fluent"] = {}, {}
        target_utility = reference_rows["target"]["model_utility"]
        for row in dict.fromkeys(p["row"] for p in points):
            mine = [p for p in finished if p["row"] == row]
            chosen, keeps = pick(mine, target_utility)
            if chosen is None:
                continue
            report["rows"][row] = chosen["scores"]
            report["chosen"][row] = {"setting": setting(chosen), "keeps_utility": keeps,
                                     "of": f"{len(mine)} of {sum(1 for p in points if p['row'] == row)} points"}
            fluent = [p for p in mine if (p["scores"]["splits"]["forget"].get("fluency") or 0.0) >= FLUENCY_KEPT]
            chosen, keeps = pick(fluent, target_utility)
            report["chosen_fluent"][row] = None if chosen is None else {
                "setting": setting(chosen), "keeps_utility": keeps, "of": f"{len(fluent)} fluent of {len(mine)} points",
                "scores": chosen["scores"]}
    report["sanity"] = {
        "target_forget_rougeL_recall": reference_rows["target"]["splits"]["forget"]["rougeL_recall"],
        "retain_forget_rougeL_recall": reference_rows["retain"]["splits"]["forget"]["rougeL_recall"]}
    return report
