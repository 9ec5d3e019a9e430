"""The server's budget for model-sized work, and a queue that is fair to visitors.

Every event that costs a model copy runs in one of two Gradio concurrency groups (the event options below):
- HEAVY (influence, unlearn, compare): `caps.heavy_jobs` at a time server-wide (1 by default); each holds one copy
  of the model with its gradients for minutes;
- LIGHT (Ask with an unlearned model, weights download): one at a time; each holds one copy for seconds.
So memory is bounded by the base model + HEAVY copies + one LIGHT copy, whatever the number of visitors, and a short
action never waits behind a long one. Everything else (select, report, stop, presets) uses no model copy and has
its own group. Gradio's queue shows each waiting visitor their place and an estimate.

`FairBlocks` adds the rule Gradio lacks: a visitor has at most one heavy job queued or running (a second one is
refused at once, with a message), and an accepted job's Stop flag is cleared when it is queued, not when it starts,
so a Stop pressed while the job waits ends it the moment it starts. A job the visitor cancels, or whose tab closes,
leaves Gradio's queue (Gradio removes a closed session's events) and so frees the visitor's slot. A job counts until
its final message is sent to the page, not until Gradio drops it from its running jobs: after a job that fails
(a gr.Error) Gradio sends the error, then awaits its analytics summary in a worker thread, and only then frees the
job's place; a visitor who started the next job on seeing the error was refused with BUSY_MESSAGE while nothing ran
(on a loaded machine that await takes seconds; a browser test clicking Run after such an error waited on an idle
server).

`release_memory()` hands freed buffers back to the system after each heavy job: glibc keeps freed memory in its
arenas, so without it RSS only grows from visitor to visitor even though no tensor is alive.
"""

from __future__ import annotations

import ctypes
import gc
import logging
import os

import gradio as gr
from gradio.server_messages import ProcessCompletedMessage

from .public import caps
from .state import stop_flag

HEAVY = "heavy"
LIGHT = "light"
# The options of each kind of event: long jobs share HEAVY, short ones that copy the model share LIGHT, loading a
# model has its own line, and Stop is never queued behind anything; so a short action never waits behind a long one.
MODEL_JOB = {"concurrency_id": HEAVY, "concurrency_limit": caps().heavy_jobs}
SHORT_JOB = {"concurrency_id": LIGHT, "concurrency_limit": 1}
LOAD_JOB = {"concurrency_id": "load", "concurrency_limit": 1}
STOP_JOB = {"concurrency_id": "stop", "concurrency_limit": None}
BUSY_MESSAGE = ("You already have a job queued or running (influence, unlearn or compare): wait for it to finish, or "
                "press Stop, then start the next one.")
log = logging.getLogger("grin_ui")

try:
    _LIBC = ctypes.CDLL("libc.so.6")
except OSError:  # not glibc (macOS, musl): nothing to trim
    _LIBC = None


def release_memory() -> None:
    """Collect garbage and return the freed heap to the system (glibc's malloc_trim)."""
    gc.collect()
    if _LIBC is not None:
        try:
            _LIBC.malloc_trim(0)
        except AttributeError:
            pass


def rss_bytes() -> int:
    """This process's resident memory (Linux), for logs and the soak test."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return 0


def heavy_jobs_of(queue, session_hash: str) -> int:
    """The visitor's heavy events, queued or running, as Gradio's own queue knows them; a running one whose final
    message has gone to the page (`completed`, set by FairBlocks) no longer counts."""
    queued = queue.event_queue_per_concurrency_id.get(HEAVY)
    n = sum(1 for event in (queued.queue if queued else []) if event.session_hash == session_hash)
    for job_set in queue.active_jobs or []:
        n += sum(1 for event in (job_set or []) if event.session_hash == session_hash and event.concurrency_id == HEAVY
                 and event.alive and not getattr(event, "completed", False))
    return n


class FairBlocks(gr.Blocks):
    """gr.Blocks whose queue takes at most one heavy job per visitor (see the module docstring)."""

    def queue(self, *args, **kwargs):
        super().queue(*args, **kwargs)
        queue = self._queue
        push = queue.push

        async def fair_push(body, request, username):
            fn = self.fns.get(body.fn_index) if body.fn_index is not None else None
            if fn is not None and fn.concurrency_id == HEAVY and body.session_hash:
                if heavy_jobs_of(queue, body.session_hash):
                    return False, BUSY_MESSAGE, "error"
                stop_flag(body.session_hash).clear()  # a Stop from now on is meant for this job
            return await push(body, request, username)

        send = queue.send_message

        def send_and_mark(event, message):
            if isinstance(message, ProcessCompletedMessage):  # the page has the job's outcome: its place is free
                event.completed = True
            send(event, message)

        queue.push = fair_push
        queue.send_message = send_and_mark
        return self
