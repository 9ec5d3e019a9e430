"""How every tab runs model work, and how its errors reach the page: one mechanism each.

`run_job` is the one job helper of the UI. A tab's handler hands it the model work (a gpu.*_work call, which
streams ("progress", ...) messages and ends with ("done", result), ("stopped", None) or ("error", GrinError)) and a
function that turns progress into a frame of the tab's outputs:

    result = yield from run_job(request, lambda stop: gpu.attack_work(..., stop), show_progress,
                                queued=("Stopped while waiting in the queue.", ...), stopped=("Stopped.", ...))
    if result is STOPPED:
        return  # the page already shows `queued` or `stopped`

It honours a Stop pressed while the job waited in Gradio's queue (the job then does not start), streams the
progress frames, raises a worker's error for `user_errors`, and in every case clears the visitor's Stop flag and
gives the freed memory back (slots.release_memory), also on a GPU.

`Job` runs engine work in a worker thread and hands its progress events to a generator (gpu._stream uses it). If
the generator is closed early (the visitor left, the event was cancelled) the Stop flag is set and the worker is
waited for, so the next job on the shared model never overlaps it.

`user_errors` wraps every handler: a GrinError (a visitor's mistake, worded for them) becomes gr.Error, any other
exception a one-line gr.Error (the traceback goes to the server log only).
"""

from __future__ import annotations

import functools
import inspect
import logging
import queue
import threading
import time

import gradio as gr

from grin_engine.errors import GrinError

from .slots import release_memory
from .state import stop_flag

log = logging.getLogger("grin_ui")
STOPPED = object()  # what run_job returns when the visitor's Stop ended the job (queued or running)
STOP_MESSAGE = "Stop requested: the job ends at its next step or batch; what it finished is kept."

_DONE = object()


class Job:
    def __init__(self, work, stop: threading.Event | None = None):
        self._events: queue.Queue = queue.Queue()
        self._stop = stop
        self._outcome: tuple = ()
        self.history: list[tuple] = []  # every event, in order (the loss curve needs all of them)
        self._thread = threading.Thread(target=self._main, args=(work,), daemon=True, name="grin-job")
        self._thread.start()

    def _main(self, work) -> None:
        try:
            self._outcome = ("ok", work(lambda *event: self._events.put(event)))
        except BaseException as exc:  # handed to the generator, which turns it into a gr.Error
            self._outcome = ("error", exc)
        self._events.put(_DONE)

    def updates(self, every: float = 0.4):
        """Yield the latest event, (stage, done, total, *extra), whenever something new arrived, at most every
        `every` seconds (the events in between are in `history`)."""
        latest = None
        last_yield, fresh = 0.0, False
        try:
            while True:
                try:
                    event = self._events.get(timeout=every)
                except queue.Empty:
                    event = None
                if event is _DONE:
                    break
                if event is not None:
                    self.history.append(event)
                    latest, fresh = event, True
                if fresh and time.monotonic() - last_yield >= every:
                    last_yield, fresh = time.monotonic(), False
                    yield latest
        finally:
            if self._thread.is_alive():  # closed early: ask the worker to stop and wait for it
                if self._stop is not None:
                    self._stop.set()
                self._thread.join(timeout=300)

    @property
    def result(self):
        kind, value = self._outcome
        if kind == "error":
            raise value
        return value


def run_job(request, start, show_progress, queued, stopped, starting=None):
    """Generator of the tab's frames; returns the work's result, or STOPPED. See the module docstring.

    start(stop) -> the gpu.*_work message stream; show_progress(event, losses, stop) -> a frame (None: nothing new
    to show), from the latest progress event (stage, done, total, *extra); `queued`: the frame saying the job was
    stopped while it waited in the queue (it never started); `stopped`: the frame saying the work ended on the
    visitor's Stop (None: the handler shows it); `starting`: a first frame for a job that does start (what it will
    do, how long it should take)."""
    stop = stop_flag(getattr(request, "session_hash", None))
    if stop.is_set():  # Stop was pressed while this job waited in the queue: it ends before it starts
        stop.clear()
        yield queued
        return STOPPED
    if starting is not None:
        yield starting
    try:
        for kind, *payload in start(stop):
            if kind == "progress":
                frame = show_progress(*payload, stop)
                if frame is not None:
                    yield frame
            elif kind == "error":
                raise payload[0]
            elif kind == "stopped":
                if stopped is not None:
                    yield stopped
                return STOPPED
            else:
                return payload[0]
        return STOPPED
    finally:
        stop.clear()
        release_memory()


def stop(request: gr.Request):
    """The Stop buttons: ask this visitor's job to stop (the engine checks before every step and batch)."""
    stop_flag(getattr(request, "session_hash", None)).set()
    return STOP_MESSAGE


def _to_gr_error(exc: Exception) -> gr.Error:
    if isinstance(exc, gr.Error):
        return exc
    if isinstance(exc, GrinError):
        return gr.Error(str(exc), print_exception=False)
    log.exception("unexpected error in a handler")
    first = (str(exc).strip().splitlines() or [""])[0][:300]
    return gr.Error(f"Unexpected {type(exc).__name__}: {first}", print_exception=False)


def user_errors(fn):
    """Wrap a handler (function or generator) so that only gr.Error reaches the page."""
    if inspect.isgeneratorfunction(fn):
        @functools.wraps(fn)
        def gen_wrapper(*args, **kwargs):
            try:
                yield from fn(*args, **kwargs)
            except Exception as exc:
                raise _to_gr_error(exc) from None
        return gen_wrapper

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except Exception as exc:
            raise _to_gr_error(exc) from None
    return wrapper
