"""Quantisation: rounding the weights to 8 or 4 bits can undo an unlearning update smaller than the rounding step
(Zhang et al., arXiv 2410.16454). Our own round-to-nearest, and round trips through the `gguf` package's formats."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..evaluation.evaluate import shown_answers
from ..method.influence import candidate_parameters
from ..method.patch import WeightPatch, unlearned_copy
from .base import AttackResult, Context, _answers, _baseline, _values



def rtn_round_trip(weight: torch.Tensor, bits: int, group_size: int = 32) -> torch.Tensor:
    """Round-to-nearest, symmetric, group-wise: quantise and dequantise each row in groups of `group_size`.

        d = bf16(max |w| over the group / qmax),   q = clamp(round(w / d), -qmax, qmax),   w' = q * d
        qmax = 2^(bits-1) - 1 (127 at 8 bits, 7 at 4 bits)

    This is GGUF's Q8_0 / Q4_0 recipe (absmax scale per block of 32), except that the scale is rounded to bfloat16
    (8 significant bits) instead of float16: q * d is then exact in float32, so a second round trip returns the same
    tensor bit for bit, and the error is at most d / 2 per weight (tests/test_attacks.py checks both).
    """
    qmax = 2 ** (bits - 1) - 1
    shape, width = weight.shape, weight.shape[-1]
    rows = weight.detach().float().reshape(-1, width)
    pad = (-width) % group_size
    if pad:
        rows = F.pad(rows, (0, pad))
    groups = rows.reshape(rows.shape[0], -1, group_size)
    scale = (groups.abs().amax(-1, keepdim=True) / qmax).to(torch.bfloat16).float()
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))  # an all-zero group stays zero
    q = (groups / safe).round().clamp(-qmax, qmax)
    out = (q * scale).reshape(rows.shape[0], -1)[:, :width]
    return out.reshape(shape).to(weight.dtype)


def gguf_round_trip(weight: torch.Tensor, qtype: str) -> torch.Tensor | None:
    """Quantise and dequantise with the `gguf` package's own quantisers (llama.cpp's reference arithmetic in
    numpy); rows are GGUF's rows (the input dimension). None when the row length is not a multiple of the block."""
    import numpy as np
    from gguf import GGMLQuantizationType, quants
    from gguf.constants import GGML_QUANT_SIZES

    kind = GGMLQuantizationType[qtype]
    block = GGML_QUANT_SIZES[kind][0]
    if weight.shape[-1] % block:
        return None
    data = weight.detach().float().cpu().numpy().astype(np.float32)
    out = quants.dequantize(quants.quantize(data, kind), kind)
    return torch.from_numpy(np.ascontiguousarray(out)).reshape(weight.shape).to(weight.device, weight.dtype)


QUANTISERS = {  # attack name -> (weight -> dequantised weight or None, description)
    "quant8": (lambda w, gs: rtn_round_trip(w, 8, gs), "8-bit round-to-nearest, absmax scale per group"),
    "quant4": (lambda w, gs: rtn_round_trip(w, 4, gs), "4-bit round-to-nearest, absmax scale per group"),
    "gguf_q8_0": (lambda w, gs: gguf_round_trip(w, "Q8_0"), "GGUF Q8_0 round trip (gguf package)"),
    "gguf_q4_0": (lambda w, gs: gguf_round_trip(w, "Q4_0"), "GGUF Q4_0 round trip (gguf package)"),
    "gguf_q4_1": (lambda w, gs: gguf_round_trip(w, "Q4_1"), "GGUF Q4_1 round trip: the default model's own format"),
}


def quantise_model(model, quantise, base_model=None, patch: WeightPatch | None = None, on_batch=None) -> dict:
    """Replace every candidate weight (the 2-D weights of the transformer blocks) by its round trip, in place.

    With `base_model` and a WeightPatch, also count for the patched weights how many of the entries the run changed
    still differ from the base after both are quantised the same way ("the change survives"). Returns
    {"quantised", "skipped" (weights a format cannot hold), "changed", "survived", "survival"}.
    """
    params = dict(model.named_parameters())
    base_params = dict(base_model.named_parameters()) if base_model is not None else {}
    patched = set(patch.entries) if isinstance(patch, WeightPatch) else set()
    names = list(candidate_parameters(model))
    quantised, skipped, changed, survived = 0, [], 0, 0
    with torch.no_grad():
        for i, name in enumerate(names):
            weight = params[name]
            new = quantise(weight)
            if new is None:
                skipped.append(name)
                continue
            if name in patched and name in base_params:
                base_w = base_params[name]
                moved = weight != base_w
                after_base = quantise(base_w)
                changed += int(moved.sum())
                survived += int((moved & (new != after_base)).sum())
            weight.copy_(new)
            quantised += 1
            if on_batch is not None:
                on_batch(i + 1, len(names))
    return {"quantised": quantised, "skipped": skipped, "changed": changed if patched else None,
            "survived": survived if patched else None,
            "survival": (survived / changed) if patched and changed else None}


def _quantisation(name: str):
    quantise_fn, _ = QUANTISERS[name]

    def attack(ctx: Context) -> AttackResult:
        work = unlearned_copy(ctx.base, ctx.unlearned.patch)
        survival = quantise_model(work.model, lambda w: quantise_fn(w, ctx.acfg.group_size), ctx.base.model,
                                  ctx.unlearned.patch, on_batch=ctx.on_batch)
        result = AttackResult(name, ctx.unlearned.method, details=survival)
        for split, items in (("forget", ctx.forget), ("retain", ctx.retain)):
            evaluation = ctx.evaluate(work, items, split)
            result.metrics[split] = _values(evaluation)
            result.baseline[split] = _baseline(ctx.unlearned, split)
            if split == "forget":
                result.answers = _answers([it.question for it in items], ctx.unlearned.answers("forget"),
                                          shown_answers(evaluation))
        return result
    attack.__doc__ = f"{QUANTISERS[name][1]} of every 2-D weight of the transformer blocks, then evaluate."
    return attack



ATTACKS = {name: (_quantisation(name), text) for name, (_, text) in QUANTISERS.items()}
