"""Tests for grin_ui.jobs: on every tab, a Stop pressed while the job waits in the queue ends it before it starts
(through gradio_client against a launched app, tiny model), and the job helper's messages end the same way everywhere.

Visitor A holds the one heavy slot with a job only Stop ends; visitor B's job waits behind it; B presses Stop, then
A's job is stopped; B's job must then end at once with the tab's "stopped while waiting" message, having done nothing.
"""

from __future__ import annotations

import time

import pytest

gradio_client = pytest.importorskip("gradio_client")

from grin_ui.jobs import STOPPED, run_job  # noqa: E402
from grin_ui.state import stop_flag  # noqa: E402

LOAD_DEFAULT = ("default", "", "harry_potter", "", None, "general_knowledge", "", None)
SHORT_RUN = ("graddiff", 1.0, "1e-6", 5e-4, 2, 1.0, None, 0, True, 2)
LONG_RUN = (["grun"], "idk", "linear", 1e-2, 3.0, 1_000_000) + SHORT_RUN + ("forget",)  # only Stop ends it
QUEUED_JOBS = {  # api name -> its inputs: each tab's job that holds a model copy
    "/influence": (2, 1.0),
    "/unlearn": SHORT_RUN,
    "/compare": (["grin"], "idk", "linear", 1e-2, 3.0, 2) + SHORT_RUN + ("forget",),
    "/attack": ("last run (Unlearn)", ["quant8"], 10, 5e-5, 8, "keyword accuracy"),
    "/sweep": (["grin"], "1", "1e-6", "0", "forget_keyword_accuracy<=0.25", False, "forget_keyword_accuracy",
               "retain_keyword_accuracy", "graddiff", 5e-4, 2, 1.0, None, 2),
    "/tofu_run": ("forget01", ["graddiff"], 1),
    "/show_me": (),
}


def _wait_for(condition, timeout=120.0):
    start = time.monotonic()
    while not condition():
        assert time.monotonic() - start < timeout, "timed out"
        time.sleep(0.2)


def _last(job, timeout=300.0):
    _wait_for(job.done, timeout)
    return job.outputs()[-1]


def _visitor(url):
    client = gradio_client.Client(url, verbose=False)
    client.predict(*LOAD_DEFAULT, api_name="/load")
    return client


@pytest.mark.parametrize("api_name", list(QUEUED_JOBS))
def test_stop_while_queued_ends_the_job_on_every_tab(tiny_app, api_name):
    a, b = _visitor(tiny_app), _visitor(tiny_app)
    if api_name == "/attack":  # an attack needs b's finished run
        _last(b.submit(*SHORT_RUN, api_name="/unlearn"))
    long_job = a.submit(*LONG_RUN, api_name="/compare")
    _wait_for(lambda: any("training the gated edits" in str(out[0]) for out in long_job.outputs()))
    queued = b.submit(*QUEUED_JOBS[api_name], api_name=api_name)  # waits behind a's job
    _wait_for(lambda: queued.status().code.name == "IN_QUEUE" or queued.done(), 30)
    assert not queued.done()
    b.predict(api_name="/stop")  # pressed while b's job is still waiting
    a.predict(api_name="/stop")
    assert "Stopped" in str(_last(long_job)[0])
    _wait_for(queued.done, 120)
    outputs = queued.outputs()
    statuses = [str(frame[0]) for frame in outputs]
    assert "Stopped" in statuses[-1], statuses
    if api_name != "/show_me":  # the demo loads its model first, then its first job ends on the Stop
        assert "while waiting in the queue" in statuses[-1], statuses
    assert not any(word in s for s in statuses for word in ("Running", "Computing", "Attacking", "Done")), statuses


def test_run_job_streams_progress_and_returns_the_result():
    class Request:
        session_hash = "test-run-job"

    def work(stop):
        yield "progress", ("unlearn", 1, 2, 0.5), [0.5]
        yield "done", 42

    frames, result = [], None
    job = run_job(Request(), work, lambda event, losses, stop: ("progress", losses), ("queued",), ("stopped",))
    try:
        while True:
            frames.append(next(job))
    except StopIteration as end:
        result = end.value
    assert frames == [("progress", [0.5])] and result == 42
    assert not stop_flag(Request.session_hash).is_set()


def test_run_job_honours_a_stop_set_before_it_starts_and_raises_errors():
    from grin_engine.errors import GrinError

    class Request:
        session_hash = "test-run-job-2"

    stop_flag(Request.session_hash).set()
    started = []
    job = run_job(Request(), lambda stop: started.append(1) or iter(()), lambda *a: None, ("queued",), ("stopped",))
    assert next(job) == ("queued",)
    with pytest.raises(StopIteration) as end:
        next(job)
    assert end.value.value is STOPPED and started == [] and not stop_flag(Request.session_hash).is_set()

    def failing(stop):
        yield "error", GrinError("the loss became nan")

    with pytest.raises(GrinError, match="became nan"):
        list(run_job(Request(), failing, lambda *a: None, ("queued",), ("stopped",)))
