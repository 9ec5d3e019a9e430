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
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

from grin_engine.config import GrinConfig, ModelSpec, as_number
from grin_engine.data import QAItem
from grin_engine.errors import GrinError
from grin_engine.limits import user_path
from grin_engine.method.score_cache import evaluation_key, score_key
from grin_engine.models import DEFAULT_HUB_ID, LoadedModel, load_model, load_then_move


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
    """The shared base models, only ever read. Two ways to hold them:
    - locally, one model at a time, loaded when a visitor presses Load (loading another one replaces it);
    - on a Space, the models it offers, loaded once at start (`preload`, from app.py at import time) and only those:
      on ZeroGPU a model must be on "cuda" before the app launches, because the main process only emulates CUDA and
      `spaces` packs the weights for its GPU workers at launch (docs/SERVING.md, ZeroGPU).
    """

    def __init__(self):
        self._lock = threading.Lock()
        self._current: LoadedModel | None = None
        self._preloaded: dict[str, LoadedModel] = {}

    def preload(self, names: list[str]) -> None:
        """Load `names` now, each on the device it will run on (models.load_then_move); from then on they are the
        only models served. "default" is also served under its Hub id (the same weights)."""
        for name in names:
            loaded = load_then_move(name)
            self._preloaded[name] = loaded
            if name == "default":
                self._preloaded.setdefault(DEFAULT_HUB_ID, loaded)

    def offered(self) -> tuple[str, ...] | None:
        """The names of the preloaded models, or None when any model may be loaded on demand."""
        return tuple(self._preloaded) or None

    def loaded(self, name: str) -> LoadedModel | None:
        """The model `name` if it is in memory now, else None (never loads)."""
        if self._preloaded:
            return self._preloaded.get(name)
        current = self._current
        return current if current is not None and current.name == name else None

    def get(self, name: str, on_stage=None) -> LoadedModel:
        """The model `name`, loaded now if another one (or none) is loaded; on_stage(stage) reports the load.
        With preloaded models: one of them, or GrinError."""
        if self._preloaded:
            if name not in self._preloaded:
                raise GrinError(f"model: this server offers {', '.join(self._preloaded)}; run GRIN Studio locally "
                                "for other models")
            return self._preloaded[name]
        with self._lock:
            if self._current is None or self._current.name != name:
                # the new model loads first: a name that fails to load leaves everybody's model in place
                self._current = load_model(ModelSpec(name), on_stage=on_stage)
            return self._current


STORE = ModelStore()

# What a Space serves unless GRIN_MODELS (comma-separated names) says otherwise: the default model, and a bigger one
# of the same family for a second point on the size axis. Both fit ZeroGPU's memory many times over.
SPACE_MODELS = ("default", "HuggingFaceTB/SmolLM2-360M-Instruct")


def preload_models() -> tuple[str, ...]:
    """On a Hugging Face Space (SPACE_ID is set): load the models it serves now, in the calling thread (app.py calls
    this at import, as ZeroGPU requires); elsewhere nothing. Returns the names now served."""
    if not os.environ.get("SPACE_ID"):
        return ()
    names = [n.strip() for n in os.environ.get("GRIN_MODELS", "").split(",") if n.strip()] or list(SPACE_MODELS)
    STORE.preload([check_model_name(name) for name in names])
    return STORE.offered()


def model_token(name: str) -> str:
    """Names the loaded model object (not just its name): results of another model loaded under the same name, or
    of a model loaded again, never match."""
    return f"{name}@{id(STORE.get(name))}"


class SharedResults:
    """Results computed from the shared base model that every visitor may re-use, read-only (docs/SERVING.md: "what each
    visitor holds"): influence scores (score_cache.TopScores with the histograms) and the base model's evaluations.

    Bounded twice: the whole store keeps at most `max_bytes` (least recently used dropped first), and each owner (a
    visitor's session) pins at most `per_owner` entries: storing a new one drops the owner's oldest unless another
    visitor still pins it. Values are never changed after put(): they are shared.
    """

    def __init__(self, max_bytes: int, per_owner: int, size=lambda value: 0):
        self.max_bytes, self.per_owner, self._size = max_bytes, per_owner, size
        self._lock = threading.Lock()
        self._entries: OrderedDict[str, tuple[object, int, set]] = OrderedDict()  # key -> (value, bytes, owners)

    def get(self, key: str | None):
        with self._lock:
            if key not in self._entries:
                return None
            self._entries.move_to_end(key)
            return self._entries[key][0]

    def put(self, key: str, value, owner: str | None = None) -> None:
        size = self._size(value)
        with self._lock:
            old = self._entries.pop(key, None)
            owners = old[2] if old else set()
            if owner is not None:
                owners.add(owner)
                mine = [k for k, (_, _, o) in self._entries.items() if owner in o]
                for k in mine[:max(0, len(mine) - self.per_owner + 1)]:  # the owner's oldest, beyond its share
                    self._entries[k][2].discard(owner)
                    if not self._entries[k][2]:
                        del self._entries[k]
            if size > self.max_bytes:
                return  # larger than the whole store: computed, used once, not kept
            self._entries[key] = (value, size, owners)
            while sum(e[1] for e in self._entries.values()) > self.max_bytes:
                self._entries.popitem(last=False)

    def nbytes(self) -> int:
        with self._lock:
            return sum(e[1] for e in self._entries.values())

    def clear(self) -> None:
        """Forget everything (a fresh server; the tests start each module from one)."""
        with self._lock:
            self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)


def _score_bytes(value) -> int:
    top, hist = value  # hist: None when an Unlearn run computed the scores (the Influence tab makes its own)
    return top.nbytes() + (sum(c.nbytes for c in hist.counts.values()) if hist is not None else 0)


# Influence scores: 85 MB per score set of the default model (top 10%), so 1 GB holds about a dozen visitors' sets;
# GRIN_SCORE_CACHE_MB sets the bound (0: no cache). Each visitor pins one set, their latest.
SCORES = SharedResults(int(float(os.environ.get("GRIN_SCORE_CACHE_MB", "1024")) * 2**20), per_owner=1,
                       size=_score_bytes)
# The base model's answers and NLLs (kilobytes each; counted as 64 kB so that at most 1,024 are kept); a visitor pins
# the evaluations of their last two item sets (Unlearn and Compare may use different max items).
BEFORE = SharedResults(1024 * 2**16, per_owner=2, size=lambda value: 2**16)


def shared_inputs(model_name: str, forget, retain, cfg: GrinConfig) -> tuple[str, str, dict | None, object]:
    """The keys of these items' shared results and what the server holds for them: (evaluation key, score key,
    the base model's evaluation or None, the kept influence scores or None)."""
    token = model_token(model_name)
    before_key, key = evaluation_key(token, forget, retain, cfg), score_key(token, forget, retain, cfg)
    kept = SCORES.get(key)
    return before_key, key, BEFORE.get(before_key), kept[0] if kept else None


def owner(request) -> str | None:
    """Who pins a shared result (SharedResults): the browser session."""
    return getattr(request, "session_hash", None)


@dataclass
class Session:
    """One visitor's work, all CPU data (safe to return from a ZeroGPU worker)."""
    model_name: str | None = None
    forget: list[QAItem] = field(default_factory=list)
    retain: list[QAItem] = field(default_factory=list)
    sources: tuple[str, str] = ("", "")  # what the forget / retain sets were loaded from (for the report)
    hist: object = None  # score_summary.ScoreHistograms of the last influence computation
    influence_s: float | None = None
    run: object = None  # runs/pipeline.RunResult of the last run (its patch = what it changed)
    comparison: object = None  # runs/compare.Comparison of the last Compare-methods run
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
