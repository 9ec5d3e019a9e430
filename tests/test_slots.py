"""Tests for grin_ui.slots: the fair queue, through gradio_client against a launched app (tiny model).

One heavy job per visitor (a second is refused at once with our message); a short action does not wait behind a
long one; Stop ends a job that is still waiting in the queue; a stopped run keeps the visitor's previous run.
"""

from __future__ import annotations

import json
import time

import pytest

gradio_client = pytest.importorskip("gradio_client")

from grin_ui.slots import BUSY_MESSAGE, release_memory, rss_bytes  # noqa: E402

LOAD_DEFAULT = ("default", "", "harry_potter", "", None, "general_knowledge", "", None)
SHORT_RUN = ("graddiff", 1.0, "1e-6", 5e-4, 2, 1.0, None, 0, True, 2)
# GRUN with a million steps (a local server allows it): only Stop ends it
LONG_RUN = (["grun"], "idk", "linear", 1e-2, 3.0, 1_000_000) + SHORT_RUN + ("forget",)


def _visitor(url):
    client = gradio_client.Client(url, verbose=False)
    client.predict(*LOAD_DEFAULT, api_name="/load")
    return client


def _wait_for(condition, timeout=120.0):
    start = time.monotonic()
    while not condition():
        assert time.monotonic() - start < timeout, "timed out"
        time.sleep(0.2)


def _training(job) -> bool:
    """The job's status says it is training (GRIN's "unlearning", GRUN's "training the gated edits")."""
    return any(word in str(out[0]) for out in job.outputs() for word in ("unlearning", "training the gated edits"))


def _last(job, timeout=300.0):
    _wait_for(job.done, timeout)
    return job.outputs()[-1]


def test_one_heavy_job_per_visitor_and_short_actions_do_not_wait(tiny_app):
    a, b = _visitor(tiny_app), _visitor(tiny_app)
    _last(b.submit(*SHORT_RUN, api_name="/unlearn"))  # b has a finished run to ask about
    long_job = a.submit(*LONG_RUN, api_name="/compare")
    _wait_for(lambda: _training(long_job))

    with pytest.raises(Exception) as refused:  # a's second heavy job: refused at once, not queued
        a.submit(2, 1.0, api_name="/influence").result(timeout=30)
    assert BUSY_MESSAGE.split(":")[0] in getattr(getattr(refused.value, "response", None), "text", "") \
        or BUSY_MESSAGE.split(":")[0] in str(refused.value)

    start = time.monotonic()  # b's short actions run while a's long job holds the heavy slot
    before, after = b.predict("Who is Harry's owl?", api_name="/generate")
    assert isinstance(before, str) and isinstance(after, str)
    b.predict(api_name="/report")
    assert time.monotonic() - start < 60
    assert not long_job.done()

    assert "Stop requested" in a.predict(api_name="/stop")
    final = _last(long_job)
    assert "Stopped" in final[0], final[0]
    _last(a.submit(*SHORT_RUN, api_name="/unlearn"))  # the slot is free again


def test_stop_ends_a_queued_job_and_keeps_the_previous_run(tiny_app):
    a, b = _visitor(tiny_app), _visitor(tiny_app)
    _last(b.submit(*SHORT_RUN, api_name="/unlearn"))
    first = json.loads(open(b.predict(api_name="/report")[0]).read())

    long_job = a.submit(*LONG_RUN, api_name="/compare")
    _wait_for(lambda: _training(long_job))
    queued = b.submit(*SHORT_RUN, api_name="/unlearn")  # waits behind a's job
    _wait_for(lambda: queued.status().code.name in ("IN_QUEUE", "SENDING_DATA", "JOINING_QUEUE") or queued.done(),
              30)
    time.sleep(1.0)
    status = queued.status()
    assert status.rank is not None and status.rank >= 0  # the queue tells the visitor their place
    b.predict(api_name="/stop")  # pressed while b's job is still waiting
    a.predict(api_name="/stop")
    _last(long_job)
    final = _last(queued, 120)
    assert "Stopped" in final[0] and "while waiting in the queue" in final[0], final[0]
    again = json.loads(open(b.predict(api_name="/report")[0]).read())
    assert again["losses"] == first["losses"]  # the stopped job did not take b's finished run away


def test_release_memory_gives_freed_buffers_back():
    import torch

    release_memory()
    base = rss_bytes()
    blocks = [torch.ones(2**20) for _ in range(200)]  # ~800 MB in many small-ish buffers
    assert rss_bytes() - base > 500 * 2**20
    del blocks
    release_memory()
    assert rss_bytes() - base < 200 * 2**20


def test_a_failed_job_frees_the_visitors_place_when_the_page_sees_the_error(monkeypatch):
    """Gradio sends a failed job's error, then awaits its analytics summary in a worker thread before it drops the job
    from its running ones; on a loaded machine that takes seconds (here made 2 s). The visitor's next heavy job,
    started on seeing the error, is accepted (queued behind the failed one's last moments), not refused as busy."""
    import gradio as gr
    from gradio import queueing

    from grin_ui.slots import HEAVY, FairBlocks

    summary = queueing.Queue.compute_analytics_summary

    def slow_summary(self, records):
        time.sleep(2.0)
        return summary(self, records)

    monkeypatch.setattr(queueing.Queue, "compute_analytics_summary", slow_summary)

    def fail():
        raise gr.Error("no unlearned model yet")

    with FairBlocks() as demo:
        out = gr.Textbox()
        gr.Button("a").click(fail, None, out, api_name="fail", concurrency_id=HEAVY, concurrency_limit=1)
        gr.Button("b").click(lambda: "ran", None, out, api_name="work", concurrency_id=HEAVY, concurrency_limit=1)
    demo.queue(default_concurrency_limit=1).launch(prevent_thread_lock=True, quiet=True)
    try:
        client = gradio_client.Client(demo.local_url, verbose=False)
        for _ in range(2):
            with pytest.raises(Exception, match="no unlearned model yet"):
                client.predict(api_name="/fail")
            assert client.predict(api_name="/work") == "ran"
    finally:
        demo.close()
