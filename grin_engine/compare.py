"""Compare unlearning methods on the same data, steps and metrics: GRIN, GRUN and the baselines that explain them.

Each method answers a question about GRIN:
- `grin`         influence-ratio mask (|G_f| / (|G_r| + eps)), noise, masked fine-tuning: the method itself;
- `grun`         gated representation edits, weights untouched (grun.py): the other way to protect the rest;
- `full`         every candidate weight trains, no noise: what does the mask buy?
- `random`       a uniformly random mask of the same size (seeded): is the influence score better than luck?
- `forget-grad`  the top p by |G_f| alone: does dividing by |G_r| (the retain side) matter?
- `grin-nonoise` GRIN with sigma2 = 0: does the noise matter?

All runs share one evaluation of the base model and one pair of gradients (G_f, G_r); each trains a private copy.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace

from .config import GrinConfig, GrinError
from .data import QAItem, qa_batches
from .influence import (Selection, accumulate_gradients, candidate_parameters, gradient_pair, influence_scores,
                        jaccard, random_selection, require_finite, select_top_fraction)
from .models import LoadedModel, copy_model
from .score_cache import TopScores
from .pipeline import RunResult, RunStopped, evaluate_both, require_items, run, run_grun

METHODS = {
    "grin": "GRIN: influence-ratio mask + noise + masked fine-tuning",
    "grun": "GRUN: gated representation edits, weights frozen",
    "full": "Full: every candidate weight trains, no mask, no noise",
    "random": "Random mask: same number of weights, chosen at random",
    "forget-grad": "|G_f| mask: top p by the forget gradient alone",
    "grin-nonoise": "GRIN without noise (sigma2 = 0)",
}
_MASKED = {"grin", "random", "forget-grad", "grin-nonoise"}
SUMMARY_METRICS = ("keyword_accuracy", "rougeL_recall", "probability")


def parse_methods(text: str) -> list[str]:
    """'grin,grun,full' -> ['grin', 'grun', 'full'] (checked, duplicates dropped, order kept)."""
    methods = list(dict.fromkeys(m.strip().lower() for m in str(text).split(",") if m.strip()))
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        raise GrinError(f"methods: unknown {', '.join(unknown) or '(none given)'}; choose from {', '.join(METHODS)}")
    return methods


@dataclass
class Comparison:
    config: dict
    model: dict
    results: dict[str, RunResult]  # method -> its run
    overlap: dict[str, float]  # Jaccard overlap of the GRIN mask with the other masks ("random", "forget-grad")
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


def mask_scores(base: LoadedModel, forget: list[QAItem], retain: list[QAItem], cfg: GrinConfig, methods: list[str],
                say, in_place: bool = False) -> dict[str, dict]:
    """The scores the masked methods select from, from one pair of gradients on a copy of the base (in place: on
    the base, whose weights gradients do not change): "grin" -> |G_f| / (|G_r| + eps) (grin and grin-nonoise),
    "forget-grad" -> |G_f|. Random masks need none."""
    scores = {}
    ratio_needed = bool({"grin", "grin-nonoise"} & set(methods))
    if not ratio_needed and "forget-grad" not in methods:
        return scores
    work = base if in_place else copy_model(base)
    candidates = candidate_parameters(work.model, cfg.include_embeddings, cfg.include_lm_head)
    forget_batches = qa_batches(work.tokenizer, forget, cfg.batch_size, cfg.max_length, cfg.label_layout)
    report = lambda done, total: say("gradients", done, total)  # noqa: E731
    if not ratio_needed:  # |G_f| alone: no retain gradients to form
        grad_forget = accumulate_gradients(work.model, forget_batches, list(candidates), report, mean=cfg.grad_mean)
        del work
        scores["forget-grad"] = require_finite({n: g.abs_() for n, g in grad_forget.items()})
        return scores
    grad_forget, grad_retain = gradient_pair(
        work.model, forget_batches, qa_batches(work.tokenizer, retain, cfg.batch_size, cfg.max_length,
                                               cfg.label_layout),
        list(candidates), on_batch=report, mean=cfg.grad_mean, park_forget=True)
    del work
    if "forget-grad" in methods:  # before the in-place ratio below consumes the gradients; on G_r's (the weight's)
        # device, where a parked G_f is not
        scores["forget-grad"] = require_finite({n: g.to(grad_retain[n].device).abs() for n, g in grad_forget.items()})
    scores["grin"] = require_finite(influence_scores(grad_forget, grad_retain, cfg.eps, in_place=True))
    del grad_forget, grad_retain
    return scores


def method_selection(name: str, scores: dict[str, dict], base: LoadedModel, cfg: GrinConfig) -> Selection | None:
    """The mask of a masked method at cfg.p (random: from cfg.seed); None for the methods without one."""
    if name == "random":
        candidates = candidate_parameters(base.model, cfg.include_embeddings, cfg.include_lm_head)
        return random_selection(candidates, dict(base.model.named_parameters()), cfg.p, cfg.seed)
    if name in ("grin", "grin-nonoise", "forget-grad"):
        return select_top_fraction(scores["grin" if name != "forget-grad" else name], cfg.p)
    return None


def reusable(top: TopScores | None, methods: list[str], p_values: list[float]) -> list[str]:
    """`methods` without those whose mask `top` (kept GRIN scores) gives exactly at every p: no gradients for them."""
    if top is None or not all(top.covers(p) for p in p_values):
        return list(methods)
    return [m for m in methods if m not in ("grin", "grin-nonoise")]


def _selections(base: LoadedModel, forget: list[QAItem], retain: list[QAItem], cfg: GrinConfig,
                methods: list[str], say, in_place: bool = False, top: TopScores | None = None) -> dict[str, Selection]:
    """The masks of the masked methods at cfg.p, from one pair of gradients (mask_scores), or GRIN's from `top`."""
    scores = mask_scores(base, forget, retain, cfg, reusable(top, methods, [cfg.p]), say, in_place)
    selections = {name: method_selection(name, scores, base, cfg) for name in ("forget-grad", "grin")
                  if name in scores}
    if {"grin", "grin-nonoise"} & set(methods) and "grin" not in selections:
        selections["grin"] = top.select(cfg.p, {n: p.device for n, p in base.model.named_parameters()})
    if "grin" in selections:
        selections["grin-nonoise"] = selections["grin"]
    del scores
    if "random" in methods or "grin" in selections:
        selections["random"] = method_selection("random", {}, base, cfg)
    return selections


def run_method(name: str, base: LoadedModel, forget: list[QAItem], retain: list[QAItem], cfg: GrinConfig,
               before: dict | None = None, selection: Selection | None = None, on_progress=None,
               should_stop=None, in_place: bool = False) -> RunResult:
    """One method's run on a private copy of `base` (in place: on `base`, restored exactly after); a masked method
    needs its `selection`."""
    if name == "grun":
        return run_grun(base, forget, retain, cfg, on_progress=on_progress, should_stop=should_stop, before=before,
                        in_place=in_place)
    method_cfg = replace(cfg, use_mask=name != "full", sigma2=0.0 if name == "grin-nonoise" else cfg.sigma2)
    return run(base, forget, retain, method_cfg, on_progress=on_progress, should_stop=should_stop, before=before,
               selection=selection, in_place=in_place)


def compare(base: LoadedModel, forget: list[QAItem], retain: list[QAItem], cfg: GrinConfig, methods: list[str],
            on_progress=None, should_stop=None, in_place: bool = False, before: dict | None = None,
            grin_top: TopScores | None = None) -> Comparison:
    """Run each method on a private copy of `base` with the same data, steps and seed; evaluate each the same way.
    (in_place=True: each method trains `base` itself and restores it exactly, see pipeline.run.)

    on_progress(stage, done, total, *extra): stage is "before", "gradients", or "<method>/<stage>" for a run's own
    stages ("grin/unlearn", "grun/after" ...). should_stop() ends the comparison at the next check; the methods
    finished by then are kept and the result is marked stopped.
    Re-used when given (the web app computes them once): `before`, the base model's evaluation on the same items
    (pipeline.evaluate_both); `grin_top`, the same items' GRIN scores (score_cache.TopScores), which give GRIN's mask
    bit for bit when they cover cfg.p, so that only |G_f|-only needs gradients.
    """
    require_items(forget, retain)
    methods = parse_methods(",".join(methods))

    def say(stage, done, total, *extra):
        if on_progress is not None:
            on_progress(stage, done, total, *extra)
        if should_stop is not None and should_stop():
            raise RunStopped

    results: dict[str, RunResult] = {}
    timings: dict[str, float] = {}
    selections: dict[str, Selection] = {}
    stopped = False
    try:
        start = time.perf_counter()
        if before is None:
            before = evaluate_both(base.model, base.tokenizer, forget, retain, cfg,
                                   on_item=lambda done, total: say("before", done, total))
        timings["eval_before_s"] = time.perf_counter() - start
        start = time.perf_counter()
        selections = _selections(base, forget, retain, cfg, methods, say, in_place, grin_top)
        timings["gradients_s"] = time.perf_counter() - start
        for name in methods:
            def report(stage, done, total, *extra, _name=name):
                say(f"{_name}/{stage}", done, total, *extra)
            result = run_method(name, base, forget, retain, cfg, before, selections.get(name), report, should_stop,
                                in_place)
            results[name] = result
            if result.stopped:
                stopped = True
                break
    except RunStopped:
        stopped = True

    overlap = {name: jaccard(selections["grin"], selections[name])
               for name in ("random", "forget-grad") if "grin" in selections and name in selections}
    masks_selected = {name: selections[name].selected for name in methods if name in selections}
    return Comparison(config=cfg.to_dict(), model=base.facts(), results=results, overlap=overlap,
                      masks_selected=masks_selected, timings=timings, stopped=stopped)
