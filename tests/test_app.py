"""The web app end to end through its API, as a gradio_client user scripts it (loads the real default model)."""

from __future__ import annotations

import json
import re
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
        assert values[0] == expected["loss"] and float(values[1]) == expected["p_percent"]
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


# ---------------------------------------------------------------------------------------------------------------------
# Bad inputs, by family, as a careless or hostile script sends them (the tiny model stands in for 'default')

LOAD_DEFAULT = ("default", "", "harry_potter", "", None, "general_knowledge", "", None)
UNLEARN_OK = ["graddiff", 1.0, "1e-6", 5e-4, 2, 1.0, None, 0, True, 2]


def _clear_error(fn, *args, match: str, **kwargs) -> str:
    """The call fails with our own message (no "Unexpected", no Gradio generic text, no traceback)."""
    with pytest.raises(Exception) as caught:
        fn(*args, **kwargs)
    text = str(caught.value)
    assert re.search(match, text), text
    for bad in ("Unexpected", "upstream Gradio app", "Traceback"):
        assert bad not in text, text
    return text


@pytest.fixture(scope="module")
def visitor(tiny_app):
    client = gradio_client.Client(tiny_app, verbose=False)
    client.predict(*LOAD_DEFAULT, api_name="/load")
    return client


@pytest.mark.parametrize("name, content, message", [
    ("nested.json", "[" * 50_000 + "]" * 50_000, "nested too deeply"),
    ("keywords.jsonl", '{"question": "Q?", "answer": "A.", "keywords": 5}\n', "'keywords' must be a list of texts"),
    ("para.jsonl", '{"question": "Q?", "answer": "A.", "paraphrased_answer": ["a"]}\n', "'paraphrased_answer' must"),
    ("long.jsonl", json.dumps({"question": "Q" * 5000, "answer": "A."}) + "\n", "at most 2,000"),
    ("object.json", '[{"question": {"a": 1}, "answer": "A."}]', "'question' must be text"),
    ("scalar.json", "[5]", "not an object"),
])
def test_bad_uploads_through_the_app(tiny_app, tmp_path, name, content, message):
    client = gradio_client.Client(tiny_app, verbose=False)
    path = tmp_path / name
    path.write_text(content)
    _clear_error(client.predict, "default", "", "harry_potter", "", gradio_client.handle_file(str(path)),
                 "general_knowledge", "", None, api_name="/load", match=message)


@pytest.mark.parametrize("index, value, message", [
    (3, "abc", "learning rate: give a number"), (3, 1e300, "learning rate must be between 0 and 10"),
    (4, "x", "steps: give a number"), (7, 1e30, "seed must be between 0 and"), (7, "nan", "seed: give a finite"),
    (1, "p", "give a number"), (5, [1, 2], "give a number, not list"), (2, "lots", "not in the list of choices"),
    (4, 10**9, "greater than maximum"), (8, "yes", "mask must be true or false"),
])
def test_bad_numbers_through_the_app(visitor, index, value, message):
    args = list(UNLEARN_OK)
    args[index] = value
    _clear_error(lambda: visitor.submit(*args, api_name="/unlearn").result(timeout=120), match=message)


@pytest.mark.parametrize("name, message", [
    ("x" * 5000, "5,000 characters"), ("org/na\nme", "control characters"), ("/etc", "local folders are disabled"),
    ("~no_such_user/m", "local folders are disabled"), ("../../etc/passwd", "local folders are disabled"),
])
def test_bad_model_names_through_the_app(tiny_app, name, message):
    client = gradio_client.Client(tiny_app, verbose=False)
    _clear_error(client.predict, "Hub id", name, "harry_potter", "", None, "general_knowledge", "", None,
                 api_name="/load", match=message)


def test_the_ways_to_choose_p_are_served_in_order():
    """A click on the p slider first blurs the p box: the blur's selection (the old p) and the slider's (the new p)
    must finish in the order they came, or the page shows the old p's selection under the new p (a CI run saw it)."""
    from grin_ui import build_app

    events = {f.api_name: f for f in build_app().fns.values()}
    ways = [events[name] for name in ("select", "select_blur", "select_slider")]
    assert {(f.concurrency_id, f.concurrency_limit) for f in ways} == {("select", 1)}


def test_calls_out_of_order_through_the_app(tiny_app):
    fresh = gradio_client.Client(tiny_app, verbose=False)
    _clear_error(lambda: fresh.submit(*UNLEARN_OK, api_name="/unlearn").result(timeout=60), match="nothing loaded")
    _clear_error(lambda: fresh.submit(2, 1.0, api_name="/influence").result(timeout=60), match="nothing loaded")
    _clear_error(fresh.predict, "Who?", api_name="/generate", match="nothing loaded")
    _clear_error(fresh.predict, 1.0, api_name="/select", match="no influence scores yet")
    _clear_error(fresh.predict, api_name="/report", match="no run yet")
    _clear_error(fresh.predict, api_name="/weights", match="no unlearned model yet")
    _clear_error(fresh.predict, api_name="/compare_report", match="no comparison yet")
    assert "Stop requested" in fresh.predict(api_name="/stop")  # harmless without a job


def test_a_100k_character_question_is_refused_at_once(visitor):
    from grin_ui.slots import rss_bytes

    rss = rss_bytes()
    start = time.perf_counter()
    _clear_error(visitor.predict, "Who is Harry Potter? " * 5000, api_name="/generate", match="at most 2,000")
    assert time.perf_counter() - start < 1.0
    assert rss_bytes() - rss < 50 * 2**20  # memory unchanged (within allocator noise)


def test_a_failed_run_keeps_the_previous_good_run(visitor, monkeypatch):
    final = _finish(visitor.submit(*UNLEARN_OK, api_name="/unlearn"))[-1]
    assert "Done" in final[0], final[0]
    first = json.loads(open(visitor.predict(api_name="/report")[0]).read())

    from grin_engine.config import GrinError
    from grin_ui import gpu

    def failing(*args, **kwargs):  # the run fails half-way (out of memory, a NaN loss ...)
        yield "progress", ("unlearn", 1, 2, 0.5), [0.5]
        yield "error", GrinError("the loss became nan at step 2")

    monkeypatch.setattr(gpu, "unlearn_work", failing)
    _clear_error(lambda: visitor.submit(*UNLEARN_OK, api_name="/unlearn").result(timeout=60), match="became nan")
    again = json.loads(open(visitor.predict(api_name="/report")[0]).read())
    assert again["losses"] == first["losses"] and not again["stopped"]


def test_weights_leave_one_file_per_visitor(visitor):
    """Ten downloads of the unlearned weights leave one file for this visitor, in Gradio's cache (not copied)."""
    _finish(visitor.submit(*UNLEARN_OK, api_name="/unlearn"))
    paths = {visitor.predict(api_name="/weights") for _ in range(10)}
    from grin_ui.state import STORE  # noqa: F401  (the app runs in this process: its folders are ours to look at)
    from pathlib import Path

    from gradio.utils import get_upload_folder

    visitor_dirs = list((Path(get_upload_folder()) / "grin_visitors").iterdir())
    mine = [d for d in visitor_dirs if any(f.name == "grin_unlearned.safetensors" for f in d.iterdir())]
    assert len(paths) <= 10
    for folder in mine:
        assert [f.name for f in folder.iterdir() if f.name.endswith(".safetensors")] == ["grin_unlearned.safetensors"]
        assert not [f for f in folder.iterdir() if f.name.startswith(".")]  # no temporary left


# ---------------------------------------------------------------------------------------------------------------------
# Compute once, reuse everywhere: scores and the base model's evaluation are shared server-wide


def _counting(monkeypatch, module, name, keep=lambda *a, **k: True):
    """Wrap module.name so that its calls (those for which keep(...) holds) are counted."""
    calls, real = [], getattr(module, name)

    def counted(*args, **kwargs):
        if keep(*args, **kwargs):
            calls.append(1)
        return real(*args, **kwargs)
    monkeypatch.setattr(module, name, counted)
    return calls


def test_unlearn_after_influence_does_no_second_gradient_pass(tiny_app, monkeypatch):
    from grin_engine.method import influence

    passes = _counting(monkeypatch, influence, "accumulate_gradients")  # one call per set: 2 per gradient pair
    client = gradio_client.Client(tiny_app, verbose=False)
    client.predict(*LOAD_DEFAULT, api_name="/load")
    items = 3  # no other test of this module uses 3 items: nothing of this data is on the server yet
    run = ["graddiff", 1.0, "1e-6", 5e-4, 2, 1.0, None, 0, True, items]
    # the line under Run says what a run will take and re-use, before Run
    expected = client.predict(*run, "", api_name="/expected_time")
    assert "A Run with these settings: about" in expected and f"{items} forget + {items} retain items and 2 steps" in expected
    assert "re-uses" not in expected, expected
    status = client.submit(items, 1.0, api_name="/influence").result(timeout=300)[0]
    assert "Influence computed" in status and len(passes) == 2
    assert "re-uses the influence scores" in client.predict(*run, "", api_name="/expected_time")
    assert "re-uses" not in client.predict(*run[:1], 20.0, *run[2:], "", api_name="/expected_time")  # above 10%
    for p in (1.0, 5.0, 0.1):  # any p up to the kept 10%: selected from the kept scores
        run[1] = p
        final = _finish(client.submit(*run, api_name="/unlearn"))[-1]
        assert "Done" in final[0] and "the influence scores" in final[0], final[0]
        report = json.loads(open(client.predict(api_name="/report")[0]).read())
        assert report["config"]["p"] == pytest.approx(p / 100) and report["timings"]["scores_s"] == 0
    assert len(passes) == 2, "Unlearn computed the gradients again"
    final = _finish(client.submit(["grin", "grin-nonoise", "random", "full"], "idk", "linear", 1e-2, 3.0, 2, *run,
                                  "forget", api_name="/compare"))[-1]
    assert "Done" in final[0] and "the influence scores" in final[0], final[0]
    assert len(passes) == 2, "Compare methods computed the gradients again"
    run[1] = 20.0  # above the kept 10%: computed again, and the status says so
    final = _finish(client.submit(*run, api_name="/unlearn"))[-1]
    assert "Done" in final[0] and "computed again" in final[0], final[0]
    assert len(passes) == 4
    # a second visitor with the same data gets the Influence tab's scores at once
    other = gradio_client.Client(tiny_app, verbose=False)
    other.predict(*LOAD_DEFAULT, api_name="/load")
    status = other.submit(items, 1.0, api_name="/influence").result(timeout=300)[0]
    assert "re-used" in status and len(passes) == 4


def test_two_visitors_share_one_base_evaluation(tiny_app, monkeypatch):
    from grin_engine.runs import pipeline
    from grin_ui.state import STORE

    base = STORE.get("default").model
    evaluations = _counting(monkeypatch, pipeline, "evaluate_both", keep=lambda model, *a, **k: model is base)
    items = 4  # no other test of this module uses 4 items
    run = ["graddiff", 1.0, "1e-6", 5e-4, 2, 1.0, None, 0, True, items]
    visitors = [gradio_client.Client(tiny_app, verbose=False) for _ in range(2)]
    finals = []
    for visitor in visitors:
        visitor.predict(*LOAD_DEFAULT, api_name="/load")
        finals.append(_finish(visitor.submit(*run, api_name="/unlearn"))[-1])
    assert all("Done" in final[0] for final in finals), [final[0] for final in finals]
    assert len(evaluations) == 1, "the base model answered the same items twice"
    assert "the base model's answers" in finals[1][0] and "the base model's answers" not in finals[0][0]
    before = [[row[2] for row in _data(final[2])] for final in finals]
    assert before[0] == before[1]  # the same answers, shown to both
    final = _finish(visitors[1].submit(["grin", "full"], "idk", "linear", 1e-2, 3.0, 2, *run, "forget",
                                       api_name="/compare"))[-1]
    assert "Done" in final[0] and len(evaluations) == 1


def test_show_me_runs_the_demo_and_fills_the_tabs(tiny_app):
    """One click: load, influence at 1%, unlearn until forgotten, answers before / after; a sentence per step."""
    from grin_ui import show_me

    client = gradio_client.Client(tiny_app, verbose=False)
    outputs = _finish(client.submit(api_name="/show_me"))
    statuses = [frame[0] for frame in outputs]
    for step in ("load", "influence", "unlearn", "compare"):  # every step said what to look at, in order
        assert show_me.SAY[step] in statuses, step
    assert statuses.index(show_me.SAY["load"]) < statuses.index(show_me.SAY["influence"]) < \
        statuses.index(show_me.SAY["unlearn"]) < statuses.index(show_me.SAY["compare"])
    assert statuses[-1] == show_me.SAY["compare"]

    def seen(index):
        """The last value an output got (a frame may skip it)."""
        values = [frame[index] for frame in outputs if not (isinstance(frame[index], dict)
                                                           and frame[index].get("__type__") == "update"
                                                           and "value" not in frame[index])]
        return values[-1] if values else None

    assert seen(1) == show_me.SHOW_ME_ITEMS  # Setup's max items now says what the demo used
    assert "Loaded" in seen(4) and "Influence computed" in seen(5) and "p = 1%" in seen(6)
    assert "Done" in seen(14), seen(14)
    assert len(_data(seen(16))) == show_me.SHOW_ME_ITEMS and len(_data(seen(17))) == show_me.SHOW_ME_ITEMS
    report = json.loads(open(client.predict(api_name="/report")[0]).read())  # the run is the visitor's own
    assert report["config"]["until"] == show_me.SHOW_ME_UNTIL and report["until"]["checks"]
    # the last frame still carries every figure and table: a page diffs a frame against the one before, so a value
    # skipped after it was sent showed empty (the Influence figures, under Unlearn's frames)
    keys = list(show_me.OUTPUTS)
    for name in ("heatmap", "bars", "hist", "loss", "forget_gen", "retain_gen", "metrics"):
        value = outputs[-1][keys.index(name)]
        assert not (isinstance(value, dict) and value.get("__type__") == "update"), name
