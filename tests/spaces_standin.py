"""A stand-in for Hugging Face's `spaces` package, strict where ZeroGPU is strict, and a visitor's flow through the
app started as a ZeroGPU Space would start it. tests/test_space.py runs this file in a fresh process:

    python tests/spaces_standin.py OUT_JSON MODEL_FOLDER [--no-preload]

What ZeroGPU does (hub docs, spaces-zerogpu.md; the `spaces` package): the main process only emulates CUDA, in
its main thread, until the app launches; then the weights moved to "cuda" are packed for the GPU workers, and every
`spaces.GPU` function runs in a worker process that gets its arguments and sends its results pickled. So:
- `GPU(duration=...)` records each call and the seconds it asks for (a callable is called with the call's own
  arguments, as ZeroGPU does), pickles the arguments and every result or yielded message both ways, and marks the
  call's thread, and the threads it starts, as being on the GPU;
- a model load (grin_engine.models.load_model) or a device move (torch.nn.Module.to / .cuda with a device) made in
  any other thread than the main one outside such a call fails, and is recorded as a violation.
Then the app is imported with SPACE_ID set (so it preloads its models, as on a Space) and a visitor goes through
Load -> Influence -> Unlearn -> Ask -> Attack -> Sweep with gradio_client. The calls, their durations and the
violations are written to OUT_JSON. --no-preload starts the app as it was before it preloaded its models, so that
the test sees the stand-in catch the load a visitor's Load then makes in a request thread.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import json
import os
import pickle
import socket
import sys
import threading
import types
from pathlib import Path

CALLS: list[tuple[str, int]] = []  # (function, seconds asked for)
VIOLATIONS: list[str] = []
_STATE = threading.local()


def on_gpu() -> bool:
    return getattr(_STATE, "gpu", False)


@contextlib.contextmanager
def gpu_thread():
    was, _STATE.gpu = on_gpu(), True
    try:
        yield
    finally:
        _STATE.gpu = was


def _through_a_process(value):
    """What a worker process would get or send: the value pickled and read back."""
    return pickle.loads(pickle.dumps(value))


def GPU(duration=60):  # noqa: N802 (the real package's name)
    def decorate(fn):
        @functools.wraps(fn)
        def call(*args, **kwargs):
            seconds = duration(*args, **kwargs) if callable(duration) else duration
            CALLS.append((fn.__name__, int(seconds)))
            args, kwargs = _through_a_process((args, kwargs))
            if inspect.isgeneratorfunction(fn):
                return _messages(fn(*args, **kwargs))
            with gpu_thread():
                return _through_a_process(fn(*args, **kwargs))
        return call
    return decorate


def _messages(generator):
    while True:
        with gpu_thread():
            try:
                message = next(generator)
            except StopIteration:
                return
        yield _through_a_process(message)


def _guard(what: str) -> None:
    if threading.current_thread() is not threading.main_thread() and not on_gpu():
        VIOLATIONS.append(f"{what} in thread {threading.current_thread().name!r}")
        raise RuntimeError(f"stand-in ZeroGPU: {what} outside a spaces.GPU call")


def install() -> types.ModuleType:
    """Put the stand-in in sys.modules as `spaces` and arm the guards (before the app is imported)."""
    import torch

    module = types.ModuleType("spaces")
    module.GPU = GPU
    sys.modules["spaces"] = module

    start_thread, run_thread = threading.Thread.__init__, threading.Thread.run

    def thread_init(self, *args, **kwargs):
        start_thread(self, *args, **kwargs)
        self._standin_gpu = on_gpu()  # a thread started inside a GPU call works on the GPU too

    def thread_run(self):
        _STATE.gpu = getattr(self, "_standin_gpu", False)
        run_thread(self)

    threading.Thread.__init__, threading.Thread.run = thread_init, thread_run

    move, cuda = torch.nn.Module.to, torch.nn.Module.cuda

    def guarded_to(self, *args, **kwargs):
        if kwargs.get("device") is not None or any(isinstance(a, (str, torch.device)) for a in args):
            _guard(f"{type(self).__name__}.to({args}, {kwargs})")
        return move(self, *args, **kwargs)

    def guarded_cuda(self, *args, **kwargs):
        _guard(f"{type(self).__name__}.cuda()")
        return cuda(self, *args, **kwargs)

    torch.nn.Module.to, torch.nn.Module.cuda = guarded_to, guarded_cuda

    import grin_engine.models as models
    import grin_ui.state as state

    load = models.load_model

    def guarded_load(spec, *args, **kwargs):
        _guard(f"load_model({spec.name!r})")
        return load(spec, *args, **kwargs)

    models.load_model = state.load_model = guarded_load
    return module


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def visit(url: str, source: str, name: str) -> dict:
    """Load -> Influence -> Unlearn -> Ask -> Attack -> Sweep, as a visitor scripts it: what each step showed."""
    from gradio_client import Client

    from grin_ui.tabs.attack import TARGETS

    client = Client(url, verbose=False)
    seen = {}
    seen["load"] = client.predict(source, name, "harry_potter", "", None, "general_knowledge", "", None,
                                  api_name="/load")[2]
    seen["influence"] = client.submit(4, 1.0, api_name="/influence").result(timeout=600)[0]
    # loss, p %, sigma2, lr, steps, alpha, beta, seed, mask, max items
    unlearn = client.submit("graddiff", 1.0, "1e-6", 5e-4, 5, 1.0, None, 0, True, 4, api_name="/unlearn")
    seen["unlearn"] = str(unlearn.result(timeout=600)[0])
    seen["ask"] = client.predict("Who is the headmaster of Hogwarts?", api_name="/generate")
    attack = client.submit(TARGETS[0], ["quant8", "prefix"], 10, 5e-5, 2, "keyword accuracy", api_name="/attack")
    seen["attack"] = str(attack.result(timeout=600)[0])
    # methods, p %, sigma2, seeds, target, until, forget metric, retain metric, loss, lr, steps, alpha, beta, items
    sweep = client.submit(["grin", "random"], "1", "1e-6", "0", "forget_keyword_accuracy<=0.25", False,
                          "forget_keyword_accuracy", "retain_keyword_accuracy", "graddiff", 5e-4, 2, 1.0, None, 4,
                          api_name="/sweep")
    seen["sweep"] = str(sweep.result(timeout=600)[0])
    return seen


def main(out: str, folder: str, preload: bool = True) -> None:
    os.environ["SPACE_ID"] = "grin/studio-test"  # a Space: public mode, preloaded models
    os.environ["GRIN_MODELS"] = folder
    os.environ["GRIN_ALLOW_LOCAL_MODELS"] = "1"
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    root = Path(__file__).resolve().parents[1]
    sys.path.insert(0, str(root))
    install()  # before the app: app.py imports `spaces` first, as on ZeroGPU
    import importlib.util

    if not preload:
        import grin_ui

        grin_ui.preload_models = lambda: ()

    spec = importlib.util.spec_from_file_location("app", root / "app.py")
    app = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(app)  # preloads the model in this, the main thread
    port = _free_port()
    app.demo.queue(default_concurrency_limit=1).launch(prevent_thread_lock=True, server_port=port, quiet=True,
                                                       **app.launch_kwargs())
    seen, error = {}, None
    try:
        # no preload: "default", which the visitor's Load would fetch in its request thread
        seen = visit(f"http://127.0.0.1:{port}/", *(("local folder", folder) if preload else ("default", "")))
    except Exception as exc:  # the test reports it with what was recorded so far
        error = f"{type(exc).__name__}: {exc}"
    finally:
        app.demo.close()
    Path(out).write_text(json.dumps({"calls": CALLS, "violations": VIOLATIONS, "seen": seen, "error": error}))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], preload="--no-preload" not in sys.argv[3:])
