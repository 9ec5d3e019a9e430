"""What the app remembers: the shared base model (one for everybody), each visitor's Session, and Stop flags.

The base model is loaded once and only read: influence scores and runs work on copies (the engine copies).
A Session lives in a visitor's gr.State; it holds plain CPU results only: items, score histograms and the last run,
whose `patch` (the selected weights' new values, ~12 MB at p = 1%) rebuilds the unlearned model on demand for the
Compare tab's own prompts and the weights download. No model copy is kept per visitor.
"""

from __future__ import annotations

import hashlib
import atexit
import os
import shutil
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path

from grin_engine.config import GrinError, ModelSpec, as_number
from grin_engine.data import QAItem
from grin_engine.limits import user_path
from grin_engine.models import LoadedModel, load_model


def local_models_allowed() -> bool:
    """Local model folders are off unless the server owner sets GRIN_ALLOW_LOCAL_MODELS=1."""
    return os.environ.get("GRIN_ALLOW_LOCAL_MODELS", "") == "1"


def check_model_name(name: str) -> str:
    """The model name to load, or GrinError: a local folder only where the server allows it."""
    if not isinstance(name, (str, type(None))):
        raise GrinError(f"model: the name must be text, got {type(name).__name__}")
    name = (name or "").strip()
    if not name:
        raise GrinError("model: give 'default' or a Hugging Face Hub id such as HuggingFaceTB/SmolLM2-135M-Instruct")
    name = ModelSpec(name).name  # length and characters, before any file system call
    if name != "default" and not local_models_allowed():
        looks_local = name.startswith((".", "/", "~", "\\")) or user_path(name).exists()
        if looks_local:
            raise GrinError("model: local folders are disabled on this server; give a Hugging Face Hub id "
                            "(the server owner can allow folders with GRIN_ALLOW_LOCAL_MODELS=1)")
    return name


class ModelStore:
    """The one shared base model. Loading another model replaces it (one model in memory at a time)."""

    def __init__(self):
        self._lock = threading.Lock()
        self._current: LoadedModel | None = None

    def get(self, name: str) -> LoadedModel:
        with self._lock:
            if self._current is None or self._current.name != name:
                # the new model loads first: a name that fails to load leaves everybody's model in place
                self._current = load_model(ModelSpec(name))
            return self._current


STORE = ModelStore()


@dataclass
class Session:
    """One visitor's work, all CPU data (safe to return from a ZeroGPU worker)."""
    model_name: str | None = None
    forget: list[QAItem] = field(default_factory=list)
    retain: list[QAItem] = field(default_factory=list)
    sources: tuple[str, str] = ("", "")  # what the forget / retain sets were loaded from (for the report)
    hist: object = None  # score_summary.ScoreHistograms of the last influence computation
    hist_key: tuple | None = None  # (model name, items used) the histograms belong to
    influence_s: float | None = None
    run: object = None  # pipeline.RunResult of the last run (its patch = what it changed)
    comparison: object = None  # compare.Comparison of the last Compare-methods run (no patches)
    before_key: tuple | None = None  # the base-model evaluation is reused while model, items and lengths stay
    before: dict | None = None
    files: str | None = None  # the visitor's download folder (one file of each kind, replaced; deleted with us)

    def require_loaded(self) -> None:
        if self.model_name is None or not self.forget or not self.retain:
            raise GrinError("nothing loaded yet: choose a model and the forget and retain sets in Setup, then Load")

    def items(self, max_items: int | None) -> tuple[list[QAItem], list[QAItem]]:
        n = as_number(max_items, "max items per set", integer=True) if max_items not in (None, "") else None
        if n is not None and n < 1:
            raise GrinError(f"max items per set must be at least 1, got {max_items}")
        return self.forget[:n], self.retain[:n]


def delete_session(value) -> None:
    """gr.State's delete_callback: the session's download folder goes with it (its memory goes with the object)."""
    if isinstance(value, Session) and value.files:
        shutil.rmtree(value.files, ignore_errors=True)


def session_of(value) -> Session:
    """The visitor's Session (a new one on their first event)."""
    return value if isinstance(value, Session) else Session()


class StopFlag:
    """A visitor's Stop request. Its state is a file, so that a ZeroGPU worker process sees the Stop pressed in the
    main process (an in-memory flag would not cross the process boundary). Picklable: it is just a path."""

    def __init__(self, path: str):
        self.path = path

    def set(self) -> None:
        Path(self.path).touch()

    def clear(self) -> None:
        Path(self.path).unlink(missing_ok=True)

    def is_set(self) -> bool:
        return os.path.exists(self.path)


_STOP_DIR = Path(tempfile.gettempdir()) / f"grin_stop_{os.getpid()}"  # this server's flags only
atexit.register(shutil.rmtree, _STOP_DIR, ignore_errors=True)  # a flag lives from Stop to its job's end; all go here


def stop_flag(session_hash: str | None) -> StopFlag:
    """The Stop flag of one browser session (gr.Request.session_hash). It lives outside gr.State because the Stop
    event must reach the flag while the run's generator is still holding the state."""
    _STOP_DIR.mkdir(exist_ok=True)
    key = hashlib.sha256((session_hash or "-").encode()).hexdigest()[:32]  # a safe file name for any hash
    return StopFlag(str(_STOP_DIR / key))
