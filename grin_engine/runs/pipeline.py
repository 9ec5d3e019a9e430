"""One unlearning run as the stages every caller composes (DESIGN.md §2):

    before, seconds = evaluate(base, forget, retain, cfg, progress, "before")   # the base model's answers and NLLs
    mask = choose_mask(work, forget, retain, cfg, progress)                    # runs/masks.py: GRIN's mask
    result = finish(base, work, forget, retain, cfg, mask, before, progress)   # train, evaluate after, package

`finish` is the rest of the run: noise and masked unlearning on `work` (`train`), the answers after (`evaluate`), and
the report (`package`), or, when the user stops, what was measured so far. `run()` composes them for the CLI; the
app composes the same stages with what it keeps between visitors (the base evaluation, GRIN's kept scores);
compare and sweep compose them per comparison method (runs/compare.py). `run_grun` is GRUN's run.

The base model is never changed: `work` is a private copy (copy_model), or with in_place=True (the CLI) the base
itself, whose changed entries are written back from their saved values when the run ends, however it ends
(method/patch.trained_in_place, DESIGN.md §2.10).
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field

from ..config import GrinConfig
from ..data import QAItem, require_items
from ..evaluation import metrics
from ..evaluation.evaluate import evaluate_both, evaluate_split, shown_answers
from ..evaluation.until import until_check
from ..events import Progress, Stopped, as_progress
from ..method.grun import GrunState, export_state, gate_values, grun_for, train_grun
from ..method.influence import candidate_parameters
from ..method.patch import WeightPatch, apply_patch, extract_patch, trained_in_place, unlearned_copy
from ..method.training import TrainResult
from ..method.unlearn import TrainingState, unlearn_selected
from ..models import LoadedModel, copy_model
from .masks import Mask, choose_mask


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
    until: dict | None = None  # cfg.until: the target, its checks and the step where it held (ForgetCheck.report)
    fluency: dict | None = None  # {"before"|"after": {split: metrics.fluency_parts}}: loops, non-answers, reasons
    noise: dict | None = None  # masked runs: sigma2 and the selected weights' gradient norm before / after the noise

    def to_report(self) -> dict:
        """The report JSON (a contract: the CLI writes it, the app offers it for download, other tools read it)."""
        return {
            "config": self.config, "model": self.model, "selection": self.selection, "metrics": self.metrics,
            "metrics_per_item": self.metrics_per_item, "forget_quality": self.forget_quality,
            "generations": self.generations, "losses": self.losses, "timings": self.timings, "stopped": self.stopped,
            "gates": self.gates, "until": self.until, "fluency": self.fluency, "noise": self.noise,
        }


def metric_values(evaluation: dict) -> tuple[dict, dict]:
    """An evaluation (evaluate_both) as ({split: {metric: value}}, {split: {metric: [per item]}})."""
    values = {s: {m: r.value for m, r in e["metrics"].items()} for s, e in evaluation.items()}
    per_item = {s: {m: r.per_item for m, r in e["metrics"].items()} for s, e in evaluation.items()}
    return values, per_item


def fluency_details(evaluation: dict) -> dict:
    """Per split of an evaluation: its share of looping answers and of non-answers, and each answer's reason
    (metrics.fluency_parts), the two parts of the fluency metric."""
    return {s: metrics.fluency_parts(e["generations"]) for s, e in evaluation.items()}


# ---------------------------------------------------------------------------------------------------------------------
# The stages


def evaluate(loaded: LoadedModel, forget: list[QAItem], retain: list[QAItem], cfg: GrinConfig, progress: Progress,
             stage: str) -> tuple[dict, float]:
    """Answers and NLLs of `loaded` on both sets, each item reported as `stage`: (evaluation, seconds)."""
    start = time.perf_counter()
    evaluation = evaluate_both(loaded.model, loaded.tokenizer, forget, retain, cfg, on_batch=progress.stage(stage))
    return evaluation, time.perf_counter() - start


def train(work: LoadedModel, forget: list[QAItem], retain: list[QAItem], cfg: GrinConfig, mask: Mask,
          progress: Progress, resume: TrainingState | None = None, last_step: int | None = None) -> TrainResult:
    """Noise on the selected weights of `work`, then masked unlearning (no mask: every candidate, no noise), until
    cfg.steps or, with cfg.until, until the forget set meets the target.

    In pieces (the app on a ZeroGPU Space, where one GPU call has a time limit): `last_step` pauses after that step
    and the result's `state` is where training stands; `resume` continues from such a state on a fresh copy of the
    base with the same mask. The pieces give the numbers of one uninterrupted train (tests/test_pipeline.py)."""
    start = time.perf_counter()
    names = list(candidate_parameters(work.model, cfg.include_embeddings, cfg.include_lm_head))
    check = until_check(work.model, work.tokenizer, forget, cfg)
    if resume is not None:
        if check is not None:
            check.history, check.stopped_at = list(resume.until_history), resume.until_step
        if resume.finished:  # the target held: the values are restored, no step is taken
            last_step = resume.steps_done
    trained = unlearn_selected(work.model, work.tokenizer, forget, retain, cfg, names, mask.masks, progress,
                               until=check, resume=resume, last_step=last_step)
    if resume is not None:
        trained.losses = resume.losses + trained.losses
        trained.until_step = trained.until_step or resume.until_step
    trained.until = check.report() if check else None
    trained.seconds = (resume.seconds if resume else 0.0) + time.perf_counter() - start
    if trained.state is not None:
        trained.state.until_history = list(check.history) if check else []
        trained.state.seconds = trained.seconds
    return trained


def package(base: LoadedModel, cfg: GrinConfig, summary: dict, before: dict, after: dict, forget: list[QAItem],
            retain: list[QAItem], trained: TrainResult, timings: dict, **extra) -> RunResult:
    """A finished run's result: metrics and generations before and after, side by side."""
    values_before, items_before = metric_values(before)
    values_after, items_after = metric_values(after)
    shown = {(when, split): shown_answers(evaluation[split]) for when, evaluation in (("before", before),
                                                                                     ("after", after))
             for split in ("forget", "retain")}
    generations = [
        {"split": split, "question": it.question, "answer": it.answer,
         "before": shown["before", split][i], "after": shown["after", split][i]}
        for split, items in (("forget", forget), ("retain", retain)) for i, it in enumerate(items)
    ]
    timings["eval_s"] = timings.get("eval_before_s", 0.0) + timings.get("eval_after_s", 0.0)
    return RunResult(config=cfg.to_dict(), model=base.facts(), selection=summary,
                     metrics={"before": values_before, "after": values_after},
                     metrics_per_item={"before": items_before, "after": items_after},
                     generations=generations, losses=trained.losses, timings=timings, stopped=False,
                     until=trained.until, noise=trained.noise,
                     fluency={"before": fluency_details(before), "after": fluency_details(after)}, **extra)


def package_stopped(base: LoadedModel, cfg: GrinConfig, summary: dict, before: dict | None, losses: list[float],
                    timings: dict) -> RunResult:
    """What a stopped run reports: what was measured so far, no after-evaluation and no unlearned model."""
    values, per_item = metric_values(before) if before else ({}, {})
    return RunResult(config=cfg.to_dict(), model=base.facts(), selection=summary,
                     metrics={"before": values, "after": None}, metrics_per_item={"before": per_item, "after": None},
                     generations=[], losses=losses, timings=timings, stopped=True,
                     fluency={"before": fluency_details(before) if before else {}, "after": None})


def finish(base: LoadedModel, work: LoadedModel, forget: list[QAItem], retain: list[QAItem], cfg: GrinConfig,
           mask: Mask, before: dict, progress: Progress | None = None, timings: dict | None = None,
           in_place: bool = False, keep_model: bool = False, reference: LoadedModel | None = None,
           resume: TrainingState | None = None) -> RunResult:
    """The rest of a run once the base is evaluated and the mask chosen: train `work`, evaluate it, package.
    `resume`: the training done so far in earlier pieces (see `train`); this trains the rest.

    `timings`: what the earlier stages took (eval_before_s); the mask's own are added. `in_place`: `work` is the
    base, restored exactly when this ends. `keep_model`: the result carries the unlearned model (base + patch).
    `reference`: a model never trained on the forget set, for TOFU's forget quality (KS test on truth ratios)."""
    progress = as_progress(progress)
    timings = {**(timings or {}), **(mask.timings or {})}
    names = list(candidate_parameters(work.model, cfg.include_embeddings, cfg.include_lm_head))
    restoring = trained_in_place(work.model, names, mask.masks) if in_place else contextlib.nullcontext()
    trained = TrainResult()
    try:
        with restoring:  # in place: the base gets its original values back on leaving, however this block ends
            trained = train(work, forget, retain, cfg, mask, progress, resume)
            timings["unlearn_s"] = trained.seconds
            if trained.stopped:
                raise Stopped
            after, timings["eval_after_s"] = evaluate(work, forget, retain, cfg, progress, "after")
            patch = extract_patch(work.model, names, mask.masks)
    except Stopped:
        return package_stopped(base, cfg, mask.summary, before, trained.losses, timings)
    forget_quality = None
    if reference is not None and after["forget"]["truth_ratios"]:
        ref_eval = evaluate_split(reference.model, reference.tokenizer, forget, "forget", cfg.max_new_tokens,
                                  cfg.max_length, layout=cfg.label_layout)
        forget_quality = metrics.forget_quality(after["forget"]["truth_ratios"], ref_eval["truth_ratios"])
    kept = (apply_patch(base, patch) if in_place else work) if keep_model else None
    return package(base, cfg, mask.summary, before, after, forget, retain, trained, timings,
                   forget_quality=forget_quality, patch=patch, unlearned_model=kept)


# ---------------------------------------------------------------------------------------------------------------------
# Whole runs


def run(base: LoadedModel, forget: list[QAItem], retain: list[QAItem], cfg: GrinConfig,
        progress: Progress | None = None, reference: LoadedModel | None = None, keep_model: bool = False,
        in_place: bool = False) -> RunResult:
    """The whole pipeline on a private copy of `base` (or, with in_place=True, on `base` itself, restored exactly).

    progress reports the stages "before", "influence", "select", "unlearn" (with the step's loss), "after"; a Stop
    ends the run there and returns a result with stopped=True, what was measured so far, and no unlearned model.
    in_place: train the selected entries of `base` itself instead of a deep copy, and write their original values
    back when the run ends: bit-identical, no second model in memory. Only for a base that nobody else uses
    meanwhile (the CLI). keep_model and reference: as in `finish`.
    """
    require_items(forget, retain)
    progress = as_progress(progress)
    timings, before = {}, None
    try:
        before, timings["eval_before_s"] = evaluate(base, forget, retain, cfg, progress, "before")
        work = base if in_place else copy_model(base)
        mask = choose_mask(work, forget, retain, cfg, progress)
    except Stopped:
        return package_stopped(base, cfg, {}, before, [], timings)
    return finish(base, work, forget, retain, cfg, mask, before, progress, timings, in_place, keep_model, reference)


def run_grun(base: LoadedModel, forget: list[QAItem], retain: list[QAItem], cfg: GrinConfig,
             progress: Progress | None = None, before: dict | None = None, keep_model: bool = False,
             in_place: bool = False) -> RunResult:
    """GRUN end to end (DESIGN.md §2.9) on a private copy of `base`: gated edits trained, weights untouched.

    Same stages, progress and result as run(), without "influence". The result's `patch` is the trained GRUN as
    CPU data (a GrunState; `patch.unlearned_copy(base, state)` attaches it to a copy of the base), and `gates` holds
    each item's gate value after training. `before`: the base's evaluation, if made earlier. `in_place`: hook the
    edits into `base` itself (no copy) and remove them when the run ends, however it ends; as for run(), only where
    nobody else uses `base` meanwhile.
    """
    require_items(forget, retain)
    progress = as_progress(progress)
    timings, trained = {}, TrainResult()
    # hooks on a shared base would change it for everybody else while we train: a copy unless told otherwise
    work = base if in_place else copy_model(base)
    grun = grun_for(work.model, cfg)
    summary = {"kind": "grun", "layers": list(grun.spec.layers), "rank": int(cfg.grun_rank), "gate": cfg.grun_gate,
               "trainable": sum(p.numel() for p in grun.parameters()),
               "candidates": sum(c.numel for c in candidate_parameters(work.model).values()), "selected": 0}
    try:
        if before is None:  # before the edits are attached (in place, `work` is `base`)
            before, timings["eval_before_s"] = evaluate(base, forget, retain, cfg, progress, "before")
        else:
            timings["eval_before_s"] = 0.0  # evaluated earlier, by the caller
        grun.attach(work.model, work.tokenizer)
        start = time.perf_counter()
        check = until_check(work.model, work.tokenizer, forget, cfg)
        trained = train_grun(work.model, work.tokenizer, grun, forget, retain, cfg, progress, until=check)
        trained.until = check.report() if check else None
        timings["unlearn_s"] = time.perf_counter() - start
        if trained.stopped:
            raise Stopped
        after, timings["eval_after_s"] = evaluate(work, forget, retain, cfg, progress, "after")
        gates = {split: gate_values(work.model, work.tokenizer, grun, [it.question for it in items])
                 for split, items in (("forget", forget), ("retain", retain))}
    except Stopped:
        return package_stopped(base, cfg, summary, before, trained.losses, timings)
    finally:
        if in_place or not keep_model:
            grun.detach()  # in place: the base is the original model again, whatever happened above
    state = export_state(grun)
    kept = (unlearned_copy(base, state) if in_place else work) if keep_model else None
    return package(base, cfg, summary, before, after, forget, retain, trained, timings, patch=state, gates=gates,
                   unlearned_model=kept)


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
