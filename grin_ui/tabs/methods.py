"""Compare methods: GRIN, GRUN and the baselines (grin_engine/runs/methods.METHODS) on the same items, steps and
seed, with the Unlearn tab's settings: what each forgot, what each kept, and how much their masks overlap."""

from __future__ import annotations

import json
import time

import gradio as gr

from grin_engine.config import GrinConfig
from grin_engine.errors import GrinError
from grin_engine.method.losses import LOSSES
from grin_engine.runs.masks import missing_scores
from grin_engine.runs.methods import get_methods
from grin_engine.runs.pipeline import retain_collapse

from .. import downloads, gpu, inputs, plots, public, tables
from ..forms import UNLEARN_CONTROLS, Form, Page, job_buttons, method_choices, unlearn_config
from ..jobs import STOPPED, run_job, stop
from ..progress import compare_plan, format_seconds, observe
from ..slots import MODEL_JOB, STOP_JOB
from ..state import BEFORE, Session, owner, session_of, shared_inputs
from .unlearn import reuse_note

DEFAULTS = GrinConfig()
GRUN_CONTROLS = ["methods.grun_loss", "methods.grun_gate", "methods.grun_lr", "methods.grun_gate_weight",
                 "methods.grun_steps"]
COMPARE_INPUTS = (["methods.methods"] + GRUN_CONTROLS + UNLEARN_CONTROLS
                  + ["setup.max_items", "methods.answers_split", "session"])
RESULTS = ["methods.methods_table", "methods.methods_scatter", "methods.overlap", "methods.methods_answers"]


def layout(page: Page) -> None:
    c = {}
    with gr.Tab("Compare methods", id="methods"):
        gr.Markdown("Run GRIN, GRUN and the baselines on the **same items, steps and seed**, with the settings of "
                    "the **Unlearn** tab (loss, p, σ², learning rate, steps, alpha, beta, seed), and see what each "
                    "forgot and what each kept. Each method costs about one Unlearn run (they share one evaluation "
                    "of the base model and one set of gradients for their masks); on a CPU keep *max items* in "
                    "Setup small. **Learn** explains why each baseline is here.")
        c["methods"] = gr.CheckboxGroup(method_choices(),
                                        value=["grin", "grun", "full"], label="methods")
        with gr.Accordion("GRUN settings", open=False):
            with gr.Row():
                c["grun_loss"] = gr.Dropdown(list(LOSSES), value=DEFAULTS.grun_loss, label="GRUN loss",
                                             info="idk: steer forget questions to a refusal")
                c["grun_gate"] = gr.Radio(["linear", "mlp"], value=DEFAULTS.grun_gate, label="gate g(h)",
                                          info="linear: one layer; mlp: a small two-layer network")
                c["grun_lr"] = inputs.Number(DEFAULTS.grun_lr, label="GRUN learning rate", minimum=0,
                                             info="for the edits and the gate (new modules take larger steps)")
                c["grun_gate_weight"] = inputs.Number(DEFAULTS.grun_gate_weight, label="gate weight", minimum=0,
                                                      info="weight of BCE(gate, 1 on forget / 0 on retain)")
                c["grun_steps"] = inputs.Number(DEFAULTS.grun_steps, label="GRUN steps", minimum=1, precision=0,
                                                info="its steps are cheaper: 40 cost about GRIN's 20")
        c["compare_btn"], c["compare_stop_btn"] = job_buttons("Compare")
        c["compare_status"] = gr.Markdown(elem_id="compare_status")
        c["methods_table"] = gr.Dataframe(tables.methods_table(None), label="metrics after unlearning, per method",
                                          interactive=False, wrap=True, elem_id="methods_table")
        with gr.Row():
            c["methods_scatter"] = gr.Plot(plots.methods_scatter(None), label="forget vs retain", scale=3,
                                           elem_id="methods_scatter")
            c["overlap"] = gr.Markdown(tables.overlap_text({}, {}, None), elem_id="overlap")
        c["answers_split"] = gr.Radio(["forget", "retain"], value="forget", label="answers to the questions of")
        c["methods_answers"] = gr.Dataframe(tables.methods_answers(None, [], "forget"), interactive=False,
                                            wrap=True, max_height=480, elem_id="methods_answers",
                                            label="answers side by side")
        with gr.Row():
            c["compare_report_btn"] = gr.Button("Prepare comparison JSON")
            c["compare_report"] = gr.File(label="comparison JSON", interactive=False, elem_classes="download")
    page.add("methods", c)


def wire(page: Page) -> None:
    page["methods.compare_btn"].click(**page.event(
        compare_methods, COMPARE_INPUTS, ["methods.compare_status", "session"] + RESULTS, api_name="compare",
        show_progress_on=page["methods.compare_status"], **MODEL_JOB))
    page["methods.compare_stop_btn"].click(stop, None, page["methods.compare_status"], api_name="stop_compare",
                                           api_visibility="undocumented", **STOP_JOB)
    page["methods.answers_split"].change(**page.event(
        answers, ["methods.answers_split", "session"], ["methods.methods_answers"], api_name="methods_answers",
        api_visibility="undocumented", queue=False))
    page["methods.compare_report_btn"].click(**page.event(download_comparison, ["session"],
                                                          ["methods.compare_report"], api_name="compare_report"))


def compare_config(form: Form) -> GrinConfig:
    """The Unlearn tab's settings with this tab's GRUN settings."""
    grun_loss = form["methods.grun_loss"]
    return unlearn_config(form, grun_loss=grun_loss if isinstance(grun_loss, str) else str(grun_loss),
                          grun_gate=form["methods.grun_gate"], grun_lr=form.number("methods.grun_lr"),
                          grun_gate_weight=form.number("methods.grun_gate_weight"),
                          grun_steps=form.number("methods.grun_steps"))


def compare_methods(form: Form, request, progress):
    """GRIN, GRUN and baselines on the same items with the Unlearn tab's settings: table, scatter, answers."""
    started = time.perf_counter()  # the wall time the visitor waits, not the sum of the engine's stage timings
    session = session_of(form["session"])
    chosen = form.names("methods.methods", "methods")
    if not chosen:
        raise GrinError("choose at least one method to compare")
    limits = public.caps()
    if len(chosen) > limits.methods:
        raise GrinError(f"methods: {len(chosen)} chosen; at most {limits.methods} in one comparison")
    methods = get_methods(chosen)
    names = [m.name for m in methods]
    cfg = compare_config(form)
    session.require_loaded()
    forget, retain = session.items(form["setup.max_items"])
    public.check_run(cfg, len(forget), limits, grun="grun" in names)
    before_key, _, cached, top = shared_inputs(session.model_name, forget, retain, cfg)
    nothing = (gr.skip(),) * 4
    plan = compare_plan(len(forget), len(retain), cfg, names, cached is not None,
                        bool(missing_scores(methods, {"grin": top} if top else None, cfg.p)))

    def show(event, losses, stop):
        fraction, text = plan.update(*event[:3])
        text += " — stopping ..." if stop.is_set() else ""
        progress(fraction, desc=text)
        return (f"Running: {text}", session) + nothing

    outcome = yield from run_job(
        request, lambda stop: gpu.compare_work(session.model_name, forget, retain, cfg, names, stop, cached, top),
        show, queued=("**Stopped** while waiting in the queue; your previous comparison (if any) is kept.", session)
        + nothing, stopped=("Stopped; your previous comparison (if any) is kept.", session) + nothing,
        starting=(f"Starting: about {format_seconds(plan.expected_seconds())} expected on this server, in "
                  f"{len(plan.phases)} steps; {plan.update(plan.phases[0].key, 0, 0)[1]}", session) + nothing)
    if outcome is STOPPED:
        return
    before, comparison = outcome
    if before is not None:
        BEFORE.put(before_key, before, owner(request))
    finished = [name for name, r in (comparison.results.items() if comparison else []) if not r.stopped]
    if comparison is None or (comparison.stopped and not finished):
        yield ("**Stopped** before any method finished; your previous comparison (if any) is kept.", session) \
            + nothing
        return
    session.comparison = comparison
    for name in finished:
        result = comparison.results[name]
        observe(result.timings, len(forget), len(retain), len(result.losses) if name != "grun" else 0, cfg,
                checks=len((result.until or {}).get("checks") or []))
    outputs = comparison_outputs(session, form["methods.answers_split"])  # built before the time is taken: it is
    stopped = [name for name, r in comparison.results.items() if r.stopped]  # part of the wait
    done = ", ".join(finished)
    status = (f"**Stopped** — finished: {done or 'none'}" + (f"; stopped: {', '.join(stopped)}" if stopped else "")
              + "." if comparison.stopped else
              f"**Done**: {done} on {len(forget)} forget and {len(retain)} retain items in "
              f"{time.perf_counter() - started:.0f} s.")
    collapsed = [f"{name}: {w}" for name, r in comparison.results.items() if not r.stopped
                 for w in [retain_collapse(r.metrics)] if w]
    if not comparison.stopped:
        status += reuse_note(cached, top if any(m.score_source == "grin" for m in methods) else None, cfg)
    if collapsed:
        status += " **Warning** — " + "; ".join(collapsed)
    yield (status, session) + outputs


def comparison_outputs(session: Session, split: str) -> tuple:
    c = session.comparison
    rows = c.table() if c else None
    p = c.config["p"] if c else None
    return (tables.methods_table(rows), plots.methods_scatter(rows),
            tables.overlap_text(c.overlap if c else {}, c.masks_selected if c else {}, p),
            answers_table(split, session))


def answers_table(split, session: Session):
    """The answers of every compared method to the questions of one split."""
    c = session.comparison
    methods = list(c.results) if c else []
    table = tables.methods_answers(c.generations() if c else None, methods, "retain" if split == "retain" else "forget")
    share = 64 // max(1, len(methods) + 1)  # question and gold answer 18% each, the answers share the rest
    return gr.Dataframe(table, column_widths=["18%", "18%"] + [f"{share}%"] * (len(methods) + 1))


def answers(form: Form):
    return answers_table(form["methods.answers_split"], session_of(form["session"]))


def download_comparison(form: Form, request, progress):
    """The comparison as JSON (Comparison.to_report, the same contract as the CLI's compare --out)."""
    session = session_of(form["session"])
    if session.comparison is None:
        raise GrinError("no comparison yet: press Compare first")
    return downloads.write_text(session, request, "grin_compare.json",
                                json.dumps(session.comparison.to_report(), indent=2))
