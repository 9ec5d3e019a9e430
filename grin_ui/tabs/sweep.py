"""Sweep: a grid of runs drawn as forget-vs-retain curves (grin_engine/runs/sweep.py, runs/frontier.py).

Layout, wiring, handlers and the figure of the tab. The model work is gpu.sweep_work, which appends each finished point to a JSON-lines file; while it runs, the callback reads
the points from that file and redraws the scatter, so points appear as they finish and Stop keeps them. Pressing
Run again with the same settings continues the same file: finished points are skipped.
"""

from __future__ import annotations

import hashlib
import json
import math
import tempfile
from pathlib import Path

import gradio as gr
import plotly.graph_objects as go

from grin_engine.config import GrinConfig
from grin_engine.errors import GrinError
from grin_engine.runs.frontier import summarize
from grin_engine.runs.sweep import SweepGrid, evaluation_from_json, read_lines, result_from_file, write_outputs
from grin_engine.targets import TARGET_METRICS, parse_target

from .. import gpu, public
from ..forms import Form, Page, job_buttons, method_choices
from ..jobs import STOPPED, run_job, stop
from ..plots import label_positions, method_colour
from ..slots import MODEL_JOB, STOP_JOB
from ..state import BEFORE, owner, session_of, shared_inputs

# The front's x is a forget metric that falls as the model forgets; its y anything that should stay high: a retain
# metric, or the forget set's fluency (forgetting by gibberish shows as points low on that y).
X_CHOICES = [f"forget_{m}" for m in TARGET_METRICS if m != "fluency"]
Y_CHOICES = [f"retain_{m}" for m in TARGET_METRICS] + ["forget_fluency"]
DEFAULT_TARGET = "forget_keyword_accuracy<=0.25"


# ---------------------------------------------------------------------------------------------------------------------
# The figure (also used for the docs' picture: docs/make_frontier.py)


def _setting_label(row: dict) -> str:
    parts = [f"p={100 * row['p']:g}%"] if row.get("p") is not None else []
    parts += [f"σ²={row['sigma2']:g}"] if row.get("sigma2") is not None else []
    parts += [f"lr={row[k]:g}" for k in ("lr", "grun_lr") if row.get(k) is not None]
    parts += [f"steps={row[k]}" for k in ("steps", "grun_steps") if row.get(k) is not None]
    return " ".join(parts)


def sweep_figure(points: list[dict], before: dict | None, forget_key: str = "forget_keyword_accuracy",
                 retain_key: str = "retain_keyword_accuracy", target: str | None = None,
                 title: str | None = None) -> go.Figure:
    """Each setting a point (mean over seeds, error bars = std over seeds; colour = method, label = p), each
    method's Pareto front a line, the ideal corner (forget 0, retain 1) a star, auto-p's pick a gold outline."""
    fig = go.Figure()
    summary = summarize(points, forget_key, retain_key, parse_target(target) if target else None)
    metrics = (before or {}).get("metrics") or {}

    def base_value(column):  # "forget_fluency" -> the base's fluency on the forget split
        split, _, metric = column.partition("_")
        return (metrics.get(split) or {}).get(metric)

    base_f, base_r = base_value(forget_key), base_value(retain_key)
    has_base = base_f is not None and base_r is not None
    by_method = {method: [r for r in summary["settings"] if r["method"] == method] for method in summary["fronts"]}
    # every label placed at once, so that close points (several p of one method, methods on one spot) share out
    # the room round them (plots.label_positions)
    picks = [(m, r) for m, r in summary["auto_p"].items() if r is not None]
    # auto-p's picks get a gold ring as the point's own outline, so that plotly sets the label off the ring
    picked = {(m, _setting_label(r)) for m, r in picks}
    labelled = [((0, 1), "ideal")] + ([((base_f, base_r), "base")] if has_base else [])
    labelled += [((r["forget"], r["retain"]), f"{100 * r['p']:g}%" if r.get("p") is not None else "")
                 for rows in by_method.values() for r in rows]
    # a p label with no free room is left out (points crowd the ideal corner); its hover still gives the setting
    places = iter(label_positions([xy for xy, _ in labelled], [text for _, text in labelled], (-0.05, 1.05),
                                  (-0.05, 1.08), size_px=(560, 290), char_px=6.5, marker_px=10, hide_crowded=True))
    fig.add_trace(go.Scatter(x=[0], y=[1], mode="markers+text", name="ideal corner", text=["ideal"],
                             textposition=next(places) or "middle right",
                             marker={"symbol": "star", "size": 18, "color": "#38a169"},
                             hovertemplate="ideal: forgets all, keeps all<extra></extra>"))
    if has_base:
        fig.add_trace(go.Scatter(x=[base_f], y=[base_r], mode="markers+text", name="base model", text=["base"],
                                 textposition=next(places) or "middle left",
                                 marker={"symbol": "circle-open", "size": 14, "color": "#1a202c"},
                                 hovertemplate="base model: forget %{x:.3f}, retain %{y:.3f}<extra></extra>"))
    for method, front in summary["fronts"].items():
        colour = method_colour(method)
        rows = by_method[method]
        area = summary["areas"].get(method)
        name = method + (f" (area {area['mean']:.2f}±{area['std']:.2f})" if area else "")
        row_places = [next(places) for _ in rows]
        is_pick = [(method, _setting_label(r)) in picked for r in rows]
        fig.add_trace(go.Scatter(
            x=[r["forget"] for r in rows], y=[r["retain"] for r in rows], mode="markers+text", name=name,
            legendgroup=method, text=[f"{100 * r['p']:g}%" if r.get("p") is not None and place else ""
                                      for r, place in zip(rows, row_places)],
            textposition=[place or "top center" for place in row_places], textfont={"color": colour, "size": 11},
            marker={"size": [19 if pick else 11 for pick in is_pick], "color": colour,
                    "opacity": 1,  # (plotly fades markers whose sizes vary)
                    "line": {"color": "#d69e2e", "width": [4 if pick else 0 for pick in is_pick]}},
            error_x={"type": "data", "array": [r["forget_std"] for r in rows], "visible": True, "thickness": 1},
            error_y={"type": "data", "array": [r["retain_std"] for r in rows], "visible": True, "thickness": 1},
            customdata=[[_setting_label(r), r["n"], " (auto-p's pick)" if pick else ""]
                        for r, pick in zip(rows, is_pick)],
            hovertemplate=f"<b>{method}</b> %{{customdata[0]}}%{{customdata[2]}}<br>forget %{{x:.3f}}<br>"
                          f"retain %{{y:.3f}}<br>seeds %{{customdata[1]}}<extra></extra>"))
        fig.add_trace(go.Scatter(x=[r["forget"] for r in front], y=[r["retain"] for r in front], mode="lines",
                                 line={"color": colour, "width": 2, "dash": "dot"}, legendgroup=method,
                                 showlegend=False, hoverinfo="skip", line_shape="hv"))
    if picks:  # the legend's entry for the gold outlines
        fig.add_trace(go.Scatter(x=[None], y=[None], mode="markers", name=f"auto-p ({summary['target']})",
                                 marker={"symbol": "circle-open", "size": 16, "color": "#d69e2e",
                                         "line": {"width": 3}}))
    fig.update_layout(title=title or "Forget vs retain after unlearning, one point per setting",
                      xaxis={"title": f"{forget_key} (lower = forgot more)", "range": [-0.05, 1.05]},
                      yaxis={"title": f"{retain_key} (higher is better)", "range": [-0.05, 1.08]},
                      height=520, legend={"orientation": "h", "y": -0.18}, margin={"t": 50})
    return fig


def areas_markdown(points: list[dict], forget_key: str, retain_key: str, target: str | None) -> str:
    """Areas to the ideal corner per method and auto-p's pick, in words."""
    if not points:
        return "No points yet."
    summary = summarize(points, forget_key, retain_key, parse_target(target) if target else None)
    lines = ["**Area between each method's front and the ideal corner** (0 = ideal, 1 = nothing better than "
             "forgetting nothing; mean ± std over seeds):", ""]
    lines += [f"- **{m}**: {a['mean']:.3f} ± {a['std']:.3f} (n = {a['n']})" for m, a in summary["areas"].items()]
    if summary["target"]:
        lines += ["", f"**auto-p** (smallest p meeting `{summary['target']}`, then the best retain):"]
        for method, pick in summary["auto_p"].items():
            lines.append(f"- **{method}**: " + ("no setting meets the target" if pick is None else
                                                f"{_setting_label(pick)} → forget {pick['forget']:.3f}, "
                                                f"retain {pick['retain']:.3f}"))
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------------------------
# Layout


def layout(page: Page) -> None:
    c = {}
    with gr.Tab("Sweep", id="sweep"):
        gr.Markdown("One run is one point; a **sweep** draws the curve. Choose the methods and the values of p, σ² "
                    "and the seeds: every combination is one unlearning run on the items loaded in **Setup** (its "
                    "*max items*), with the **Unlearn** tab's loss, learning rate, steps and alpha. Points appear on "
                    "the scatter as they finish; each method's best points (its *Pareto front*) are joined by a line; "
                    "the smaller the area between that line and the ideal corner, the better the method trades. "
                    "Stop keeps the finished points; Run again with the same settings continues where it stopped.")
        c["methods"] = gr.CheckboxGroup(method_choices(),
                                        value=["grin", "random"], label="methods")
        with gr.Row():
            c["p_values"] = gr.Textbox("0.1, 1, 5", label="p values (%)", info="comma-separated, each in (0, 100]",
                                    elem_id="sweep_p")
            c["sigma2_values"] = gr.Textbox("1e-6", label="σ² values", info="noise variance; comma-separated")
            c["seeds"] = gr.Textbox("0, 1", label="seeds", info="noise and random masks; error bars over these",
                                  elem_id="sweep_seeds")
        with gr.Row():
            c["target"] = gr.Textbox(DEFAULT_TARGET, label="target", info="auto-p picks the smallest p meeting it")
            c["until"] = gr.Checkbox(False, label="unlearn until the target holds",
                                     info="each run checks the forget set every 2 steps and stops once it holds")
            c["forget_metric"] = gr.Dropdown(X_CHOICES, value="forget_keyword_accuracy", label="x: forget")
            c["retain_metric"] = gr.Dropdown(Y_CHOICES, value="retain_keyword_accuracy", label="y: kept",
                                             info="a retain metric, or the forget set's fluency")
        c["sweep_btn"], c["sweep_stop_btn"] = job_buttons("Run sweep", stop_id="sweep_stop")
        c["sweep_status"] = gr.Markdown("Choose a grid and press **Run sweep**.", elem_id="sweep_status")
        with gr.Row():
            c["sweep_plot"] = gr.Plot(sweep_figure([], None), label="forget vs retain", scale=3, elem_id="sweep_plot")
            c["sweep_areas"] = gr.Markdown("No points yet.", elem_id="sweep_areas")
        c["sweep_point"] = gr.Dropdown([], label="a point's answers beside the base model's", elem_id="sweep_point")
        c["sweep_answers"] = gr.Dataframe(_answers_table(None, None), interactive=False, wrap=True, max_height=420,
                                          elem_id="sweep_answers", column_widths=["10%", "24%", "22%", "22%", "22%"])
        with gr.Row():
            c["sweep_report_btn"] = gr.Button("Prepare sweep JSON + CSV")
            c["sweep_json"] = gr.File(label="sweep JSON", interactive=False, elem_classes="download")
            c["sweep_csv"] = gr.File(label="sweep CSV", interactive=False, elem_classes="download")
        c["sweep_state"] = gr.State(None)
    page.add("sweep", c)


# ---------------------------------------------------------------------------------------------------------------------
# Callbacks


def _numbers(text: str, what: str, kind=float) -> list:
    try:
        values = [kind(x) for x in str(text or "").replace(";", ",").split(",") if x.strip()]
    except ValueError:
        raise GrinError(f"{what}: give numbers separated by commas, got {text!r}") from None
    if not values:
        raise GrinError(f"{what}: give at least one value")
    if not all(math.isfinite(v) for v in values):
        raise GrinError(f"{what}: every value must be finite")
    return values


def _grid(methods, p_values, sigma2_values, seeds, steps, lr) -> SweepGrid:
    if not methods:
        raise GrinError("choose at least one method to sweep")
    percents = _numbers(p_values, "p values (%)")
    if not all(0 < v <= 100 for v in percents):
        raise GrinError(f"p values (%): each must be in (0, 100], got {p_values!r}")
    return SweepGrid(methods=list(methods), p=[v / 100 for v in percents], sigma2=_numbers(sigma2_values, "σ² values"),
                     seeds=_numbers(seeds, "seeds", int), steps=[int(steps)], lr=[float(lr)])


def _point_label(point: dict) -> str:
    return f"{point['method']} {_setting_label(point)} seed {point['seed']}"


def _answers_table(before: dict | None, point: dict | None):
    import pandas as pd

    columns = ["split", "question", "gold answer", "base model", "this point"]
    if not before or not point:
        return pd.DataFrame(columns=columns)
    answers = point.get("answers") or []
    rows = [[g["split"], g["question"], g["answer"], g["before"], answers[i] if i < len(answers) else ""]
            for i, g in enumerate(before.get("generations") or [])]
    return pd.DataFrame(rows, columns=columns)


def _read(state: dict | None) -> tuple[dict | None, list[dict]]:
    """The base evaluation line and the finished points in this visitor's sweep file."""
    if not state or not Path(state["path"]).exists():
        return None, []
    before, points = read_lines(Path(state["path"]))
    return before, list(points.values())


def _estimate(points: list[dict], total: int) -> str:
    if not points:
        return f"{total} points; the time the grid will take is estimated from the first point."
    per_point = sum(p["seconds"] for p in points) / len(points)
    left = max(0, total - len(points))
    return (f"{len(points)} of {total} points finished; about {per_point:.0f} s per point, so about "
            f"{left * per_point / 60:.1f} min for the remaining {left}.")


def run_sweep(form: Form, request, progress):
    """The grid on the loaded items, points streamed onto the scatter; same settings again: continue the file."""
    session = session_of(form["session"])
    session.require_loaded()
    steps, lr = form.number("unlearn.steps"), form.number("unlearn.lr")
    grid = _grid(form.names("sweep.methods", "methods"), form["sweep.p_values"], form["sweep.sigma2_values"],
                 form["sweep.seeds"], steps, lr)
    target = form.text("sweep.target", "target").strip() or None
    if target:
        parse_target(target)
    if form["sweep.until"] and not target:
        raise GrinError("'unlearn until the target holds' needs a target, e.g. " + DEFAULT_TARGET)
    cfg = GrinConfig(loss=form["unlearn.loss"], alpha=form.number("unlearn.alpha"),
                     beta=form.number("unlearn.beta", optional=True) or None, seed=grid.seeds[0],
                     until=target if form["sweep.until"] else None)
    for point in grid.points():  # every value checked before the slow part
        GrinConfig(**{**cfg.to_dict(), **{k: v for k, v in point.items() if k != "method"}})
    forget, retain = session.items(form["setup.max_items"])
    public.check_sweep(cfg, grid.points(), len(forget), public.caps())
    key = hashlib.sha256(json.dumps([session.model_name, [it.to_dict() for it in forget],
                                     [it.to_dict() for it in retain], cfg.to_dict(), grid.to_dict()],
                                    default=str).encode()).hexdigest()
    state = form["sweep.sweep_state"]
    if not state or state.get("key") != key:  # other settings: a new file; the same: continue the old one
        state = {"key": key, "path": str(Path(tempfile.mkdtemp(prefix="grin_sweep_")) / "sweep.jsonl")}
    state.update(total=len(grid.points()), target=target, config=cfg.to_dict(), grid=grid.to_dict(),
                 model=session.model_name)
    forget_metric, retain_metric = form["sweep.forget_metric"], form["sweep.retain_metric"]
    shown = [-1]

    def show(event, losses, stop):
        points = _read(state)[1]
        stage, done, total = event[:3]
        progress((len(points), state["total"]), desc=f"{len(points)}/{state['total']} points; now {stage} "
                                                     f"{done}/{total}")
        text = f"Running: {_estimate(points, state['total'])} Now: {stage} {done}/{total}" + (
            " — stopping ..." if stop.is_set() else "")
        if len(points) == shown[0]:
            return (text, state) + (gr.skip(),) * 3
        shown[0] = len(points)
        return (text, state) + _views(state, forget_metric, retain_metric)

    before_key, _, cached, top = shared_inputs(session.model_name, forget, retain, cfg)  # computed once per server
    outcome = yield from run_job(
        request, lambda stop: gpu.sweep_work(session.model_name, forget, retain, cfg, grid, state["path"], stop,
                                             cached, top), show,
        queued=("**Stopped** while waiting in the queue; Run sweep again to start.", state) + (gr.skip(),) * 3,
        stopped=None, starting=(f"Starting: {_estimate(_read(state)[1], state['total'])}", state) + (gr.skip(),) * 3)
    before_line, points = _read(state)
    if cached is None and before_line and "evaluation" in before_line:  # the base evaluation, for everybody
        BEFORE.put(before_key, evaluation_from_json(before_line["evaluation"]), owner(request))
    if outcome is STOPPED and not before_line and not points:
        return
    stopped = outcome is STOPPED or outcome.stopped
    status = (f"**Stopped** — {len(points)} of {state['total']} points kept; Run sweep again to continue." if stopped
              else f"**Done**: {len(points)} points ({outcome.skipped} from before) on {len(forget)} forget and "
                   f"{len(retain)} retain items.")
    yield (status, state) + _views(state, forget_metric, retain_metric)


def _views(state, forget_metric, retain_metric):
    """The scatter, the areas / auto-p text, and the point chooser, from the points in the file."""
    before, points = _read(state)
    target = (state or {}).get("target")
    choices = [(_point_label(p), p["key"]) for p in points]
    return (sweep_figure(points, before, forget_metric, retain_metric, target),
            areas_markdown(points, forget_metric, retain_metric, target),
            gr.Dropdown(choices=choices, value=choices[-1][1] if choices else None))


def redraw(form: Form):
    """Another pair of metrics: the same points, redrawn."""
    return _views(form["sweep.sweep_state"], form["sweep.forget_metric"], form["sweep.retain_metric"])


def point_answers(form: Form):
    """The chosen point's answers beside the base model's."""
    before, points = _read(form["sweep.sweep_state"])
    return _answers_table(before, next((p for p in points if p["key"] == form["sweep.sweep_point"]), None))


def sweep_report(form: Form):
    """sweep.json (config, points, fronts, areas, auto-p) and sweep.csv of the points finished so far."""
    state = form["sweep.sweep_state"]
    if not _read(state)[1]:
        raise GrinError("no finished points yet: run a sweep first")
    result = result_from_file(state["path"], state["config"], {"name": state["model"]}, state["grid"], state["total"])
    folder = Path(tempfile.mkdtemp(prefix="grin_sweep_report_"))
    write_outputs(result, folder / "grin_sweep.jsonl", form["sweep.forget_metric"], form["sweep.retain_metric"],
                  state.get("target"))
    return str(folder / "grin_sweep.json"), str(folder / "grin_sweep.csv")


def wire(page: Page) -> None:
    """Connect the tab's events (every one with an api_name, for gradio_client)."""
    controls = ["sweep.methods", "sweep.p_values", "sweep.sigma2_values", "sweep.seeds", "sweep.target", "sweep.until",
                "sweep.forget_metric", "sweep.retain_metric"]
    shared = ["unlearn.loss", "unlearn.lr", "unlearn.steps", "unlearn.alpha", "unlearn.beta", "setup.max_items",
              "session"]
    views = ["sweep.sweep_plot", "sweep.sweep_areas", "sweep.sweep_point"]
    page["sweep.sweep_btn"].click(**page.event(run_sweep, controls + shared + ["sweep.sweep_state"],
                                               ["sweep.sweep_status", "sweep.sweep_state"] + views, api_name="sweep",
                                               **MODEL_JOB))
    page["sweep.sweep_stop_btn"].click(stop, None, page["sweep.sweep_status"], api_name="stop_sweep", **STOP_JOB)
    metrics = ["sweep.forget_metric", "sweep.retain_metric", "sweep.sweep_state"]
    for metric in ("sweep.forget_metric", "sweep.retain_metric"):
        page[metric].change(**page.event(redraw, metrics, views, api_visibility="undocumented", queue=False))
    page["sweep.sweep_point"].change(**page.event(point_answers, ["sweep.sweep_point", "sweep.sweep_state"],
                                                  ["sweep.sweep_answers"], api_name="sweep_point", queue=False))
    page["sweep.sweep_report_btn"].click(**page.event(sweep_report, metrics, ["sweep.sweep_json", "sweep.sweep_csv"],
                                                      api_name="sweep_report"))
