"""The Learn tab's experiments (grin_ui/tabs/learn.py) through their API, as a gradio_client user scripts them:
each Try it loads the default model when nothing is loaded, runs on the first items, and draws from its own run.
The shared model is the tiny random one standing in for "default" (conftest.tiny_app)."""

from __future__ import annotations

import json
import re

import pytest

gradio_client = pytest.importorskip("gradio_client")

from test_app import _finish  # noqa: E402

from grin_ui.tabs import learn  # noqa: E402


def _figure(value) -> dict:
    """A gr.Plot output as plotly's figure JSON."""
    plot = value["plot"] if isinstance(value, dict) and "plot" in value else value
    return json.loads(plot) if isinstance(plot, str) else plot


@pytest.fixture(scope="module")
def client(tiny_app):
    return gradio_client.Client(tiny_app, verbose=False)


def test_every_section_has_its_experiment(client):
    names = set(client.view_api(return_format="dict", print_info=False)["named_endpoints"])
    assert {f"/try_{e.key}" for e in learn.EXPERIMENTS} <= names
    assert [e.question.split(". ", 1)[1] for e in learn.EXPERIMENTS] == [
        "Where do the facts live?", "Why divide by |G_r|?", "Does the noise help?",
        "How does NPO differ from gradient ascent?"]


def test_where_do_the_facts_live_loads_and_draws_the_selection(client):
    status, heatmap, shares = _finish(client.submit(api_name="/try_where"))[-1]
    assert "Done" in status and "feed-forward weights hold" in status, status
    bars = _figure(shares)["data"]
    assert [b["name"] for b in bars] == ["attention", "feed-forward"]
    for b in bars:  # two shares per kind, each a percentage; the kinds add up to 100% in each bar
        assert len(b["y"]) == 2
    assert [round(sum(v), 6) for v in zip(*(b["y"] for b in bars))] == [100.0, 100.0]
    assert _figure(heatmap)["data"][0]["type"] == "heatmap"


def test_why_divide_compares_grin_with_the_forget_gradient_alone(client):
    status, bars, answers = _finish(client.submit(api_name="/try_ratio"))[-1]
    assert "Done" in status, status
    from grin_engine.runs.methods import METHODS

    assert _figure(bars)["data"][0]["x"] == [METHODS[name].label for name in learn.RATIO_LABELS]
    table = answers
    assert table["headers"][-2:] == learn.RATIO_LABELS and len(table["data"]) == learn.EXPERIMENT_ITEMS


def test_does_the_noise_help_measures_the_gradient_before_and_after(client):
    status, norms, bars = _finish(client.submit(api_name="/try_noise"))[-1]
    assert "Done" in status, status
    before, after = (float(x) for x in re.findall(r"norm on the selected weights ([\d.e+-]+) before the noise, "
                                                   r"([\d.e+-]+) after", status)[0])
    data = _figure(norms)["data"]
    assert [d["name"] for d in data] == ["before the noise", "after the noise"]
    quiet, loud = zip(data[0]["y"], data[1]["y"])
    assert quiet[0] == quiet[1] and loud[0] != loud[1]  # no noise at sigma2 = 0; the noise moved it at 1e-3
    assert loud[0] == pytest.approx(before, rel=1e-2) and loud[1] == pytest.approx(after, rel=1e-2)
    assert len(_figure(bars)["data"][0]["y"]) == 2


def test_ga_against_npo_draws_two_curves_and_the_answers(client):
    status, curves, answers = _finish(client.submit(api_name="/try_losses"))[-1]
    assert "Done" in status and "ga" in status and "npo" in status, status
    traces = _figure(curves)["data"]
    assert [t["name"] for t in traces] == ["ga", "npo"]
    assert all(len(t["y"]) == learn.EXPERIMENT_STEPS for t in traces)
    table = answers
    assert table["headers"][-2:] == ["ga", "npo"] and len(table["data"]) == learn.EXPERIMENT_ITEMS
