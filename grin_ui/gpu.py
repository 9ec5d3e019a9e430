"""The model work of the app, as calls that a ZeroGPU Space can run on its GPU, each within a time limit.

On a ZeroGPU Space, a function decorated with `spaces.GPU` runs in a worker process that has the GPU for the length
of the call, and ZeroGPU checks the time each call asks for against the visitor's daily quota (docs/SERVING.md,
ZeroGPU). So the work is cut into *parts*: each part is one decorated call that asks for at most `CALL_SECONDS`
(120 s unless GRIN_GPU_CALL_SECONDS says otherwise), takes plain data (model name, QA items, a GrinConfig, a StopFlag
whose state is a file, which the worker process sees too, and what earlier parts returned) and gives back CPU data
only. The base models, loaded and moved to "cuda" in the main process at start (state.preload_models), are only
read. Locally `spaces` is absent and `gpu()` is a no-op: the same parts run in-process, on a GPU when there is one.

    influence_work   one part
    unlearn_work     prepare (the base's answers, the scores; skipped when both are kept) -> training pieces
                     (method/unlearn.TrainingState between them) -> finish (the last steps, the answers after)
    compare_work     the masks of every method -> one part per method
    sweep_work       as many points per part as fit
    attack_work      one part per unlearned model and attack
    generate_work, weights_work: one part

The shared base is never trained in place here (the engine's `in_place=True`, which the CLI uses, would let another
visitor's generation see a half-trained model): every part works on a private copy.

The time a part asks for is computed from its arguments (`spaces.GPU(duration=callable)`): items, answers, steps,
until-checks and the model's size, from per-unit costs measured on an H100 with the default model, scaled by the
parameter count. The same figures plan how many steps or points one part takes.

The *_work functions are generators of messages, in the main process:
    ("progress", the latest event (stage, done, total, *extra), unlearning losses so far)   while working
    ("done", result) | ("stopped", None) | ("error", GrinError)      once, at the end
Exceptions are turned into an ("error", ...) message so that a worker never sends a traceback or an object that
cannot be pickled back; a Stop pressed between two parts ends the work before the next one starts.
"""

from __future__ import annotations

import logging
import math
import os

from grin_engine.attacks import attack_unlearned
from grin_engine.benchmarks.tofu import run_tofu
from grin_engine.config import GrinConfig
from grin_engine.data import QAItem
from grin_engine.errors import GrinError
from grin_engine.evaluation.evaluate import generate_answers, shown_answer
from grin_engine.events import Progress, Stopped
from grin_engine.memory import release_gpu_cache
from grin_engine.method.grun import GrunState, save_grun
from grin_engine.method.influence import compute_influence_scores
from grin_engine.method.patch import WeightPatch, apply_patch, unlearned_copy
from grin_engine.method.score_cache import KEEP, TopScores
from grin_engine.method.score_summary import score_histograms
from grin_engine.models import copy_model, save_weights
from grin_engine.runs import compare, pipeline, sweep
from grin_engine.runs.masks import choose_mask, method_selection, missing_scores
from grin_engine.runs.methods import METHODS
from grin_engine.runs.pipeline import RunResult

from .jobs import Job
from .state import STORE, StopFlag

log = logging.getLogger("grin_ui")

try:  # on a ZeroGPU Space, spaces.GPU gives the decorated function a GPU; locally it is absent
    import spaces
except ImportError:
    spaces = None


def gpu(duration):
    """spaces.GPU(duration=...) on a ZeroGPU Space, else a no-op decorator. `duration`: seconds, or a function of
    the decorated function's arguments that returns them."""
    return spaces.GPU(duration=duration) if spaces is not None else (lambda fn: fn)


# ---------------------------------------------------------------------------------------------------------------------
# How long a part takes, and how much work one part may take

# Seconds per unit of work for the default 135M model on one H100 (docs/RESULTS.md, rounded up): one answer of 48
# tokens generated in a memory-sized batch, one item's gradients, one unlearning step; plus a fixed allowance per
# call (ZeroGPU's worker start, the model copy).
GPU_SECONDS = {"answer": 0.05, "gradient_item": 0.08, "step": 0.4, "start": 30.0}
CALL_SECONDS = int(os.environ.get("GRIN_GPU_CALL_SECONDS", "120"))  # the most one call asks for
DEFAULT_PARAMETERS = 135e6


def _model_scale(model_name: str) -> float:
    """How much bigger than the default the named model is (1 when it is not in memory: nothing is loaded here)."""
    loaded = STORE.loaded(model_name)
    if loaded is None:
        return 1.0
    return max(1.0, sum(p.numel() for p in loaded.model.parameters()) / DEFAULT_PARAMETERS)


def work_seconds(model_name: str, answers: float = 0, gradient_items: int = 0, steps: float = 0) -> float:
    """The GPU seconds of some work, without the per-call allowance: units at the default model's rates, times
    the model's scale. `answers` counts answers of 48 tokens."""
    return (answers * GPU_SECONDS["answer"] + gradient_items * GPU_SECONDS["gradient_item"]
            + steps * GPU_SECONDS["step"]) * _model_scale(model_name)


def call_seconds(work: float) -> int:
    """The time one call asks for: the allowance plus its work, at most CALL_SECONDS."""
    return int(min(CALL_SECONDS, math.ceil(GPU_SECONDS["start"] + work)))


def require_fits(work: float, what: str) -> None:
    """On a ZeroGPU Space, refuse now (not after minutes of queueing) a part that cannot be split further and needs
    more than one call may take."""
    if spaces is not None and GPU_SECONDS["start"] + work > CALL_SECONDS:
        raise GrinError(f"{what} needs about {GPU_SECONDS['start'] + work:.0f} s of GPU time in one call; a call on "
                        f"this Space takes at most {CALL_SECONDS} s: use fewer items, steps or answer tokens")


def answers(items: int, cfg: GrinConfig) -> float:
    """Answers of `items` questions at cfg.max_new_tokens, in 48-token answers."""
    return items * cfg.max_new_tokens / 48


def step_work(model_name: str, forget: list, cfg: GrinConfig) -> float:
    """One unlearning step, with its share of the until-checks (each answers the forget set every until_every
    steps)."""
    checks = answers(len(forget), cfg) / cfg.until_every if cfg.until else 0.0
    return work_seconds(model_name, answers=checks, steps=1)


def per_call(unit: float, room: float) -> int:
    """How many units of `unit` seconds fit in one call beside `room` seconds of other work (at least one)."""
    return max(1, int((CALL_SECONDS - GPU_SECONDS["start"] - room) // max(unit, 1e-9)))


# ---------------------------------------------------------------------------------------------------------------------
# Running a part: a thread for the work, its events as messages, a part's outcome back to the composing generator


def _as_user_error(exc: BaseException) -> GrinError:
    if isinstance(exc, GrinError):
        return exc
    log.error("unexpected error in model work", exc_info=exc)  # the traceback goes to the server log only
    first = (str(exc).strip().splitlines() or [""])[0][:300]
    return GrinError(f"Unexpected {type(exc).__name__}: {first}")


def _stream(work, stop: StopFlag):
    """Run work(progress) in a thread (jobs.Job) and turn its events and outcome into messages; `progress` sends
    its updates to the thread's queue and carries the visitor's Stop. The GPU's cached memory is handed back at the
    end (a server runs job after job: memory.release_gpu_cache)."""
    try:
        job = Job(lambda callback: work(Progress(callback, stop.is_set)), stop)
        for event in job.updates():
            yield "progress", event, [e[3] for e in job.history if e[0] == "unlearn"]
        try:
            yield "done", job.result
        except Stopped:
            yield "stopped", None
        except Exception as exc:
            yield "error", _as_user_error(exc)
    finally:
        release_gpu_cache()


def _part(messages, losses_before: list[float] = ()):
    """Forward a part's progress messages (its unlearning losses after `losses_before`: a run trained in pieces
    shows one curve) and return its outcome, (kind, value)."""
    for message in messages:
        if message[0] != "progress":
            return message
        yield "progress", message[1], list(losses_before) + message[2]
    return "error", GrinError("the GPU work ended without a result")


# ---------------------------------------------------------------------------------------------------------------------
# Influence


def influence_seconds(model_name, forget, retain, stop) -> int:
    return call_seconds(work_seconds(model_name, gradient_items=len(forget) + len(retain)))


@gpu(duration=influence_seconds)
def influence_work(model_name: str, forget: list[QAItem], retain: list[QAItem], stop: StopFlag):
    """Influence scores on a copy of the base, kept as per-matrix histograms (the Influence tab's preview) and as the
    top KEEP of the scores (method/score_cache.TopScores: any p up to KEEP re-selected exactly, with no gradients):
    done -> (histograms, top scores)."""
    def work(progress):
        copy = copy_model(STORE.get(model_name))  # gradients need a model nobody else reads meanwhile
        scores = compute_influence_scores(copy.model, copy.tokenizer, forget, retain, GrinConfig(),
                                          on_batch=progress.stage("influence"))
        top = TopScores.from_scores(scores.scores, scores.candidates, seconds=scores.seconds)
        progress("summary", 0, 1)
        return score_histograms(scores.scores, scores.candidates), top  # the scores and the copy are dropped here

    yield from _stream(work, stop)


# ---------------------------------------------------------------------------------------------------------------------
# Unlearn: prepare -> training pieces -> finish


def prepare_seconds(model_name, forget, retain, cfg, before, top, stop) -> int:
    return call_seconds(work_seconds(model_name, answers=0 if before else answers(len(forget) + len(retain), cfg),
                                     gradient_items=0 if top is not None else len(forget) + len(retain)))


@gpu(duration=prepare_seconds)
def prepare_part(model_name: str, forget: list[QAItem], retain: list[QAItem], cfg: GrinConfig, before: dict | None,
                 top: TopScores | None, stop: StopFlag):
    """What a run needs before training: the base's evaluation (unless given) and GRIN's kept scores, covering
    max(p, KEEP) (unless `top` covers p): done -> (evaluation, its seconds, kept scores, scoring seconds)."""
    def work(progress):
        base = STORE.get(model_name)
        evaluated, before_s = (before, 0.0) if before else pipeline.evaluate(base, forget, retain, cfg, progress,
                                                                             "before")
        kept = {"grin": top} if top is not None else None
        scoring = cfg.use_mask and missing_scores([METHODS["grin"]], kept, max(cfg.p, KEEP))
        work_model = copy_model(base) if scoring else base  # gradients need a private copy; a selection only reads
        mask = choose_mask(work_model, forget, retain, cfg, progress, kept=top, keep=KEEP)
        return evaluated, before_s, mask.top, mask.timings

    yield from _stream(work, stop)


def piece_seconds(model_name, forget, retain, cfg, top, state, last_step, stop) -> int:
    done = state.steps_done if state is not None else 0
    return call_seconds((last_step - done) * step_work(model_name, forget, cfg))


def _restored(model_name: str, forget, retain, cfg: GrinConfig, top: TopScores | None, progress):
    """A private copy of the base and the run's mask, as every part of a run starts (the mask from the kept scores:
    bit for bit the one the run started with; re-selected silently, so the page's progress does not step back)."""
    base = STORE.get(model_name)
    work_model = copy_model(base)
    silent = Progress(None, progress.stop_requested)
    return base, work_model, choose_mask(work_model, forget, retain, cfg, silent, kept=top, keep=KEEP)


@gpu(duration=piece_seconds)
def train_part(model_name: str, forget: list[QAItem], retain: list[QAItem], cfg: GrinConfig, top: TopScores | None,
               state, last_step: int, stop: StopFlag):
    """Training up to `last_step`, from `state` (None: the first piece, which adds the noise): done -> the new
    TrainingState, or, when the visitor stopped, the stopped run's RunResult (the losses so far)."""
    def work(progress):
        base, work_model, mask = _restored(model_name, forget, retain, cfg, top, progress)
        trained = pipeline.train(work_model, forget, retain, cfg, mask, progress, state, last_step)
        if trained.stopped:
            return pipeline.package_stopped(base, cfg, mask.summary, None, trained.losses,
                                            {"unlearn_s": trained.seconds})
        return trained.state

    yield from _stream(work, stop)


def finish_seconds(model_name, forget, retain, cfg, top, state, evaluated, timings, stop) -> int:
    done = state.steps_done if state is not None and not state.finished else (cfg.steps if state else 0)
    return call_seconds((cfg.steps - done) * step_work(model_name, forget, cfg)
                        + work_seconds(model_name, answers=answers(len(forget) + len(retain), cfg)))


@gpu(duration=finish_seconds)
def finish_part(model_name: str, forget: list[QAItem], retain: list[QAItem], cfg: GrinConfig, top: TopScores | None,
                state, evaluated: dict, timings: dict, stop: StopFlag):
    """The run's last steps from `state` (None: all of them), the answers after and the report: done -> RunResult
    (its patch: what the run changed)."""
    def work(progress):
        base, work_model, mask = _restored(model_name, forget, retain, cfg, top, progress)
        mask.timings = {**mask.timings, **timings}  # the prepare part's scoring times, where it had to score
        return pipeline.finish(base, work_model, forget, retain, cfg, mask, evaluated, progress, timings,
                               resume=state)

    yield from _stream(work, stop)


def training_pieces(model_name: str, forget: list, retain: list, cfg: GrinConfig) -> list[int]:
    """The last step of each training piece before the finish part, so that every part fits one call: the finish
    part trains what is left beside the answers after (maybe nothing)."""
    step = step_work(model_name, forget, cfg)
    in_piece = per_call(step, 0.0)
    after = work_seconds(model_name, answers=answers(len(forget) + len(retain), cfg))
    in_finish = max(0, int((CALL_SECONDS - GPU_SECONDS["start"] - after) // max(step, 1e-9)))
    ends, done = [], 0
    while cfg.steps - done > in_finish:
        done = min(done + in_piece, cfg.steps)
        ends.append(done)
    return ends


def unlearn_work(model_name: str, forget: list[QAItem], retain: list[QAItem], cfg: GrinConfig,
                 before: dict | None, stop: StopFlag, top: TopScores | None = None):
    """One GRIN run on copies of the base, in parts: done -> (base evaluation, RunResult, kept scores), or
    (None, None, None) when stopped before training. Re-used when given: `before`, an earlier evaluation of the base
    on the same items and lengths; `top`, the same items' kept scores (a mask from them equals a fresh one bit for
    bit). The kept scores come back for the next run: `top`, or the new ones when there were none (scores kept
    before stay kept: the Influence tab's come with their histograms)."""
    require_fits(work_seconds(model_name, answers=answers(len(forget) + len(retain), cfg),
                              gradient_items=len(forget) + len(retain)), "preparing this run")
    require_fits(work_seconds(model_name, answers=answers(len(forget) + len(retain), cfg)) +
                 step_work(model_name, forget, cfg), "this run's answers after unlearning")
    timings, given = {"eval_before_s": 0.0}, top
    if before is None or (cfg.use_mask and (top is None or not top.covers(cfg.p))):
        kind, value = yield from _part(prepare_part(model_name, forget, retain, cfg, before, top, stop))
        if kind == "stopped":
            yield "done", (None, None, None)
            return
        if kind != "done":
            yield kind, value
            return
        before, timings["eval_before_s"], top, mask_timings = value
        timings.update(mask_timings or {})
    state = None
    for last_step in training_pieces(model_name, forget, retain, cfg):
        if stop.is_set():  # between two parts: no GPU call is asked for
            break
        if state is not None and state.finished:
            break
        kind, value = yield from _part(train_part(model_name, forget, retain, cfg, top, state, last_step, stop),
                                       state.losses if state else [])
        if kind != "done":
            yield kind, value
            return
        if isinstance(value, RunResult):  # the visitor's Stop, during training
            yield "done", (before, _stopped_from(value, before), kept_before(given, top))
            return
        state = value
    if stop.is_set():
        stopped = pipeline.package_stopped(STORE.get(model_name), cfg, {}, before, state.losses if state else [],
                                           {**timings, "unlearn_s": state.seconds if state else 0.0})
        yield "done", (before, stopped, kept_before(given, top))
        return
    kind, value = yield from _part(finish_part(model_name, forget, retain, cfg, top, state, before, timings, stop),
                                   state.losses if state else [])
    yield (kind, (before, value, kept_before(given, top))) if kind == "done" else (kind, value)


def kept_before(given: TopScores | None, new: TopScores | None) -> TopScores | None:
    return given if given is not None else new


def _stopped_from(result: RunResult, before: dict) -> RunResult:
    """A training piece's stopped result with the base's metrics (the piece itself had no evaluation)."""
    values, per_item = pipeline.metric_values(before)
    result.metrics["before"], result.metrics_per_item["before"] = values, per_item
    return result


# ---------------------------------------------------------------------------------------------------------------------
# Compare methods: the masks of every method -> one part per method


def masks_seconds(model_name, forget, retain, cfg, methods, before, top, stop) -> int:
    return call_seconds(work_seconds(model_name, answers=0 if before else answers(len(forget) + len(retain), cfg),
                                     gradient_items=len(forget) + len(retain)))


@gpu(duration=masks_seconds)
def masks_part(model_name: str, forget: list[QAItem], retain: list[QAItem], cfg: GrinConfig, methods: list[str],
               before: dict | None, top: TopScores | None, stop: StopFlag):
    """The base's evaluation (unless given), every method's kept scores at p, and what the comparison reports about
    the masks: done -> (evaluation, its seconds, kept scores, overlaps, selected counts, model facts)."""
    def work(progress):
        base = STORE.get(model_name)
        evaluated, before_s = (before, 0.0) if before else pipeline.evaluate(base, forget, retain, cfg, progress,
                                                                             "before")
        selections, tops = compare.method_masks(base, forget, retain, cfg, [METHODS[m] for m in methods], progress,
                                                kept={"grin": top} if top is not None else None)
        overlap, selected = compare.mask_overlaps(selections)
        return evaluated, before_s, tops, overlap, selected, base.facts()

    yield from _stream(work, stop)


def method_work(model_name: str, forget: list, retain: list, cfg: GrinConfig, method: str) -> float:
    steps = cfg.grun_steps if METHODS[method].mask == "grun" else cfg.steps
    return steps * step_work(model_name, forget, cfg) + work_seconds(
        model_name, answers=answers(len(forget) + len(retain), cfg))


def method_seconds(model_name, forget, retain, cfg, method, before, tops, stop) -> int:
    return call_seconds(method_work(model_name, forget, retain, cfg, method))


@gpu(duration=method_seconds)
def method_part(model_name: str, forget: list[QAItem], retain: list[QAItem], cfg: GrinConfig, method: str,
                before: dict, tops: dict, stop: StopFlag):
    """One method's run from the shared evaluation and kept scores: done -> RunResult, with its patch when small
    (masked methods and GRUN: a few MB, for the Attack tab; not an unmasked run's, the size of the model)."""
    def work(progress):
        base = STORE.get(model_name)
        entry = METHODS[method]
        selection = method_selection(entry, tops, base, cfg)
        result = compare.run_method(entry, base, forget, retain, cfg, before, selection, progress.within(method))
        if not _small_patch(result.patch):
            result.patch = None
        return result

    yield from _stream(work, stop)


def compare_work(model_name: str, forget: list[QAItem], retain: list[QAItem], cfg: GrinConfig, methods: list[str],
                 stop: StopFlag, before: dict | None = None, top: TopScores | None = None):
    """Several methods on the same data (runs/compare.py), one part per method: done -> (base evaluation,
    Comparison); (None, None) when stopped while answering with the base. `before` and `top` as in unlearn_work."""
    for method in methods:
        require_fits(method_work(model_name, forget, retain, cfg, method), f"the {method} run")
    kind, value = yield from _part(masks_part(model_name, forget, retain, cfg, methods, before, top, stop))
    if kind == "stopped":
        yield "done", (None, None)
        return
    if kind != "done":
        yield kind, value
        return
    before, before_s, tops, overlap, selected, facts = value
    results, stopped = {}, False
    for method in methods:
        if stop.is_set():
            stopped = True
            break
        kind, result = yield from _part(method_part(model_name, forget, retain, cfg, method, before, tops, stop))
        if kind == "stopped":
            stopped = True
            break
        if kind != "done":
            yield kind, result
            return
        results[method] = result
        if result.stopped:
            stopped = True
            break
    timings = {"eval_before_s": before_s} if before_s else {}
    comparison = compare.Comparison(config=cfg.to_dict(), model=facts, results=results, overlap=overlap,
                                    masks_selected={m: selected[m] for m in methods if m in selected},
                                    timings=timings, stopped=stopped)
    yield "done", (before, comparison)


# ---------------------------------------------------------------------------------------------------------------------
# Sweep: as many points per part as fit


def point_work(model_name: str, forget: list, retain: list, cfg: GrinConfig, grid) -> float:
    """The costliest point of the grid: its steps (with until-checks) and its answers."""
    steps = max(max(grid.grun_steps) if METHODS[m].mask == "grun" else max(grid.steps) for m in grid.methods)
    return steps * step_work(model_name, forget, cfg) + work_seconds(
        model_name, answers=answers(len(forget) + len(retain), cfg))


def sweep_seconds(model_name, forget, retain, cfg, grid, out, stop, before, kept, limit) -> int:
    items = len(forget) + len(retain)
    start = work_seconds(model_name, answers=0 if before else answers(items, cfg),
                         gradient_items=0 if kept else items)
    return call_seconds(start + limit * point_work(model_name, forget, retain, cfg, grid))


@gpu(duration=sweep_seconds)
def sweep_part(model_name: str, forget: list[QAItem], retain: list[QAItem], cfg: GrinConfig, grid, out: str,
               stop: StopFlag, before: dict | None, kept: dict | None, limit: int):
    """Up to `limit` more points of the grid (runs/sweep.py), each appended to the JSON-lines file `out` as it
    finishes (the page reads the points from there while the sweep runs): done -> SweepResult (CPU data, with the
    kept scores the next part re-uses)."""
    def work(progress):
        return sweep.sweep(STORE.get(model_name), forget, retain, cfg, grid, out, progress=progress, before=before,
                           kept=kept, limit=limit)

    yield from _stream(work, stop)


def sweep_work(model_name: str, forget: list[QAItem], retain: list[QAItem], cfg: GrinConfig, grid, out: str,
               stop: StopFlag, before: dict | None = None, top: TopScores | None = None):
    """A grid of runs in parts of as many points as fit one call: done -> SweepResult. `before` and `top` as in
    unlearn_work (a continued sweep has its base evaluation in `out` already)."""
    unit = point_work(model_name, forget, retain, cfg, grid)
    require_fits(unit, "one point of this sweep")
    items = len(forget) + len(retain)
    kept = {"grin": top} if top is not None else None
    first_room = work_seconds(model_name, answers=0 if before else answers(items, cfg), gradient_items=items)
    limit, skipped = per_call(unit, first_room), None
    while True:
        kind, result = yield from _part(sweep_part(model_name, forget, retain, cfg, grid, out, stop, before, kept,
                                                   limit))
        if kind != "done":
            yield kind, result
            return
        skipped = result.skipped if skipped is None else skipped  # found in the file before this sweep started
        if result.finished or result.stopped or stop.is_set():
            result.stopped, result.skipped = not result.finished, skipped
            result.kept = None  # the scores stay in the server's cache, not in the visitor's session
            yield "done", result
            return
        kept, before, limit = result.kept, None, per_call(unit, 0.0)


# ---------------------------------------------------------------------------------------------------------------------
# Attack: one part per unlearned model and attack


def attack_units(name: str, forget: list, retain: list, cfg: GrinConfig, acfg) -> tuple[float, float]:
    """(answers, training steps) of one attack on one unlearned model: every attack answers the forget and retain
    sets again (sampling: `samples` answers per question; prompting: one set per prompt variant, counted as 2)."""
    items = len(forget) + len(retain)
    if name == "relearn":
        return answers(items, cfg) * 2, acfg.relearn_steps
    if name.startswith("sample"):
        return answers(len(forget), cfg) * acfg.samples + answers(len(retain), cfg), 0
    return answers(items, cfg) * 2, 0


def attack_seconds(model_name, forget, retain, cfg, one, name, acfg, stop) -> int:
    n_answers, steps = attack_units(name, forget, retain, cfg, acfg)
    return call_seconds(work_seconds(model_name, answers=n_answers, steps=steps))


@gpu(duration=attack_seconds)
def attack_part(model_name: str, forget: list[QAItem], retain: list[QAItem], cfg: GrinConfig, one, name: str, acfg,
                stop: StopFlag):
    """One attack on one unlearned model (base + its patch, on a copy): done -> [AttackResult] (plain data)."""
    def work(progress):
        return attack_unlearned(STORE.get(model_name), [one], forget, retain, cfg, [name], acfg, progress)

    yield from _stream(work, stop)


def attack_work(model_name: str, forget: list[QAItem], retain: list[QAItem], cfg: GrinConfig, unlearned: list,
                names: list[str], acfg, stop: StopFlag):
    """The named attacks (grin_engine/attacks/) on each unlearned model, one part each: done -> list of
    AttackResult. Stop ends the work at its next batch or step, or before the next part."""
    for name in names:
        n_answers, steps = attack_units(name, forget, retain, cfg, acfg)
        require_fits(work_seconds(model_name, answers=n_answers, steps=steps), f"the {name} attack")
    results = []
    for one in unlearned:
        for name in names:
            if stop.is_set():
                yield "stopped", None
                return
            kind, value = yield from _part(attack_part(model_name, forget, retain, cfg, one, name, acfg, stop))
            if kind != "done":
                yield kind, value
                return
            results += value
    yield "done", results


# ---------------------------------------------------------------------------------------------------------------------
# Short calls


def _answer(loaded, prompt: str, max_new_tokens: int) -> str:
    """One greedy answer, marked where it hit the token limit (evaluation/evaluate.shown_answer)."""
    answers_, cut = generate_answers(loaded.model, loaded.tokenizer, [prompt], max_new_tokens, return_cut=True)
    return shown_answer(answers_[0], cut[0])


def generate_seconds(model_name, prompt, patch, max_new_tokens) -> int:
    return call_seconds(work_seconds(model_name, answers=2 * max_new_tokens / 48) + 30)  # + building base + patch


@gpu(duration=generate_seconds)
def generate_work(model_name: str, prompt: str, patch: WeightPatch | None, max_new_tokens: int):
    """The prompt answered by the base model and, when there is a patch, by base + patch: (before, after | None)."""
    try:
        base = STORE.get(model_name)
        before = _answer(base, prompt, max_new_tokens)
        if patch is None:
            return before, None
        return before, _answer(unlearned_copy(base, patch), prompt, max_new_tokens)  # base + what the run changed
    except Exception as exc:
        raise _as_user_error(exc) from None
    finally:
        release_gpu_cache()


@gpu(duration=min(CALL_SECONDS, 120))
def weights_work(model_name: str, patch: WeightPatch, path: str) -> str:
    """base + patch written to `path` as one .safetensors file."""
    try:
        if isinstance(patch, GrunState):  # GRUN changed no weight: its file is the edits (a few MB)
            return save_grun(patch, path, model_name)
        return save_weights(apply_patch(STORE.get(model_name), patch).model, path)
    except Exception as exc:
        raise _as_user_error(exc) from None
    finally:
        release_gpu_cache()


def tofu_work(model_name: str, recipe, methods: list[str], cfg: GrinConfig, stop: StopFlag):
    """The TOFU protocol (benchmarks/tofu.py) on the base: done -> the report (a dict); stopped on Stop. It
    fine-tunes two models for tens of minutes, so a ZeroGPU Space, whose calls are short, does not run it."""
    if spaces is not None:
        yield "error", GrinError(f"the TOFU protocol fine-tunes two models (tens of minutes of GPU time); a call on "
                                 f"this Space takes at most {CALL_SECONDS} s. Run `python -m grin_engine tofu` "
                                 f"locally and open its report here")
        return

    def work(progress):
        result = run_tofu(STORE.get(model_name), recipe, methods, cfg, progress=progress)
        total = sum(v for k, v in result["timings"].items() if k.endswith("_s"))
        result["timings"]["total_s"] = total
        return result

    yield from _stream(work, stop)


PATCH_KEEP_MAX = 20_000_000  # numbers; a comparison keeps the patches up to this size (p = 1%: ~1 M; full: all)


def _small_patch(patch) -> bool:
    return isinstance(patch, GrunState) or (isinstance(patch, WeightPatch) and patch.numel() <= PATCH_KEEP_MAX)
