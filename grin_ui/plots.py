"""Plotly figures from the engine's plain results (selection summaries, score histograms, losses). No tensors here."""

from __future__ import annotations

import math

import numpy as np
import plotly.graph_objects as go

from grin_engine.runs.methods import METHODS

# Attention and feed-forward in different colour families, everywhere in the app.
KIND_SCALES = {"attention": "Blues", "ffn": "Oranges", "other": "Greys", "embedding": "Greens", "lm_head": "Greens"}
KIND_COLOURS = {"attention": "#2b6cb0", "ffn": "#dd6b20", "other": "#718096"}
KIND_ORDER = ("attention", "ffn", "other", "embedding", "lm_head")


def _empty(title: str, note: str) -> go.Figure:
    fig = go.Figure()
    fig.update_layout(title=title, xaxis={"visible": False}, yaxis={"visible": False}, height=320,
                      annotations=[{"text": note, "showarrow": False, "font": {"size": 14}}])
    return fig


# Where a point's text label may go, as (plotly textposition, horizontal side, vertical side): -1 left/below,
# 0 centred, +1 right/above. The order is the preference when several places are equally free.
LABEL_PLACES = [("top center", 0, 1), ("bottom center", 0, -1), ("middle right", 1, 0), ("middle left", -1, 0),
                ("top right", 1, 1), ("bottom right", 1, -1), ("top left", -1, 1), ("bottom left", -1, -1)]


def label_positions(points: list[tuple[float, float]], texts: list[str], x_range: tuple[float, float],
                    y_range: tuple[float, float], size_px: tuple[int, int] = (560, 300), char_px: float = 7.0,
                    line_px: float = 14.0, marker_px: float | list[float] = 8.0,
                    hide_crowded: bool = False) -> list[str | None]:
    """A textposition for each labelled point so that labels cover neither each other nor other points' markers.

    Greedy, in the given order: each label takes the first place in LABEL_PLACES whose box (about char_px per
    character by line_px, at the marker's edge, with a 2 px margin) overlaps least with the boxes already placed, the
    markers and the plot's edges. Coordinates are in axis units (pass log10 of a log axis); size_px is the plot
    area's rough size; marker_px is the markers' radius, one for all or one per point (a ringed point needs more
    room). hide_crowded=True: a label with no place free of other labels and inside the plot gets None (draw it
    without text; the hover still names it), for figures with many short labels such as a sweep's p values."""
    (x0, x1), (y0, y1) = x_range, y_range
    width, height = size_px

    def to_px(x, y):
        return (x - x0) / ((x1 - x0) or 1) * width, (y - y0) / ((y1 - y0) or 1) * height

    def overlap(a, b):  # boxes as (left, bottom, right, top)
        return max(0.0, min(a[2], b[2]) - max(a[0], b[0])) * max(0.0, min(a[3], b[3]) - max(a[1], b[1]))

    centres = [to_px(x, y) for x, y in points]
    radii = list(marker_px) if isinstance(marker_px, (list, tuple)) else [marker_px] * len(points)
    markers = [(cx - r, cy - r, cx + r, cy + r) for (cx, cy), r in zip(centres, radii)]
    plot = (0.0, 0.0, float(width), float(height))
    placed, chosen = [], []
    for k, ((cx, cy), text, radius) in enumerate(zip(centres, texts, radii)):
        if not text:
            chosen.append(LABEL_PLACES[0][0])  # nothing to draw, nothing to place
            continue
        w, h = char_px * len(text) + 4, line_px
        best = None
        for name, sx, sy in LABEL_PLACES:
            left = cx - w / 2 + sx * (w / 2 + radius)
            bottom = cy - h / 2 + sy * (h / 2 + radius)
            box = (left - 2, bottom - 2, left + w + 2, bottom + h + 2)
            crowding = sum(overlap(box, other) for other in placed) + w * h - overlap(box, plot)  # outside: lost
            cost = crowding + sum(overlap(box, m) for j, m in enumerate(markers) if j != k)
            if best is None or cost < best[0]:
                best = (cost, name, box, crowding)
        if hide_crowded and best[3] > 0:
            chosen.append(None)
            continue
        placed.append(best[2])
        chosen.append(best[1])
    return chosen


def _layer_label(layer) -> str:
    return "emb/head" if layer is None else str(layer)


def selection_heatmap(summary: dict | None) -> go.Figure:
    """Layers (rows) x modules (columns): the selected share of each weight matrix, one colour family per kind."""
    if not summary:
        return _empty("Selected share per layer and module", "compute influence first")
    rows = summary["by_layer"]
    modules: list[tuple[str, str]] = []  # (kind, module), attention first, then ffn, then the rest
    for kind in KIND_ORDER:
        for r in rows:
            if r["kind"] == kind and (kind, r["module"]) not in modules:
                modules.append((kind, r["module"]))
    layers = sorted({r["layer"] for r in rows}, key=lambda x: (x is None, x if x is not None else 0))
    y = [_layer_label(layer) for layer in layers]
    x = [m for _, m in modules]
    cell = {(r["layer"], r["module"]): r for r in rows}
    zmax = max((100 * r["selected"] / max(1, r["total"]) for r in rows), default=0) or 1e-9
    fig = go.Figure()
    kinds_present = [k for k in KIND_ORDER if any(kind == k for kind, _ in modules)]
    for i, kind in enumerate(kinds_present):
        z, custom = [], []
        for layer in layers:
            z_row, c_row = [], []
            for k, module in modules:
                r = cell.get((layer, module))
                if k != kind or r is None:
                    z_row.append(None)
                    c_row.append([0, 0])
                else:
                    z_row.append(100 * r["selected"] / max(1, r["total"]))
                    c_row.append([r["selected"], r["total"]])
            z.append(z_row)
            custom.append(c_row)
        fig.add_trace(go.Heatmap(
            z=z, x=x, y=y, customdata=custom, colorscale=KIND_SCALES.get(kind, "Greys"), zmin=0, zmax=zmax,
            name=kind, hoverongaps=False,
            colorbar={"title": {"text": f"{kind} %"}, "x": 1.02 + 0.12 * i, "len": 0.9, "thickness": 12},
            hovertemplate=(f"<b>{kind}</b> layer %{{y}} · %{{x}}<br>selected %{{customdata[0]:,}} of "
                           "%{customdata[1]:,}<br>share %{z:.4f}%<extra></extra>"),
        ))
    p = summary.get("p", 0)
    note = " (preview)" if summary.get("preview") else ""
    fig.update_layout(
        title=f"Selected share per layer and module at p = {100 * p:g}%{note}",
        xaxis={"title": "module", "tickangle": -30}, yaxis={"title": "layer", "autorange": "reversed", "type": "category"},
        height=max(360, 22 * len(layers) + 160), margin={"r": 40 + 70 * len(kinds_present)},
    )
    return fig


def layer_bars(summary: dict | None) -> go.Figure:
    """Selected weights per layer, attention vs feed-forward side by side."""
    if not summary:
        return _empty("Attention vs feed-forward per layer", "compute influence first")
    per = {}
    for r in summary["by_layer"]:
        if r["kind"] not in ("attention", "ffn"):
            continue
        entry = per.setdefault(r["layer"], {"attention": [0, 0], "ffn": [0, 0]})
        entry[r["kind"]][0] += r["selected"]
        entry[r["kind"]][1] += r["total"]
    layers = sorted(k for k in per if k is not None)
    fig = go.Figure()
    for kind, label in (("attention", "attention"), ("ffn", "feed-forward")):
        sel = [per[layer][kind][0] for layer in layers]
        share = [100 * per[layer][kind][0] / max(1, per[layer][kind][1]) for layer in layers]
        fig.add_trace(go.Bar(x=[str(layer) for layer in layers], y=sel, name=label, marker_color=KIND_COLOURS[kind],
                             customdata=share,
                             hovertemplate=f"{label}, layer %{{x}}: %{{y:,}} selected (%{{customdata:.4f}}% of it)"
                                           "<extra></extra>"))
    kinds = summary["by_kind"]
    totals = ", ".join(f"{k} {v['selected']:,} of {v['total']:,}" for k, v in kinds.items())
    fig.update_layout(barmode="group", title=f"Selected weights per layer<br><sup>{totals}</sup>",
                      xaxis={"title": "layer"}, yaxis={"title": "selected weights"}, height=360,
                      legend={"orientation": "h", "y": 1.12})
    return fig


def score_histogram(hist, summary: dict | None, display_bins: int = 128) -> go.Figure:
    """Histogram of log10(influence score) over all candidate weights; the selection threshold marked."""
    if hist is None:
        return _empty("Influence scores", "compute influence first")
    counts = np.asarray(hist.total)
    edges = np.asarray(hist.edges)
    group = max(1, len(counts) // display_bins)
    n = len(counts) // group * group
    counts_c = counts[:n].reshape(-1, group).sum(axis=1)
    lows, highs = edges[:n:group], edges[group:n + 1:group]
    centres = (lows + highs) / 2
    threshold = summary.get("threshold") if summary else None
    cut = math.log10(threshold) if threshold and threshold > 0 else None
    selected = centres >= cut if cut is not None else np.zeros_like(centres, dtype=bool)
    fig = go.Figure()
    for mask, name, colour in ((~selected, "not selected", "#a0aec0"), (selected, "selected", "#c53030")):
        fig.add_trace(go.Bar(x=centres[mask], y=counts_c[mask], name=name, marker_color=colour,
                             width=float(highs[0] - lows[0]) if len(lows) else None,
                             hovertemplate="log10 score %{x:.2f}: %{y:,} weights<extra></extra>"))
    if cut is not None:
        fig.add_vline(x=cut, line_dash="dash", line_color="#c53030",  # the same number the selection text gives
                      annotation_text=f"threshold S = {threshold:.3g} (top {100 * summary['p']:g}%)")
    fig.update_layout(title="Influence scores S = |G_f| / (|G_r| + eps), all candidate weights", barmode="overlay",
                      xaxis={"title": "log10 S"}, yaxis={"title": "weights", "type": "log"}, height=360,
                      legend={"orientation": "h", "y": 1.12})
    return fig


def loss_curve(losses: list[float], steps: int | None = None) -> go.Figure:
    """The unlearning loss per step (live while a run trains)."""
    fig = go.Figure()
    if losses:
        fig.add_trace(go.Scatter(x=list(range(1, len(losses) + 1)), y=losses, mode="lines+markers", name="loss"))
    else:  # empty axes alone look broken: say what will appear here
        fig.add_annotation(text="press Run: the loss of each training step appears here", showarrow=False,
                           x=0.5, y=0.5, xref="paper", yref="paper", font={"size": 14, "color": "#718096"})
    fig.update_layout(title="Unlearning loss per step", xaxis={"title": "step", "range": [0.5, (steps or 1) + 0.5],
                                                                   "dtick": max(1, math.ceil((steps or 1) / 10))},
                      yaxis={"title": "loss"}, height=320)
    return fig


METHOD_COLOURS = {"grin": "#c53030", "grun": "#6b46c1", "full": "#dd6b20", "random": "#718096",
                  "forget-grad": "#2b6cb0", "grin-nonoise": "#e53e3e"}
MORE_COLOURS = ["#2c7a7b", "#b7791f", "#2f855a", "#97266d", "#4c51bf", "#744210"]  # methods added to the registry


def method_colour(name: str) -> str:
    """A comparison method's colour, the same in every figure (a method without its own takes the next spare)."""
    if name in METHOD_COLOURS:
        return METHOD_COLOURS[name]
    others = [m for m in METHODS if m not in METHOD_COLOURS]
    return MORE_COLOURS[others.index(name) % len(MORE_COLOURS)] if name in others else "#4a5568"


def methods_scatter(rows: list[dict] | None) -> go.Figure:
    """Each method a point: forget keyword accuracy (x, lower = forgot more) vs retain keyword accuracy (y, higher =
    kept more). The ideal corner (forgot everything, kept everything the base knew) is marked."""
    if not rows:
        return _empty("Forget vs retain", "run a comparison first")
    fig = go.Figure()
    base_f, base_r = rows[0]["forget_keyword_accuracy_before"], rows[0]["retain_keyword_accuracy_before"]
    # methods often land on the same point (e.g. the ideal corner, on the star): labels go round it, not on each other
    shown = [r for r in rows if r.get("forget_keyword_accuracy") is not None]  # the rest stopped before evaluation
    points = [(0, base_r), (base_f, base_r)] + [(r["forget_keyword_accuracy"], r["retain_keyword_accuracy"])
                                                for r in shown]
    places = label_positions(points, ["ideal", "before"] + [r["method"] for r in shown], (-0.15, 1.1), (-0.05, 1.18))
    fig.add_trace(go.Scatter(x=[0], y=[base_r], mode="markers+text", name="ideal", text=["ideal"],
                             textposition=places[0], marker={"symbol": "star", "size": 18, "color": "#38a169"},
                             hovertemplate="ideal: forgets all, keeps all the base knew<extra></extra>"))
    fig.add_trace(go.Scatter(x=[base_f], y=[base_r], mode="markers+text", name="base model", text=["before"],
                             textposition=places[1], marker={"symbol": "circle-open", "size": 14, "color": "#1a202c"},
                             hovertemplate="base model: forget %{x:.3f}, retain %{y:.3f}<extra></extra>"))
    for r, place in zip(shown, places[2:]):
        fig.add_trace(go.Scatter(
            x=[r["forget_keyword_accuracy"]], y=[r["retain_keyword_accuracy"]], mode="markers+text", name=r["method"],
            text=[r["method"]], textposition=place,
            marker={"size": 13, "color": method_colour(r["method"])},
            hovertemplate=f"<b>{r['method']}</b><br>forget KA %{{x:.3f}}<br>retain KA %{{y:.3f}}<extra></extra>"))
    fig.update_layout(title="Forget vs retain (keyword accuracy after unlearning)",
                      xaxis={"title": "forget keyword accuracy (lower = forgot more)", "range": [-0.15, 1.1]},
                      yaxis={"title": "retain keyword accuracy (higher = kept more)", "range": [-0.05, 1.18]},
                      height=420, showlegend=False)
    return fig


# ---------------------------------------------------------------------------------------------------------------------
# The Learn tab's experiments: small figures drawn from the visitor's own runs


def kind_shares(summary: dict | None) -> go.Figure:
    """Attention and feed-forward: their share of the candidate weights next to their share of the selected ones
    (a kind that holds the forget set more than its size says gets a taller right bar)."""
    if not summary:
        return _empty("Attention vs feed-forward: share of the weights", "press Try it")
    kinds = [k for k in ("attention", "ffn") if k in summary["by_kind"]]
    total = sum(summary["by_kind"][k]["total"] for k in kinds) or 1
    selected = sum(summary["by_kind"][k]["selected"] for k in kinds) or 1
    fig = go.Figure()
    for kind, label in zip(kinds, ("attention", "feed-forward")):
        counts = summary["by_kind"][kind]
        fig.add_trace(go.Bar(x=["share of the candidates", f"share of the top {100 * summary['p']:g}%"],
                             y=[100 * counts["total"] / total, 100 * counts["selected"] / selected], name=label,
                             marker_color=KIND_COLOURS[kind], texttemplate="%{y:.0f}%",
                             hovertemplate=f"{label}: %{{y:.1f}}%<extra></extra>"))
    fig.update_layout(barmode="stack", title="Share of the weights vs share of the selection",
                      yaxis={"title": "% of the weights", "range": [0, 100]}, height=360,
                      legend={"orientation": "h", "y": -0.15})
    return fig


def forget_retain_bars(values: dict[str, dict] | None, title: str, metric: str = "keyword_accuracy") -> go.Figure:
    """Forget and retain `metric` after each of a few runs ({label: {"forget": v, "retain": v}}), side by side:
    a good run has a low forget bar and a high retain bar."""
    if not values:
        return _empty(title, "press Try it")
    labels = list(values)
    fig = go.Figure()
    for split, colour in (("forget", "#c53030"), ("retain", "#2f855a")):
        fig.add_trace(go.Bar(x=labels, y=[values[label].get(split) for label in labels], name=f"{split} set",
                             marker_color=colour, texttemplate="%{y:.2f}",
                             hovertemplate=f"{split}, %{{x}}: %{{y:.3f}}<extra></extra>"))
    fig.update_layout(barmode="group", title=title, yaxis={"title": metric.replace("_", " "), "range": [0, 1.05]},
                      height=340, legend={"orientation": "h", "y": 1.12})
    return fig


def noise_norms(rows: dict[str, dict] | None) -> go.Figure:
    """The selected weights' gradient norm before and after the noise, per sigma2 ({label: run report's noise})."""
    if not rows:
        return _empty("Gradient norm on the selected weights", "press Try it")
    labels = list(rows)
    fig = go.Figure()
    for key, name, colour in (("grad_norm_before", "before the noise", "#a0aec0"),
                              ("grad_norm_after", "after the noise", "#6b46c1")):
        fig.add_trace(go.Bar(x=labels, y=[rows[label][key] for label in labels], name=name, marker_color=colour,
                             texttemplate="%{y:.3g}", hovertemplate=f"{name}, %{{x}}: %{{y:.4g}}<extra></extra>"))
    fig.update_layout(barmode="group", title="||grad NLL(forget)|| on the selected weights",
                      yaxis={"title": "gradient norm"}, height=340, legend={"orientation": "h", "y": 1.12})
    return fig


def loss_curves(curves: dict[str, list[float]] | None, title: str = "Unlearning loss per step") -> go.Figure:
    """Several runs' losses per step on one axis ({label: losses})."""
    if not curves:
        return _empty(title, "press Try it")
    fig = go.Figure()
    for label, losses in curves.items():
        fig.add_trace(go.Scatter(x=list(range(1, len(losses) + 1)), y=losses, mode="lines+markers", name=label,
                                 line={"color": method_colour(label) if label in METHODS else None}))
    fig.update_layout(title=title, xaxis={"title": "step"}, yaxis={"title": "loss"}, height=340,
                      legend={"orientation": "h", "y": 1.12})
    return fig
