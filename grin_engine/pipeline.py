"""One GRIN run end to end: data -> scores -> selection -> noise -> masked unlearning -> metrics (DESIGN.md §2).

`run()` is what the CLI calls; the pieces (`compute_influence_scores`, `select`, `unlearn_selected`) are public so
the web app can cache scores and re-select without new gradients. The base model is never changed: by default
training happens on a private copy; with `in_place=True` (the CLI) it happens on the base itself, whose changed
entries are written back from their saved original values when the run ends, however it ends (DESIGN.md §2.10).
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field

import torch

from . import metrics
from .config import GrinConfig, GrinError
from .data import QAItem, forget_batches, qa_batches
from .evaluate import evaluate_split, shown_answers
from .grun import Grun, GrunSpec, GrunState, default_layers, export_state, gate_values, train_grun
from .influence import (Candidate, Selection, candidate_parameters, compute_influence, select_top_fraction,
                        summarize_counts, summarize_selection, top_fraction_counts)
from .models import LoadedModel, copy_model
from .noise import inject_noise
from .patch import WeightPatch, apply_patch, extract_patch, trained_in_place, unlearned_copy
from .unlearn import UnlearnResult, attach_reference, unlearn
from .until import ForgetCheck, parse_target

METRIC_NAMES = ("rougeL_recall", "keyword_accuracy", "probability", "truth_ratio")


@dataclass
class Influence:
    """Scores of every candidate weight for one forget/retain pair; select() re-uses them for any p."""
    candidates: dict[str, Candidate]
    scores: dict[str, torch.Tensor]
    seconds: float


@dataclass
class RunResult:
    config: dict
    model: dict  # model facts
    selection: dict  # summarize_selection(...), or the "all candidates" summary of a no-mask run
    metrics: dict  # {"before"|"after": {"forget"|"retain": {metric: value}}}
    metrics_per_item: dict  # same shape, lists of per-item values
    generations: list[dict]
    losses: list[float]
    timings: dict
    stopped: bool = False
    forget_quality: float | None = None
    patch: WeightPatch | GrunState | None = field(default=None, repr=False)  # base + patch = the unlearned model
    unlearned_model: object = field(default=None, repr=False)  # the trained copy, when run(keep_model=True)
    gates: dict | None = None  # GRUN: {"forget"|"retain": gate value per item} after training
    until: dict | None = None  # cfg.until: the target, its checks and the step where it held (until.ForgetCheck)

    def to_report(self) -> dict:
        """The report JSON (a contract: the CLI writes it, the app offers it for download, other tools read it)."""
        return {
            "config": self.config, "model": self.model, "selection": self.selection, "metrics": self.metrics,
            "metrics_per_item": self.metrics_per_item, "forget_quality": self.forget_quality,
            "generations": self.generations, "losses": self.losses, "timings": self.timings, "stopped": self.stopped,
            "gates": self.gates, "until": self.until,
        }


def compute_influence_scores(model, tokenizer, forget: list[QAItem], retain: list[QAItem], cfg: GrinConfig,
                             on_batch=None) -> Influence:
    """Influence score of every candidate weight of `model` (which gets gradients, so pass a copy of a shared base)."""
    require_items(forget, retain)
    start = time.perf_counter()
    candidates = candidate_parameters(model, cfg.include_embeddings, cfg.include_lm_head)
    scores = compute_influence(
        model, qa_batches(tokenizer, forget, cfg.batch_size, cfg.max_length, cfg.label_layout),
        qa_batches(tokenizer, retain, cfg.batch_size, cfg.max_length, cfg.label_layout), candidates, cfg.eps, on_batch,
        cfg.grad_mean,
    )
    return Influence(candidates=candidates, scores=scores, seconds=time.perf_counter() - start)


def require_items(forget: list[QAItem], retain: list[QAItem]) -> None:
    """Both sets need items: gradients, losses and metrics over an empty set mean nothing."""
    for which, items in (("forget", forget), ("retain", retain)):
        if not items:
            raise GrinError(f"data: the {which} set has no items")


def select(influence: Influence, p: float, consume: bool = False) -> tuple[Selection, dict]:
    """The top-p selection and its summary (per layer and module, attention vs feed-forward). consume=True: the
    scores are taken out of `influence` as the masks are made (for a run that needs them no more)."""
    selection = select_top_fraction(influence.scores, p, consume=consume)
    return selection, summarize_selection(selection, influence.candidates)


def select_summary(influence: Influence, p: float) -> dict:
    """The summary of the top-p selection (the same as select's) without its masks: for `score`, which needs no
    masks, so its peak stays at the scores (README's memory plan)."""
    threshold, counts = top_fraction_counts(influence.scores, p)
    return summarize_counts(counts, influence.candidates, p, threshold)


def unlearn_selected(model, tokenizer, forget: list[QAItem], retain: list[QAItem], cfg: GrinConfig,
                     names: list[str], masks: dict[str, torch.Tensor] | None, on_step=None,
                     should_stop=None, until=None) -> UnlearnResult:
    """Noise on the selected weights, then masked fine-tuning (masks=None: every weight in `names` trains, no noise)."""
    params = dict(model.named_parameters())
    f_batches = forget_batches(tokenizer, forget, cfg.batch_size, cfg.max_length, cfg.seed, cfg.label_layout)
    r_batches = qa_batches(tokenizer, retain, cfg.batch_size, cfg.max_length, cfg.label_layout)
    if cfg.ref_before_noise:
        attach_reference(model, f_batches)  # open-unlearning's pi_ref: the model before any change
    if masks is not None:
        inject_noise(params, masks, cfg.sigma2, cfg.seed)
    if not cfg.ref_before_noise:
        attach_reference(model, f_batches)  # ours: pi_ref = the model right before fine-tuning (after the noise)
    return unlearn(model, f_batches, r_batches, cfg, names, masks, on_step, should_stop, until=until)


def until_check(work: LoadedModel, forget: list[QAItem], cfg: GrinConfig) -> ForgetCheck | None:
    """The until-check of cfg.until on the model being trained (None when no target is set)."""
    if cfg.until is None:
        return None
    return ForgetCheck(parse_target(cfg.until), work.model, work.tokenizer, forget, cfg.max_new_tokens,
                       cfg.max_length, cfg.until_every)


def evaluate_both(model, tokenizer, forget: list[QAItem], retain: list[QAItem], cfg: GrinConfig,
                  on_item=None) -> dict:
    """Evaluate both splits; on_item(done, total) counts the items answered over both."""
    total = len(forget) + len(retain)
    report_f = (lambda done, _n: on_item(done, total)) if on_item else None
    report_r = (lambda done, _n: on_item(len(forget) + done, total)) if on_item else None
    return {"forget": evaluate_split(model, tokenizer, forget, "forget", cfg.max_new_tokens, cfg.max_length, report_f),
            "retain": evaluate_split(model, tokenizer, retain, "retain", cfg.max_new_tokens, cfg.max_length, report_r)}


def _aggregate(evaluation: dict) -> tuple[dict, dict]:
    values = {s: {m: r.value for m, r in e["metrics"].items()} for s, e in evaluation.items()}
    per_item = {s: {m: r.per_item for m, r in e["metrics"].items()} for s, e in evaluation.items()}
    return values, per_item


class RunStopped(Exception):
    """Raised inside run() when should_stop() turns true; run() returns a result marked stopped instead."""


def _reporter(on_progress, should_stop):
    """say(stage, done, total, *extra): report progress, then raise RunStopped if a stop was asked for."""
    def say(stage, done, total, *extra):
        if on_progress is not None:
            on_progress(stage, done, total, *extra)
        if should_stop is not None and should_stop():
            raise RunStopped
    return say


def _timed_evaluation(loaded: LoadedModel, forget: list[QAItem], retain: list[QAItem], cfg: GrinConfig, say,
                      stage: str) -> tuple[dict, float]:
    """evaluate_both on `loaded`, reporting each item as `stage`; returns (evaluation, seconds)."""
    start = time.perf_counter()
    evaluation = evaluate_both(loaded.model, loaded.tokenizer, forget, retain, cfg,
                               on_item=lambda done, total: say(stage, done, total))
    return evaluation, time.perf_counter() - start


def _stopped(base: LoadedModel, cfg: GrinConfig, summary: dict, before: dict | None, losses: list[float],
             timings: dict) -> RunResult:
    """What a stopped run reports: what was measured so far, no after-evaluation and no unlearned model."""
    values, per_item = _aggregate(before) if before else ({}, {})
    return RunResult(config=cfg.to_dict(), model=base.facts(), selection=summary,
                     metrics={"before": values, "after": None}, metrics_per_item={"before": per_item, "after": None},
                     generations=[], losses=losses, timings=timings, stopped=True)


def _finished(base: LoadedModel, cfg: GrinConfig, summary: dict, before: dict, after: dict, forget: list[QAItem],
              retain: list[QAItem], losses: list[float], timings: dict, **extra) -> RunResult:
    """A finished run's result: metrics and generations before and after, side by side."""
    values_before, items_before = _aggregate(before)
    values_after, items_after = _aggregate(after)
    shown = {(when, split): shown_answers(evaluation[split]) for when, evaluation in (("before", before),
                                                                                     ("after", after))
             for split in ("forget", "retain")}
    generations = [
        {"split": split, "question": it.question, "answer": it.answer,
         "before": shown["before", split][i], "after": shown["after", split][i]}
        for split, items in (("forget", forget), ("retain", retain)) for i, it in enumerate(items)
    ]
    return RunResult(config=cfg.to_dict(), model=base.facts(), selection=summary,
                     metrics={"before": values_before, "after": values_after},
                     metrics_per_item={"before": items_before, "after": items_after},
                     generations=generations, losses=losses, timings=timings, stopped=False, **extra)


def run(base: LoadedModel, forget: list[QAItem], retain: list[QAItem], cfg: GrinConfig, on_progress=None,
        should_stop=None, reference: LoadedModel | None = None, keep_model: bool = False,
        before: dict | None = None, selection: Selection | None = None, in_place: bool = False) -> RunResult:
    """The whole pipeline on a private copy of `base` (or, with in_place=True, on `base` itself, restored exactly).

    on_progress(stage, done, total) with stage in "before", "influence", "unlearn", "after" (for unlearn, the loss
    of the step is passed as a fourth argument). should_stop() is checked at each of those reports (each batch or
    step); once it is true the run ends there and returns a result with stopped=True, what was measured so far, and
    no unlearned model. `before` may pass an evaluation of the base made earlier with `evaluate_both` (it depends
    only on the data, max_new_tokens and max_length), to save time.
    `reference`: a model never trained on the forget set, for TOFU's forget quality (KS test on truth ratios).
    `selection`: a ready mask (the comparison's baselines: random, |G_f| only); no influence scores are computed.
    `in_place`: train the selected entries of `base` itself instead of a deep copy, and write their original values
    back when the run ends (finished, stopped or failed): bit-identical, no second model in memory. Only for a base
    that nobody else uses meanwhile (the CLI); `keep_model` then gets base + patch as a new copy.
    """
    require_items(forget, retain)
    say = _reporter(on_progress, should_stop)
    timings, summary, losses = {}, {}, []
    try:
        if before is None:
            before, timings["eval_before_s"] = _timed_evaluation(base, forget, retain, cfg, say, "before")
        else:
            timings["eval_before_s"] = 0.0  # evaluated earlier, by the caller

        work = base if in_place else copy_model(base)
        candidates = candidate_parameters(work.model, cfg.include_embeddings, cfg.include_lm_head)
        if selection is not None:
            timings["scores_s"] = timings["select_s"] = 0.0
            summary = summarize_selection(selection, candidates)
            masks = selection.masks
        elif cfg.use_mask:
            influence = compute_influence_scores(work.model, work.tokenizer, forget, retain, cfg,
                                                 on_batch=lambda done, total: say("influence", done, total))
            timings["scores_s"] = influence.seconds
            start = time.perf_counter()
            # the scores are as big as the model: each is freed as its mask is made, none is left for training
            selection, summary = select(influence, cfg.p, consume=True)
            timings["select_s"] = time.perf_counter() - start
            masks = selection.masks
            del influence
        else:
            timings["scores_s"] = timings["select_s"] = 0.0
            summary = summarize_counts({n: c.numel for n, c in candidates.items()}, candidates, 1.0, None)
            masks = None

        def on_step(step, steps, loss):
            losses.append(loss)  # kept here, so a stopped run still reports the steps it made
            say("unlearn", step, steps, loss)

        restoring = trained_in_place(work.model, list(candidates), masks) if in_place else contextlib.nullcontext()
        with restoring:  # in place: the base gets its original values back on leaving, however this block ends
            start = time.perf_counter()
            check = until_check(work, forget, cfg)
            unlearn_selected(work.model, work.tokenizer, forget, retain, cfg, list(candidates), masks, on_step,
                             until=check)
            timings["unlearn_s"] = time.perf_counter() - start

            after, timings["eval_after_s"] = _timed_evaluation(work, forget, retain, cfg, say, "after")
            timings["eval_s"] = timings["eval_before_s"] + timings["eval_after_s"]
            patch = extract_patch(work.model, list(candidates), masks)
    except RunStopped:
        return _stopped(base, cfg, summary, before, losses, timings)

    forget_quality = None
    if reference is not None and after["forget"]["truth_ratios"]:
        ref_eval = evaluate_split(reference.model, reference.tokenizer, forget, "forget", cfg.max_new_tokens,
                                  cfg.max_length)
        forget_quality = metrics.forget_quality(after["forget"]["truth_ratios"], ref_eval["truth_ratios"])
    kept = (apply_patch(base, patch) if in_place else work) if keep_model else None
    return _finished(base, cfg, summary, before, after, forget, retain, losses, timings,
                     forget_quality=forget_quality, patch=patch, unlearned_model=kept,
                     until=check.report() if check else None)


def run_grun(base: LoadedModel, forget: list[QAItem], retain: list[QAItem], cfg: GrinConfig, on_progress=None,
             should_stop=None, before: dict | None = None, keep_model: bool = False,
             in_place: bool = False) -> RunResult:
    """GRUN end to end (DESIGN.md §2.9) on a private copy of `base`: gated edits trained, weights untouched.

    Same stages, callbacks and result as run(), without "influence". The result's `patch` is the trained GRUN as
    CPU data (a GrunState; `patch.unlearned_copy(base, state)` attaches it to a copy of the base), and `gates` holds each
    item's gate value after training. `in_place`: hook the edits into `base` itself (no copy) and remove them when
    the run ends, however it ends; as for run(), only where nobody else uses `base` meanwhile.
    """
    require_items(forget, retain)
    say = _reporter(on_progress, should_stop)
    timings, losses = {}, []
    # hooks on a shared base would change it for everybody else while we train: a copy unless told otherwise
    work = base if in_place else copy_model(base)
    config = work.model.config
    layers = cfg.grun_layers or default_layers(config.num_hidden_layers)
    grun = Grun(GrunSpec(hidden_size=config.hidden_size, layers=list(layers), rank=int(cfg.grun_rank),
                         gate=cfg.grun_gate), seed=cfg.seed)
    summary = {"kind": "grun", "layers": list(layers), "rank": int(cfg.grun_rank), "gate": cfg.grun_gate,
               "trainable": sum(p.numel() for p in grun.parameters()),
               "candidates": sum(c.numel for c in candidate_parameters(work.model).values()), "selected": 0}
    try:
        if before is None:  # before the edits are attached (in place, `work` is `base`)
            before, timings["eval_before_s"] = _timed_evaluation(base, forget, retain, cfg, say, "before")
        else:
            timings["eval_before_s"] = 0.0  # evaluated earlier, by the caller
        grun.attach(work.model, work.tokenizer)

        def on_step(step, steps, loss):
            losses.append(loss)
            say("unlearn", step, steps, loss)

        start = time.perf_counter()
        check = until_check(work, forget, cfg)
        train_grun(work.model, work.tokenizer, grun, forget, retain, cfg, on_step, until=check)
        timings["unlearn_s"] = time.perf_counter() - start
        after, timings["eval_after_s"] = _timed_evaluation(work, forget, retain, cfg, say, "after")
        gates = {split: gate_values(work.model, work.tokenizer, grun, [it.question for it in items])
                 for split, items in (("forget", forget), ("retain", retain))}
        timings["eval_s"] = timings["eval_before_s"] + timings["eval_after_s"]
    except RunStopped:
        return _stopped(base, cfg, summary, before, losses, timings)
    finally:
        if in_place or not keep_model:
            grun.detach()  # in place: the base is the original model again, whatever happened above
    state = export_state(grun)
    kept = (unlearned_copy(base, state) if in_place else work) if keep_model else None
    return _finished(base, cfg, summary, before, after, forget, retain, losses, timings, patch=state, gates=gates,
                     unlearned_model=kept, until=check.report() if check else None)


# A retain metric that falls below this share of its value before unlearning means the model lost what it should
# keep (lr = 10 took retain keyword accuracy from 1.0 to 0.0 and answered gibberish, and the run said "Done").
COLLAPSE_SHARE = 0.5


def retain_collapse(metrics_: dict) -> str | None:
    """A one-line warning when a finished run's retain keyword accuracy or ROUGE-L recall fell below
    COLLAPSE_SHARE of its value before, with the numbers; None when the retain set held (or nothing to compare)."""
    before = (metrics_.get("before") or {}).get("retain") or {}
    after = (metrics_.get("after") or {}).get("retain") or {}
    fallen = [f"{name.replace('_', ' ')} {before[name]:.2f} -> {after[name]:.2f}"
              for name in ("keyword_accuracy", "rougeL_recall")
              if before.get(name) and after.get(name) is not None and after[name] < COLLAPSE_SHARE * before[name]]
    if not fallen:
        return None
    return ("the retain set collapsed (" + ", ".join(fallen) + "): the model lost what it should keep; "
            "try a smaller learning rate or fewer steps")
