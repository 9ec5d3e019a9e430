"""Configuration: three small dataclasses, validated when they are built.

UI values and CLI flags become these objects; the engine's functions take them as arguments.
A bad value raises `GrinError` with a one-line message meant for the person who typed it.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from .errors import GrinError  # noqa: F401  (defined apart so that losses/data raise it without importing config)
from .limits import MAX_MODEL_NAME_CHARS


# The widest ranges any run accepts (CLI and app; the public Space narrows them, grin_ui/public.py). Past these a
# value is a typo or an attack, not an experiment: float32 overflows beyond ~3e38, torch seeds are 64-bit, and a
# million steps on the smallest model take weeks.
RANGES = {
    "p": (0.0, 1.0), "sigma2": (0.0, 1.0), "lr": (0.0, 10.0), "steps": (1, 1_000_000), "batch_size": (1, 4096),
    "max_length": (8, 32_768), "max_new_tokens": (1, 4096), "alpha": (0.0, 1e6), "gamma": (0.0, 1e6),
    "weight_decay": (0.0, 1e3), "eps": (0.0, 1.0), "max_grad_norm": (0.0, 1e6), "delta": (-1e6, 1e6),
    "seed": (0, 2**32 - 1), "grun_rank": (1, 1024), "grun_gate_weight": (0.0, 1e6), "grun_lr": (0.0, 10.0),
    "grun_steps": (1, 1_000_000), "beta": (0.0, 1e6), "max_items": (1, 1_000_000),
}
LABELS = {"lr": "learning rate", "grun_lr": "grun learning rate"}  # how a message names a field, where not as is
INTEGERS = {"steps", "batch_size", "max_length", "max_new_tokens", "seed", "grun_rank", "grun_steps", "max_items"}


def as_number(value, name: str, integer: bool | None = None):
    """`value` (a number, or text holding one, as a web form or a script may send) as an int or float, checked
    for type, finiteness and RANGES[name]; else GrinError naming the field. Shared by the CLI and the app."""
    integer = name in INTEGERS if integer is None else integer
    label = LABELS.get(name, name)
    if isinstance(value, str):
        text = value.strip()
        try:
            value = float(text) if len(text) <= 64 else None
        except ValueError:
            value = None
        if value is None:
            raise GrinError(f"{label} must be a number, got {text[:40]!r}")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise GrinError(f"{label} must be a number, got {type(value).__name__}")
    if isinstance(value, float) and not math.isfinite(value):
        raise GrinError(f"{label} must be a finite number, got {value}")
    if integer:
        if value != int(value):
            raise GrinError(f"{label} must be a whole number, got {value}")
        value = int(value)
    low, high = RANGES.get(name, (-math.inf, math.inf))
    if not low <= value <= high:
        raise GrinError(f"{label} must be between {_show(low)} and {_show(high)}, got {_show(value)}")
    return value


def _show(x) -> str:
    """A number as a person reads it: 4,294,967,295 (int), 1e+30 (float)."""
    return f"{x:,}" if isinstance(x, int) and abs(x) < 10**15 else f"{x:g}"


@dataclass
class ModelSpec:
    name: str = "default"  # "default" (packaged SmolLM2-135M-Instruct), a Hub id, or a local folder
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps
    dtype: str = "auto"  # auto (bf16 on GPU, fp32 on CPU) | float32 | bfloat16 | float16
    # Spread the model over several devices with accelerate (docs/SERVING.md, beyond one GPU): None (all on `device`),
    # "auto" | "balanced" | "balanced_low_0" | "sequential", or an explicit {module name: device} map
    device_map: str | dict | None = None
    max_memory: dict | None = None  # with device_map: {device index or "cpu": "70GiB" or bytes}

    def __post_init__(self):
        if self.name is not None and not isinstance(self.name, str):
            raise GrinError(f"model: the name must be text, got {type(self.name).__name__}")
        self.name = (self.name or "").strip()
        if not self.name:
            raise GrinError("model: give 'default', a Hugging Face Hub id or a local folder")
        if len(self.name) > MAX_MODEL_NAME_CHARS:
            raise GrinError(f"model: a name of {len(self.name):,} characters is neither a Hub id nor a folder "
                            f"(at most {MAX_MODEL_NAME_CHARS})")
        if any(ord(ch) < 32 or ord(ch) == 127 for ch in self.name):
            raise GrinError("model: the name holds control characters (a line break?)")
        device = str(self.device).strip().lower()
        if device not in ("auto", "cpu", "cuda", "mps") and not (device.startswith("cuda:") and device[5:].isdigit()):
            raise GrinError(f"device: unknown device {self.device!r}; use auto, cpu, cuda, cuda:N or mps")
        self.device = device
        if self.dtype not in ("auto", "float32", "bfloat16", "float16"):
            raise GrinError(f"dtype: unknown dtype {self.dtype!r}; use auto, float32, bfloat16 or float16")
        if isinstance(self.device_map, str) and self.device_map not in DEVICE_MAPS:
            raise GrinError(f"device map: unknown {self.device_map!r}; use {', '.join(DEVICE_MAPS)} or a dict")
        if self.device_map is not None and not isinstance(self.device_map, (str, dict)):
            raise GrinError(f"device map: give {', '.join(DEVICE_MAPS)} or a dict, got {self.device_map!r}")
        if self.max_memory is not None and (not isinstance(self.max_memory, dict) or self.device_map is None):
            raise GrinError("max memory: give a {device: size} map, together with a device map (e.g. auto)")


DEVICE_MAPS = ("auto", "balanced", "balanced_low_0", "sequential")  # accelerate's placement strategies


@dataclass
class DataSpec:
    forget: str = "harry_potter"  # a built-in set name, a file path, or "tofu:<config>" (Hub)
    retain: str = "general_knowledge"
    max_items: int | None = None  # keep at most this many items of each set (None: all)

    def __post_init__(self):
        if not str(self.forget).strip():
            raise GrinError("forget set: give a built-in name, a file or tofu:<config>")
        if not str(self.retain).strip():
            raise GrinError("retain set: give a built-in name, a file or tofu:<config>")
        if self.max_items is not None:
            self.max_items = as_number(self.max_items, "max_items")


# The default stop rule of `run` and the app's Unlearn tab: stop once the forget set's keyword accuracy is at most 0.25.
# Chosen on the built-in sets and three look-alike pairs (docs/RESULTS.md, "Defaults that hold"): against a fixed 20
# steps it kept the held-out facts on the built-in sets and cut the looping answers there; it is no library default
# (GrinConfig.until stays None) because sweeps and comparisons compare runs at equal step counts.
STOP_ONCE_FORGOTTEN = "forget_keyword_accuracy<=0.25"


@dataclass
class GrinConfig:
    """Everything that decides what one unlearning run does (DESIGN.md §2)."""

    loss: str = "graddiff"  # the unlearning loss: a name in method/losses.LOSSES
    p: float = 0.01  # fraction of candidate weights selected, in (0, 1]
    sigma2: float = 1e-6  # variance of the Gaussian noise added to the selected weights
    use_mask: bool = True  # False: plain unlearning baseline (all candidates train, no noise)
    lr: float = 5e-4
    steps: int = 20
    batch_size: int = 8
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0
    alpha: float = 1.0  # weight of the retain term
    gamma: float | None = None  # weight of the forget term; None: the loss's (1.0; simnpo 0.125, open-unlearning's)
    beta: float | None = None  # None: the loss's default (npo/dpo 0.1, simnpo 4.5)
    delta: float = 0.0  # simnpo margin
    eps: float = 1e-8  # in the influence score |G_f| / (|G_r| + eps)
    include_embeddings: bool = False  # also consider the token embeddings (and a tied LM head)
    include_lm_head: bool = False  # also consider an untied LM head
    seed: int = 0
    max_length: int = 256  # tokens per training example (prompt + answer)
    max_new_tokens: int = 48  # generation length for evaluation
    label_layout: str = "answer_eos"  # which tokens carry labels: answer_eos (ours) | chat_turn (open-unlearning's)
    grad_mean: str = "token"  # influence gradient: token-mean over the set (token) | mean of per-item means (item)
    ref_before_noise: bool = False  # NPO/DPO pi_ref: False = the model after the noise (ours), True = before (theirs)
    # GRUN (grun.py): gated representation edits instead of weight changes; steps, alpha, beta as above
    grun_loss: str = "idk"  # GRUN's unlearning loss (a name in LOSSES); see method/grun.train_grun for why idk
    grun_layers: list[int] | None = None  # decoder layers to edit; None: three spread over the upper half
    grun_rank: int = 4
    grun_gate: str = "linear"  # "linear" or "mlp"
    grun_gate_weight: float = 3.0  # weight of the gate's BCE term
    grun_lr: float = 1e-2  # the edits are new, small modules: they take a larger step than pretrained weights
    # The gate learns a classifier from scratch, so GRUN takes more steps; its steps are cheaper (no weight
    # gradients), so 40 of them cost about the time of GRIN's 20 (measured on CPU: 95 s against 84 s).
    grun_steps: int = 40
    # Unlearn until forgotten (evaluation/until.py): stop training once the forget set meets this target, checked every
    # until_every steps; cfg.steps (grun_steps) is then the most steps. None: always the full step count.
    until: str | None = None
    until_every: int = 2

    def __post_init__(self):
        from .method.losses import get_loss  # late: losses imports torch, config stays light (losses imports no
        #                                      config: the registry checks the name, nothing imports back)

        get_loss(self.loss)  # the one check of a loss name (raises GrinError listing the valid ones)
        get_loss(self.grun_loss)
        for name in ("p", "sigma2", "lr", "steps", "batch_size", "max_length", "max_new_tokens", "alpha",
                     "weight_decay", "eps", "max_grad_norm", "delta", "seed", "grun_rank", "grun_gate_weight", "grun_lr",
                     "grun_steps"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise GrinError(f"{name} must be a number, got {value!r}")
            label = LABELS.get(name, name)
            if not math.isfinite(value):
                raise GrinError(f"{label} must be a finite number, got {value!r}")
            low, high = RANGES[name]
            if value > high:
                raise GrinError(f"{label} must be at most {_show(high)}, got {_show(value)}")
            if name == "seed" and value < low:
                raise GrinError(f"seed must be between 0 and {_show(high)}, got {_show(value)}")
        if not (math.isfinite(self.p) and 0 < self.p <= 1):
            raise GrinError(f"p must be a fraction in (0, 1], got {self.p!r} (1% is 0.01)")
        if not (math.isfinite(self.sigma2) and self.sigma2 >= 0):
            raise GrinError(f"sigma2 (noise variance) must be >= 0, got {self.sigma2!r}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise GrinError(f"learning rate must be > 0, got {self.lr!r}")
        for name in ("steps", "batch_size", "max_length", "max_new_tokens", "grun_steps"):
            if int(getattr(self, name)) < 1:
                raise GrinError(f"{name} must be at least 1, got {getattr(self, name)!r}")
        if not (math.isfinite(self.eps) and self.eps > 0):
            raise GrinError(f"eps must be > 0 (it keeps |G_f| / (|G_r| + eps) finite), got {self.eps!r}")
        if self.gamma is not None and (isinstance(self.gamma, bool) or not isinstance(self.gamma, (int, float))):
            raise GrinError(f"gamma must be a number, got {self.gamma!r}")
        for name in ("alpha", "weight_decay", "max_grad_norm") + (("gamma",) if self.gamma is not None else ()):
            if not (math.isfinite(getattr(self, name)) and getattr(self, name) >= 0):
                raise GrinError(f"{name} must be >= 0, got {getattr(self, name)!r}")
        from .data import LABEL_LAYOUTS  # late import, as above

        if self.label_layout not in LABEL_LAYOUTS:
            raise GrinError(f"label layout must be one of {', '.join(LABEL_LAYOUTS)}, got {self.label_layout!r}")
        if self.grad_mean not in ("token", "item"):
            raise GrinError(f"grad mean must be 'token' or 'item', got {self.grad_mean!r}")
        if self.grun_gate not in ("linear", "mlp"):
            raise GrinError(f"grun gate must be 'linear' or 'mlp', got {self.grun_gate!r}")
        if int(self.grun_rank) < 1:
            raise GrinError(f"grun rank must be at least 1, got {self.grun_rank!r}")
        if not (math.isfinite(self.grun_lr) and self.grun_lr > 0):
            raise GrinError(f"grun learning rate must be > 0, got {self.grun_lr!r}")
        if not (math.isfinite(self.grun_gate_weight) and self.grun_gate_weight >= 0):
            raise GrinError(f"grun gate weight must be >= 0, got {self.grun_gate_weight!r}")
        if self.grun_layers is not None and (not self.grun_layers or not all(
                isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in self.grun_layers)):
            raise GrinError(f"grun layers must be a list of layer numbers (0, 1, ...), got {self.grun_layers!r}")
        if self.beta is not None and not (isinstance(self.beta, (int, float)) and math.isfinite(self.beta)
                                          and 0 < self.beta <= RANGES["beta"][1]):
            raise GrinError(f"beta must be > 0 and at most {RANGES['beta'][1]:g}, got {self.beta!r}")
        if isinstance(self.seed, float):
            if self.seed != int(self.seed):
                raise GrinError(f"seed must be a whole number, got {self.seed!r}")
            self.seed = int(self.seed)
        if self.until is not None:
            from .targets import parse_conditions

            if any(t.split != "forget" for t in parse_conditions(self.until).targets):
                raise GrinError(f"until checks the forget set only; got {self.until!r}")
            if isinstance(self.until_every, bool) or not isinstance(self.until_every, int) or self.until_every < 1:
                raise GrinError(f"until_every must be a whole number of steps >= 1, got {self.until_every!r}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "GrinConfig":
        """The config of a report's "config" section, also one written before the loss was called `loss` (then
        `method` and `grun_method`); keys this version does not know are left out."""
        renamed = {OLD_NAMES.get(k, k): v for k, v in values.items()}
        return cls(**{k: v for k, v in renamed.items() if k in cls.__dataclass_fields__})


OLD_NAMES = {"method": "loss", "grun_method": "grun_loss"}  # report keys of earlier versions -> today's fields
