"""Event handlers: thin glue from widget values to engine calls and back to figures and tables.

Every handler turns a GrinError (a user's mistake, worded for them) into gr.Error, and any other exception into a
one-line gr.Error (the traceback goes to the server log only). The model work itself is in gpu.py (self-contained
calls that a ZeroGPU Space runs on its GPU); slow handlers are generators that pass its progress messages to the
page; Stop sets a flag the engine checks.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import json
import logging
import math
import os
import time
from pathlib import Path

import gradio as gr
from gradio.utils import get_upload_folder

from grin_engine import score_summary
from grin_engine.compare import parse_methods
from grin_engine.config import GrinConfig, GrinError, as_number
from grin_engine.data import builtin_names, load_items
from grin_engine.pipeline import retain_collapse
from grin_engine.score_cache import evaluation_key, score_key

from . import gpu, plots, public, tables
from .presets import PRESETS
from .progress import compare_plan, format_seconds, influence_plan, load_plan, observe, unlearn_plan
from .slots import release_memory
from .state import (BEFORE, SCORES, STORE, Session, check_model_name, local_models_allowed, model_token, session_of,
                    stop_flag)

log = logging.getLogger("grin_ui")

# log-ish steps of the p% slider (index -> percent)
P_STEPS = [0.01, 0.02, 0.03, 0.05, 0.07, 0.1, 0.15, 0.2, 0.3, 0.5, 0.7, 1.0, 1.5, 2.0, 3.0, 5.0, 7.0, 10.0]
SIGMA2_CHOICES = ["0", "1e-7", "1e-6", "1e-5", "1e-4"]
MODEL_SOURCES = ["default", "Hub id"]


def _to_gr_error(exc: Exception) -> gr.Error:
    if isinstance(exc, gr.Error):
        return exc
    if isinstance(exc, GrinError):
        return gr.Error(str(exc), print_exception=False)
    log.exception("unexpected error in a handler")
    first = (str(exc).strip().splitlines() or [""])[0][:300]
    return gr.Error(f"Unexpected {type(exc).__name__}: {first}", print_exception=False)


def user_errors(fn):
    """Wrap a handler (function or generator) so that only gr.Error reaches the page."""
    if inspect.isgeneratorfunction(fn):
        @functools.wraps(fn)
        def gen_wrapper(*args, **kwargs):
            try:
                yield from fn(*args, **kwargs)
            except Exception as exc:
                raise _to_gr_error(exc) from None
        return gen_wrapper

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except Exception as exc:
            raise _to_gr_error(exc) from None
    return wrapper


# ---------------------------------------------------------------------------------------------------------------------
# Setup


def _text(value, what: str) -> str:
    """A text box's value: text (None is empty); anything else a script sent is refused with our message."""
    if value is None:
        return ""
    if not isinstance(value, str):
        raise GrinError(f"{what}: give text, got {type(value).__name__}")
    if len(value) > 4096:
        raise GrinError(f"{what}: {len(value):,} characters is not a name")
    return value


def _data_source(which: str, builtin: str | None, tofu: str | None, upload: str | None) -> str:
    """What to load a set from: an uploaded file, else a tofu:<config>, else a built-in set."""
    if upload:
        public.check_upload(str(upload), public.caps())
        return str(upload)
    tofu = _text(tofu, f"{which} set").strip()
    if tofu:
        if not tofu.startswith("tofu:"):
            raise GrinError(f"{which} set: the text box takes a TOFU config such as tofu:forget01_perturbed "
                            f"(files: use the upload box)")
        return tofu
    if not isinstance(builtin, str) or builtin not in builtin_names():
        raise GrinError(f"{which} set: choose a built-in set ({', '.join(builtin_names())}), a tofu:<config> "
                        f"or upload a file")
    return builtin


def _model_name(source: str, name: str | None) -> str:
    if source == "default":
        return "default"
    name = _text(name, "model")
    if source == "local folder":
        if not local_models_allowed():
            raise GrinError("model: local folders are disabled on this server")
        name = check_model_name(name)
        if not Path(name).expanduser().is_dir():
            raise GrinError(f"model: folder {name!r} not found")
        return name
    return check_model_name(name)


@user_errors
def load(model_source, model_name, forget_builtin, forget_tofu, forget_file, retain_builtin, retain_tofu,
         retain_file, session, progress=gr.Progress()):
    """Load (or reuse) the shared base model and the two sets; show model facts and a preview."""
    session = session_of(session)
    name = _model_name(model_source, model_name)
    sources = (_data_source("forget", forget_builtin, forget_tofu, forget_file),
               _data_source("retain", retain_builtin, retain_tofu, retain_file))
    limits = public.caps()
    public.check_model(name, limits)
    forget, retain = load_items(sources[0]), load_items(sources[1])  # cheap checks before the slow load
    for which, upload, items in (("forget", forget_file, forget), ("retain", retain_file, retain)):
        if upload:  # built-in and Hub sets are known; an upload is whatever a visitor sent
            public.check_item_count(len(items), which, limits)
    plan = load_plan()

    def on_stage(stage):
        fraction, text = plan.update(stage, 0, 0)
        progress(fraction, desc=text)
    on_stage("locating")
    start = time.perf_counter()
    base = STORE.get(name, on_stage=on_stage)
    seconds = time.perf_counter() - start
    changed = (session.model_name, session.forget, session.retain) != (name, forget, retain)
    session.model_name, session.forget, session.retain = name, forget, retain
    session.sources = tuple(os.path.basename(s) if s not in builtin_names() and not s.startswith("tofu:") else s
                            for s in sources)
    if changed:  # results of other data or another model no longer apply
        session.hist = session.run = None
        session.comparison = None
    status = (f"Loaded **{name}** in {seconds:.1f} s; forget set **{session.sources[0]}** ({len(forget)} items), "
              f"retain set **{session.sources[1]}** ({len(retain)} items). Next: **Influence**.")
    return tables.model_facts(base.facts()), tables.items_preview(forget, retain), status, session


# ---------------------------------------------------------------------------------------------------------------------
# Influence


def _influence_outputs(session: Session, p_percent: float):
    summary = score_summary.preview_selection(session.hist, _fraction(p_percent)) if session.hist else None
    return (tables.selection_text(summary, session.influence_s), plots.selection_heatmap(summary),
            plots.layer_bars(summary), plots.score_histogram(session.hist, summary))


def _fraction(p_percent) -> float:
    p = as_number(p_percent, "p (%)", integer=False) / 100
    if not (math.isfinite(p) and 0 < p <= 1):
        raise GrinError(f"p must be between 0 and 100 percent (exclusive of 0), got {p_percent!r}%")
    return p


@user_errors
def influence(max_items, p_percent, session, request: gr.Request, progress=gr.Progress()):
    """Influence scores of every candidate weight, on a copy of the base; kept only as small histograms."""
    _fraction(p_percent)
    session = session_of(session)
    session.require_loaded()
    forget, retain = session.items(max_items)
    public.check_run(GrinConfig(), len(forget), public.caps())
    stop = stop_flag(request.session_hash if request else None)
    nothing = (gr.skip(),) * 4
    if stop.is_set():  # Stop was pressed while this job waited in the queue
        stop.clear()
        yield ("Stopped while waiting in the queue; the previous scores are kept.", session) + nothing
        return
    try:
        yield from _influence_job(session, forget, retain, p_percent, stop, progress, _owner(request))
    finally:
        stop.clear()
        release_memory()


def _influence_job(session, forget, retain, p_percent, stop, progress, owner=None):
    nothing = (gr.skip(),) * 4
    key = score_key(model_token(session.model_name), forget, retain, GrinConfig())
    kept = SCORES.get(key)
    if kept is not None and kept[1] is not None:  # the same model and items: scores computed earlier, by anybody
        SCORES.put(key, kept, owner)
        session.hist, session.influence_s = kept[1], kept[0].seconds
        yield (f"Influence scores of these {len(forget)} forget and {len(retain)} retain items re-used: computed "
               f"earlier on this server in {kept[0].seconds:.0f} s, no new gradients.", session) + \
            _influence_outputs(session, p_percent)
        return
    hist = top = None
    plan = influence_plan(len(forget), len(retain))
    yield (f"Computing influence scores: {plan.update('influence', 0, 0)[1]}", session) + nothing
    for kind, *payload in gpu.influence_work(session.model_name, forget, retain, stop):
        if kind == "progress":
            latest = payload[0]
            stage, done, total = latest.get("summary") or latest.get("influence")
            fraction, text = plan.update(stage, done, total)
            progress(fraction, desc=text)
            yield (f"Computing influence scores: {text}", session) + nothing
        elif kind == "stopped":
            yield ("Influence computation stopped; the previous scores (if any) are kept.", session) + nothing
            return
        elif kind == "error":
            raise payload[0]
        else:
            hist, top = payload[0]
    session.hist, session.influence_s = hist, top.seconds  # only a finished computation replaces the visitor's
    observe({"scores_s": top.seconds}, len(forget) + len(retain), 0, GrinConfig().batch_size)
    SCORES.put(key, (top, hist), owner)  # for Unlearn, Compare methods and Sweep, and for every visitor
    yield (f"Influence computed on {len(forget)} forget and {len(retain)} retain items.", session) + \
        _influence_outputs(session, p_percent)


@user_errors
def select(p_percent, session):
    """Re-select at p% from the cached histograms (no gradients): summary text and the three figures."""
    session = session_of(session)
    _fraction(p_percent)
    if session.hist is None:
        raise GrinError("no influence scores yet: press Compute influence first")
    return _influence_outputs(session, p_percent) + (p_percent,)


@user_errors
def select_quiet(p_percent, session):
    """select() for the page's own re-selections (blur, slider): before any scores it only passes p on."""
    if session_of(session).hist is None:
        _fraction(p_percent)
        return (gr.skip(),) * 4 + (p_percent,)
    return select(p_percent, session)


@user_errors
def select_index(index, session):
    """The log-step slider: its p% (shown in the number box) and the selection there."""
    p_percent = P_STEPS[min(len(P_STEPS) - 1, max(0, int(as_number(index, "p slider", integer=False))))]
    return (p_percent,) + select_quiet(p_percent, session)


def slider_index(p_percent):
    """The log slider's step nearest to a typed p%, so that the slider follows the box (nothing for a bad p)."""
    try:
        p = float(p_percent)
    except (TypeError, ValueError):
        return gr.skip()
    if not (math.isfinite(p) and p > 0):
        return gr.skip()
    return min(range(len(P_STEPS)), key=lambda i: abs(math.log(P_STEPS[i] / p)))


# ---------------------------------------------------------------------------------------------------------------------
# Unlearn


def _config(method, p_percent, sigma2, lr, steps, alpha, beta, seed, use_mask, until=None) -> GrinConfig:
    """The Unlearn tab's values as a GrinConfig: each number checked (type, finiteness, range) by the engine's
    shared check, so a script sending text or NaN gets the same message as the CLI."""
    if not isinstance(method, str):
        raise GrinError(f"method: give a method name, got {type(method).__name__}")
    if isinstance(sigma2, (str, int, float)) and not isinstance(sigma2, bool):
        sigma2 = as_number(sigma2, "sigma2")
    else:
        raise GrinError(f"sigma2 must be one of {', '.join(SIGMA2_CHOICES)}, got {sigma2!r}")
    beta = as_number(beta, "beta") if beta not in (None, "") else None
    if not isinstance(use_mask, bool):
        raise GrinError(f"mask must be true or false, got {use_mask!r}")
    return GrinConfig(method=method, p=_fraction(p_percent), sigma2=sigma2, lr=as_number(lr, "lr"),
                      steps=as_number(steps, "steps"), alpha=as_number(alpha, "alpha"), beta=beta or None,
                      seed=as_number(seed, "seed"), use_mask=use_mask, until=_text(until, "stop once").strip() or None)


@user_errors
def unlearn(method, p_percent, sigma2, lr, steps, alpha, beta, seed, use_mask, max_items, session, until=None,
            request: gr.Request = None, progress=gr.Progress()):
    """One GRIN run on a copy of the base, streaming progress and the loss curve; results go to Compare.
    `until` (optional, e.g. forget_keyword_accuracy<=0.25): stop unlearning once the forget set meets it."""
    cfg = _config(method, p_percent, sigma2, lr, steps, alpha, beta, seed, use_mask, until)  # checks: no work yet
    session = session_of(session)
    session.require_loaded()
    forget, retain = session.items(max_items)
    limits = public.caps()
    public.check_run(cfg, len(forget), limits)
    stop = stop_flag(request.session_hash if request else None)
    if stop.is_set():  # Stop was pressed while this job waited in the queue
        stop.clear()
        yield ("**Stopped** while waiting in the queue; your previous run (if any) is kept.",
               plots.loss_curve([], cfg.steps), session) + (gr.skip(),) * 3
        return
    try:
        yield from _unlearn_job(session, cfg, forget, retain, limits, stop, progress, _owner(request))
    finally:
        stop.clear()
        release_memory()


def expected_time(method, p_percent, sigma2, lr, steps, alpha, beta, seed, use_mask, max_items, session,
                  until=None) -> str:
    """The line under Run: what a run with these settings is expected to take on this server, before it starts
    (the same plan and seconds per unit as the run's own progress bar). Never raises: while a visitor is still
    typing, a half-made value shows a hint, and Run gives the full message."""
    try:
        cfg = _config(method, p_percent, sigma2, lr, steps, alpha, beta, seed, use_mask, until)
        session = session_of(session)
        session.require_loaded()
        forget, retain = session.items(max_items)
    except GrinError:
        return "<small>The time a Run takes is shown here once a model is loaded and the settings are valid.</small>"
    _, _, cached, top = shared_inputs(session, forget, retain, cfg)
    plan = unlearn_plan(len(forget), len(retain), cfg, cached is not None, top is not None and top.covers(cfg.p))
    until_note = f" (fewer if it stops once {cfg.until})" if cfg.until else ""
    reused = reused_parts(cached, top, cfg)
    reuse = f"; it re-uses {' and '.join(reused)} computed earlier on this server" if reused else ""
    expected = format_seconds(plan.expected_seconds())
    return (f"<small>A Run with these settings: about **{expected}** on this server for {len(forget)} forget + "
            f"{len(retain)} retain items and {cfg.steps} steps{until_note}{reuse}.</small>")


def _owner(request) -> str | None:
    """Who pins a shared result (state.SharedResults): the browser session."""
    return getattr(request, "session_hash", None)


def shared_inputs(session: Session, forget, retain, cfg: GrinConfig) -> tuple[str, str, dict | None, object]:
    """The keys of this data's shared results and what the server holds for them: (evaluation key, score key,
    the base model's evaluation or None, the kept influence scores or None)."""
    token = model_token(session.model_name)
    before_key, key = evaluation_key(token, forget, retain, cfg), score_key(token, forget, retain, cfg)
    kept = SCORES.get(key)
    return before_key, key, BEFORE.get(before_key), kept[0] if kept else None


def reused_parts(cached_before, top, cfg: GrinConfig) -> list[str]:
    """What a run with cfg re-uses of the server's shared results, in words."""
    parts = []
    if cached_before is not None:
        parts.append("the base model's answers")
    if cfg.use_mask and top is not None and top.covers(cfg.p):
        parts.append("the influence scores")
    return parts


def reuse_note(cached_before, top, cfg: GrinConfig) -> str:
    """What a run re-uses, in words (the status)."""
    parts = reused_parts(cached_before, top, cfg)
    note = f" Re-used (computed earlier on this server): {' and '.join(parts)}." if parts else ""
    if cfg.use_mask and top is not None and not top.covers(cfg.p):
        note += (f" p = {100 * cfg.p:g}% is above the kept top {100 * top.keep:g}% of the scores, so they were "
                 f"computed again.")
    return note


def _unlearn_job(session, cfg, forget, retain, limits, stop, progress, owner=None):
    before_key, key, cached, top = shared_inputs(session, forget, retain, cfg)
    nothing = (gr.skip(),) * 3
    before = result = None
    plan = unlearn_plan(len(forget), len(retain), cfg, cached is not None,
                        top is not None and top.covers(cfg.p))
    yield (f"Starting: about {format_seconds(plan.expected_seconds())} expected on this server, in "
           f"{len(plan.phases)} steps; {plan.update(plan.phases[0].key, 0, 0)[1]}", plots.loss_curve([], cfg.steps),
           session) + nothing
    for kind, *payload in gpu.unlearn_work(session.model_name, forget, retain, cfg, cached, stop, top):
        if kind == "progress":
            latest, losses = payload
            stage = list(latest)[-1]
            _, done, total, *_ = latest[stage]
            fraction, text = plan.update(stage, done, total)
            if stage == "unlearn" and losses:
                text += f" (loss {losses[-1]:.4f})"
            if stop.is_set():
                text += " — stopping ..."
            progress(fraction, desc=text)
            yield (f"Running: {text}", plots.loss_curve(losses, cfg.steps), session) + nothing
        elif kind == "error":
            raise payload[0]
        elif kind == "done":
            before, result, kept = payload[0]
    if before is not None:
        BEFORE.put(before_key, before, owner)  # every visitor with these items and lengths re-uses it
    if result is not None and kept is not None and kept is not top:
        SCORES.put(key, (kept, None), owner)
    if result is None:
        yield ("**Stopped** before training started; your previous run (if any) is kept.",
               plots.loss_curve([], cfg.steps), session) + nothing
        return
    if result.stopped:  # a stopped run is not evaluated: the visitor's previous good run stays theirs
        yield (tables.run_text(result) + (" Your previous finished run is kept for Compare and the downloads."
                                          if session.run is not None else ""),
               plots.loss_curve(result.losses, cfg.steps), session) + nothing
        return
    observe(result.timings, len(forget) + len(retain), len(result.losses), cfg.batch_size)
    notes = []
    if limits.patch_bytes is not None and public.patch_bytes(result.patch) > limits.patch_bytes:
        result.patch = None  # a session keeps small data only (README: what each visitor holds)
        notes.append(f"This server keeps unlearned models of at most {limits.patch_bytes // 2**20} MB per visitor "
                     f"(this run changed more weights), so Ask and the weights download are off for it; metrics, "
                     f"answers and the report are here.")
    warning = retain_collapse(result.metrics)
    if warning:
        notes.insert(0, f"**Warning**: {warning}")
    session.run = result
    yield (" ".join([tables.run_text(result) + reuse_note(cached, top, cfg)] + notes),
           plots.loss_curve(result.losses, cfg.steps), session,
           tables.generations(result, "forget"), tables.generations(result, "retain"), tables.metrics_view(result))


@user_errors
def stop(request: gr.Request):
    """Ask the running job of this visitor to stop (the engine checks before every training step)."""
    stop_flag(request.session_hash if request else None).set()
    return "Stop requested: the run ends at its next step or batch (no after-evaluation, no unlearned model)."


@user_errors
def preset(name):
    if name not in PRESETS:
        raise GrinError(f"unknown preset {name!r}; presets: {', '.join(PRESETS)}")
    values = PRESETS[name]
    return tuple(values[k] for k in ("method", "p_percent", "sigma2", "lr", "steps", "alpha", "beta", "seed",
                                     "use_mask"))


# ---------------------------------------------------------------------------------------------------------------------
# Compare


@user_errors
def generate(prompt, session):
    """The user's own prompt, answered by the base model and by the last run's unlearned model."""
    prompt = public.check_question(prompt if prompt is not None else "", public.caps())  # at once, before a token
    session = session_of(session)
    session.require_loaded()
    patch = session.run.patch if session.run is not None else None
    try:
        before, after = gpu.generate_work(session.model_name, prompt, patch, GrinConfig().max_new_tokens)
    finally:
        release_memory()
    if after is None:
        after = ("(no unlearned model yet: run Unlearn first)" if session.run is None else
                 "(this run's unlearned model is not kept on this server: see the Unlearn status)")
    return before, after


# ---------------------------------------------------------------------------------------------------------------------
# Compare methods


@user_errors
def compare_methods(methods, grun_method, grun_gate, grun_lr, grun_gate_weight, grun_steps, method, p_percent, sigma2, lr, steps, alpha, beta,
                    seed, use_mask, max_items, answers_split, session, request: gr.Request, progress=gr.Progress()):
    """GRIN, GRUN and baselines on the same items with the Unlearn tab's settings: table, scatter, answers."""
    started = time.perf_counter()  # the wall time the visitor waits, not the sum of the engine's stage timings
    session = session_of(session)
    if not methods:
        raise GrinError("choose at least one method to compare")
    if not isinstance(methods, list) or not all(isinstance(m, str) for m in methods):
        raise GrinError("methods: give a list of method names")
    limits = public.caps()
    if len(methods) > limits.methods:
        raise GrinError(f"methods: {len(methods)} chosen; at most {limits.methods} in one comparison")
    names = parse_methods(",".join(methods))
    cfg = _config(method, p_percent, sigma2, lr, steps, alpha, beta, seed, use_mask)
    cfg = GrinConfig(**{**cfg.to_dict(), "grun_method": grun_method, "grun_gate": grun_gate,
                        "grun_lr": as_number(grun_lr, "grun_lr"),
                        "grun_gate_weight": as_number(grun_gate_weight, "grun_gate_weight"),
                        "grun_steps": as_number(grun_steps, "grun_steps")})
    session.require_loaded()
    forget, retain = session.items(max_items)
    public.check_run(cfg, len(forget), limits, grun="grun" in names)
    stop = stop_flag(request.session_hash if request else None)
    if stop.is_set():  # Stop was pressed while this job waited in the queue
        stop.clear()
        yield ("**Stopped** while waiting in the queue; your previous comparison (if any) is kept.", session) \
            + (gr.skip(),) * 4
        return
    try:
        yield from _compare_job(session, cfg, names, forget, retain, answers_split, stop, progress, _owner(request),
                                started)
    finally:
        stop.clear()
        release_memory()


def _compare_job(session, cfg, names, forget, retain, answers_split, stop, progress, owner=None, started=None):
    started = started or time.perf_counter()
    nothing = (gr.skip(),) * 4
    before_key, _, cached, top = shared_inputs(session, forget, retain, cfg)
    comparison = None
    grin_needed = bool({"grin", "grin-nonoise"} & set(names))
    plan = compare_plan(len(forget), len(retain), cfg, names, cached is not None,
                        "forget-grad" in names or (grin_needed and not (top is not None and top.covers(cfg.p))))
    yield (f"Starting: about {format_seconds(plan.expected_seconds())} expected on this server, in "
           f"{len(plan.phases)} steps; {plan.update(plan.phases[0].key, 0, 0)[1]}", session) + nothing
    for kind, *payload in gpu.compare_work(session.model_name, forget, retain, cfg, names, stop, cached, top):
        if kind == "progress":
            stage, (_, done, total, *_) = list(payload[0].items())[-1]
            fraction, text = plan.update(stage, done, total)
            text += " — stopping ..." if stop.is_set() else ""
            progress(fraction, desc=text)
            yield (f"Running: {text}", session) + nothing
        elif kind == "error":
            raise payload[0]
        elif kind == "done":
            before, comparison = payload[0]
            if before is not None:
                BEFORE.put(before_key, before, owner)
    if comparison is None:
        yield ("Stopped; your previous comparison (if any) is kept.", session) + nothing
        return
    finished = [name for name, r in comparison.results.items() if not r.stopped]
    if comparison.stopped and not finished:
        yield ("**Stopped** before any method finished; your previous comparison (if any) is kept.", session) \
            + nothing
        return
    session.comparison = comparison
    for name in finished:
        result = comparison.results[name]
        observe(result.timings, len(forget) + len(retain), len(result.losses) if name != "grun" else 0,
                cfg.batch_size)
    done = ", ".join(finished)
    outputs = _comparison_outputs(session, answers_split)  # built before the time is taken: it is part of the wait
    stopped = [name for name, r in comparison.results.items() if r.stopped]
    status = (f"**Stopped** — finished: {done or 'none'}" + (f"; stopped: {', '.join(stopped)}" if stopped else "")
              + "." if comparison.stopped else
              f"**Done**: {done} on {len(forget)} forget and {len(retain)} retain items in "
              f"{time.perf_counter() - started:.0f} s.")
    collapsed = [f"{name}: {w}" for name, r in comparison.results.items() if not r.stopped
                 for w in [retain_collapse(r.metrics)] if w]
    if not comparison.stopped:
        status += reuse_note(cached, top if {"grin", "grin-nonoise"} & set(names) else None, cfg)
    if collapsed:
        status += " **Warning** — " + "; ".join(collapsed)
    yield (status, session) + outputs


def _comparison_outputs(session: Session, split: str):
    c = session.comparison
    rows = c.table() if c else None
    p = c.config["p"] if c else None
    return (tables.methods_table(rows), plots.methods_scatter(rows),
            tables.overlap_text(c.overlap if c else {}, c.masks_selected if c else {}, p),
            methods_answers(split, session))


@user_errors
def methods_answers(split, session):
    """The answers of every compared method to the questions of one split."""
    c = session_of(session).comparison
    methods = list(c.results) if c else []
    table = tables.methods_answers(c.generations() if c else None, methods, "retain" if split == "retain" else "forget")
    share = 64 // max(1, len(methods) + 1)  # question and gold answer 18% each, the answers share the rest
    return gr.Dataframe(table, column_widths=["18%", "18%"] + [f"{share}%"] * (len(methods) + 1))


@user_errors
def compare_report(session, request: gr.Request = None):
    """The comparison as JSON (Comparison.to_report, the same contract as the CLI's compare --out)."""
    session = session_of(session)
    c = session.comparison
    if c is None:
        raise GrinError("no comparison yet: press Compare first")
    path = _visitor_file(session, request, "grin_compare.json")
    _replace(path, lambda tmp: tmp.write_text(json.dumps(c.to_report(), indent=2)))
    return str(path)


def _visitor_file(session: Session, request, name: str) -> Path:
    """The visitor's download `name`: one file of each kind per visitor, replaced by the next one, in a folder
    inside Gradio's cache (so Gradio serves it without copying it) that goes with the session (state.py)."""
    if session.files is None:
        key = hashlib.sha256((getattr(request, "session_hash", None) or os.urandom(16).hex()).encode())
        session.files = str(Path(get_upload_folder()) / "grin_visitors" / key.hexdigest()[:32])
    folder = Path(session.files)
    folder.mkdir(parents=True, exist_ok=True)
    return folder / name


def _replace(path: Path, write) -> None:
    """write(tmp) then move tmp over `path`: a reader never sees half a file, and one file remains."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@user_errors
def report(session, request: gr.Request = None):
    """The run's report as JSON (RunResult.to_report) and its metrics table as CSV."""
    session = session_of(session)
    if session.run is None:
        raise GrinError("no run yet: run Unlearn first")
    data = session.run.to_report()
    data["data"] = {"forget": session.sources[0], "retain": session.sources[1]}
    json_path = _visitor_file(session, request, "grin_report.json")
    _replace(json_path, lambda tmp: tmp.write_text(json.dumps(data, indent=2)))
    csv_path = _visitor_file(session, request, "grin_metrics.csv")
    _replace(csv_path, lambda tmp: tables.metrics(session.run).to_csv(tmp, index=False))
    return str(json_path), str(csv_path)


@user_errors
def weights(session, request: gr.Request = None):
    """The unlearned model's weights as one .safetensors file (load with safetensors.torch.load_model into the
    same architecture; the report names the model)."""
    session = session_of(session)
    if session.run is None or session.run.patch is None:
        raise GrinError("no unlearned model yet: run Unlearn to the end first" if session.run is None or
                        session.run.stopped else "this run's unlearned model is not kept on this server (see the "
                        "Unlearn status); run with a smaller p to download weights")
    path = _visitor_file(session, request, "grin_unlearned.safetensors")
    try:
        _replace(path, lambda tmp: gpu.weights_work(session.model_name, session.run.patch, str(tmp)))
    finally:
        release_memory()
    return str(path)
