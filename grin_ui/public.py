"""Public mode: the caps a server open to anybody needs, and the one place that checks them (docs/SERVING.md lists them).

Public mode is on when GRIN_PUBLIC=1, and on a Hugging Face Space (SPACE_ID is set) unless GRIN_PUBLIC=0. Locally
the app keeps its freedom; the caps that hold everywhere (prompt length in tokens, item fields, file size, number
ranges) live in the engine (grin_engine/limits.py, config.py) and apply here too.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace

from grin_engine.config import GrinConfig
from grin_engine.errors import GrinError
from grin_engine.runs.sweep import point_config

from .state import STORE


@dataclass(frozen=True)
class Caps:
    public: bool
    models: tuple[str, ...] | None  # names a visitor may load (None: any default / Hub id / allowed folder)
    max_items: int  # items of each set a run uses
    max_steps: int  # GRIN's (and the baselines') training steps
    max_grun_steps: int
    lr: tuple[float, float]  # learning rate range, GRIN's
    grun_lr: tuple[float, float]
    max_p: float  # fraction of candidate weights (the patch a visitor keeps grows with it)
    max_new_tokens: int
    upload_bytes: int  # one uploaded data file
    upload_items: int  # items in one uploaded file
    question_chars: int  # the Ask box (longer is refused at once; the engine also cuts prompts to tokens)
    heavy_jobs: int  # influence / unlearn / compare jobs running at once, server-wide (each holds a model copy)
    patch_bytes: int | None  # the largest run patch a visitor's session keeps (None: any)
    session_ttl_s: int  # a session is dropped this long after its last change (a closed tab: Gradio keeps it 1 h)
    methods: int  # methods in one Compare-methods run
    sweep_points: int  # points of one Sweep grid (each costs about one Unlearn run)
    attack_samples: int  # sampled answers per question in the sampling attack
    tofu: bool  # may a visitor run the TOFU protocol (it fine-tunes two models: tens of minutes on a CPU)


LOCAL = Caps(public=False, models=None, max_items=1_000_000, max_steps=1_000_000, max_grun_steps=1_000_000,
             lr=(0.0, 10.0), grun_lr=(0.0, 10.0), max_p=1.0, max_new_tokens=4096, upload_bytes=64 * 1024 * 1024,
             upload_items=100_000, question_chars=2_000, heavy_jobs=1, patch_bytes=None, session_ttl_s=6 * 3600,
             methods=8, sweep_points=100_000, attack_samples=64, tofu=True)
# Public mode's run caps are chosen so that each indivisible part of the work (one Compare method's run, one Sweep
# point, one attack) fits one ZeroGPU call (grin_ui/gpu.CALL_SECONDS) on the largest model a Space offers at the
# largest items, steps and answers allowed here, until-checks aside (tests/test_public.py computes it).
PUBLIC = Caps(public=True,
              models=("default", "HuggingFaceTB/SmolLM2-135M-Instruct", "HuggingFaceTB/SmolLM2-360M-Instruct"),
              max_items=32, max_steps=60, max_grun_steps=60, lr=(1e-7, 1e-2), grun_lr=(1e-5, 1e-1), max_p=0.10,
              max_new_tokens=64, upload_bytes=1024 * 1024, upload_items=2_000, question_chars=1_000, heavy_jobs=1,
              patch_bytes=64 * 1024 * 1024, session_ttl_s=1800, methods=6, sweep_points=12, attack_samples=8,
              tofu=False)


def public_mode() -> bool:
    flag = os.environ.get("GRIN_PUBLIC", "").strip()
    if flag in ("0", "1"):
        return flag == "1"
    return bool(os.environ.get("SPACE_ID"))  # a Hugging Face Space


def caps() -> Caps:
    """The caps in force; where the server preloaded its models (a Space), those are the models it offers."""
    limits = PUBLIC if public_mode() else LOCAL
    offered = STORE.offered()
    return replace(limits, models=offered) if offered else limits


def check_model(name: str, limits: Caps) -> None:
    if limits.models is not None and name not in limits.models:
        raise GrinError(f"model: this public server offers {', '.join(limits.models)}; run GRIN Studio locally "
                        f"for other models")


def check_upload(path: str, limits: Caps) -> None:
    """An uploaded file's size, before it is read."""
    size = os.path.getsize(path)
    if size > limits.upload_bytes:
        raise GrinError(f"upload: {os.path.basename(path)} is {size / 1e6:.1f} MB; this server reads files of at "
                        f"most {limits.upload_bytes / 1e6:.1f} MB")


def check_item_count(n: int, which: str, limits: Caps) -> None:
    if n > limits.upload_items:
        raise GrinError(f"{which} set: {n:,} items; this server reads at most {limits.upload_items:,} per set")


def check_run(cfg: GrinConfig, n_items: int | None, limits: Caps, grun: bool = False) -> None:
    """A run's settings within the caps (the engine's config already checked type, finiteness and range)."""
    if n_items is not None and n_items > limits.max_items:
        raise GrinError(f"max items: {n_items} per set; this server runs at most {limits.max_items}")
    if cfg.steps > limits.max_steps:
        raise GrinError(f"steps: {cfg.steps}; this server runs at most {limits.max_steps}")
    if grun and cfg.grun_steps > limits.max_grun_steps:
        raise GrinError(f"GRUN steps: {cfg.grun_steps}; this server runs at most {limits.max_grun_steps}")
    if not limits.lr[0] <= cfg.lr <= limits.lr[1]:
        raise GrinError(f"learning rate: {cfg.lr:g}; this server accepts {limits.lr[0]:g} to {limits.lr[1]:g}")
    if grun and not limits.grun_lr[0] <= cfg.grun_lr <= limits.grun_lr[1]:
        raise GrinError(f"GRUN learning rate: {cfg.grun_lr:g}; this server accepts {limits.grun_lr[0]:g} to "
                        f"{limits.grun_lr[1]:g}")
    if cfg.p > limits.max_p:
        raise GrinError(f"p: {100 * cfg.p:g}%; this server selects at most {100 * limits.max_p:g}%")
    if cfg.max_new_tokens > limits.max_new_tokens:
        raise GrinError(f"max new tokens: {cfg.max_new_tokens}; this server generates at most "
                        f"{limits.max_new_tokens}")


def check_question(text: str, limits: Caps) -> str:
    """The Ask box's question: refused at once above the cap (never tokenised), else stripped."""
    if not isinstance(text, str):
        raise GrinError(f"question: give text, got {type(text).__name__}")
    if len(text) > limits.question_chars:
        raise GrinError(f"question: {len(text):,} characters; at most {limits.question_chars:,}")
    text = text.strip()
    if not text:
        raise GrinError("type a question first")
    return text


def patch_bytes(patch) -> int:
    """Bytes a run's patch holds (WeightPatch: positions and values; GrunState: its tensors)."""
    if patch is None:
        return 0
    tensors = [t for pair in patch.entries.values() for t in pair if t is not None] if hasattr(patch, "entries") \
        else list(getattr(patch, "tensors", {}).values())
    return sum(t.numel() * t.element_size() for t in tensors)


def describe(limits: Caps) -> str:
    """One Markdown line for the page: what this server allows."""
    if not limits.public:
        return ""
    return (f"<small>Public server: models {', '.join(limits.models)}; at most {limits.max_items} items per set, "
            f"{limits.max_steps} steps ({limits.max_grun_steps} for GRUN), learning rate {limits.lr[0]:g} to "
            f"{limits.lr[1]:g}, p up to {100 * limits.max_p:g}%, uploads up to {limits.upload_bytes // 1024} KB; "
            f"one long job per visitor at a time, {limits.heavy_jobs} at a time on the server.</small>")


def check_sweep(cfg: GrinConfig, points: list[dict], n_items: int | None, limits: Caps) -> None:
    """A Sweep grid within the caps: not too many points, and every point's run within check_run."""
    if len(points) > limits.sweep_points:
        raise GrinError(f"sweep: {len(points)} points; this server runs at most {limits.sweep_points} in one grid")
    for point in points:
        check_run(point_config(cfg, point), n_items, limits, grun=point["method"] == "grun")


def check_attack(relearn_steps: int, samples: int, limits: Caps) -> None:
    """Attack settings within the caps (relearning is a training run; sampling multiplies generation)."""
    if relearn_steps > limits.max_steps:
        raise GrinError(f"relearning steps: {relearn_steps}; this server runs at most {limits.max_steps}")
    if samples > limits.attack_samples:
        raise GrinError(f"samples: {samples} per question; this server draws at most {limits.attack_samples}")


def check_tofu(limits: Caps) -> None:
    if not limits.tofu:
        raise GrinError("the TOFU protocol fine-tunes two models (tens of minutes); this public server does not run "
                        "it. Open a report made with `python -m grin_engine tofu` instead, or run GRIN Studio locally")
