"""TOFU benchmark: run the protocol (grin_engine/benchmarks/tofu.py) on the loaded model, or open a report made by
`python -m grin_engine tofu`, and see forget quality against model utility, with open-unlearning's published numbers
beside ours (another model and recipe, labelled as such). Layout, wiring and handlers of the tab."""

from __future__ import annotations

import json
import math
from pathlib import Path

import gradio as gr
import pandas as pd
import plotly.graph_objects as go

from grin_engine.benchmarks.tofu import FORGET_AUTHORS, PUBLISHED, TofuRecipe, parse_methods
from grin_engine.config import GrinConfig
from grin_engine.errors import GrinError
from grin_engine.method.losses import LOSSES

from .. import gpu, inputs, plots, public
from ..forms import Form, Page
from ..jobs import STOPPED, run_job, stop
from ..slots import MODEL_JOB, STOP_JOB
from ..state import session_of

METHOD_CHOICES = ["grin", "grun", *LOSSES]  # GRIN's mask with GradDiff, GRUN, or a loss on all weights
TABLE_COLUMNS = ["model", "forget quality", "forget quality (prob_mean)", "model utility", "privleak",
                 "AUC Min-K", "AUC LOSS", "forget ROUGE-L", "retain ROUGE-L", "forget fluency", "retain fluency",
                 "note"]
TABLE_WIDTHS = ["8%", "8%", "9%", "7%", "7%", "7%", "7%", "8%", "8%", "8%", "8%", "15%"]
MAX_REPORT_BYTES = 20_000_000
# the tuned table of docs/RESULTS.md: python -m grin_engine tofu --tune --out assets/reports/tofu_forget01_tune.jsonl
TUNED_REPORT = Path(__file__).resolve().parents[2] / "assets" / "reports" / "tofu_forget01_tune.json"


def layout(page: Page) -> None:
    t = {}
    with gr.Tab("TOFU benchmark", id="tofu"):
        gr.Markdown(
            "**TOFU** (fictitious authors) the way papers report it: a *target* model learns the forget authors and "
            "some retain authors, a *retain model* only the retain authors; each method unlearns the forget authors "
            "from the target. **Forget quality** (high = indistinguishable from the retain model; a KS-test "
            "p-value), **model utility** (what it still knows), **privleak** (0 = leaks like the retain model, "
            "about -100 = still remembers). Formulas: open-unlearning's (docs/DESIGN.md §4, §7). Running it "
            "fine-tunes two models on first use (cached afterwards): on a CPU that takes long. Or open a report "
            "written by `python -m grin_engine tofu`.")
        with gr.Row():
            t["split"] = gr.Dropdown(list(FORGET_AUTHORS), value="forget01", label="forget split",
                                     info="forget01: 2 authors (40 QA); forget05: 10 authors")
            t["methods"] = gr.CheckboxGroup(METHOD_CHOICES, value=["grin", "graddiff", "npo"], label="methods",
                                            info="grin: GRIN's mask with GradDiff; a loss name: that loss on all weights")
            t["steps"] = inputs.Number(5, label="unlearning steps", minimum=1, precision=0)
        with gr.Row():
            t["run_btn"] = gr.Button("Run TOFU on the loaded model", variant="primary")
            t["stop_btn"] = gr.Button("Stop", variant="stop")
            t["tuned_btn"] = gr.Button("Open the tuned forget01 table", variant="secondary")
            t["report_file"] = gr.File(label="or open a TOFU report (tofu.json)", file_types=[".json"], elem_id="tofu_report_file",
                                       elem_classes="download")
        t["status"] = gr.Markdown(elem_id="tofu_status")
        t["table"] = gr.Dataframe(pd.DataFrame(columns=TABLE_COLUMNS), label="ours: one row per model",
                                  interactive=False, elem_id="tofu_table", wrap=True,  # fits 1440 px, note included
                                  column_widths=TABLE_WIDTHS)
        with gr.Row():
            t["scatter"] = gr.Plot(scatter(None), label="forget quality vs model utility", scale=3,
                                   elem_id="tofu_scatter")
            t["sanity"] = gr.Markdown(elem_id="tofu_sanity")
        t["published"] = gr.Dataframe(published_table(), interactive=False, elem_id="tofu_published",
                                      label="open-unlearning's published numbers: ANOTHER model and recipe "
                                            "(Llama-3.2-1B-Instruct, all 200 authors, fine-tuned 5 epochs, "
                                            "unlearned 10 epochs, lr 1e-5)")
    page.add("tofu", t)


def _fmt(value, spec):
    return "-" if value is None else format(value, spec)


def report_table(report: dict | None) -> pd.DataFrame:
    """One row per model. A tuned report's method rows say the setting the rule picked, and where the fluent rule
    picked another point, that point follows as a row "<method>, fluent pick"."""
    report = report or {}
    chosen, fluent = report.get("chosen") or {}, report.get("chosen_fluent") or {}
    rows = []
    for name, row in (report.get("rows") or {}).items():
        note = {"target": "before unlearning", "retain": "reference: never saw the forget authors"}.get(name, "")
        if name in chosen:  # a tuned report: the setting the rule picked
            note = (f"tuned: {chosen[name]['setting']}, picked among {chosen[name]['of']}"  # "3 of 9": a partial grid
                    + ("" if chosen[name]["keeps_utility"] else " (no point kept 0.9 x the target's utility)"))
        fluent_row = None
        if name in fluent:
            pick = fluent[name]
            if pick is None:
                note += "; none of its points answers fluently"
            elif pick["setting"] == chosen[name]["setting"]:
                note += "; also the fluent pick"
            else:
                fluent_row = _table_row(f"{name}, fluent pick", pick["scores"],
                                        f"the rule among its {pick['of']}: {pick['setting']}"
                                        + ("" if pick["keeps_utility"] else " (keeps < 0.9 x the target's utility)"))
        rows += [_table_row(name, row, note)] + ([fluent_row] if fluent_row else [])
    return pd.DataFrame(rows, columns=TABLE_COLUMNS)


def _table_row(name: str, row: dict, note: str) -> list:
    if row.get("over_unlearned"):
        note = (note + "; " if note else "") + "over-unlearned (AUC < 0.3)"
    return [name, _fmt(row.get("forget_quality"), ".3g"), _fmt(row.get("forget_quality_prob_mean"), ".3g"),
            _fmt(row.get("model_utility"), ".3f"), _fmt(row.get("privleak"), ".1f"),
            _fmt(row.get("auc_min_k"), ".3f"), _fmt(row.get("auc_loss"), ".3f"),
            _fmt(row["splits"]["forget"]["rougeL_recall"], ".3f"),
            _fmt(row["splits"]["retain"]["rougeL_recall"], ".3f"),
            _fmt(row["splits"]["forget"].get("fluency"), ".3f"),  # .get: reports made before fluency
            _fmt(row["splits"]["retain"].get("fluency"), ".3f"), note]


def published_table() -> pd.DataFrame:
    rows = [[split, method, f"{fq:.3g}", f"{mu:.2f}"] for split in ("forget01", "forget10")
            for method, (fq, mu) in PUBLISHED[split].items()]
    return pd.DataFrame(rows, columns=["split", "method", "forget quality", "model utility"])


def scatter(report: dict | None) -> go.Figure:
    """Forget quality (log x) against model utility (y): target and retain model as reference points, each method a
    point, open-unlearning's published forget01 points hollow and grey (another model and recipe)."""
    fig = go.Figure()
    published = list(PUBLISHED["forget01"].items())
    style = {"target": ("diamond", "#1a202c"), "retain": ("star", "#38a169")}
    ours = [(name, row["forget_quality"], row["model_utility"]) for name, row in ((report or {}).get("rows") or {}).items()
            if row.get("forget_quality") is not None and row.get("model_utility") is not None]
    # room on each side (a decade, or an eighth of the span; log axis ranges are in log10 units) and a margin round
    # utility 0 and 1, so the points at the edges (a collapsed method: FQ 1e-23, utility 0) keep their markers and
    # labels on the plot
    xs = [max(fq, 1e-300) for _, (fq, _) in published] + [max(fq, 1e-300) for _, fq, _ in ours]
    low, high = math.log10(min(xs)), math.log10(max(xs))
    pad = max(1.0, 0.12 * (high - low))
    x_range, y_range = [low - pad, high + pad], [-0.08, 1.08]
    # points often sit close together (the published three, a method on the target): labels go round, not on each other
    points = [(math.log10(x), mu) for x, mu in zip(xs, [mu for _, (_, mu) in published] + [mu for *_, mu in ours])]
    texts = [f"{method} (OU)" for method, _ in published] + [name for name, *_ in ours]
    places = iter(plots.label_positions(points, texts, x_range, y_range))
    for method, (fq, mu) in published:
        fig.add_trace(go.Scatter(x=[fq], y=[mu], mode="markers+text", text=[f"{method} (OU)"],
                                 textposition=next(places), name="open-unlearning, Llama-3.2-1B",
                                 marker={"symbol": "circle-open", "size": 10, "color": "#a0aec0"},
                                 textfont={"color": "#a0aec0"}, showlegend=False,
                                 hovertemplate=f"open-unlearning {method} (Llama-3.2-1B, another recipe)<br>"
                                               "FQ %{x:.3g}, MU %{y:.2f}<extra></extra>"))
    for name, fq, mu in ours:
        symbol, colour = style.get(name, ("circle", "#c53030" if name == "grin" else "#2b6cb0"))
        fig.add_trace(go.Scatter(x=[max(fq, 1e-300)], y=[mu], mode="markers+text", text=[name],
                                 textposition=next(places), showlegend=False,
                                 marker={"symbol": symbol, "size": 14, "color": colour},
                                 hovertemplate=f"<b>{name}</b> (ours)<br>FQ %{{x:.3g}}, MU %{{y:.3f}}<extra></extra>"))
    title = "Forget quality vs model utility" + ("" if report else " — run TOFU or open a report")
    fig.update_layout(title=title, height=440, showlegend=False,
                      xaxis={"title": "forget quality (log; right = indistinguishable from the retain model)",
                             "type": "log", "range": x_range},
                      yaxis={"title": "model utility (higher = kept more)", "range": y_range},
                      annotations=[{"text": "grey hollow: open-unlearning's published forget01 (another model)",
                                    "xref": "paper", "yref": "paper", "x": 0, "y": -0.22, "showarrow": False,
                                    "font": {"size": 11, "color": "#718096"}}])
    return fig


def sanity_text(report: dict | None) -> str:
    if not report:
        return ""
    s, r = report["sanity"], report.get("recipe", {})
    return (f"**Sanity** — forget ROUGE-L recall: target **{s['target_forget_rougeL_recall']:.3f}** (must be high), "
            f"retain model **{s['retain_forget_rougeL_recall']:.3f}** (must be low).\n\n"
            f"**Recipe** — {r.get('forget')}, {r.get('retain_authors')} retain author(s), "
            f"{r.get('holdout_authors')} holdout author(s), {r.get('epochs')} epochs at lr {r.get('lr')}; "
            f"model {report.get('model', {}).get('name')}. "
            + ("" if report.get("complete", True) else "*Partial report: not every method finished.*"))


def _outputs(report: dict | None):
    return report_table(report), scatter(report), sanity_text(report)


def open_report(form: Form):
    """A report JSON written by `python -m grin_engine tofu` -> (status, table, scatter, sanity)."""
    file = form["tofu.report_file"]
    if file is None:
        raise GrinError("choose a TOFU report file (tofu.json) first")
    return _opened(Path(file if isinstance(file, str) else file.name))


def open_tuned(form: Form):
    """The tuned forget01 report the app ships (docs/RESULTS.md's table) -> (status, table, scatter, sanity)."""
    if not TUNED_REPORT.is_file():
        raise GrinError("no tuned report ships with this copy; make it with python -m grin_engine tofu --tune "
                        "--out assets/reports/tofu_forget01_tune.jsonl")
    return _opened(TUNED_REPORT)


def _opened(path: Path):
    if path.stat().st_size > MAX_REPORT_BYTES:
        raise GrinError("that file is too large to be a TOFU report")
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise GrinError("that file is not a TOFU report (not valid JSON)") from None
    if not isinstance(report, dict) or not isinstance(report.get("rows"), dict) or "sanity" not in report:
        raise GrinError("that file is not a TOFU report (no rows / sanity); make one with python -m grin_engine tofu")
    try:
        outputs = _outputs(report)
    except (KeyError, TypeError, ValueError):
        raise GrinError("that TOFU report is incomplete or from another version") from None
    status = f"Opened a report with {len(report['rows'])} models."
    if "chosen" in report:
        status += (f" Each method at its setting chosen by the rule: {report['rule']}; {report['finished']} of "
                   f"{report['points']} grid points finished.")
    if "chosen_fluent" in report:
        status += f" A \"fluent pick\" row: {report['fluent_rule']} (forget quality also rewards answers that loop)."
    return (status,) + outputs


def run(form: Form, request, progress):
    """The protocol on the loaded model (fine-tuned models cached): (status, table, scatter, sanity, session)."""
    session = session_of(form["session"])
    if session.model_name is None:
        raise GrinError("load a model in Setup first (the TOFU data itself comes with the app)")
    public.check_tofu(public.caps())
    names = parse_methods(",".join(form.names("tofu.methods", "methods")))
    recipe = TofuRecipe(forget=form["tofu.split"])
    cfg = GrinConfig(steps=form.number("tofu.steps", "steps"), max_new_tokens=recipe.max_new_tokens,
                     max_length=recipe.max_length)
    nothing = (gr.skip(),) * 3 + (session,)

    def show(event, losses, stop):
        stage, done, total = event[:3]
        progress((done, total), desc=stage)
        return (f"Running: {stage} {done}/{total}",) + nothing

    report = yield from run_job(
        request, lambda stop: gpu.tofu_work(session.model_name, recipe, names, cfg, stop), show,
        queued=("**Stopped** while waiting in the queue; nothing ran.",) + nothing,
        stopped=("**Stopped**; complete fine-tuned models stay cached.",) + nothing)
    if report is STOPPED:
        return
    yield (f"**Done** in {report['timings'].get('total_s', 0):.0f} s.",) + _outputs(report) + (session,)


def wire(page: Page) -> None:
    """The tab's events, each with its api_name (gradio_client); the run shares the app's queue for model work."""
    outputs = ["tofu.status", "tofu.table", "tofu.scatter", "tofu.sanity"]
    page["tofu.report_file"].upload(**page.event(open_report, ["tofu.report_file"], outputs, api_name="tofu_open"))
    page["tofu.tuned_btn"].click(**page.event(open_tuned, [], outputs, api_name="tofu_tuned"))
    page["tofu.run_btn"].click(**page.event(run, ["tofu.split", "tofu.methods", "tofu.steps", "session"],
                                            outputs + ["session"], api_name="tofu_run", **MODEL_JOB))
    page["tofu.stop_btn"].click(stop, None, page["tofu.status"], api_name="tofu_stop", **STOP_JOB)
