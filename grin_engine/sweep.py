"""Sweeps (DESIGN.md §2.12): many runs on the same data, to draw forget against retain as curves, not points.

A grid crosses methods (compare.METHODS) with p, sigma2, learning rate, steps and seeds; GRUN crosses its own
knobs (grun_lr, grun_steps) and seeds. A method gets a point only for the knobs it reads (`KNOBS`): `full` has no
p, `grin-nonoise` no sigma2, and the methods with no randomness of their own (no noise, no random mask: `full`,
`grin-nonoise`) run at the first seed only, so no setting is run twice for the same numbers.

Work that does not depend on a point is done once: the caller loads the model; the base model is evaluated once
(and stored in the output, so a resumed sweep does not do it again); the gradient pair is computed once and turned
into the score sets the masks are drawn from (compare.mask_scores). Each point then only selects its mask (random
masks and noise come from the point's seed), trains a private copy and evaluates it.

Output: `<out>.jsonl` gets one JSON line per finished point as soon as it finishes (a "before" line first);
running the same sweep again with the same file skips the points already there. `sweep.json` (config, points,
frontier) and `sweep.csv` (one row per point) are written next to it by `write_outputs`.
"""

from __future__ import annotations

import csv
import hashlib
import json
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from .compare import mask_scores, method_selection, parse_methods, reusable, run_method
from .config import GrinConfig, GrinError
from .data import QAItem
from .frontier import summarize
from .metrics import MetricResult
from .models import LoadedModel
from .evaluate import shown_answers
from .pipeline import RunStopped, _aggregate, _reporter, evaluate_both, require_items
from .until import parse_target

# The knobs each method reads ("seed": the method has randomness of its own: noise, a random mask, GRUN's init).
KNOBS = {
    "grin": ("p", "sigma2", "lr", "steps", "seed"),
    "grin-nonoise": ("p", "lr", "steps"),
    "random": ("p", "sigma2", "lr", "steps", "seed"),
    "forget-grad": ("p", "sigma2", "lr", "steps", "seed"),
    "full": ("lr", "steps"),
    "grun": ("grun_lr", "grun_steps", "seed"),
}
METRIC_COLUMNS = tuple(f"{split}_{m}" for split in ("forget", "retain")
                       for m in ("keyword_accuracy", "rougeL_recall", "probability", "truth_ratio"))


@dataclass
class SweepGrid:
    """The values to cross; each list is one axis."""
    methods: list[str]
    p: list[float] = field(default_factory=lambda: [GrinConfig.p])
    sigma2: list[float] = field(default_factory=lambda: [GrinConfig.sigma2])
    lr: list[float] = field(default_factory=lambda: [GrinConfig.lr])
    steps: list[int] = field(default_factory=lambda: [GrinConfig.steps])
    seeds: list[int] = field(default_factory=lambda: [0])
    grun_lr: list[float] = field(default_factory=lambda: [GrinConfig.grun_lr])
    grun_steps: list[int] = field(default_factory=lambda: [GrinConfig.grun_steps])

    def __post_init__(self):
        self.methods = parse_methods(",".join(self.methods))
        for axis in ("p", "sigma2", "lr", "steps", "seeds", "grun_lr", "grun_steps"):
            values = list(dict.fromkeys(getattr(self, axis)))  # duplicates dropped, order kept
            if not values:
                raise GrinError(f"sweep: give at least one value for {axis}")
            setattr(self, axis, values)

    def points(self) -> list[dict]:
        """Every point of the grid: {"method", and the knobs that method reads}, ordered by p so that the
        masks of one p are drawn one after the other (methods without p come last)."""
        axes = {"p": self.p, "sigma2": self.sigma2, "lr": self.lr, "steps": self.steps, "seed": self.seeds,
                "grun_lr": self.grun_lr, "grun_steps": self.grun_steps}
        points = []
        for method in self.methods:
            combos = [{"method": method}]
            for knob in KNOBS[method]:
                combos = [{**c, knob: v} for c in combos for v in axes[knob]]
            if "seed" not in KNOBS[method]:
                combos = [{**c, "seed": self.seeds[0]} for c in combos]  # nothing random: one seed says it all
            points += combos
        order = {m: i for i, m in enumerate(self.methods)}
        return sorted(points, key=lambda pt: (pt.get("p") is None, pt.get("p") or 0, order[pt["method"]]))

    def to_dict(self) -> dict:
        return {k: getattr(self, k) for k in ("methods", "p", "sigma2", "lr", "steps", "seeds", "grun_lr",
                                               "grun_steps")}


def point_key(point: dict) -> str:
    """A point's identity in the output file: its method and knob values."""
    return json.dumps({k: point[k] for k in sorted(point) if k in ("method", "seed") or k in KNOBS[point["method"]]},
                      sort_keys=True)


def point_config(cfg: GrinConfig, point: dict) -> GrinConfig:
    """The shared config with the point's knobs set (validated like any config)."""
    return replace(cfg, **{k: v for k, v in point.items() if k != "method"})


def fingerprint(base: LoadedModel, forget: list[QAItem], retain: list[QAItem], cfg: GrinConfig) -> str:
    """What must be equal for two sweeps' points to be comparable: the model, the items, every setting that is not
    a knob of the grid. A rerun skips the points of an output file only when the fingerprints match."""
    shared = {k: v for k, v in cfg.to_dict().items()
              if k not in ("p", "sigma2", "lr", "steps", "seed", "grun_lr", "grun_steps")}
    text = json.dumps({"model": base.name, "config": shared, "forget": [it.to_dict() for it in forget],
                       "retain": [it.to_dict() for it in retain]}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def read_lines(path: Path, expected_fingerprint: str | None = None) -> tuple[dict | None, dict[str, dict]]:
    """The "before" line and the finished points (key -> point) already in `path`; a file of another sweep (other
    model, items or shared settings than `expected_fingerprint`; None: the file's first line's) is refused rather
    than mixed in."""
    before, points = None, {}
    if not path.exists():
        return before, points
    lines = path.read_text().splitlines()
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            if number == len(lines):
                continue  # a last line cut off by a kill: that point is simply run again
            raise GrinError(f"sweep: {path} line {number} is not JSON; choose another --out") from None
        expected_fingerprint = expected_fingerprint or record.get("fingerprint")
        if record.get("fingerprint") != expected_fingerprint:
            raise GrinError(f"sweep: {path} holds another sweep (other model, items or shared settings); "
                            f"choose another --out or delete it")
        if record.get("kind") == "before":
            before = record
        elif record.get("kind") == "point":
            points[record["key"]] = record
    return before, points


def evaluation_to_json(evaluation: dict) -> dict:
    """evaluate_both's result as JSON (MetricResult -> {"value", "per_item"}), so a resumed sweep reuses it."""
    return {split: {**e, "metrics": {name: asdict(r) for name, r in e["metrics"].items()}}
            for split, e in evaluation.items()}


def evaluation_from_json(data: dict) -> dict:
    return {split: {**e, "metrics": {name: MetricResult(**r) for name, r in e["metrics"].items()}}
            for split, e in data.items()}


def _append(path: Path | None, record: dict) -> None:
    if path is not None:
        with path.open("a") as handle:
            handle.write(json.dumps(record) + "\n")


def point_record(point: dict, key: str, fp: str, result, select_s: float) -> dict:
    """One finished point: its knobs, every metric after unlearning, size of the change, timings, answers."""
    after = result.metrics["after"]
    record = {"kind": "point", "fingerprint": fp, "key": key, **point}
    for column in METRIC_COLUMNS:
        split, _, metric = column.partition("_")
        record[column] = after.get(split, {}).get(metric)
    selection = result.selection
    by_kind = selection.get("by_kind") or {}
    record.update(
        selected=selection.get("selected"), trainable=selection.get("trainable", selection.get("selected")),
        attention=(by_kind.get("attention") or {}).get("selected"), ffn=(by_kind.get("ffn") or {}).get("selected"),
        steps_done=len(result.losses), until_step=(result.until or {}).get("stopped_at"),
        select_s=select_s, unlearn_s=result.timings.get("unlearn_s"), eval_after_s=result.timings.get("eval_after_s"),
        seconds=select_s + result.timings.get("unlearn_s", 0.0) + result.timings.get("eval_after_s", 0.0),
        answers=[g["after"] for g in result.generations],
    )
    return record


@dataclass
class SweepResult:
    config: dict
    model: dict
    grid: dict
    fingerprint: str
    before: dict  # {"metrics": {split: {metric: value}}, "generations": [{split, question, answer, before}]}
    points: list[dict]  # finished points, in grid order (loaded from the file and new)
    skipped: int = 0  # points found finished in the output file
    timings: dict = field(default_factory=dict)
    stopped: bool = False
    total: int = 0  # points in the grid

    def frontier(self, forget_key: str = "forget_keyword_accuracy", retain_key: str = "retain_keyword_accuracy",
                 target: str | None = None) -> dict:
        return summarize(self.points, forget_key, retain_key, parse_target(target) if target else None)

    def to_report(self, forget_key: str = "forget_keyword_accuracy", retain_key: str = "retain_keyword_accuracy",
                  target: str | None = None) -> dict:
        """sweep.json: config, grid, base metrics and answers, every point, the frontier (fronts, areas, auto-p)."""
        return {"config": self.config, "model": self.model, "grid": self.grid, "fingerprint": self.fingerprint,
                "before": self.before, "points": self.points, "frontier": self.frontier(forget_key, retain_key, target),
                "skipped": self.skipped, "total": self.total, "timings": self.timings, "stopped": self.stopped}


def result_from_file(path: str | Path, config: dict, model: dict, grid: dict, total: int) -> SweepResult:
    """The points finished so far in a sweep's JSON-lines file (a stopped or running sweep) as a SweepResult."""
    before, points = read_lines(Path(path))
    points_list = list(points.values())
    return SweepResult(config=config, model=model, grid=grid,
                       fingerprint=(before or {}).get("fingerprint") or (points_list[0]["fingerprint"]
                                                                          if points_list else ""),
                       before={k: before[k] for k in ("metrics", "generations")} if before else {},
                       points=points_list, skipped=len(points_list), total=total, stopped=len(points_list) < total)


def sweep(base: LoadedModel, forget: list[QAItem], retain: list[QAItem], cfg: GrinConfig, grid: SweepGrid,
          out: str | Path | None = None, on_point=None, on_progress=None, should_stop=None,
          in_place: bool = False, before: dict | None = None, grin_top=None) -> SweepResult:
    """Run every point of `grid` not already finished in `out` (JSON lines), appending each as it finishes.
    (in_place=True: each point trains `base` itself and restores it exactly, see pipeline.run; the CLI's choice.)

    on_point(record, done, total) after each finished point (done counts the skipped ones too);
    on_progress(stage, done, total, *extra) as in compare ("before", "gradients", "<method>/<stage>").
    should_stop() ends the sweep at the next check: the finished points stay in the file and in the result.
    Re-used when given (the web app computes them once): `before`, the base model's evaluation on the same items;
    `grin_top`, the same items' GRIN scores (score_cache.TopScores): when they cover every p of the grid, the GRIN
    points select from them (bit for bit the same masks) and only |G_f|-only needs gradients.
    """
    require_items(forget, retain)
    points = grid.points()
    for point in points:  # every knob value checked before any slow work
        point_config(cfg, point)
    path = Path(out) if out is not None else None
    fp = fingerprint(base, forget, retain, cfg)
    before_line, finished = read_lines(path, fp) if path is not None else (None, {})
    keys = [point_key(pt) for pt in points]
    todo = [(pt, k) for pt, k in zip(points, keys) if k not in finished]
    done = len(points) - len(todo)

    say = _reporter(on_progress, should_stop)  # reports, then raises RunStopped once a stop is asked for
    timings: dict[str, float] = {}
    stopped = False
    try:
        if before_line is None:
            start = time.perf_counter()
            evaluation = before or evaluate_both(base.model, base.tokenizer, forget, retain, cfg,
                                                 on_item=lambda d, t: say("before", d, t))
            timings["eval_before_s"] = time.perf_counter() - start
            values, _ = _aggregate(evaluation)
            before_line = {"kind": "before", "fingerprint": fp, "metrics": values,
                           "generations": [{"split": split, "question": it.question, "answer": it.answer,
                                            "before": shown}
                                           for split, items in (("forget", forget), ("retain", retain))
                                           for it, shown in zip(items, shown_answers(evaluation[split]))],
                           "evaluation": evaluation_to_json(evaluation)}
            _append(path, before_line)
        before = evaluation_from_json(before_line["evaluation"])
        scores = {}
        if todo:
            start = time.perf_counter()
            needed = reusable(grin_top, sorted({pt["method"] for pt, _ in todo}),
                              [pt["p"] for pt, _ in todo if pt["method"] in ("grin", "grin-nonoise")])
            scores = mask_scores(base, forget, retain, cfg, needed, say, in_place)
            timings["gradients_s"] = time.perf_counter() - start
        cache: dict[tuple, object] = {}
        for point, key in todo:
            if should_stop is not None and should_stop():  # between points: not even a model copy
                raise RunStopped
            point_cfg = point_config(cfg, point)
            start = time.perf_counter()
            selection = None
            if point["method"] in ("grin", "grin-nonoise", "forget-grad"):
                cache_key = ("forget-grad" if point["method"] == "forget-grad" else "grin", point["p"])
                if cache_key not in cache:
                    cache = {k: v for k, v in cache.items() if k[1] == point["p"]}  # keep one p's masks only
                    if cache_key[0] == "grin" and "grin" not in scores:  # from the kept scores, bit for bit
                        devices = {n: w.device for n, w in base.model.named_parameters()}
                        cache[cache_key] = grin_top.select(point["p"], devices)
                    else:
                        cache[cache_key] = method_selection(point["method"], scores, base, point_cfg)
                selection = cache[cache_key]
            elif point["method"] == "random":
                selection = method_selection("random", scores, base, point_cfg)
            select_s = time.perf_counter() - start
            label = point["method"]

            def report(stage, step, total, *extra, _label=label):
                say(f"{_label}/{stage}", step, total, *extra)
            result = run_method(point["method"], base, forget, retain, point_cfg, before, selection, report,
                                should_stop, in_place)
            if result.stopped:
                stopped = True
                break
            record = point_record(point, key, fp, result, select_s)
            _append(path, record)
            finished[key] = record
            done += 1
            if on_point is not None:
                on_point(record, done, len(points))
    except RunStopped:
        stopped = True
    ordered = [finished[k] for k in keys if k in finished]
    return SweepResult(config=cfg.to_dict(), model=base.facts(), grid=grid.to_dict(), fingerprint=fp,
                       before={k: v for k, v in before_line.items() if k in ("metrics", "generations")}
                       if before_line else {}, points=ordered, skipped=len(points) - len(todo),
                       timings=timings, stopped=stopped, total=len(points))


CSV_SKIP = ("kind", "fingerprint", "key", "answers")


def output_paths(out: str | Path) -> tuple[Path, Path, Path]:
    """<name>.jsonl (streamed points) -> (<name>.jsonl, <name>.json, <name>.csv)."""
    path = Path(out)
    if path.suffix != ".jsonl":
        raise GrinError(f"--out: the sweep's JSON-lines file, ending in .jsonl (sweep.json and sweep.csv are written "
                        f"next to it); got {str(out)!r}")
    if not path.parent.exists():
        raise GrinError(f"--out: folder {str(path.parent)!r} does not exist")
    return path, path.with_suffix(".json"), path.with_suffix(".csv")


def points_csv(points: list[dict]) -> str:
    """One row per point: its knobs, every metric, the selected count and its attention/ffn split, timings."""
    import io

    columns = list(dict.fromkeys(k for pt in points for k in pt if k not in CSV_SKIP))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore")
    writer.writeheader()
    for pt in points:
        writer.writerow({k: pt.get(k) for k in columns})
    return buffer.getvalue()


def _write(path: Path, text: str) -> None:
    partial = path.with_name(path.name + ".partial")
    partial.write_text(text)
    partial.replace(path)  # readers never see half a file


def write_outputs(result: SweepResult, out: str | Path, forget_key: str = "forget_keyword_accuracy",
                  retain_key: str = "retain_keyword_accuracy", target: str | None = None) -> dict:
    """sweep.json and sweep.csv next to the JSON-lines file; returns the report."""
    _, json_path, csv_path = output_paths(out)
    report = result.to_report(forget_key, retain_key, target)
    _write(json_path, json.dumps(report, indent=1))
    _write(csv_path, points_csv(result.points))
    return report


def format_frontier(report: dict) -> str:
    """The terminal summary: one line per setting (mean over seeds), fronts, areas, auto-p."""
    frontier = report["frontier"]
    fk, rk = frontier["forget_metric"], frontier["retain_metric"]
    before = report["before"].get("metrics", {})
    lines = [f"base model: {fk} {_fmt((before.get('forget') or {}).get(fk.partition('_')[2]))}, "
             f"{rk} {_fmt((before.get('retain') or {}).get(rk.partition('_')[2]))}",
             f"{'method':<13}{'setting':<40}{'forget':>14}{'retain':>14}{'seeds':>6}  front"]
    for row in frontier["settings"]:
        setting = " ".join(f"{k}={row[k]:g}" for k in ("p", "sigma2", "lr", "steps", "grun_lr", "grun_steps")
                           if row.get(k) is not None)
        on_front = "*" if any(row is r for r in frontier["fronts"].get(row["method"], [])) else ""
        lines.append(f"{row['method']:<13}{setting:<40}{row['forget']:>8.3f}±{row['forget_std']:<5.3f}"
                     f"{row['retain']:>8.3f}±{row['retain_std']:<5.3f}{row['n']:>6}  {on_front}")
    lines.append("area between front and ideal corner (lower is better): " + ", ".join(
        f"{m} {a['mean']:.3f}±{a['std']:.3f} (n={a['n']})" for m, a in frontier["areas"].items()))
    if frontier["target"]:
        for method, pick in frontier["auto_p"].items():
            lines.append(f"auto-p {method} ({frontier['target']}): " + (
                "no setting meets the target" if pick is None else
                f"p={pick['p']:g}" + "".join(f" {k}={pick[k]:g}" for k in ("sigma2", "lr", "steps")
                                              if pick.get(k) is not None)
                + f" -> forget {pick['forget']:.3f}, retain {pick['retain']:.3f}"))
    lines.append(f"{len(report['points'])} of {report['total']} points finished ({report['skipped']} found in the "
                 f"file)" + (" - stopped" if report["stopped"] else ""))
    return "\n".join(lines)


def _fmt(value) -> str:
    return "-" if value is None else f"{value:.3f}"
