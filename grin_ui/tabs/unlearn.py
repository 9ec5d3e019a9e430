"""Unlearn: one GRIN run on a copy of the base, with the loss curve as it trains; the answers and metrics go to
Compare. The line under Run says what a run with these settings will take and re-use."""

from __future__ import annotations

import gradio as gr

from grin_engine.config import STOP_ONCE_FORGOTTEN, GrinConfig
from grin_engine.errors import GrinError
from grin_engine.method.losses import LOSSES, describe_losses
from grin_engine.runs.pipeline import retain_collapse

from .. import gpu, inputs, plots, public, tables
from ..forms import SIGMA2_CHOICES, UNLEARN_CONTROLS, Form, Page, job_buttons, unlearn_config
from ..jobs import STOPPED, run_job, stop
from ..presets import PRESETS
from ..progress import format_seconds, observe, unlearn_plan
from ..slots import MODEL_JOB, STOP_JOB
from ..state import BEFORE, SCORES, owner, session_of, shared_inputs

DEFAULTS = GrinConfig()
RUN_INPUTS = UNLEARN_CONTROLS + ["setup.max_items", "session", "unlearn.until"]
PRESET_NOTE = ("<small>Presets fill the controls below (the stop-once box stays as it is); what each does on the "
               "app's 16 + 16 items is measured in docs/RESULTS.md. *Gently* (NPO, p 0.5%) forgets part of the "
               "facts and stays fluent; *aggressively* (GradDiff, p 5%, lr 1e-3) forgets fast and costs the retain "
               "answers some of their probability; without the stop-once target it turns forget answers into "
               "loops.</small>")
STOP_ONCE_DEFAULT = STOP_ONCE_FORGOTTEN  # on by default: a fixed step count over-unlearns small sets


def _sigma2_choice(value: float) -> str:
    return next((choice for choice in SIGMA2_CHOICES if float(choice) == value), SIGMA2_CHOICES[2])


def layout(page: Page) -> None:
    c = {}
    with gr.Tab("Unlearn", id="unlearn") as c["tab"]:
        with gr.Row():
            for name in PRESETS:
                c[f"preset::{name}"] = gr.Button(f"Preset: {name}", variant="secondary", size="md")
        gr.Markdown(PRESET_NOTE)
        with gr.Row():
            c["loss"] = gr.Dropdown(list(LOSSES), value=DEFAULTS.loss, label="loss",
                                    info="the unlearning loss: open “What the losses do” below")
            c["p_percent"] = inputs.Number(100 * DEFAULTS.p, label="p (%) of weights to train",
                                           minimum=0.0001, maximum=100,
                                           info="follows the Influence tab's p; type here to use another")
            c["sigma2"] = gr.Dropdown(SIGMA2_CHOICES, value=_sigma2_choice(DEFAULTS.sigma2), label="noise σ²")
            c["use_mask"] = gr.Checkbox(True, label="mask (GRIN)", info="off: plain baseline, all weights, no noise")
        with gr.Accordion("What the losses do", open=False):
            gr.Markdown("\n".join(f"- **{k}**: {v}" for k, v in describe_losses().items())
                        + f"\n\ngamma and delta have no control here: the app uses their defaults, gamma = each "
                          f"loss's (1; SimNPO 0.125, as open-unlearning) and delta = {DEFAULTS.delta:g}.")
        with gr.Row():
            c["lr"] = inputs.Number(DEFAULTS.lr, label="learning rate", minimum=0)
            c["steps"] = inputs.Slider(1, min(200, public.caps().max_steps), value=DEFAULTS.steps, step=1,
                                       label="steps")
            c["alpha"] = inputs.Number(DEFAULTS.alpha, label="alpha (retain weight)", minimum=0)
            c["beta"] = inputs.Number(None, label="beta (0 or empty: the loss's default)", minimum=0)
            c["seed"] = inputs.Number(DEFAULTS.seed, label="seed", precision=0)
        c["until"] = gr.Textbox(STOP_ONCE_DEFAULT, label="stop once (optional)", placeholder=STOP_ONCE_DEFAULT,
                                elem_id="until",
                                info=f"a forget-set target, checked every {DEFAULTS.until_every} steps with the "
                                     "evaluation's own code (each check answers the forget questions); steps is "
                                     "then the most. On by default: a fixed step count over-unlearns small sets. "
                                     "Empty: always all steps")
        c["run_btn"], c["stop_btn"] = job_buttons("Run")
        c["expected"] = gr.Markdown(elem_id="run_expected")  # the time a Run would take (expected_time)
        c["run_status"] = gr.Markdown(elem_id="run_status")
        c["loss_plot"] = gr.Plot(plots.loss_curve([], DEFAULTS.steps), label="loss", elem_id="loss_plot")
    page.add("unlearn", c)


def wire(page: Page) -> None:
    controls = page.inputs(UNLEARN_CONTROLS)
    for name in PRESETS:
        slug = "preset_" + ("gentle" if "gently" in name else "aggressive")
        page[f"unlearn.preset::{name}"].click(lambda name=name: preset(name), None, controls, api_name=slug,
                                              queue=False)
    run = page["unlearn.run_btn"].click(**page.event(
        unlearn, RUN_INPUTS, ["unlearn.run_status", "unlearn.loss_plot", "session", "compare.forget_gen",
                              "compare.retain_gen", "compare.metrics"],
        api_name="unlearn", show_progress_on=page["unlearn.run_status"], **MODEL_JOB))
    page["unlearn.stop_btn"].click(stop, None, page["unlearn.run_status"], api_name="stop", **STOP_JOB)
    # the time a Run would take, shown before Run: on opening the tab and on every change of what it depends on;
    # one at a time, in the order of the changes (unqueued calls could finish out of order and leave an older
    # setting's time on the page)
    in_order = {"concurrency_id": "expected_time", "concurrency_limit": 1, "show_progress": "hidden"}
    run.then(**page.event(expected_time, RUN_INPUTS, ["unlearn.expected"], api_name="expected_time_after_run",
                          api_visibility="private", **in_order))  # what the next Run re-uses has changed
    changes = [page["unlearn.tab"].select, page["setup.max_items"].change, page["unlearn.until"].change]
    gr.on(changes + [control.change for control in controls],
          **page.event(expected_time, RUN_INPUTS, ["unlearn.expected"], api_name="expected_time",
                       trigger_mode="always_last", **in_order))


def preset(name: str) -> tuple:
    """The preset's values for the Unlearn controls, in their order."""
    if name not in PRESETS:
        raise GrinError(f"unknown preset {name!r}; presets: {', '.join(PRESETS)}")
    values = PRESETS[name]
    return tuple(values[control.split(".")[1]] for control in UNLEARN_CONTROLS)


def reused_parts(cached_before, top, cfg: GrinConfig) -> list[str]:
    """What a run with cfg re-uses of the server's shared results, in words."""
    parts = []
    if cached_before is not None:
        parts.append("the base model's answers")
    if cfg.use_mask and top is not None and top.covers(cfg.p):
        parts.append("the influence scores")
    return parts


def reuse_note(cached_before, top, cfg: GrinConfig) -> str:
    """What a run re-used, in words (the status)."""
    parts = reused_parts(cached_before, top, cfg)
    note = f" Re-used (computed earlier on this server): {' and '.join(parts)}." if parts else ""
    if cfg.use_mask and top is not None and not top.covers(cfg.p):
        note += (f" p = {100 * cfg.p:g}% is above the kept top {100 * top.keep:g}% of the scores, so they were "
                 f"computed again.")
    return note


def expected_time(form: Form) -> str:
    """The line under Run: what a run with these settings is expected to take on this server, before it starts
    (the same plan and seconds per unit as the run's own progress bar). Never raises: while a visitor is still
    typing, a half-made value shows a hint, and Run gives the full message."""
    try:
        cfg = unlearn_config(form, form.text("unlearn.until", "stop once"))
        session = session_of(form["session"])
        session.require_loaded()
        forget, retain = session.items(form["setup.max_items"])
    except (GrinError, gr.Error):
        return "<small>The time a Run takes is shown here once a model is loaded and the settings are valid.</small>"
    _, _, cached, top = shared_inputs(session.model_name, forget, retain, cfg)
    plan = unlearn_plan(len(forget), len(retain), cfg, cached is not None, top is not None and top.covers(cfg.p))
    until_note = f" (fewer if it stops once {cfg.until})" if cfg.until else ""
    reused = reused_parts(cached, top, cfg)
    reuse = f"; it re-uses {' and '.join(reused)} computed earlier on this server" if reused else ""
    return (f"<small>A Run with these settings: about **{format_seconds(plan.expected_seconds())}** on this "
            f"server for {len(forget)} forget + {len(retain)} retain items and {cfg.steps} steps{until_note}"
            f"{reuse}.</small>")


def unlearn(form: Form, request, progress):
    """One GRIN run on a copy of the base, streaming progress and the loss curve; results go to Compare.
    The stop-once box (e.g. forget_keyword_accuracy<=0.25): stop unlearning once the forget set meets it."""
    cfg = unlearn_config(form, form.text("unlearn.until", "stop once"))  # checks: no work yet
    session = session_of(form["session"])
    session.require_loaded()
    forget, retain = session.items(form["setup.max_items"])
    limits = public.caps()
    public.check_run(cfg, len(forget), limits)
    before_key, key, cached, top = shared_inputs(session.model_name, forget, retain, cfg)
    nothing = (gr.skip(),) * 3
    plan = unlearn_plan(len(forget), len(retain), cfg, cached is not None, top is not None and top.covers(cfg.p))

    def show(event, losses, stop):
        stage = event[0]
        fraction, text = plan.update(*event[:3])
        if stage == "unlearn" and losses:
            text += f" (loss {losses[-1]:.4f})"
        text += " — stopping ..." if stop.is_set() else ""
        progress(fraction, desc=text)
        return (f"Running: {text}", plots.loss_curve(losses, cfg.steps), session) + nothing

    starting = (f"Starting: about {format_seconds(plan.expected_seconds())} expected on this server, in "
                f"{len(plan.phases)} steps; {plan.update(plan.phases[0].key, 0, 0)[1]}",
                plots.loss_curve([], cfg.steps), session) + nothing
    not_started = ("**Stopped** before training started; your previous run (if any) is kept.",
                   plots.loss_curve([], cfg.steps), session) + nothing
    outcome = yield from run_job(
        request, lambda stop: gpu.unlearn_work(session.model_name, forget, retain, cfg, cached, stop, top), show,
        queued=("**Stopped** while waiting in the queue; your previous run (if any) is kept.",) + not_started[1:],
        stopped=not_started, starting=starting)
    if outcome is STOPPED:
        return
    before, result, kept = outcome
    if before is not None:
        BEFORE.put(before_key, before, owner(request))  # every visitor with these items and lengths re-uses it
    if result is not None and kept is not None and kept is not top:
        SCORES.put(key, (kept, None), owner(request))
    if result is None:
        yield not_started
        return
    if result.stopped:  # a stopped run is not evaluated: the visitor's previous good run stays theirs
        yield (tables.run_text(result) + (" Your previous finished run is kept for Compare and the downloads."
                                          if session.run is not None else ""),
               plots.loss_curve(result.losses, cfg.steps), session) + nothing
        return
    observe(result.timings, len(forget), len(retain), len(result.losses), cfg,
            checks=len((result.until or {}).get("checks") or []))
    notes = []
    if limits.patch_bytes is not None and public.patch_bytes(result.patch) > limits.patch_bytes:
        result.patch = None  # a session keeps small data only (docs/SERVING.md: what each visitor holds)
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
