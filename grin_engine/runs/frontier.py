"""The trade-off frontier of a sweep (DESIGN.md §2.12): pure functions over sweep points (dicts), no model.

A point is a finished run: its method, its settings (p, sigma2, lr, steps, seed ...) and its metrics after
unlearning under the names `forget_keyword_accuracy`, `retain_keyword_accuracy` ... For a forget metric F (lower is
better: less is remembered) and a retain metric R (higher is better: more is kept):

- `aggregate`: the points of one setting over its seeds -> mean and standard deviation of F and R;
- `pareto_front`: the settings no other setting of the same method beats on both F and R;
- `area_to_ideal`: the area between a front and the ideal corner (F = 0, R = 1) inside the unit square,
  1 - hypervolume; 0 = a point at the ideal corner, 1 = nothing better than (F = 1, R = 0). Lower is better;
- `method_areas`: that area per method and seed, then its mean and spread over the seeds;
- `auto_p`: the smallest p whose setting meets a target on the mean over seeds, and at that p the setting with the
  best R.
"""

from __future__ import annotations

import math
import statistics

from ..targets import Target

SETTING_KNOBS = ("p", "sigma2", "lr", "steps", "grun_lr", "grun_steps")  # what a point sets, seed aside


def setting_of(point: dict) -> tuple:
    """What identifies a point's setting across seeds: the method and every knob it sets except the seed."""
    return (point["method"],) + tuple((k, point[k]) for k in SETTING_KNOBS if point.get(k) is not None)


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def aggregate(points: list[dict], forget_key: str, retain_key: str) -> list[dict]:
    """One row per (method, setting): its knobs, F and R as mean and sample std over the seeds, the seeds and keys.

    Points whose F or R is missing (None) are left out."""
    groups: dict[tuple, list[dict]] = {}
    for point in points:
        if point.get(forget_key) is None or point.get(retain_key) is None:
            continue
        groups.setdefault(setting_of(point), []).append(point)
    rows = []
    for setting, members in groups.items():
        forget_mean, forget_std = _mean_std([m[forget_key] for m in members])
        retain_mean, retain_std = _mean_std([m[retain_key] for m in members])
        rows.append({"method": setting[0], **dict(setting[1:]), "forget": forget_mean, "forget_std": forget_std,
                     "retain": retain_mean, "retain_std": retain_std, "n": len(members),
                     "seeds": [m.get("seed") for m in members], "keys": [m.get("key") for m in members]})
    return rows


def pareto_front(rows: list[dict], forget_key: str = "forget", retain_key: str = "retain") -> list[dict]:
    """The rows not dominated by another (another dominates when its F <= and R >= with one strictly better),
    sorted by F ascending (R then ascends too). Of rows with equal (F, R) the first is kept."""
    ordered = sorted(rows, key=lambda r: (r[forget_key], -r[retain_key]))
    front, best_retain = [], -math.inf
    for row in ordered:
        if row[retain_key] > best_retain:
            front.append(row)
            best_retain = row[retain_key]
    return front


def area_to_ideal(front: list[dict], forget_key: str = "forget", retain_key: str = "retain") -> float:
    """1 - the area the front dominates in the unit square, with reference corner (F = 1, R = 0).

    With the front sorted by F ascending (f_1 < ... < f_n, r_1 < ... < r_n) the dominated area is
    sum_i (f_{i+1} - f_i) * r_i with f_{n+1} = 1; values are clipped to [0, 1]. An empty front has area 1."""
    clip = lambda v: min(1.0, max(0.0, float(v)))  # noqa: E731
    clipped = [{"f": clip(r[forget_key]), "r": clip(r[retain_key])} for r in front]
    pairs = [(r["f"], r["r"]) for r in pareto_front(clipped, "f", "r")]  # clipping may make some dominated
    dominated = 0.0
    for i, (f, r) in enumerate(pairs):
        next_f = pairs[i + 1][0] if i + 1 < len(pairs) else 1.0
        dominated += (next_f - f) * r
    return 1.0 - dominated


def method_areas(points: list[dict], forget_key: str, retain_key: str) -> dict[str, dict]:
    """Per method: the area of each seed's own front, and their mean and sample std over seeds.

    A method whose points all share one seed (a seedless one such as `full`) has n = 1 and std 0."""
    areas: dict[str, dict] = {}
    by_method: dict[str, dict] = {}
    for point in points:
        if point.get(forget_key) is None or point.get(retain_key) is None:
            continue
        by_method.setdefault(point["method"], {}).setdefault(point.get("seed"), []).append(point)
    for method, by_seed in by_method.items():
        per_seed = {seed: area_to_ideal(pareto_front(members, forget_key, retain_key), forget_key, retain_key)
                    for seed, members in by_seed.items()}
        mean, std = _mean_std(list(per_seed.values()))
        areas[method] = {"mean": mean, "std": std, "n": len(per_seed),
                         "per_seed": [{"seed": s, "area": a} for s, a in per_seed.items()]}
    return areas


def auto_p(rows: list[dict], target: Target, retain_key: str = "retain") -> dict[str, dict | None]:
    """Per method with a p: the smallest p whose setting meets `target` (on the mean over seeds of the target's
    column), and at that p the setting (sigma2, lr, steps) with the best retain mean. None where none meets it.

    `rows` come from aggregate(points, target.column, retain_key)."""
    picks: dict[str, dict | None] = {}
    for row in rows:
        if row.get("p") is None:
            continue
        method = row["method"]
        picks.setdefault(method, None)
        if not target.met(row["forget"]):
            continue
        best = picks[method]
        if best is None or (row["p"], -row[retain_key]) < (best["p"], -best[retain_key]):
            picks[method] = row
    return picks


def summarize(points: list[dict], forget_key: str, retain_key: str, target: Target | None = None) -> dict:
    """Everything the report and the plot need: the seed-aggregated settings, each method's front, areas, auto-p.

    auto-p measures the target's own column, which may differ from forget_key; its rows are aggregated for it."""
    rows = aggregate(points, forget_key, retain_key)
    methods = list(dict.fromkeys(r["method"] for r in rows))
    summary = {"forget_metric": forget_key, "retain_metric": retain_key, "settings": rows,
               "fronts": {m: pareto_front([r for r in rows if r["method"] == m]) for m in methods},
               "areas": method_areas(points, forget_key, retain_key), "target": None, "auto_p": {}}
    if target is not None:
        summary["target"] = str(target)
        summary["auto_p"] = auto_p(aggregate(points, target.column, retain_key), target)
    return summary
