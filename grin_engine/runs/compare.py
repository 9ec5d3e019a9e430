"""Compare unlearning methods on the same data, steps and metrics: GRIN, GRUN and the baselines that explain them.

The methods and the question each answers are the registry runs/methods.METHODS. All runs share one evaluation of
the base model and one set of gradients for the masks (runs/masks.py); each trains a private copy of the base (or,
in place, the base itself, restored exactly after each method).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from ..config import GrinConfig
from ..data import QAItem, require_items
from ..events import Progress, Stopped, as_progress
from ..method.score_cache import TopScores
from ..method.selection import Selection, jaccard
from ..models import LoadedModel, copy_model
from .masks import given_mask, kept_scores, method_selection
from .methods import METHODS, ComparisonMethod, get_methods
from .pipeline import RunResult, evaluate, finish, run_grun

SUMMARY_METRICS = ("keyword_accuracy", "rougeL_recall", "probability", "fluency")


@dataclass
class Comparison:
    config: dict
    model: dict
    results: dict[str, RunResult]  # method -> its run
    overlap: dict[str, float]  # Jaccard overlap of the GRIN mask with each other mask ("random", "forget-grad" ...)
    masks_selected: dict[str, int]  # method -> number of weights its mask selects
    timings: dict = field(default_factory=dict)
    stopped: bool = False

    def table(self) -> list[dict]:
        """One row per method: forget and retain metrics before and after, and the GRUN gate means."""
        rows = []
        for name, result in self.results.items():
            row = {"method": name}
            for split in ("forget", "retain"):
                for metric in SUMMARY_METRICS:
                    before = (result.metrics.get("before") or {}).get(split, {}).get(metric)
                    after = ((result.metrics.get("after") or {}).get(split) or {}).get(metric)
                    row[f"{split}_{metric}_before"], row[f"{split}_{metric}"] = before, after
                gates = (result.gates or {}).get(split)
                row[f"{split}_gate"] = sum(gates) / len(gates) if gates else None
            row["trainable"] = result.selection.get("trainable", result.selection.get("selected"))
            row["seconds"] = sum(v for k, v in result.timings.items() if k in ("scores_s", "select_s", "unlearn_s",
                                                                                  "eval_after_s"))
            row["stopped"] = result.stopped
            rows.append(row)
        return rows

    def generations(self) -> list[dict]:
        """Each question with the gold answer, the base model's answer and every method's answer."""
        rows = []
        for name, result in self.results.items():
            for i, g in enumerate(result.generations):
                if len(rows) <= i:
                    rows.append({"split": g["split"], "question": g["question"], "answer": g["answer"],
                                 "before": g["before"]})
                rows[i][name] = g["after"]
        return rows

    def to_report(self) -> dict:
        """The compare JSON: config, the table, the overlaps, answers side by side, and each method's report."""
        return {"config": self.config, "model": self.model, "table": self.table(), "overlap": self.overlap,
                "masks_selected": self.masks_selected, "generations": self.generations(), "timings": self.timings,
                "stopped": self.stopped,
                "methods": {name: {k: v for k, v in r.to_report().items() if k not in ("generations", "model")}
                            for name, r in self.results.items()}}


def method_masks(base: LoadedModel, forget: list[QAItem], retain: list[QAItem], cfg: GrinConfig,
                 methods: list[ComparisonMethod], progress: Progress, in_place: bool = False,
                 kept: dict[str, TopScores] | None = None) -> tuple[dict[str, Selection], dict[str, TopScores]]:
    """Every method's mask at cfg.p (runs/masks.py: one set of gradients for all, kept scores re-used), plus a random
    mask of the same size beside GRIN's, so the overlap with chance is always reported; and the kept scores they
    came from (a later call with them as `kept` forms no gradients and gets the same masks bit for bit)."""
    tops = kept_scores(base, forget, retain, cfg, methods, cfg.p, progress, kept, copy=not in_place)
    drawn = [m for m in methods if m.mask in ("scores", "random")]
    if any(m.score_source == "grin" for m in methods) and METHODS["random"] not in drawn:
        drawn.append(METHODS["random"])
    return {m.name: method_selection(m, tops, base, cfg) for m in drawn}, tops


def mask_overlaps(selections: dict[str, Selection]) -> tuple[dict[str, float], dict[str, int]]:
    """(the Jaccard overlap of GRIN's mask with each mask drawn from other scores or at random, the number of
    weights each mask selects): what a comparison reports about its masks."""
    grin = selections.get("grin")
    overlap = {name: jaccard(grin, selection) for name, selection in selections.items()
               if grin is not None and METHODS[name].score_source != "grin"}
    return overlap, {name: selection.selected for name, selection in selections.items()}


def run_method(method: ComparisonMethod, base: LoadedModel, forget: list[QAItem], retain: list[QAItem],
               cfg: GrinConfig, before: dict, selection: Selection | None, progress: Progress,
               in_place: bool = False) -> RunResult:
    """One method's run from the base's evaluation and its mask: on a private copy of `base` (in place: on `base`,
    restored exactly after)."""
    if method.mask == "grun":
        return run_grun(base, forget, retain, cfg, progress, before=before, in_place=in_place)
    method_cfg = method.configure(cfg)
    work = base if in_place else copy_model(base)
    mask = given_mask(work.model, method_cfg, selection)
    return finish(base, work, forget, retain, method_cfg, mask, before, progress, {"eval_before_s": 0.0}, in_place)


def compare(base: LoadedModel, forget: list[QAItem], retain: list[QAItem], cfg: GrinConfig, methods: list[str],
            progress: Progress | None = None, in_place: bool = False, before: dict | None = None,
            kept: dict[str, TopScores] | None = None) -> Comparison:
    """Run each method with the same data, steps and seed; evaluate each the same way.

    progress reports "before", "gradients" (the masks' shared gradients), and "<method>/<stage>" for a method's run
    ("grin/unlearn", "grun/after" ...). A Stop ends the comparison there; the methods finished by then are kept and
    the result is marked stopped. Re-used when given (the web app computes them once): `before`, the base model's
    evaluation on the same items (evaluation/evaluate.evaluate_both); `kept`, kept scores of the same items
    ({"grin": TopScores}), which give the same masks bit for bit where they cover cfg.p.
    """
    require_items(forget, retain)
    methods = get_methods(methods)
    progress = as_progress(progress)
    results: dict[str, RunResult] = {}
    timings: dict[str, float] = {}
    selections: dict[str, Selection] = {}
    stopped = False
    try:
        if before is None:
            before, timings["eval_before_s"] = evaluate(base, forget, retain, cfg, progress, "before")
        start = time.perf_counter()
        selections = method_masks(base, forget, retain, cfg, methods, progress, in_place, kept)[0]
        timings["gradients_s"] = time.perf_counter() - start
        for method in methods:
            result = run_method(method, base, forget, retain, cfg, before, selections.get(method.name),
                                progress.within(method.name), in_place)
            results[method.name] = result
            if result.stopped:
                stopped = True
                break
    except Stopped:
        stopped = True
    overlap, selected = mask_overlaps(selections)
    masks_selected = {m.name: selected[m.name] for m in methods if m.name in selected}
    return Comparison(config=cfg.to_dict(), model=base.facts(), results=results, overlap=overlap,
                      masks_selected=masks_selected, timings=timings, stopped=stopped)
