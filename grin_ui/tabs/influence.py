"""Influence: score every candidate weight once, then pick the top p% instantly (a preview from the score
histograms); the heatmap shows where the selected weights sit."""

from __future__ import annotations

import math

import gradio as gr

from grin_engine.config import GrinConfig, as_number
from grin_engine.errors import GrinError
from grin_engine.method.score_summary import preview_selection

from .. import gpu, inputs, plots, public, tables
from ..forms import Form, Page, fraction
from ..jobs import STOPPED, run_job
from ..progress import influence_plan, observe
from ..state import SCORES, Session, owner, session_of, shared_inputs

P_STEPS = [0.01, 0.02, 0.03, 0.05, 0.07, 0.1, 0.15, 0.2, 0.3, 0.5, 0.7, 1.0, 1.5, 2.0, 3.0, 5.0, 7.0, 10.0]  # the
#                                                                          log-ish steps of the p slider, in percent
FIGURES = ["influence.selection_md", "influence.heatmap", "influence.layer_bars", "influence.score_hist"]


def layout(page: Page) -> None:
    c = {}
    default_p = 100 * GrinConfig.p
    with gr.Tab("Influence", id="influence"):
        gr.Markdown("Score every candidate weight by how much it matters for the forget set relative to the retain "
                    "set, then pick the top p%. Scores are computed once; the slider re-selects instantly.")
        with gr.Row():
            c["influence_btn"] = gr.Button("Compute influence", variant="primary", scale=1)
            c["p_slider"] = inputs.Slider(0, len(P_STEPS) - 1, value=P_STEPS.index(default_p), step=1,
                                          label="p (log steps, 0.01% … 10%)", scale=2, elem_id="p_slider", buttons=[])
            c["p_percent"] = inputs.Number(default_p, label="p (%)", minimum=0.0001, maximum=100, scale=1)
        c["influence_status"] = gr.Markdown(elem_id="influence_status")
        c["selection_md"] = gr.Markdown(tables.selection_text(None), elem_id="selection")
        c["heatmap"] = gr.Plot(plots.selection_heatmap(None), label="selected share", elem_id="heatmap")
        with gr.Row():
            c["layer_bars"] = gr.Plot(plots.layer_bars(None), label="attention vs feed-forward", elem_id="layer_bars")
            c["score_hist"] = gr.Plot(plots.score_histogram(None, None), label="scores", elem_id="score_hist")
    page.add("influence", c)


def wire(page: Page) -> None:
    from ..slots import MODEL_JOB

    page["influence.influence_btn"].click(**page.event(
        influence, ["setup.max_items", "influence.p_percent", "session"], ["influence.influence_status", "session"]
        + FIGURES, api_name="influence", show_progress_on=page["influence.influence_status"], **MODEL_JOB))
    selected = FIGURES + ["unlearn.p_percent"]
    # the three ways to choose p share one queue, served in the order they came: a click on the slider first blurs
    # the p box, and that blur's selection (the old p) must not land after the slider's (the new p)
    in_order = {"concurrency_id": "select", "concurrency_limit": 1}
    p_box = page["influence.p_percent"]
    p_box.submit(**page.event(select, ["influence.p_percent", "session"], selected, api_name="select", **in_order))
    p_box.blur(**page.event(select_quiet, ["influence.p_percent", "session"], selected, api_name="select_blur",
                            api_visibility="undocumented", **in_order))
    page["influence.p_slider"].release(**page.event(
        select_index, ["influence.p_slider", "session"], ["influence.p_percent"] + selected,
        api_name="select_slider", api_visibility="undocumented", trigger_mode="always_last", **in_order))
    # the slider follows a typed p (its release is the user's only)
    p_box.change(slider_index, p_box, page["influence.p_slider"], api_visibility="private", queue=False,
                 show_progress="hidden")


def figures(session: Session, p_percent) -> tuple:
    """The selection text and the three figures at p%, previewed from the session's score histograms."""
    summary = preview_selection(session.hist, fraction(p_percent)) if session.hist else None
    return (tables.selection_text(summary, session.influence_s), plots.selection_heatmap(summary),
            plots.layer_bars(summary), plots.score_histogram(session.hist, summary))


def influence(form: Form, request, progress):
    """Influence scores of every candidate weight, on a copy of the base; kept as small histograms (the visitor's)
    and as the top scores (the server's, for every visitor's runs on the same items)."""
    p_percent = form["influence.p_percent"]
    fraction(p_percent)
    session = session_of(form["session"])
    session.require_loaded()
    forget, retain = session.items(form["setup.max_items"])
    public.check_run(GrinConfig(), len(forget), public.caps())
    nothing = (gr.skip(),) * 4
    _, key, _, kept = shared_inputs(session.model_name, forget, retain, GrinConfig())
    reused = SCORES.get(key) if kept is not None and SCORES.get(key)[1] is not None else None
    plan = influence_plan(len(forget), len(retain))

    def start(stop):  # the same model and items' scores, computed earlier by anybody, or new ones
        if reused is not None:
            return iter([("done", reused[::-1])])
        return gpu.influence_work(session.model_name, forget, retain, stop)

    def show(event, losses, stop):
        fraction_done, text = plan.update(*event[:3])
        progress(fraction_done, desc=text)
        return (f"Computing influence scores: {text}", session) + nothing

    outcome = yield from run_job(
        request, start, show,
        queued=("Stopped while waiting in the queue; the previous scores are kept.", session) + nothing,
        stopped=("Influence computation stopped; the previous scores (if any) are kept.", session) + nothing,
        starting=None if reused is not None else
        (f"Computing influence scores: {plan.update('influence', 0, 0)[1]}", session) + nothing)
    if outcome is STOPPED:
        return
    hist, top = outcome
    session.hist, session.influence_s = hist, top.seconds  # only a finished computation replaces the visitor's
    SCORES.put(key, (top, hist), owner(request))  # for Unlearn, Compare methods and Sweep, and for every visitor
    if reused is not None:
        status = (f"Influence scores of these {len(forget)} forget and {len(retain)} retain items re-used: "
                  f"computed earlier on this server in {top.seconds:.0f} s, no new gradients.")
    else:
        observe({"scores_s": top.seconds}, len(forget), len(retain), 0, GrinConfig())
        status = f"Influence computed on {len(forget)} forget and {len(retain)} retain items."
    yield (status, session) + figures(session, p_percent)


def select(form: Form):
    """Re-select at p% from the kept histograms (no gradients): the summary text and the three figures, and the
    p for the Unlearn tab."""
    session = session_of(form["session"])
    p_percent = form["influence.p_percent"]
    fraction(p_percent)
    if session.hist is None:
        raise GrinError("no influence scores yet: press Compute influence first")
    return figures(session, p_percent) + (p_percent,)


def select_quiet(form: Form):
    """select() for the page's own re-selections (blur, slider): before any scores it only passes p on."""
    if session_of(form["session"]).hist is None:
        fraction(form["influence.p_percent"])
        return (gr.skip(),) * 4 + (form["influence.p_percent"],)
    return select(form)


def select_index(form: Form):
    """The log-step slider: its p% (shown in the number box) and the selection there."""
    index = int(as_number(form["influence.p_slider"], "p slider", integer=False))
    p_percent = P_STEPS[min(len(P_STEPS) - 1, max(0, index))]
    return (p_percent,) + select_quiet(Form(["influence.p_percent", "session"], (p_percent, form["session"])))


def slider_index(p_percent):
    """The log slider's step nearest to a typed p%, so that the slider follows the box (nothing for a bad p)."""
    try:
        p = float(p_percent)
    except (TypeError, ValueError):
        return gr.skip()
    if not (math.isfinite(p) and p > 0):
        return gr.skip()
    return min(range(len(P_STEPS)), key=lambda i: abs(math.log(P_STEPS[i] / p)))
