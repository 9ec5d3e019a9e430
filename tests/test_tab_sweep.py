"""The Sweep tab through its API, as a gradio_client user scripts it: a sweep streams its points, Stop keeps the
finished ones, Run again continues the same file, a point's answers sit beside the base model's, JSON and CSV
download. The shared model is a tiny random one put into the store under the name "default" (fast, no download);
tests/test_browser.py drives the same tab with the real model."""

from __future__ import annotations

import json
import re
import socket
import time

import pytest
import torch

gradio_client = pytest.importorskip("gradio_client")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def client(tokenizer):
    from conftest import tiny_llama
    from grin_engine.models import LoadedModel
    from grin_ui import build_app
    from grin_ui.state import STORE

    STORE._current = LoadedModel(model=tiny_llama(len(tokenizer)), tokenizer=tokenizer, name="default",
                                 source="local", device=torch.device("cpu"), dtype=torch.float32)
    demo = build_app()
    port = _free_port()
    demo.queue().launch(prevent_thread_lock=True, server_port=port, quiet=True)
    try:
        client = gradio_client.Client(f"http://127.0.0.1:{port}/", verbose=False)
        client.predict("default", "", "harry_potter", "", None, "general_knowledge", "", None, api_name="/load")
        yield client
    finally:
        demo.close()
        STORE._current = None


# methods, p %, sigma2, seeds, target, until, forget metric, retain metric, loss, lr, steps, alpha, beta, max items
def _args(**changes):
    args = dict(methods=["grin", "random"], p="1, 5", sigma2="1e-6", seeds="0, 1", target="forget_keyword_accuracy<=0.25",
                until=False, forget="forget_keyword_accuracy", retain="retain_keyword_accuracy", loss="graddiff",
                lr=5e-4, steps=2, alpha=1.0, beta=None, max_items=3)
    args.update(changes)
    return list(args.values())


def test_sweep_endpoints_are_named(client):
    names = set(client.view_api(return_format="dict", print_info=False)["named_endpoints"])
    assert {"/sweep", "/stop_sweep", "/sweep_point", "/sweep_report"} <= names


@pytest.mark.parametrize("changes, message", [
    (dict(methods=[]), "at least one method"),
    (dict(p="0.5, x"), "numbers separated by commas"),
    (dict(p="200"), r"in \(0, 100\]"),
    (dict(target="forget_accuracy<=1"), "unknown metric"),
    (dict(target="", until=True), "needs a target"),
])
def test_bad_grid_is_a_clear_error(client, changes, message):
    with pytest.raises(Exception, match=message) as caught:
        client.predict(*_args(**changes), api_name="/sweep")
    assert "Traceback" not in str(caught.value)


def test_stop_keeps_points_and_run_again_continues(client):
    # 60 steps a point: slow enough that Stop, pressed once the first point is in, lands before the eighth
    # (with 2 steps the tiny model finished all 8 before the client saw the first)
    grid = _args(steps=60)
    job = client.submit(*grid, api_name="/sweep")  # 2 p x 2 methods x 2 seeds = 8 points
    start = time.monotonic()
    while "1 of 8" not in str(job.outputs()[-1][0] if job.outputs() else "") and not job.done():  # a point is in
        assert time.monotonic() - start < 300, "no point finished"
        time.sleep(0.2)
    seen = int(re.search(r"(\d+) of 8 points finished", str(job.outputs()[-1][0])).group(1))  # when Stop is pressed
    client.predict(api_name="/stop_sweep")
    while not job.done():
        time.sleep(0.2)
    status = job.outputs()[-1][0]
    assert "Stopped" in status and "of 8 points kept" in status
    kept = int(status.split("—")[1].split("of")[0])
    # every point the page had shown as finished is kept (more may have finished before Stop landed), and the
    # Stop took effect: not all 8 ran
    assert seen <= kept < 8, (seen, kept)
    json_path, _ = client.predict("forget_keyword_accuracy", "retain_keyword_accuracy", api_name="/sweep_report")
    assert len(json.load(open(json_path))["points"]) == kept  # the points said to be kept are the ones in the file

    status, plot, areas, point = client.predict(*grid, api_name="/sweep")  # the same grid: continues
    assert f"8 points ({kept} from before)" in status
    assert "grin" in areas and "auto-p" in areas
    figure = json.loads(plot["plot"]) if isinstance(plot, dict) and "plot" in plot else plot
    traces = {t.get("name", "") for t in figure["data"]} if isinstance(figure, dict) else set()
    assert any(name.startswith("grin (area") for name in traces) and "ideal corner" in traces

    if isinstance(point, dict) and point.get("__type__") == "update":  # the chooser's update: its value inside
        assert len(point["choices"]) == 8
        point = point["value"]
    answers = client.predict(point, api_name="/sweep_point")
    rows = answers["data"] if isinstance(answers, dict) else answers
    assert len(rows) == 6 and all(len(r) == 5 and r[3] is not None for r in rows)  # 3 forget + 3 retain

    json_path, csv_path = client.predict("forget_keyword_accuracy", "retain_keyword_accuracy", api_name="/sweep_report")
    report = json.load(open(json_path))
    assert len(report["points"]) == 8 and set(report["frontier"]["fronts"]) == {"grin", "random"}
    assert len(open(csv_path).read().splitlines()) == 9


def test_the_front_y_may_be_the_forget_set_fluency():
    """x: forget metrics that fall as the model forgets; y: what should stay high, forget fluency included, with the
    base model's value read from the forget split."""
    from grin_ui.tabs import sweep as sweep_view

    assert "forget_fluency" not in sweep_view.X_CHOICES and "forget_keyword_accuracy" in sweep_view.X_CHOICES
    assert {"forget_fluency", "retain_fluency", "retain_keyword_accuracy"} <= set(sweep_view.Y_CHOICES)
    points = [{"method": "grin", "seed": 0, "p": 0.01, "forget_keyword_accuracy": 0.0, "forget_fluency": 0.25}]
    before = {"metrics": {"forget": {"keyword_accuracy": 1.0, "fluency": 0.75}, "retain": {"fluency": 0.5}}}
    fig = sweep_view.sweep_figure(points, before, "forget_keyword_accuracy", "forget_fluency")
    base = next(t for t in fig.data if t.name == "base model")
    assert (base.x[0], base.y[0]) == (1.0, 0.75)
    assert [list(t.y) for t in fig.data if t.name and t.name.startswith("grin")] == [[0.25]]
