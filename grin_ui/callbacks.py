"""Event handlers: thin glue from widget values to engine calls and back to figures and tables.

Every handler turns a GrinError (a user's mistake, worded for them) into gr.Error, and any other exception into a
one-line gr.Error (the traceback goes to the server log only). The model work itself is in gpu.py (self-contained
calls that a ZeroGPU Space runs on its GPU); slow handlers are generators that pass its progress messages to the
page; Stop sets a flag the engine checks.
"""

from __future__ import annotations

import functools
import inspect
import json
import logging
import math
import os
import tempfile
import time
from pathlib import Path

import gradio as gr

from grin_engine import score_summary
from grin_engine.compare import parse_methods
from grin_engine.config import GrinConfig, GrinError
from grin_engine.data import builtin_names, load_items

from . import gpu, plots, tables
from .presets import PRESETS
from .state import STORE, Session, check_model_name, local_models_allowed, session_of, stop_flag

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


def _data_source(which: str, builtin: str | None, tofu: str | None, upload: str | None) -> str:
    """What to load a set from: an uploaded file, else a tofu:<config>, else a built-in set."""
    if upload:
        return str(upload)
    tofu = (tofu or "").strip()
    if tofu:
        if not tofu.startswith("tofu:"):
            raise GrinError(f"{which} set: the text box takes a TOFU config such as tofu:forget01_perturbed "
                            f"(files: use the upload box)")
        return tofu
    if builtin not in builtin_names():
        raise GrinError(f"{which} set: choose a built-in set ({', '.join(builtin_names())}), a tofu:<config> "
                        f"or upload a file")
    return builtin


def _model_name(source: str, name: str | None) -> str:
    if source == "default":
        return "default"
    if source == "local folder":
        if not local_models_allowed():
            raise GrinError("model: local folders are disabled on this server")
        if not name or not Path(name.strip()).expanduser().is_dir():
            raise GrinError(f"model: folder {name!r} not found")
        return name.strip()
    return check_model_name(name or "")


@user_errors
def load(model_source, model_name, forget_builtin, forget_tofu, forget_file, retain_builtin, retain_tofu,
         retain_file, session, progress=gr.Progress()):
    """Load (or reuse) the shared base model and the two sets; show model facts and a preview."""
    session = session_of(session)
    name = _model_name(model_source, model_name)
    sources = (_data_source("forget", forget_builtin, forget_tofu, forget_file),
               _data_source("retain", retain_builtin, retain_tofu, retain_file))
    forget, retain = load_items(sources[0]), load_items(sources[1])  # cheap checks before the slow load
    progress(0.1, desc=f"loading model {name!r} ...")
    start = time.perf_counter()
    base = STORE.get(name)
    seconds = time.perf_counter() - start
    changed = (session.model_name, session.forget, session.retain) != (name, forget, retain)
    session.model_name, session.forget, session.retain = name, forget, retain
    session.sources = tuple(os.path.basename(s) if s not in builtin_names() and not s.startswith("tofu:") else s
                            for s in sources)
    if changed:  # results of other data or another model no longer apply
        session.hist = session.hist_key = session.run = session.before = session.before_key = None
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
    try:
        p = float(p_percent) / 100
    except (TypeError, ValueError):
        raise GrinError(f"p must be a number of percent, got {p_percent!r}") from None
    if not (math.isfinite(p) and 0 < p <= 1):
        raise GrinError(f"p must be between 0 and 100 percent (exclusive of 0), got {p_percent!r}%")
    return p


@user_errors
def influence(max_items, p_percent, session, request: gr.Request, progress=gr.Progress()):
    """Influence scores of every candidate weight, on a copy of the base; kept only as small histograms."""
    session = session_of(session)
    session.require_loaded()
    _fraction(p_percent)
    forget, retain = session.items(max_items)
    stop = stop_flag(request.session_hash if request else None)
    stop.clear()
    session.hist = None
    nothing = (gr.skip(),) * 4
    for kind, *payload in gpu.influence_work(session.model_name, forget, retain, stop):
        if kind == "progress":
            latest = payload[0]
            stage, done, total = latest.get("summary") or latest.get("influence")
            text = "summarising scores ..." if stage == "summary" else f"gradients: batch {done} of {total}"
            progress((done, total) if stage == "influence" else None, desc=text)
            yield (f"Computing influence scores: {text}", session) + nothing
        elif kind == "stopped":
            yield ("Influence computation stopped.", session) + nothing
            return
        elif kind == "error":
            raise payload[0]
        else:
            session.hist, session.influence_s = payload[0]
    session.hist_key = (session.model_name, len(forget), len(retain))
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
    p_percent = P_STEPS[min(len(P_STEPS) - 1, max(0, int(index)))]
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


def _config(method, p_percent, sigma2, lr, steps, alpha, beta, seed, use_mask) -> GrinConfig:
    try:
        sigma2 = float(sigma2)
    except (TypeError, ValueError):
        raise GrinError(f"sigma2 must be one of {', '.join(SIGMA2_CHOICES)}, got {sigma2!r}") from None
    beta = float(beta) if beta not in (None, "") and float(beta) > 0 else None  # empty or 0: the method's default
    return GrinConfig(method=method, p=_fraction(p_percent), sigma2=sigma2, lr=float(lr), steps=int(steps),
                      alpha=float(alpha), beta=beta, seed=int(seed), use_mask=bool(use_mask))


_STAGE_WORDS = {"before": "answering with the base model", "influence": "influence scores",
                "unlearn": "unlearning", "after": "answering with the unlearned model"}


@user_errors
def unlearn(method, p_percent, sigma2, lr, steps, alpha, beta, seed, use_mask, max_items, session,
            request: gr.Request, progress=gr.Progress()):
    """One GRIN run on a copy of the base, streaming progress and the loss curve; results go to Compare."""
    session = session_of(session)
    session.require_loaded()
    cfg = _config(method, p_percent, sigma2, lr, steps, alpha, beta, seed, use_mask)
    forget, retain = session.items(max_items)
    before_key = (session.model_name, tuple(it.question for it in forget), tuple(it.question for it in retain),
                  cfg.max_new_tokens, cfg.max_length)
    cached = session.before if session.before_key == before_key else None
    stop = stop_flag(request.session_hash if request else None)
    stop.clear()
    session.run = None  # free the previous run before making a new copy
    nothing = (gr.skip(),) * 3
    before = result = None
    for kind, *payload in gpu.unlearn_work(session.model_name, forget, retain, cfg, cached, stop):
        if kind == "progress":
            latest, losses = payload
            stage = list(latest)[-1]
            _, done, total, *_ = latest[stage]
            text = f"{_STAGE_WORDS.get(stage, stage)}: {done} of {total}"
            if stage == "unlearn" and losses:
                text += f" (loss {losses[-1]:.4f})"
            if stop.is_set():
                text += " — stopping ..."
            progress((done, total), desc=text)
            yield (f"Running: {text}", plots.loss_curve(losses, cfg.steps), session) + nothing
        elif kind == "error":
            raise payload[0]
        elif kind == "done":
            before, result = payload[0]
    if result is None:
        yield ("**Stopped** before training started (while answering with the base model).",
               plots.loss_curve([], cfg.steps), session) + nothing
        return
    session.before_key, session.before, session.run = before_key, before, result
    yield (tables.run_text(result), plots.loss_curve(result.losses, cfg.steps), session,
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
    session = session_of(session)
    session.require_loaded()
    prompt = (prompt or "").strip()
    if not prompt:
        raise GrinError("type a question first")
    patch = session.run.patch if session.run is not None else None
    before, after = gpu.generate_work(session.model_name, prompt, patch, GrinConfig().max_new_tokens)
    return before, after if after is not None else "(no unlearned model yet: run Unlearn first)"


# ---------------------------------------------------------------------------------------------------------------------
# Compare methods


def _compare_stage(stage: str, done: int, total: int) -> str:
    method, _, step = stage.rpartition("/")
    words = {"gradients": "gradients for the masks (batches)"}.get(step, _STAGE_WORDS.get(step, step))
    return f"{method + ': ' if method else ''}{words} {done} of {total}"


@user_errors
def compare_methods(methods, grun_method, grun_gate, grun_lr, grun_gate_weight, grun_steps, method, p_percent, sigma2, lr, steps, alpha, beta,
                    seed, use_mask, max_items, answers_split, session, request: gr.Request, progress=gr.Progress()):
    """GRIN, GRUN and baselines on the same items with the Unlearn tab's settings: table, scatter, answers."""
    session = session_of(session)
    session.require_loaded()
    if not methods:
        raise GrinError("choose at least one method to compare")
    names = parse_methods(",".join(methods))
    cfg = _config(method, p_percent, sigma2, lr, steps, alpha, beta, seed, use_mask)
    try:
        grun_lr, grun_gate_weight, grun_steps = float(grun_lr), float(grun_gate_weight), int(grun_steps)
    except (TypeError, ValueError):
        raise GrinError("GRUN settings: the learning rate, gate weight and steps must be numbers") from None
    cfg = GrinConfig(**{**cfg.to_dict(), "grun_method": grun_method, "grun_gate": grun_gate, "grun_lr": grun_lr,
                        "grun_gate_weight": grun_gate_weight, "grun_steps": grun_steps})
    forget, retain = session.items(max_items)
    stop = stop_flag(request.session_hash if request else None)
    stop.clear()
    session.comparison = None
    started = time.perf_counter()  # the wall time the visitor waited, not the sum of the engine's stage timings
    nothing = (gr.skip(),) * 4
    comparison = None
    for kind, *payload in gpu.compare_work(session.model_name, forget, retain, cfg, names, stop):
        if kind == "progress":
            stage, (_, done, total, *_) = list(payload[0].items())[-1]
            text = _compare_stage(stage, done, total) + (" — stopping ..." if stop.is_set() else "")
            progress((done, total), desc=text)
            yield (f"Running: {text}", session) + nothing
        elif kind == "error":
            raise payload[0]
        elif kind == "done":
            comparison = payload[0]
    if comparison is None:
        yield ("Stopped.", session) + nothing
        return
    session.comparison = comparison
    done = ", ".join(comparison.results)
    status = (f"**Stopped** — finished: {done or 'none'}." if comparison.stopped else
              f"**Done**: {done} on {len(forget)} forget and {len(retain)} retain items in "
              f"{time.perf_counter() - started:.0f} s.")
    yield (status, session) + _comparison_outputs(session, answers_split)


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
def compare_report(session):
    """The comparison as JSON (Comparison.to_report, the same contract as the CLI's compare --out)."""
    c = session_of(session).comparison
    if c is None:
        raise GrinError("no comparison yet: press Compare first")
    path = _out_dir() / "grin_compare.json"
    path.write_text(json.dumps(c.to_report(), indent=2))
    return str(path)


def _out_dir() -> Path:
    return Path(tempfile.mkdtemp(prefix="grin_"))


@user_errors
def report(session):
    """The run's report as JSON (RunResult.to_report) and its metrics table as CSV."""
    session = session_of(session)
    if session.run is None:
        raise GrinError("no run yet: run Unlearn first")
    folder = _out_dir()
    data = session.run.to_report()
    data["data"] = {"forget": session.sources[0], "retain": session.sources[1]}
    json_path = folder / "grin_report.json"
    json_path.write_text(json.dumps(data, indent=2))
    csv_path = folder / "grin_metrics.csv"
    tables.metrics(session.run).to_csv(csv_path, index=False)
    return str(json_path), str(csv_path)


@user_errors
def weights(session):
    """The unlearned model's weights as one .safetensors file (load with safetensors.torch.load_model into the
    same architecture; the report names the model)."""
    session = session_of(session)
    if session.run is None or session.run.patch is None:
        raise GrinError("no unlearned model yet: run Unlearn to the end first")
    path = _out_dir() / "grin_unlearned.safetensors"
    return gpu.weights_work(session.model_name, session.run.patch, str(path))
