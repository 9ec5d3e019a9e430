"""The weights a run changed, as a small CPU object: base + patch = the unlearned model.

A masked run changes only the selected entries (p of the candidates), so keeping just those entries and their
positions costs about 12 bytes per selected weight (12 MB at p = 1% of SmolLM2-135M) instead of a whole model copy.
That is what a web app keeps per visitor, and what a ZeroGPU worker process returns: CPU data, not a model.

The same object taken *before* a run (the original values of the entries the run will change) is what lets a run
train the base model in place and put it back exactly afterwards (`trained_in_place`, DESIGN.md §2.10).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from ..errors import GrinError
from ..models import LoadedModel, copy_model


@dataclass
class WeightPatch:
    # weight name -> (flat positions of the changed entries, or None for the whole weight; their new values), on CPU
    entries: dict[str, tuple[torch.Tensor | None, torch.Tensor]]

    def numel(self) -> int:
        return sum(values.numel() for _, values in self.entries.values())


def extract_patch(model, names: list[str], masks: dict[str, torch.Tensor] | None) -> WeightPatch:
    """The current values of the masked entries of the named weights (masks=None: the whole weights)."""
    params = dict(model.named_parameters())
    entries = {}
    with torch.no_grad():
        for name in names:
            flat = params[name].detach().reshape(-1)
            if masks is None:
                entries[name] = (None, flat.cpu().clone())
                continue
            index = masks[name].reshape(-1).nonzero().squeeze(1)
            if index.numel():
                entries[name] = (index.cpu(), flat[index].cpu().clone())
    return WeightPatch(entries)


def write_patch(model, patch: WeightPatch) -> None:
    """Write the patch's values into `model` itself, in place (each weight on its own device)."""
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, (index, values) in patch.entries.items():
            flat = params[name].view(-1)
            values = values.to(device=flat.device, dtype=flat.dtype)
            if index is None:
                flat.copy_(values)
            else:
                flat.index_copy_(0, index.to(flat.device), values)


def apply_patch(base: LoadedModel, patch: WeightPatch) -> LoadedModel:
    """A copy of the base with the patch written in; the base itself is not touched."""
    work = copy_model(base)
    write_patch(work.model, patch)
    return work


@contextlib.contextmanager
def trained_in_place(model, names: list[str], masks: dict[str, torch.Tensor] | None):
    """Inside this block the named weights (only their masked entries, if masks) may be changed in place; on leaving
    it, however it is left (normal end, Stop, a NaN loss, any exception), they get their original values back, bit
    for bit. The originals are kept as a WeightPatch on the CPU: p of the candidates for a masked run, the
    candidates themselves for an unmasked one (still no second model on the accelerator).

    This replaces a deep copy of the whole model for a run. Only use it where nobody else reads `model` meanwhile
    (the CLI; the app keeps copying, see grin_ui/gpu.py).
    """
    originals = extract_patch(model, names, masks)
    try:
        yield originals
    finally:
        write_patch(model, originals)


def unlearned_copy(base: LoadedModel, patch) -> LoadedModel:
    """The unlearned model from the base and a run's patch: a WeightPatch (GRIN and the weight baselines) written
    in, or a GrunState (GRUN) attached as hooks; either way on a copy, the base untouched."""
    from .grun import GrunState

    if isinstance(patch, GrunState):
        work = copy_model(base)
        patch.build().attach(work.model, work.tokenizer)
        return work
    return apply_patch(base, patch)


def save_patch(patch, path: str, model_name: str = "") -> str:
    """Write a run's patch to one .safetensors file (no pickle): a WeightPatch as "<weight>::index" (absent for a
    whole weight) and "<weight>::values" tensors, a GrunState with grun.save_grun. `load_patch` reads either."""
    from safetensors.torch import save_file

    from .grun import GrunState, save_grun

    if isinstance(patch, GrunState):
        return save_grun(patch, path, model_name)
    tensors = {}
    for name, (index, values) in patch.entries.items():
        if index is not None:
            tensors[f"{name}::index"] = index.contiguous()
        tensors[f"{name}::values"] = values.contiguous()
    save_file(tensors, str(path), metadata={"format": "pt", "written_by": "grin_engine.patch", "model": model_name})
    return str(path)


def load_patch(path: str):
    """The WeightPatch or GrunState written by save_patch (GrinError for any other file)."""
    from safetensors import SafetensorError, safe_open

    from .grun import load_grun

    try:
        with safe_open(str(path), framework="pt") as f:
            written_by = (f.metadata() or {}).get("written_by")
            if written_by == "grin_engine.grun":
                return load_grun(path)
            if written_by != "grin_engine.patch":
                raise GrinError(f"patch: {path} is not a patch written by grin_engine (run --save-patch)")
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (OSError, ValueError, SafetensorError) as exc:
        if isinstance(exc, GrinError):
            raise
        raise GrinError(f"patch: cannot read {path} ({str(exc).splitlines()[0] if str(exc) else exc})") from None
    entries = {}
    for key, values in tensors.items():
        name, _, part = key.rpartition("::")
        if part == "values":
            entries[name] = (tensors.get(f"{name}::index"), values)
    return WeightPatch(entries)
