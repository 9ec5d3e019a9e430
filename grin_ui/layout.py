"""The page: one function per tab, each returning a dict of its components (wiring is in app_builder.py)."""

from __future__ import annotations

import gradio as gr

from grin_engine.compare import METHODS as COMPARE_METHODS
from grin_engine.config import GrinConfig
from grin_engine.data import builtin_names
from grin_engine.losses import LOSSES, describe_losses

from . import inputs, plots, show_me, tables
from .callbacks import MODEL_SOURCES, P_STEPS, SIGMA2_CHOICES
from .learn import LEARN_MD
from .presets import PRESETS
from .public import caps, describe
from .state import local_models_allowed

DEFAULTS = GrinConfig()
LATEX = [{"left": "$$", "right": "$$", "display": True}, {"left": "$", "right": "$", "display": False}]


def header() -> None:
    gr.Markdown("# GRIN Studio\nFind the weights that hold what a language model should forget, unlearn only "
                "those, and see what it costs. Work left to right: **Setup → Influence → Unlearn → Compare**; "
                "**Learn** explains each step." + ("\n\n" + describe(caps()) if caps().public else ""))


def _data_inputs(which: str, default: str) -> dict:
    names = builtin_names()
    with gr.Column():
        gr.Markdown(f"**{which.capitalize()} set**: a built-in set, a TOFU config or a file with question, "
                    "answer[, keywords]")
        builtin = gr.Dropdown(names, value=default if default in names else (names[0] if names else None),
                              label="built-in set")
        example = "tofu:forget01_perturbed" if which == "forget" else "tofu:retain_perturbed"
        tofu = gr.Textbox(label="or TOFU from the Hub", placeholder=example)
        upload = gr.File(label="or upload JSONL / JSON / CSV", file_types=[".jsonl", ".json", ".csv"],
                         type="filepath", height=170)
    return {f"{which}_builtin": builtin, f"{which}_tofu": tofu, f"{which}_file": upload}


def setup_tab() -> dict:
    c = {}
    with gr.Tab("Setup", id="setup"):
        with gr.Row():
            with gr.Column(scale=1):
                sources = MODEL_SOURCES + (["local folder"] if local_models_allowed() else [])
                c["model_source"] = gr.Radio(sources, value="default", label="model",
                                             info="default: SmolLM2-135M-Instruct")
                c["model_name"] = gr.Textbox(label="Hub id" + (" or local folder" if local_models_allowed() else ""),
                                             placeholder="HuggingFaceTB/SmolLM2-135M-Instruct")
                c["max_items"] = inputs.Slider(1, min(200, caps().max_items), value=16, step=1, label="max items per set",
                                           info="Influence and Unlearn use the first N items of each set "
                                                "(small = fast; 16 takes ~1-2 min on a CPU)")
            c.update(_data_inputs("forget", "harry_potter"))
            c.update(_data_inputs("retain", "general_knowledge"))
        with gr.Row():
            c["load_btn"] = gr.Button("Load", variant="primary", scale=3)
            c.update(show_me.button())
        c["load_status"] = gr.Markdown(elem_id="load_status")
        c["show_me_status"] = gr.Markdown(elem_id="show_me_status")
        with gr.Row():
            c["facts"] = gr.Dataframe(tables.model_facts({}), label="model", scale=1, interactive=False,
                                      elem_id="facts")
            c["preview"] = gr.Dataframe(tables.items_preview([], []), label="items", scale=3, interactive=False,
                                        wrap=True, max_height=420, elem_id="preview",
                                        column_widths=["8%", "5%", "37%", "35%", "15%"])
    return c


def influence_tab() -> dict:
    c = {}
    with gr.Tab("Influence", id="influence"):
        gr.Markdown("Score every candidate weight by how much it matters for the forget set relative to the retain "
                    "set, then pick the top p%. Scores are computed once; the slider re-selects instantly.")
        with gr.Row():
            c["influence_btn"] = gr.Button("Compute influence", variant="primary", scale=1)
            c["p_slider"] = inputs.Slider(0, len(P_STEPS) - 1, value=P_STEPS.index(100 * DEFAULTS.p), step=1,
                                      label="p (log steps, 0.01% … 10%)", scale=2, elem_id="p_slider", buttons=[])
            c["p_percent"] = inputs.Number(100 * DEFAULTS.p, label="p (%)", minimum=0.0001, maximum=100, scale=1)
        c["influence_status"] = gr.Markdown(elem_id="influence_status")
        c["selection_md"] = gr.Markdown(tables.selection_text(None), elem_id="selection")
        c["heatmap"] = gr.Plot(plots.selection_heatmap(None), label="selected share", elem_id="heatmap")
        with gr.Row():
            c["layer_bars"] = gr.Plot(plots.layer_bars(None), label="attention vs feed-forward")
            c["score_hist"] = gr.Plot(plots.score_histogram(None, None), label="scores")
    return c


# Measured with the default model at the app's 16 + 16 items (bench/until.py --max-items 16 with each preset's values:
# a fixed run and a stop-once run from one base evaluation; README).
PRESET_NOTE = ("<small>Presets fill the controls below (the stop-once box stays as it is). Measured with the default "
               "model at the app's 16 + 16 items: *gently* (NPO, p 0.5%) forgets about half the Harry Potter facts "
               "(forget keyword accuracy 1.00 → 0.44), keeps every capital and stays fluent; it never reaches the "
               "stop-once target, so it runs all 20 steps. *Aggressively* (GradDiff, p 5%, lr 1e-3) stops once "
               "forgotten at step 2 (forget 0.12), and the model pays: 3 of 16 forget answers loop and the retain "
               "answers' probability halves (0.81 → 0.37); with the stop-once box emptied, its 40 steps turn every "
               "forget answer into \"The franchise franchise franchise ...\".</small>")
UNTIL_EXAMPLE = "forget_keyword_accuracy<=0.25"
# The app's default: stop once forgotten. At the app's 16 + 16 items a fixed 20 steps over-unlearns (2 of 16 forget
# answers loop: "The official website of the official website ..."); stopping once the target held (step 10) left
# every forget answer wrong but fluent, retain 16 of 16 intact, in less time (bench/until.py --max-items 16; README).
STOP_ONCE_DEFAULT = UNTIL_EXAMPLE
UNLEARN_CONTROLS = ("method", "u_p_percent", "sigma2", "lr", "steps", "alpha", "beta", "seed", "use_mask")


def unlearn_tab() -> dict:
    c = {}
    methods = describe_losses()
    with gr.Tab("Unlearn", id="unlearn") as c["tab"]:
        with gr.Row():
            for name in PRESETS:
                c[f"preset::{name}"] = gr.Button(f"Preset: {name}", variant="secondary", size="md")
        gr.Markdown(PRESET_NOTE)
        with gr.Row():
            c["method"] = gr.Dropdown(list(LOSSES), value=DEFAULTS.method, label="method",
                                      info="what each does: open “What the methods do” below")
            c["u_p_percent"] = inputs.Number(100 * DEFAULTS.p, label="p (%) of weights to train",
                                             minimum=0.0001, maximum=100,
                                             info="follows the Influence tab's p; type here to use another")
            c["sigma2"] = gr.Dropdown(SIGMA2_CHOICES, value=_sigma2_choice(DEFAULTS.sigma2), label="noise σ²")
            c["use_mask"] = gr.Checkbox(True, label="mask (GRIN)", info="off: plain baseline, all weights, no noise")
        with gr.Accordion("What the methods do", open=False):
            gr.Markdown("\n".join(f"- **{k}**: {v}" for k, v in methods.items())
                        + f"\n\ngamma and delta have no control here: the app uses their defaults, gamma = each "
                          f"method's (1; SimNPO 0.125, as open-unlearning) and delta = {DEFAULTS.delta:g}.")
        with gr.Row():
            c["lr"] = inputs.Number(DEFAULTS.lr, label="learning rate", minimum=0)
            c["steps"] = inputs.Slider(1, min(200, caps().max_steps), value=DEFAULTS.steps, step=1, label="steps")
            c["alpha"] = inputs.Number(DEFAULTS.alpha, label="alpha (retain weight)", minimum=0)
            c["beta"] = inputs.Number(None, label="beta (0 or empty: method default)", minimum=0)
            c["seed"] = inputs.Number(DEFAULTS.seed, label="seed", precision=0)
        c["until"] = gr.Textbox(STOP_ONCE_DEFAULT, label="stop once (optional)", placeholder=UNTIL_EXAMPLE,
                                elem_id="until",
                                info=f"a forget-set target, checked every {DEFAULTS.until_every} steps with the "
                                     "evaluation's own code (each check answers the forget questions); steps is "
                                     "then the most. On by default: a fixed step count over-unlearns small sets. "
                                     "Empty: always all steps")
        with gr.Row():
            c["run_btn"] = gr.Button("Run", variant="primary")
            c["stop_btn"] = gr.Button("Stop", variant="stop")
        c["expected"] = gr.Markdown(elem_id="run_expected")  # the time a Run would take (callbacks.expected_time)
        c["run_status"] = gr.Markdown(elem_id="run_status")
        c["loss_plot"] = gr.Plot(plots.loss_curve([], DEFAULTS.steps), label="loss", elem_id="loss_plot")
    return c


def _sigma2_choice(value: float) -> str:
    for choice in SIGMA2_CHOICES:
        if float(choice) == value:
            return choice
    return SIGMA2_CHOICES[2]


def compare_tab() -> dict:
    c = {}
    with gr.Tab("Compare", id="compare"):
        c["metrics"] = gr.Dataframe(tables.metrics(None), label="metrics before / after", interactive=False,
                                    elem_id="metrics")
        c["forget_gen"] = gr.Dataframe(tables.generations(None, "forget"), label="forget set: answers before / after",
                                       interactive=False, wrap=True, max_height=420, elem_id="forget_gen",
                                       column_widths=["22%", "22%", "28%", "28%"])
        c["retain_gen"] = gr.Dataframe(tables.generations(None, "retain"), label="retain set: answers before / after",
                                       interactive=False, wrap=True, max_height=420, elem_id="retain_gen",
                                       column_widths=["22%", "22%", "28%", "28%"])
        gr.Markdown("### Your own question")
        with gr.Row():
            c["prompt"] = gr.Textbox(label="question", placeholder="Who is Harry Potter's best friend?", scale=3)
            c["generate_btn"] = gr.Button("Ask both models", scale=1)
        with gr.Row():
            c["answer_before"] = gr.Textbox(label="base model", interactive=False)
            c["answer_after"] = gr.Textbox(label="unlearned model", interactive=False)
        gr.Markdown("### Downloads")
        with gr.Row():
            c["report_btn"] = gr.Button("Prepare report (JSON + CSV)")
            c["weights_btn"] = gr.Button("Prepare unlearned weights (.safetensors)")
        with gr.Row():
            c["report_json"] = gr.File(label="report JSON", interactive=False, elem_classes="download")
            c["report_csv"] = gr.File(label="metrics CSV", interactive=False, elem_classes="download")
            c["weights_file"] = gr.File(label="unlearned weights", interactive=False, elem_classes="download")
    return c


def methods_tab() -> dict:
    c = {}
    with gr.Tab("Compare methods", id="methods"):
        gr.Markdown("Run GRIN, GRUN and the baselines on the **same items, steps and seed**, with the settings of "
                    "the **Unlearn** tab (loss, p, σ², learning rate, steps, alpha, beta, seed), and see what each "
                    "forgot and what each kept. Each method costs about one Unlearn run (they share one evaluation "
                    "of the base model and one pair of gradients); on a CPU keep *max items* in Setup small. "
                    "**Learn** explains why each baseline is here.")
        c["methods"] = gr.CheckboxGroup([(f"{name} — {text}", name) for name, text in COMPARE_METHODS.items()],
                                        value=["grin", "grun", "full"], label="methods")
        with gr.Accordion("GRUN settings", open=False):
            with gr.Row():
                c["grun_method"] = gr.Dropdown(list(LOSSES), value=DEFAULTS.grun_method, label="GRUN loss",
                                               info="idk: steer forget questions to a refusal")
                c["grun_gate"] = gr.Radio(["linear", "mlp"], value=DEFAULTS.grun_gate, label="gate g(h)",
                                          info="linear: one layer; mlp: a small two-layer network")
                c["grun_lr"] = inputs.Number(DEFAULTS.grun_lr, label="GRUN learning rate", minimum=0,
                                         info="for the edits and the gate (new modules take larger steps)")
                c["grun_gate_weight"] = inputs.Number(DEFAULTS.grun_gate_weight, label="gate weight", minimum=0,
                                                  info="weight of BCE(gate, 1 on forget / 0 on retain)")
                c["grun_steps"] = inputs.Number(DEFAULTS.grun_steps, label="GRUN steps", minimum=1, precision=0,
                                            info="its steps are cheaper: 40 cost about GRIN's 20")
        with gr.Row():
            c["compare_btn"] = gr.Button("Compare", variant="primary")
            c["compare_stop_btn"] = gr.Button("Stop", variant="stop")
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
    return c


def learn_tab() -> dict:
    with gr.Tab("Learn", id="learn"):
        return {"learn": gr.Markdown(LEARN_MD, latex_delimiters=LATEX)}
