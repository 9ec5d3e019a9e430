"""The model work of the app, as self-contained calls that a ZeroGPU Space can run on its GPU.

On a ZeroGPU Space, a function decorated with `spaces.GPU` runs in a worker process that has the GPU for the length
of the call. So each function here does a whole piece of work in one call, takes plain data (model name, QA items,
a GrinConfig, a StopFlag whose state is a file, which the worker process sees too) and gives back CPU data only
(histograms, a RunResult with its patch). The base model, loaded in the main process on the "cuda" device that
ZeroGPU provides, is only read. Locally `spaces` is absent and `gpu()` is a no-op: the same code runs in-process,
on a GPU when there is one.

The shared base is never trained in place here (the engine's `in_place=True`, which the CLI uses, would let another
visitor's generation see a half-trained model): every run and every score computation works on a private copy.

The GPU time each call asks ZeroGPU for is computed from its arguments (`spaces.GPU(duration=callable)`): items,
steps and the model's size, from per-item and per-step costs measured on an H100 with the default model,
scaled by the parameter count; a shorter request gets a visitor through ZeroGPU's queue sooner.

The long ones are generators of messages:
    ("progress", the latest event (stage, done, total, *extra), unlearning losses so far)   while working
    ("done", result) | ("stopped", None) | ("error", GrinError)      once, at the end
Exceptions are turned into an ("error", ...) message so that a worker never sends a traceback or an object that
cannot be pickled back.
"""

from __future__ import annotations

import logging

from grin_engine.attacks import attack_unlearned
from grin_engine.benchmarks.tofu import run_tofu
from grin_engine.config import GrinConfig
from grin_engine.data import QAItem
from grin_engine.errors import GrinError
from grin_engine.evaluation.evaluate import generate_answers, shown_answer
from grin_engine.events import Progress, Stopped
from grin_engine.method.grun import GrunState, save_grun
from grin_engine.method.influence import compute_influence_scores
from grin_engine.method.patch import WeightPatch, apply_patch, unlearned_copy
from grin_engine.method.score_cache import KEEP, TopScores
from grin_engine.method.score_summary import score_histograms
from grin_engine.models import copy_model, save_weights
from grin_engine.runs import compare, pipeline, sweep
from grin_engine.runs.masks import choose_mask

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


# Seconds per unit of work for the default 135M model on one H100 (docs/RESULTS.md, rounded up): one answer
# generated in a memory-sized batch, one item's gradients, one unlearning step; plus a fixed start-up allowance.
GPU_SECONDS = {"answer": 0.05, "gradient_item": 0.08, "step": 0.4, "start": 30.0}
MAX_GPU_SECONDS = 1200
DEFAULT_PARAMETERS = 135e6


def _model_scale(model_name: str) -> float:
    """How much bigger than the default the named model is (1 when it is not loaded in this process yet)."""
    loaded = getattr(STORE, "_current", None)  # read only: the duration must not load a model
    if loaded is None or loaded.name != model_name:
        return 1.0
    return max(1.0, sum(p.numel() for p in loaded.model.parameters()) / DEFAULT_PARAMETERS)


def gpu_seconds(model_name: str, answers: int = 0, gradient_items: int = 0, steps: int = 0) -> int:
    """The GPU time to ask for: start-up + the work's units at the default model's rates, times the model's scale."""
    work = (answers * GPU_SECONDS["answer"] + gradient_items * GPU_SECONDS["gradient_item"]
            + steps * GPU_SECONDS["step"])
    return int(min(MAX_GPU_SECONDS, GPU_SECONDS["start"] + work * _model_scale(model_name)))


def influence_seconds(model_name, forget, retain, stop) -> int:
    return gpu_seconds(model_name, gradient_items=len(forget) + len(retain))


def unlearn_seconds(model_name, forget, retain, cfg, before, stop, top=None) -> int:
    items = len(forget) + len(retain)
    answers = items * (1 if before else 2) * cfg.max_new_tokens / 48  # the base's answers may come cached
    return gpu_seconds(model_name, answers=answers, gradient_items=items, steps=cfg.steps)


def compare_seconds(model_name, forget, retain, cfg, methods, stop, before=None, top=None) -> int:
    items, runs = len(forget) + len(retain), len(methods)
    return gpu_seconds(model_name, answers=items * (runs + (0 if before else 1)) * cfg.max_new_tokens / 48,
                       gradient_items=items,
                       steps=runs * max(cfg.steps, cfg.grun_steps))


def sweep_seconds(model_name, forget, retain, cfg, grid, out, stop, before=None, top=None) -> int:
    items, points = len(forget) + len(retain), len(grid.points())
    return gpu_seconds(model_name, answers=items * (1 + points) * cfg.max_new_tokens / 48, gradient_items=items,
                       steps=points * max(max(grid.steps), max(grid.grun_steps)))


def generate_seconds(model_name, prompt, patch, max_new_tokens) -> int:
    return gpu_seconds(model_name, answers=2 * max_new_tokens / 48) + 30  # + building base + patch


def _as_user_error(exc: BaseException) -> GrinError:
    if isinstance(exc, GrinError):
        return exc
    log.error("unexpected error in model work", exc_info=exc)  # the traceback goes to the server log only
    first = (str(exc).strip().splitlines() or [""])[0][:300]
    return GrinError(f"Unexpected {type(exc).__name__}: {first}")


def _stream(work, stop: StopFlag):
    """Run work(progress) in a thread (jobs.Job) and turn its events and outcome into messages; `progress` sends
    its updates to the thread's queue and carries the visitor's Stop."""
    job = Job(lambda callback: work(Progress(callback, stop.is_set)), stop)
    for event in job.updates():
        yield "progress", event, [e[3] for e in job.history if e[0] == "unlearn"]
    try:
        yield "done", job.result
    except Stopped:
        yield "stopped", None
    except Exception as exc:
        yield "error", _as_user_error(exc)


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


@gpu(duration=unlearn_seconds)
def unlearn_work(model_name: str, forget: list[QAItem], retain: list[QAItem], cfg: GrinConfig,
                 before: dict | None, stop: StopFlag, top: TopScores | None = None):
    """One GRIN run on a copy of the base, composed of the pipeline's stages with what the server keeps between
    visitors: done -> (base evaluation, RunResult, kept scores), or (None, None, None) when stopped before training.
    Re-used when given: `before`, an earlier evaluation of the base on the same items and lengths; `top`, the same
    items' kept scores (a mask from them equals a fresh one bit for bit). The kept scores come back for the next
    run: `top`, or the new ones when there were none."""
    def work(progress):
        base = STORE.get(model_name)
        try:
            evaluated, before_s = (before, 0.0) if before else pipeline.evaluate(base, forget, retain, cfg, progress,
                                                                                 "before")
            work_model = copy_model(base)  # the run's private copy: gradients, noise and training happen here
            mask = choose_mask(work_model, forget, retain, cfg, progress, kept=top, keep=KEEP)
        except Stopped:
            return None, None, None
        result = pipeline.finish(base, work_model, forget, retain, cfg, mask, evaluated, progress,
                                 {"eval_before_s": before_s})  # the run's changes come back as result.patch
        return evaluated, result, top if top is not None else mask.top  # scores kept before stay kept

    yield from _stream(work, stop)


@gpu(duration=compare_seconds)
def compare_work(model_name: str, forget: list[QAItem], retain: list[QAItem], cfg: GrinConfig, methods: list[str],
                 stop: StopFlag, before: dict | None = None, top: TopScores | None = None):
    """Several methods on the same data (runs/compare.py): done -> (base evaluation, Comparison), with the patches
    of the masked methods and GRUN (a few MB, for the Attack tab) but not an unmasked run's (the size of the model);
    (None, None) when stopped while answering with the base. `before` and `top` as in unlearn_work."""
    def work(progress):
        base = STORE.get(model_name)
        try:
            evaluated = before or pipeline.evaluate(base, forget, retain, cfg, progress, "before")[0]
        except Stopped:
            return None, None
        comparison = compare.compare(base, forget, retain, cfg, methods, progress, before=evaluated,
                                     kept={"grin": top} if top is not None else None)
        for result in comparison.results.values():
            if not _small_patch(result.patch):
                result.patch = None
        return evaluated, comparison

    yield from _stream(work, stop)


@gpu(duration=sweep_seconds)
def sweep_work(model_name: str, forget: list[QAItem], retain: list[QAItem], cfg: GrinConfig, grid, out: str,
               stop: StopFlag, before: dict | None = None, top: TopScores | None = None):
    """A grid of runs (runs/sweep.py), each finished point appended to the JSON-lines file `out` as it finishes
    (the page reads the points from there while the sweep runs): done -> SweepResult (CPU data). `before` and
    `top` as in unlearn_work (a continued sweep has its base evaluation in `out` already)."""
    def work(progress):
        return sweep.sweep(STORE.get(model_name), forget, retain, cfg, grid, out, progress=progress, before=before,
                           kept={"grin": top} if top is not None else None)

    yield from _stream(work, stop)


def _answer(loaded, prompt: str, max_new_tokens: int) -> str:
    """One greedy answer, marked where it hit the token limit (evaluation/evaluate.shown_answer)."""
    answers, cut = generate_answers(loaded.model, loaded.tokenizer, [prompt], max_new_tokens, return_cut=True)
    return shown_answer(answers[0], cut[0])


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


@gpu(duration=120)
def weights_work(model_name: str, patch: WeightPatch, path: str) -> str:
    """base + patch written to `path` as one .safetensors file."""
    try:
        if isinstance(patch, GrunState):  # GRUN changed no weight: its file is the edits (a few MB)
            return save_grun(patch, path, model_name)
        return save_weights(apply_patch(STORE.get(model_name), patch).model, path)
    except Exception as exc:
        raise _as_user_error(exc) from None


@gpu(duration=3600)
def tofu_work(model_name: str, recipe, methods: list[str], cfg: GrinConfig, stop: StopFlag):
    """The TOFU protocol (benchmarks/tofu.py) on the base: done -> the report (a dict); stopped on Stop."""
    def work(progress):
        result = run_tofu(STORE.get(model_name), recipe, methods, cfg, progress=progress)
        total = sum(v for k, v in result["timings"].items() if k.endswith("_s"))
        result["timings"]["total_s"] = total
        return result

    yield from _stream(work, stop)


PATCH_KEEP_MAX = 20_000_000  # numbers; a comparison keeps the patches up to this size (p = 1%: ~1 M; full: all)


def _small_patch(patch) -> bool:
    return isinstance(patch, GrunState) or (isinstance(patch, WeightPatch) and patch.numel() <= PATCH_KEEP_MAX)


@gpu(duration=1200)
def attack_work(model_name: str, forget: list[QAItem], retain: list[QAItem], cfg: GrinConfig, unlearned: list,
                names: list[str], acfg, stop: StopFlag):
    """The named attacks (grin_engine/attacks/) on each unlearned model (base + its patch, on copies; the base is
    only read): done -> list of AttackResult (plain data). Stop ends the work at its next batch or step."""
    def work(progress):
        return attack_unlearned(STORE.get(model_name), unlearned, forget, retain, cfg, names, acfg, progress)

    yield from _stream(work, stop)
