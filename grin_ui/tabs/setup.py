"""Setup: choose a model and the forget and retain sets, then Load (the shared base model; a visitor's sets)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import gradio as gr

from grin_engine.data import builtin_names, load_items
from grin_engine.errors import GrinError

from .. import inputs, public, tables
from ..forms import Form, Page
from ..progress import load_plan
from ..slots import LOAD_JOB
from ..state import STORE, check_model_name, local_models_allowed, session_of

MODEL_SOURCES = ["default", "Hub id"]
LOAD_INPUTS = ["setup.model_source", "setup.model_name", "setup.forget_builtin", "setup.forget_tofu",
               "setup.forget_file", "setup.retain_builtin", "setup.retain_tofu", "setup.retain_file", "session"]


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


def layout(page: Page) -> None:
    c = {}
    with gr.Tab("Setup", id="setup"):
        with gr.Row():
            with gr.Column(scale=1):
                sources = MODEL_SOURCES + (["local folder"] if local_models_allowed() else [])
                c["model_source"] = gr.Radio(sources, value="default", label="model",
                                             info="default: SmolLM2-135M-Instruct")
                c["model_name"] = gr.Textbox(label="Hub id" + (" or local folder" if local_models_allowed() else ""),
                                             placeholder="HuggingFaceTB/SmolLM2-135M-Instruct")
                c["max_items"] = inputs.Slider(1, min(200, public.caps().max_items), value=16, step=1,
                                               label="max items per set",
                                               info="Influence and Unlearn use the first N items of each set "
                                                    "(small = fast; 16 takes ~1-2 min on a CPU)")
            c.update(_data_inputs("forget", "harry_potter"))
            c.update(_data_inputs("retain", "general_knowledge"))
        with gr.Row():
            c["load_btn"] = gr.Button("Load", variant="primary", scale=3)
            c["show_me_btn"] = gr.Button("Show me (a 4-item demo, every step explained)", variant="secondary",
                                         scale=2, elem_id="show_me_btn")
        c["load_status"] = gr.Markdown(elem_id="load_status")
        c["show_me_status"] = gr.Markdown(elem_id="show_me_status")
        with gr.Row():
            c["facts"] = gr.Dataframe(tables.model_facts({}), label="model", scale=1, interactive=False,
                                      elem_id="facts")
            c["preview"] = gr.Dataframe(tables.items_preview([], []), label="items", scale=3, interactive=False,
                                        wrap=True, max_height=420, elem_id="preview",
                                        column_widths=["8%", "5%", "37%", "35%", "15%"])
    page.add("setup", c)


def wire(page: Page) -> None:
    page["setup.load_btn"].click(**page.event(load, LOAD_INPUTS, ["setup.facts", "setup.preview",
                                                                  "setup.load_status", "session"],
                                              api_name="load", show_progress_on=page["setup.load_status"],
                                              **LOAD_JOB))


def _data_source(form: Form, which: str) -> str:
    """What to load a set from: an uploaded file, else a tofu:<config>, else a built-in set."""
    upload = form[f"setup.{which}_file"]
    if upload:
        public.check_upload(str(upload), public.caps())
        return str(upload)
    tofu = form.text(f"setup.{which}_tofu", f"{which} set").strip()
    if tofu:
        if not tofu.startswith("tofu:"):
            raise GrinError(f"{which} set: the text box takes a TOFU config such as tofu:forget01_perturbed "
                            f"(files: use the upload box)")
        return tofu
    builtin = form[f"setup.{which}_builtin"]
    if not isinstance(builtin, str) or builtin not in builtin_names():
        raise GrinError(f"{which} set: choose a built-in set ({', '.join(builtin_names())}), a tofu:<config> "
                        f"or upload a file")
    return builtin


def _model_name(form: Form) -> str:
    source = form["setup.model_source"]
    if source == "default":
        return "default"
    name = form.text("setup.model_name", "model")
    if source == "local folder":
        if not local_models_allowed():
            raise GrinError("model: local folders are disabled on this server")
        name = check_model_name(name)
        if not Path(name).expanduser().is_dir():
            raise GrinError(f"model: folder {name!r} not found")
        return name
    return check_model_name(name)


def load(form: Form, request, progress):
    """Load (or reuse) the shared base model and the two sets; show model facts and a preview."""
    session = session_of(form["session"])
    name = _model_name(form)
    sources = (_data_source(form, "forget"), _data_source(form, "retain"))
    limits = public.caps()
    public.check_model(name, limits)
    forget, retain = load_items(sources[0]), load_items(sources[1])  # cheap checks before the slow load
    for which, items in (("forget", forget), ("retain", retain)):
        if form[f"setup.{which}_file"]:  # built-in and Hub sets are known; an upload is whatever a visitor sent
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
