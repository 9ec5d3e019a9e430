"""Sweeps (DESIGN.md §2.12): many runs on the same data, to draw forget against retain as curves, not points.

A grid crosses comparison methods (runs/methods.METHODS) with p, sigma2, learning rate, steps and seeds; GRUN
crosses its own knobs (grun_lr, grun_steps) and seeds. A method gets a point only for the knobs it reads (its
registry entry's `knobs`): `full` has no p, `grin-nonoise` no sigma2, and the methods with no randomness of their own
(no "seed" knob: `full`, `grin-nonoise`) run at the first seed only, so no setting is run twice for the same numbers.

Work that does not depend on a point is done once: the caller loads the model; the base model is evaluated once
(and stored in the output, so a resumed sweep does not do it again); one set of gradients gives every scoring
method's kept scores (runs/masks.kept_scores). Each point then only selects its mask (random masks and noise come
from the point's seed), trains a private copy and evaluates it.

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

from ..config import GrinConfig
from ..data import QAItem, require_items
from ..errors import GrinError
from ..evaluation.evaluate import shown_answers
from ..evaluation.metrics import MetricResult
from ..events import Progress, Stopped, as_progress
from ..models import LoadedModel
from ..targets import parse_target
from .compare import run_method
from .frontier import SETTING_KNOBS, summarize
from .masks import kept_scores, method_selection
from .methods import METHODS, parse_methods
from .pipeline import evaluate, metric_values
METRIC_COLUMNS = tuple(f"{split}_{m}" for split in ("forget", "retain")
                       for m in ("keyword_accuracy", "rougeL_recall", "probability", "truth_ratio", "fluency"))


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
            for knob in METHODS[method].knobs:
                combos = [{**c, knob: v} for c in combos for v in axes[knob]]
            if "seed" not in METHODS[method].knobs:
                combos = [{**c, "seed": self.seeds[0]} for c in combos]  # nothing random: one seed says it all
            points += combos
        order = {m: i for i, m in enumerate(self.methods)}
        return sorted(points, key=lambda pt: (pt.get("p") is None, pt.get("p") or 0, order[pt["method"]]))

    def to_dict(self) -> dict:
        return {k: getattr(self, k) for k in ("methods", "p", "sigma2", "lr", "steps", "seeds", "grun_lr",
                                               "grun_steps")}


def point_key(point: dict) -> str:
    """A point's identity in the output file: its method and knob values."""
    return json.dumps({k: point[k] for k in sorted(point) if k in ("method", "seed") or k in METHODS[point["method"]].knobs},
                      sort_keys=True)


def point_config(cfg: GrinConfig, point: dict) -> GrinConfig:
    """The shared config with the point's knobs set (validated like any config)."""
    return replace(cfg, **{k: v for k, v in point.items() if k != "method"})


def fingerprint(base: LoadedModel, forget: list[QAItem], retain: list[QAItem], cfg: GrinConfig) -> str:
    """What must be equal for two sweeps' points to be comparable: the model, the items, every setting that is not
    a knob of the grid. A rerun skips the points of an output file only when the fingerprints match."""
    shared = {k: v for k, v in cfg.to_dict().items() if k not in (*SETTING_KNOBS, "seed")}
    text = json.dumps({"model": base.name, "config": shared, "forget": [it.to_dict() for it in forget],
                       "retain": [it.to_dict() for it in retain]}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def read_lines(path: Path, expected_fingerprint: str | None = None, head: str = "before",
               what: str = "sweep") -> tuple[dict | None, dict[str, dict]]:
    """The `head` line (a sweep's "before"; a TOFU grid's "reference") and the finished points (key -> point)
    already in `path`; a file of another `what` (other model, data or shared settings than `expected_fingerprint`;
    None: the file's first line's) is refused rather than mixed in. A resumable JSON-lines file of sweep and
    benchmarks/tofu_grid both."""
    first, points = None, {}
    if not path.exists():
        return first, points
    lines = path.read_text().splitlines()
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            if number == len(lines):
                continue  # a last line cut off by a kill: that point is simply run again
            raise GrinError(f"{what}: {path} line {number} is not JSON; choose another --out") from None
        expected_fingerprint = expected_fingerprint or record.get("fingerprint")
        if record.get("fingerprint") != expected_fingerprint:
            raise GrinError(f"{what}: {path} holds another {what.split()[-1]} (other model, data or shared "
                            f"settings); choose another --out or delete it")
        if record.get("kind") == head:
            first = record
        elif record.get("kind") == "point":
            points[record["key"]] = record
    return first, points


def evaluation_to_json(evaluation: dict) -> dict:
    """An evaluation (evaluate_both) as JSON (MetricResult -> {"value", "per_item"}), so a resumed sweep reuses it."""
    return {split: {**e, "metrics": {name: asdict(r) for name, r in e["metrics"].items()}}
            for split, e in evaluation.items()}


def evaluation_from_json(data: dict) -> dict:
    return {split: {**e, "metrics": {name: MetricResult(**r) for name, r in e["metrics"].items()}}
            for split, e in data.items()}


def append_line(path: Path | None, record: dict) -> None:
    """One record more at the end of a JSON-lines file (None: nowhere). default=float: numpy scalars as numbers."""
    if path is not None:
        with path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(record, default=float) + "\n")


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
    if result.noise:  # masked runs: does the noise wake a vanished gradient on the selected weights?
        record.update(grad_norm_before_noise=result.noise["grad_norm_before"],
                      grad_norm_after_noise=result.noise["grad_norm_after"])
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
    kept: dict | None = field(default=None, repr=False)  # the kept scores the points drew from (not in the report)

    @property
    def finished(self) -> bool:
        return len(self.points) == self.total

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
          out: str | Path | None = None, on_point=None, progress: Progress | None = None, in_place: bool = False,
          before: dict | None = None, kept: dict | None = None, limit: int | None = None) -> SweepResult:
    """Run every point of `grid` not already finished in `out` (JSON lines), appending each as it finishes.
    (in_place=True: each point trains `base` itself and restores it exactly, see pipeline.run; the CLI's choice.)

    on_point(record, done, total) after each finished point (done counts the skipped ones too); progress as in
    compare ("before", "gradients", "<method>/<stage>"). A Stop ends the sweep there: the finished points stay in
    the file and in the result. Re-used when given (the web app computes them once): `before`, the base model's
    evaluation on the same items; `kept`, kept scores of the same items ({"grin": TopScores}): where they cover every
    p of the grid, the points select from them (bit for bit the same masks) and no gradients are formed for them.
    `limit`: run at most that many points now and return (a ZeroGPU Space runs a sweep in several GPU calls, each
    under its time limit: the next call with the same `out` and `kept=result.kept` goes on from there).
    """
    require_items(forget, retain)
    progress = as_progress(progress)
    points = grid.points()
    for point in points:  # every knob value checked before any slow work
        point_config(cfg, point)
    path = Path(out) if out is not None else None
    fp = fingerprint(base, forget, retain, cfg)
    before_line, finished = read_lines(path, fp) if path is not None else (None, {})
    keys = [point_key(pt) for pt in points]
    todo = [(pt, k) for pt, k in zip(points, keys) if k not in finished]
    done = len(points) - len(todo)
    tops: dict = {}
    timings: dict[str, float] = {}
    stopped = False
    try:
        if before_line is None:
            if before is None:
                before, timings["eval_before_s"] = evaluate(base, forget, retain, cfg, progress, "before")
            before_line = {"kind": "before", "fingerprint": fp, "metrics": metric_values(before)[0],
                           "generations": [{"split": split, "question": it.question, "answer": it.answer,
                                            "before": shown}
                                           for split, items in (("forget", forget), ("retain", retain))
                                           for it, shown in zip(items, shown_answers(before[split]))],
                           "evaluation": evaluation_to_json(before)}
            append_line(path, before_line)
        before = evaluation_from_json(before_line["evaluation"])
        start = time.perf_counter()
        scored = [METHODS[pt["method"]] for pt, _ in todo if METHODS[pt["method"]].score_source]
        keep = max([pt["p"] for pt, _ in todo if METHODS[pt["method"]].score_source] or [0.0])
        tops = kept_scores(base, forget, retain, cfg, scored, keep, progress, kept, copy=not in_place) if scored \
            else {}
        timings["gradients_s"] = time.perf_counter() - start
        masks: dict[tuple, object] = {}  # one p's masks at a time, shared by the methods drawing the same scores
        for point, key in todo[:limit]:
            progress.check()  # between points: not even a model copy
            method, point_cfg = METHODS[point["method"]], point_config(cfg, point)
            start = time.perf_counter()
            if method.score_source is not None:
                drawn = (method.score_source, point["p"])
                if drawn not in masks:
                    masks = {k: v for k, v in masks.items() if k[1] == point["p"]}
                    masks[drawn] = method_selection(method, tops, base, point_cfg)
                selection = masks[drawn]
            else:
                selection = method_selection(method, tops, base, point_cfg)
            select_s = time.perf_counter() - start
            result = run_method(method, base, forget, retain, point_cfg, before, selection,
                                progress.within(method.name), in_place)
            if result.stopped:
                stopped = True
                break
            record = point_record(point, key, fp, result, select_s)
            append_line(path, record)
            finished[key] = record
            done += 1
            if on_point is not None:
                on_point(record, done, len(points))
    except Stopped:
        stopped = True
    ordered = [finished[k] for k in keys if k in finished]
    return SweepResult(config=cfg.to_dict(), model=base.facts(), grid=grid.to_dict(), fingerprint=fp,
                       before={k: v for k, v in before_line.items() if k in ("metrics", "generations")}
                       if before_line else {}, points=ordered, skipped=len(points) - len(todo),
                       timings=timings, stopped=stopped, total=len(points), kept=tops)


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


