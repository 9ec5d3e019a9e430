"""Tests for grin_ui.plots: where point labels go (label_positions) and the scatters that use it."""

from __future__ import annotations

import itertools

from grin_ui import plots
from grin_ui.tabs.tofu import scatter

PLACES = {name: (sx, sy) for name, sx, sy in plots.LABEL_PLACES}


def _boxes(points, texts, places, x_range, y_range, size=(560, 300), char=7.0, line=14.0, marker=8.0):
    """Each label's box in pixels, worked out here from the textposition alone (not from the placer's own boxes)."""
    boxes = []
    for (x, y), text, place in zip(points, texts, places):
        cx = (x - x_range[0]) / (x_range[1] - x_range[0]) * size[0]
        cy = (y - y_range[0]) / (y_range[1] - y_range[0]) * size[1]
        sx, sy = PLACES[place]
        w, h = char * len(text) + 4, line
        left, bottom = cx - w / 2 + sx * (w / 2 + marker), cy - h / 2 + sy * (h / 2 + marker)
        boxes.append((left, bottom, left + w, bottom + h))
    return boxes


def _overlap(a, b):
    return min(a[2], b[2]) > max(a[0], b[0]) and min(a[3], b[3]) > max(a[1], b[1])


def test_labels_of_points_on_one_spot_go_to_different_sides():
    places = plots.label_positions([(0.5, 0.5)] * 3, ["grin", "grun", "full"], (0, 1), (0, 1))
    assert len(set(places)) == 3


def test_labels_stay_inside_the_plot_at_its_edges():
    places = plots.label_positions([(1.0, 0.5), (0.0, 1.0), (0.5, 0.0)], ["right edge", "top left", "bottom"],
                                   (0, 1), (0, 1))
    assert PLACES[places[0]][0] == -1  # at the right edge: to the left
    assert PLACES[places[1]][0] >= 0 and PLACES[places[1]][1] <= 0  # top-left corner: right or below
    assert PLACES[places[2]][1] == 1  # at the bottom: above


def test_the_tofu_scatter_labels_do_not_cover_each_other():
    """The screenshot that asked for this: open-unlearning's three close forget01 points (GradDiff, NPO, SimNPO, with
    RMU further left) and our target with a method on the same spot: no two labels overlap."""
    report = {"rows": {"target": {"forget_quality": 0.266, "model_utility": 0.0},
                       "retain": {"forget_quality": 1.0, "model_utility": 0.0},
                       "grin": {"forget_quality": 0.266, "model_utility": 0.0},
                       "graddiff": {"forget_quality": 0.405, "model_utility": 0.0}}}
    fig = scatter(report)
    x_range, y_range = fig.layout.xaxis.range, fig.layout.yaxis.range
    import math

    points = [(math.log10(t.x[0]), t.y[0]) for t in fig.data]
    texts = [t.text[0] for t in fig.data]
    boxes = _boxes(points, texts, [t.textposition for t in fig.data], x_range, y_range)
    assert len(boxes) == 8
    for (i, a), (j, b) in itertools.combinations(enumerate(boxes), 2):
        assert not _overlap(a, b), f"{texts[i]} and {texts[j]} overlap"


def test_the_methods_scatter_labels_do_not_cover_each_other():
    rows = [{"method": m, "forget_keyword_accuracy": f, "retain_keyword_accuracy": r,
             "forget_keyword_accuracy_before": 1.0, "retain_keyword_accuracy_before": 1.0}
            for m, f, r in [("grin", 0.0, 1.0), ("grun", 0.0, 1.0), ("random", 0.25, 0.94), ("full", 0.0, 0.39)]]
    fig = plots.methods_scatter(rows)
    points = [(t.x[0], t.y[0]) for t in fig.data]
    texts = [t.text[0] for t in fig.data]
    boxes = _boxes(points, texts, [t.textposition for t in fig.data], fig.layout.xaxis.range, fig.layout.yaxis.range)
    for (i, a), (j, b) in itertools.combinations(enumerate(boxes), 2):
        assert not _overlap(a, b), f"{texts[i]} and {texts[j]} overlap"


def test_the_sweep_scatter_labels_stay_inside_and_apart():
    """The Sweep tab's screenshot case: four points and the base on the top line (retain 1.0), two of them on one
    spot, auto-p's pick outlined: every label inside the plot, none on another."""
    from grin_ui.tabs.sweep import sweep_figure

    def point(method, p, forget):
        return {"method": method, "p": p, "sigma2": 1e-6, "lr": 5e-4, "steps": 2, "seed": 0,
                "forget_keyword_accuracy": forget, "retain_keyword_accuracy": 1.0}

    points = [point("grin", 0.05, 0.25), point("grin", 0.01, 0.5), point("random", 0.01, 0.75),
              point("random", 0.05, 0.5)]
    before = {"metrics": {"forget": {"keyword_accuracy": 1.0}, "retain": {"keyword_accuracy": 1.0}}}
    fig = sweep_figure(points, before, target="forget_keyword_accuracy<=0.25")
    labelled = [(x, y, text, place) for t in fig.data if t.text is not None
                for x, y, text, place in zip(t.x, t.y, t.text,
                                             t.textposition if isinstance(t.textposition, tuple) else [t.textposition])]
    assert len(labelled) == 6
    size = (560, 290)
    boxes = _boxes([(x, y) for x, y, *_ in labelled], [text for *_, text, _ in labelled],
                   [place for *_, place in labelled], fig.layout.xaxis.range, fig.layout.yaxis.range, size=size,
                   char=6.5, marker=10.0)
    for box, (*_, text, _) in zip(boxes, labelled):
        assert box[0] >= 0 and box[1] >= 0 and box[2] <= size[0] and box[3] <= size[1], f"{text} leaves the plot"
    for (i, a), (j, b) in itertools.combinations(enumerate(boxes), 2):
        assert not _overlap(a, b), f"{labelled[i][2]} and {labelled[j][2]} overlap"
