"""The web app end to end through its API, as a gradio_client user scripts it (loads the real default model)."""

from __future__ import annotations

import json
import socket
import time

import pytest

gradio_client = pytest.importorskip("gradio_client")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _data(value):
    if isinstance(value, dict) and value.get("__type__") == "update":  # a component update: its value inside
        value = value["value"]
    return value["data"] if isinstance(value, dict) and "data" in value else value


def _finish(job, timeout: float = 900):
    start = time.monotonic()
    while not job.done():
        assert time.monotonic() - start < timeout, "job did not finish in time"
        time.sleep(0.5)
    return job.outputs()


@pytest.fixture(scope="module")
def client():
    from grin_ui import build_app

    demo = build_app()
    port = _free_port()
    demo.queue().launch(prevent_thread_lock=True, server_port=port, quiet=True)
    try:
        yield gradio_client.Client(f"http://127.0.0.1:{port}/", verbose=False)
    finally:
        demo.close()


def test_api_names(client):
    names = set(client.view_api(return_format="dict", print_info=False)["named_endpoints"])
    assert {"/load", "/influence", "/select", "/unlearn", "/stop", "/generate", "/report", "/weights"} <= names


def test_bad_input_is_a_clear_error(client):
    with pytest.raises(Exception, match="TOFU config"):
        client.predict("default", "", "harry_potter", "/etc/passwd", None, "general_knowledge", "", None,
                       api_name="/load")
    with pytest.raises(Exception, match="local folders are disabled"):
        client.predict("Hub id", "/etc", "harry_potter", "", None, "general_knowledge", "", None, api_name="/load")
    with pytest.raises(Exception, match="no influence scores yet"):
        client.predict(1.0, api_name="/select")


@pytest.mark.parametrize("name, content, message", [
    ("empty.jsonl", b"", "empty"),
    ("noanswer.csv", b"question,reply\nWhat?,That.\n", "lacks the column"),
    ("latin.jsonl", b"\xff\xfe\x00bad", "not UTF-8"),
    ("broken.json", b'[{"question": "Q?", "answer": "A."},', "not valid JSON"),
])
def test_bad_upload_is_a_clear_error(client, tmp_path, name, content, message):
    path = tmp_path / name
    path.write_bytes(content)
    upload = gradio_client.handle_file(str(path))
    with pytest.raises(Exception, match=message) as caught:
        client.predict("default", "", "harry_potter", "", upload, "general_knowledge", "", None, api_name="/load")
    assert "Traceback" not in str(caught.value)


@pytest.mark.slow
def test_full_flow(client):
    facts, preview, status = client.predict("default", "", "harry_potter", "", None, "general_knowledge", "", None,
                                            api_name="/load")
    assert "Loaded" in status
    assert dict(_data(facts))["layers"] == "30"
    from grin_ui.state import STORE

    base_checksum = _checksum(STORE.get("default").model)
    assert {row[0] for row in _data(preview)} == {"forget", "retain"}

    out = client.submit(2, 1.0, api_name="/influence").result(timeout=900)
    assert "Influence computed" in out[0] and "p = 1%" in out[1]

    small = client.predict(0.1, api_name="/select")
    large = client.predict(5.0, api_name="/select")
    selected = [int(text.split("**: ")[1].split(" of ")[0].replace(",", "")) for text in (small[0], large[0])]
    assert 0 < selected[0] < selected[1]
    assert large[-1] == 5.0  # the Unlearn tab's p follows the selection

    # Stop: a long run halts soon after training starts, then evaluates what it has
    job = client.submit("graddiff", 1.0, "1e-6", 5e-4, 50, 1.0, None, 0, True, 2, api_name="/unlearn")
    start = time.monotonic()
    while not job.done():
        outputs = job.outputs()
        if outputs and "unlearning" in outputs[-1][0]:
            assert "Stop requested" in client.predict(api_name="/stop")
            break
        assert time.monotonic() - start < 900
        time.sleep(0.3)
    final = _finish(job)[-1]
    assert "Stopped" in final[0], final[0]
    from grin_ui.state import STORE

    assert _checksum(STORE.get("default").model) == base_checksum  # the stopped run left the base as it was
    with pytest.raises(Exception, match="no unlearned model"):  # a stopped run keeps none
        client.predict(api_name="/weights")

    outputs = _finish(client.submit("graddiff", 1.0, "1e-6", 5e-4, 2, 1.0, None, 0, True, 2, api_name="/unlearn"))
    final = outputs[-1]
    assert "Done" in final[0] and "2 steps" in final[0]
    metrics = _data(final[4])
    assert {(row[0], row[1]) for row in metrics} >= {("forget", "rougeL_recall"), ("retain", "probability")}
    assert len(_data(final[2])) == 2 and len(_data(final[3])) == 2  # forget / retain answers before and after

    before, after = client.predict("Who is Harry Potter's best friend?", api_name="/generate")
    assert before and after and not after.startswith("(no unlearned model")

    json_path, csv_path = client.predict(api_name="/report")
    report = json.loads(open(json_path).read())
    assert len(report["losses"]) == 2 and not report["stopped"]
    assert report["config"]["p"] == pytest.approx(0.01)
    assert "rougeL_recall" in open(csv_path).read()

    weights = client.predict(api_name="/weights")
    assert weights.endswith(".safetensors")
    from safetensors import safe_open

    with safe_open(weights, "pt") as f:
        assert any(".layers.0." in key for key in f.keys())


def _checksum(model) -> str:
    import hashlib

    digest = hashlib.sha256()
    for name, value in model.state_dict().items():
        digest.update(name.encode())
        digest.update(value.detach().cpu().contiguous().view(-1).view(dtype=__import__("torch").uint8).numpy())
    return digest.hexdigest()


@pytest.mark.slow
def test_two_visitors_at_once_keep_their_own_results(client):
    """Two visitors with different p, working at the same time: each gets their own selection and report, and the
    shared base model is bit-identical afterwards."""
    from grin_ui.state import STORE

    visitors = [client, gradio_client.Client(client.src, verbose=False)]
    for visitor in visitors:
        visitor.predict("default", "", "harry_potter", "", None, "general_knowledge", "", None, api_name="/load")
    checksum = _checksum(STORE.get("default").model)

    p_values = (0.1, 5.0)
    jobs = [v.submit(2, p, api_name="/influence") for v, p in zip(visitors, p_values)]
    for job in jobs:
        _finish(job)
    texts = [v.predict(p, api_name="/select")[0] for v, p in zip(visitors, p_values)]
    assert "p = 0.1%" in texts[0] and "p = 5%" in texts[1]

    jobs = [v.submit("graddiff", p, "1e-6", 5e-4, 2, 1.0, None, 0, True, 2, api_name="/unlearn")
            for v, p in zip(visitors, p_values)]
    finals = [_finish(job)[-1] for job in jobs]
    assert all("Done" in final[0] for final in finals), [final[0] for final in finals]
    reports = [json.loads(open(v.predict(api_name="/report")[0]).read()) for v in visitors]
    assert [r["config"]["p"] for r in reports] == [pytest.approx(0.001), pytest.approx(0.05)]
    assert reports[0]["selection"]["selected"] < reports[1]["selection"]["selected"]
    assert _checksum(STORE.get("default").model) == checksum


def test_presets_fill_the_unlearn_controls(client):
    from grin_ui.presets import PRESETS

    for slug, name in (("/preset_gentle", "Forget Harry Potter, gently"),
                       ("/preset_aggressive", "Forget Harry Potter, aggressively")):
        values = client.predict(api_name=slug)
        expected = PRESETS[name]
        assert values[0] == expected["method"] and float(values[1]) == expected["p_percent"]
        assert values[2] == expected["sigma2"] and int(values[4]) == expected["steps"]


@pytest.mark.slow
def test_compare_methods(client):
    """The Compare-methods view through the API: every method on 2 + 2 items, a table row each, the scatter, the
    overlaps, answers side by side and the JSON download; bad choices come back as errors."""
    client.predict("default", "", "harry_potter", "", None, "general_knowledge", "", None, api_name="/load")
    methods = ["grin", "grun", "full", "random", "forget-grad"]
    settings = ("graddiff", 1.0, "1e-6", 5e-4, 2, 1.0, None, 0, True, 2, "forget")
    with pytest.raises(Exception, match="at least one method"):
        client.predict([], "idk", "linear", 1e-2, 3.0, 2, *settings, api_name="/compare")
    with pytest.raises(Exception, match="grun learning rate must be > 0"):
        client.predict(["grun"], "idk", "linear", 0, 3.0, 2, *settings, api_name="/compare")
    final = _finish(client.submit(methods, "idk", "linear", 1e-2, 3.0, 2, *settings, api_name="/compare"))[-1]
    status, table, scatter, overlap, answers = final
    assert "Done" in status, status
    rows = _data(table)
    assert [row[0] for row in rows] == ["base model (before)"] + methods
    assert "random mask" in overlap and "|G_f|-only mask" in overlap
    answer_rows = _data(answers)
    assert len(answer_rows) == 2 and len(answer_rows[0]) == 3 + len(methods)
    assert all(isinstance(a, str) for a in answer_rows[0])
    report = json.loads(open(client.predict(api_name="/compare_report")).read())
    assert [row["method"] for row in report["table"]] == methods
    grun = next(row for row in report["table"] if row["method"] == "grun")
    assert grun["forget_gate"] is not None and grun["retain_gate"] is not None
    assert report["masks_selected"]["grin"] == report["masks_selected"]["random"]
