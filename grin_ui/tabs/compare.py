"""Compare: the last run's answers and metrics before and after, your own question to both models, and the
downloads (the report, the unlearned weights)."""

from __future__ import annotations

import json

import gradio as gr

from grin_engine.config import GrinConfig
from grin_engine.errors import GrinError

from .. import downloads, gpu, public, tables
from ..forms import Form, Page
from ..slots import SHORT_JOB, release_memory
from ..state import session_of


def layout(page: Page) -> None:
    c = {}
    with gr.Tab("Compare", id="compare"):
        c["metrics"] = gr.Dataframe(tables.metrics(None), label="metrics before / after", interactive=False,
                                    elem_id="metrics")
        for split in ("forget", "retain"):
            c[f"{split}_gen"] = gr.Dataframe(tables.generations(None, split),
                                             label=f"{split} set: answers before / after", interactive=False,
                                             wrap=True, max_height=420, elem_id=f"{split}_gen",
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
    page.add("compare", c)


def wire(page: Page) -> None:
    ask = page.event(generate, ["compare.prompt", "session"], ["compare.answer_before", "compare.answer_after"],
                     **SHORT_JOB)
    page["compare.generate_btn"].click(**ask, api_name="generate")
    page["compare.prompt"].submit(**ask, api_name="generate_submit", api_visibility="undocumented")
    page["compare.report_btn"].click(**page.event(download_report, ["session"],
                                                  ["compare.report_json", "compare.report_csv"], api_name="report"))
    page["compare.weights_btn"].click(**page.event(download_weights, ["session"], ["compare.weights_file"],
                                                   api_name="weights", **SHORT_JOB))


def generate(form: Form, request, progress):
    """The visitor's own question, answered by the base model and by the last run's unlearned model."""
    prompt = public.check_question(form["compare.prompt"] if form["compare.prompt"] is not None else "",
                                   public.caps())  # at once, before a token
    session = session_of(form["session"])
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


def download_report(form: Form, request, progress):
    """The run's report as JSON (RunResult.to_report, the CLI's report) and its metrics table as CSV."""
    session = session_of(form["session"])
    if session.run is None:
        raise GrinError("no run yet: run Unlearn first")
    data = session.run.to_report()
    data["data"] = {"forget": session.sources[0], "retain": session.sources[1]}
    json_path = downloads.write_text(session, request, "grin_report.json", json.dumps(data, indent=2))
    csv_path = downloads.visitor_file(session, request, "grin_metrics.csv")
    downloads.replace(csv_path, lambda tmp: tables.metrics(session.run).to_csv(tmp, index=False))
    return json_path, str(csv_path)


def download_weights(form: Form, request, progress):
    """The unlearned model's weights as one .safetensors file (load with safetensors.torch.load_model into the
    same architecture; the report names the model)."""
    session = session_of(form["session"])
    if session.run is None or session.run.patch is None:
        raise GrinError("no unlearned model yet: run Unlearn to the end first" if session.run is None or
                        session.run.stopped else "this run's unlearned model is not kept on this server (see the "
                        "Unlearn status); run with a smaller p to download weights")
    path = downloads.visitor_file(session, request, "grin_unlearned.safetensors")
    try:
        downloads.replace(path, lambda tmp: gpu.weights_work(session.model_name, session.run.patch, str(tmp)))
    finally:
        release_memory()
    return str(path)
