"""build_app(): the tabs from layout.py, wired to callbacks.py. Every event names its api_name (gradio_client)."""

from __future__ import annotations

import functools

import gradio as gr

from . import attack_view
from . import callbacks as cb
from . import layout, show_me, sweep_view, tofu_view
from .public import caps
from .slots import HEAVY, LIGHT, FairBlocks
from .state import delete_session

# The budget for model-sized work (slots.py): long jobs share HEAVY, short ones that copy the model share LIGHT,
# loading a model has its own line; so a short action never waits behind a long one.
MODEL = {"concurrency_id": HEAVY, "concurrency_limit": caps().heavy_jobs}
SHORT_MODEL = {"concurrency_id": LIGHT, "concurrency_limit": 1}
LOAD = {"concurrency_id": "load", "concurrency_limit": 1}

THEME = gr.themes.Soft(primary_hue="blue", secondary_hue="orange")
CSS = (".gradio-container {max-width: 1400px !important}\n"
       "#p_slider input[type=number] {display: none}\n"  # the log slider's index means nothing; p (%) shows p
       "#p_slider .min_value, #p_slider .max_value {display: none}\n"  # its ends are indices 0 and 17, not %; the
                                                                       # label gives the range: 0.01% ... 10%
       ".download .empty.large {min-height: 80px !important; height: 80px}")  # empty download boxes: not 250 px


def launch_kwargs() -> dict:
    """What launch() needs besides the port (Gradio 6: theme and css go to launch, not Blocks); in public mode the
    upload cap, enforced by Gradio before a byte is stored."""
    limits = caps()
    return {"theme": THEME, "css": CSS, **({"max_file_size": limits.upload_bytes} if limits.public else {})}


def build_app() -> gr.Blocks:
    # delete_cache: uploads and Gradio's copies of downloads older than an hour go, checked every 10 minutes
    with FairBlocks(title="GRIN Studio", delete_cache=(600, 3600)) as demo:
        # A visitor's Session (CPU data only). Gradio drops it an hour after the tab closes or reloads; the time to
        # live also frees sessions of tabs left open (6 h locally, 30 min on a public server). Its download folder
        # goes with it (delete_session).
        session = gr.State(None, time_to_live=caps().session_ttl_s, delete_callback=delete_session)
        layout.header()
        with gr.Tabs():
            s = layout.setup_tab()
            i = layout.influence_tab()
            u = layout.unlearn_tab()
            c = layout.compare_tab()
            m = layout.methods_tab()
            a = attack_view.attack_tab()
            w = sweep_view.sweep_tab()
            t = tofu_view.tofu_tab()
            layout.learn_tab()

        s["load_btn"].click(
            cb.load, [s["model_source"], s["model_name"], s["forget_builtin"], s["forget_tofu"], s["forget_file"],
                      s["retain_builtin"], s["retain_tofu"], s["retain_file"], session],
            [s["facts"], s["preview"], s["load_status"], session], api_name="load", show_progress_on=s["load_status"],
            **LOAD)

        figures = [i["selection_md"], i["heatmap"], i["layer_bars"], i["score_hist"]]
        i["influence_btn"].click(cb.influence, [s["max_items"], i["p_percent"], session],
                                 [i["influence_status"], session] + figures, api_name="influence",
                                 show_progress_on=i["influence_status"], **MODEL)
        select_outputs = figures + [u["u_p_percent"]]
        # the three ways to choose p share one queue, served in the order they came: a click on the slider first
        # blurs the p box, and that blur's selection (the old p) must not land after the slider's (the new p)
        one_selection_at_a_time = {"concurrency_id": "select", "concurrency_limit": 1}
        i["p_percent"].submit(cb.select, [i["p_percent"], session], select_outputs, api_name="select",
                              **one_selection_at_a_time)
        i["p_percent"].blur(cb.select_quiet, [i["p_percent"], session], select_outputs, api_name="select_blur",
                            api_visibility="undocumented", **one_selection_at_a_time)
        i["p_slider"].release(cb.select_index, [i["p_slider"], session], [i["p_percent"]] + select_outputs,
                              api_name="select_slider", api_visibility="undocumented", trigger_mode="always_last",
                              **one_selection_at_a_time)
        i["p_percent"].change(cb.slider_index, i["p_percent"], i["p_slider"], api_visibility="private", queue=False,
                              show_progress="hidden")  # the slider follows a typed p (its release is the user's only)

        controls = [u[name] for name in layout.UNLEARN_CONTROLS]
        for key, component in u.items():
            if key.startswith("preset::"):
                name = key.split("::", 1)[1]
                slug = "preset_" + ("gentle" if "gently" in name else "aggressive")
                component.click(functools.partial(cb.preset, name), None, controls, api_name=slug, queue=False)
        run = u["run_btn"].click(
            cb.unlearn, controls + [s["max_items"], session, u["until"]],
            [u["run_status"], u["loss_plot"], session, c["forget_gen"], c["retain_gen"], c["metrics"]],
            api_name="unlearn", show_progress_on=u["run_status"], **MODEL)
        u["stop_btn"].click(cb.stop, None, u["run_status"], api_name="stop", concurrency_id="stop",
                            concurrency_limit=None)
        # the time a Run would take, shown before Run: on opening the tab and on every change of what it depends on
        expected_inputs = controls + [s["max_items"], session, u["until"]]
        # one at a time, in the order of the changes (unqueued calls could finish out of order and leave an older
        # setting's time on the page)
        in_order = {"concurrency_id": "expected_time", "concurrency_limit": 1, "show_progress": "hidden"}
        run.then(cb.expected_time, expected_inputs, u["expected"], api_name="expected_time_after_run",
                 api_visibility="private", **in_order)  # what the next Run re-uses has changed
        gr.on([u["tab"].select, s["max_items"].change, u["until"].change] + [control.change for control in controls],
              cb.expected_time, expected_inputs, u["expected"], api_name="expected_time", trigger_mode="always_last",
              **in_order)

        c["generate_btn"].click(cb.generate, [c["prompt"], session], [c["answer_before"], c["answer_after"]],
                                api_name="generate", **SHORT_MODEL)
        c["prompt"].submit(cb.generate, [c["prompt"], session], [c["answer_before"], c["answer_after"]],
                           api_name="generate_submit", api_visibility="undocumented", **SHORT_MODEL)
        c["report_btn"].click(cb.report, session, [c["report_json"], c["report_csv"]], api_name="report")
        c["weights_btn"].click(cb.weights, session, c["weights_file"], api_name="weights", **SHORT_MODEL)

        m["compare_btn"].click(
            cb.compare_methods, [m["methods"], m["grun_method"], m["grun_gate"], m["grun_lr"], m["grun_gate_weight"],
                                 m["grun_steps"]] + controls
            + [s["max_items"], m["answers_split"], session],
            [m["compare_status"], session, m["methods_table"], m["methods_scatter"], m["overlap"],
             m["methods_answers"]], api_name="compare", show_progress_on=m["compare_status"], **MODEL)
        m["compare_stop_btn"].click(cb.stop, None, m["compare_status"], api_name="stop_compare",
                                    api_visibility="undocumented", concurrency_id="stop", concurrency_limit=None)
        m["answers_split"].change(cb.methods_answers, [m["answers_split"], session], m["methods_answers"],
                                  api_name="methods_answers", api_visibility="undocumented", queue=False)
        m["compare_report_btn"].click(cb.compare_report, session, m["compare_report"], api_name="compare_report")
        show_me.wire(s, i, u, c, session, MODEL)
        attack_view.wire(a, session, MODEL)
        tofu_view.wire(t, session, MODEL)
        sweep_view.wire(w, s, u, session, MODEL)
    return demo
