"""The Attack tab (grin_ui/tabs/attack.py) through its API, as a gradio_client user scripts it."""

from __future__ import annotations

import json
import time

import pytest

gradio_client = pytest.importorskip("gradio_client")

from test_app import _checksum, _data, _finish, client  # noqa: E402,F401  (client: the app, launched)

from grin_ui.tabs import attack as attack_view  # noqa: E402

LAST_RUN, COMPARISON = attack_view.TARGETS


def test_attack_endpoints_are_named(client):
    names = set(client.view_api(return_format="dict", print_info=False)["named_endpoints"])
    assert {"/attack", "/stop_attack", "/attack_report", "/attack_bars", "/attack_answers"} <= names


def test_attack_before_anything_is_a_clear_error(client):
    with pytest.raises(Exception, match="nothing loaded yet"):
        client.predict(LAST_RUN, ["quant8"], 10, 5e-5, 8, "keyword accuracy", api_name="/attack")
    with pytest.raises(Exception, match="no attack yet"):
        client.predict(api_name="/attack_report")


def test_figures_and_tables_from_plain_results():
    results = [{"attack": "relearn", "method": "grin", "skipped": None, "seconds": 1.0,
                "metrics": {"forget_B": {"keyword_accuracy": 0.5}, "retain": {"keyword_accuracy": 0.9}},
                "baseline": {"forget_B": {"before": {"keyword_accuracy": 1.0}, "unlearned": {"keyword_accuracy": 0.0}},
                             "retain": {"before": {"keyword_accuracy": 1.0}, "unlearned": {"keyword_accuracy": 0.8}}},
                "recovery": {"forget_B": {"keyword_accuracy": 0.5}}, "answers": [
                    {"question": "Q?", "unlearned": "no idea", "attacked": "Hogwarts"}], "details": {}},
               {"attack": "prefix", "method": "grin", "skipped": "the model has no chat template", "seconds": 0.0,
                "metrics": {}, "baseline": {}, "recovery": {}, "answers": [], "details": {}}]
    rows = [{"method": "grin", "attack": "relearn", "group": "forget_B", "before": 1.0, "unlearned": 0.0,
             "attacked": 0.5, "recovery": 0.5, "retain_attacked": 0.9, "retain_unlearned": 0.8, "skipped": None,
             "seconds": 1.0},
            {"method": "grin", "attack": "prefix", "group": "forget", "before": None, "unlearned": None,
             "attacked": None, "recovery": None, "retain_attacked": None, "retain_unlearned": None,
             "skipped": "the model has no chat template", "seconds": 0.0}]
    fig = attack_view.recovery_bars(rows, "keyword_accuracy", results)
    assert [t.name for t in fig.data] == ["before", "unlearned", "attacked"]
    assert list(fig.data[2].text) == ["recovery 0.50"] and list(fig.data[0].x) == ["grin · relearn (half B)"]
    frame = attack_view.recovery_frame(rows)
    assert frame.iloc[0]["recovery"] == "0.500" and "skipped" in frame.iloc[1]["items"]
    rows[0]["recovery"] = None  # before == unlearned: said in words, not as a number
    assert attack_view.recovery_frame(rows).iloc[0]["recovery"] == "n/a: nothing forgotten"
    answers = attack_view.answers_frame({"results": results}, "grin · relearn")
    assert answers.iloc[0]["attacked answer"] == "Hogwarts"


def test_bars_can_show_fluency():
    """Attacks measure with the evaluation's own code, so fluency is among the attacked metrics; the bars offer it."""
    assert attack_view.METRICS["fluency"] == "fluency"
    values = {"before": {"fluency": 1.0}, "unlearned": {"fluency": 0.5}}
    results = [{"attack": "quant4", "method": "grin", "skipped": None, "metrics": {"forget": {"fluency": 0.75}},
                "baseline": {"forget": values}, "recovery": {"forget": {"fluency": 0.5}}}]
    rows = [{"method": "grin", "attack": "quant4", "skipped": None}]
    fig = attack_view.recovery_bars(rows, "fluency", results)
    assert [list(t.y) for t in fig.data] == [[1.0], [0.5], [0.75]] and "fluency" in fig.layout.title.text


@pytest.mark.slow
def test_attack_the_last_run_and_the_comparison_base_unchanged(client):
    client.predict("default", "", "harry_potter", "", None, "general_knowledge", "", None, api_name="/load")
    from grin_ui.state import STORE

    base_checksum = _checksum(STORE.get("default").model)
    with pytest.raises(Exception, match="no unlearned model yet"):
        client.predict(LAST_RUN, ["quant8"], 10, 5e-5, 8, "keyword accuracy", api_name="/attack")
    final = _finish(client.submit("graddiff", 1.0, "1e-6", 5e-4, 2, 1.0, None, 0, True, 2, api_name="/unlearn"))[-1]
    assert "Done" in final[0]

    outputs = _finish(client.submit(LAST_RUN, ["relearn", "quant8", "prefix", "sample"], 1, 5e-5, 2,
                                    "keyword accuracy", api_name="/attack"))
    status, bars, table, answers_of, answers = outputs[-1]
    assert "Done**: 4 attack(s) on grin" in status, status
    assert _checksum(STORE.get("default").model) == base_checksum
    rows = _data(table)
    assert [row[1] for row in rows] == ["relearn", "quant8", "prefix", "sample"]
    assert rows[0][2] == "forget half B"
    assert "recovery" in json.dumps(bars)
    assert len(_data(answers)) >= 1  # half B of 2 items: one question, its unlearned and attacked answers
    report = json.loads(open(client.predict(api_name="/attack_report")).read())
    assert set(report["attacks"]["grin"]) == {"relearn", "quant8", "prefix", "sample"}
    assert report["attacks"]["grin"]["sample"]["details"]["n"] == 2

    # another metric redraws the bars from the kept results, without a new attack
    bars = client.predict("ROUGE-L recall", api_name="/attack_bars")
    assert "ROUGE-L recall" in json.dumps(bars)

    # Stop: a long attack ends soon after it starts; nothing is kept, the base is unchanged
    job = client.submit(LAST_RUN, ["relearn"], 200, 5e-5, 8, "keyword accuracy", api_name="/attack")
    start = time.monotonic()
    while not job.done():
        outputs = job.outputs()
        if outputs and "relearn" in outputs[-1][0]:
            assert "Stop requested" in client.predict(api_name="/stop_attack")
            break
        assert time.monotonic() - start < 900
        time.sleep(0.3)
    final = _finish(job)[-1]
    assert "Stopped" in final[0], final[0]
    assert _checksum(STORE.get("default").model) == base_checksum

    # each method of a comparison: grin and grun are attacked; full's patch (the whole model) is not kept
    _finish(client.submit(["grin", "grun", "full"], "idk", "linear", 1e-2, 3.0, 2, "graddiff", 1.0, "1e-6", 5e-4, 2,
                          1.0, None, 0, True, 2, "forget", api_name="/compare"))
    outputs = _finish(client.submit(COMPARISON, ["quant4"], 10, 5e-5, 8, "keyword accuracy", api_name="/attack"))
    status, _, table, _, _ = outputs[-1]
    assert "on grin, grun" in status, status
    assert [row[0] for row in _data(table)] == ["grin", "grun"]
    assert _checksum(STORE.get("default").model) == base_checksum
