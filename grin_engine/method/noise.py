"""Selective noise (DESIGN.md §2.6): w <- w + N(0, sigma^2) for the selected weights only.

Why noise: the selected weights are the ones that carry the forget set; shaking them before fine-tuning moves the
model away from the sharp minimum that memorised the facts, so the unlearning loss has less to undo (GRIN §3).
"""

from __future__ import annotations

import math

import torch

from ..models import input_device
from .influence import gradient_hooks
from .losses import mean_nll


def inject_noise(params: dict[str, torch.nn.Parameter], masks: dict[str, torch.Tensor], sigma2: float,
                 seed: int) -> int:
    """Add Gaussian noise of variance sigma2 to the weights where mask is True; return how many weights moved.

    The noise comes from one generator per device seeded with `seed`, drawn weight by weight in the order of
    `params` (the model's order, whatever the order of `masks`), so the same seed and mask give the same numbers.
    Weights outside the mask are not written at all.
    """
    if sigma2 == 0:
        return 0
    std = math.sqrt(sigma2)
    generators: dict[torch.device, torch.Generator] = {}
    moved = 0
    with torch.no_grad():
        for name in [name for name in params if name in masks]:
            param, mask = params[name], masks[name]
            index = mask.reshape(-1).nonzero().squeeze(1)
            if index.numel() == 0:
                continue
            if param.device not in generators:
                generators[param.device] = torch.Generator(device=param.device).manual_seed(seed)
            noise = torch.randn(index.numel(), generator=generators[param.device], device=param.device,
                                dtype=torch.float32) * std
            flat = param.view(-1)
            flat.index_copy_(0, index, (flat[index].float() + noise).to(param.dtype))
            moved += index.numel()
    return moved


def selected_gradient_norm(model, batch: dict, masks: dict[str, torch.Tensor]) -> float:
    """||grad NLL_f||_2 over the selected weights: the norm of the gradient of the forget answers' token-mean NLL
    (`losses.mean_nll` on `batch`), counting only the entries where the mask is True.

    Measured before and after the noise, it answers the GRIN paper's open question in numbers: a model that has
    memorised its forget set sits where that gradient is small (a converged minimum), and unlearning starts from
    it; if the noise helps by undoing vanishing gradients, the norm after the noise is clearly larger. Each weight's
    full gradient is reduced to its selected entries' squared sum the moment backward forms it, and dropped."""
    squares: dict[torch.device, torch.Tensor] = {}  # summed on each weight's device, read once per device

    def keep_selected(name: str, grad: torch.Tensor) -> None:
        square = (grad.float().square() * masks[name]).sum()
        squares[grad.device] = squares[grad.device] + square if grad.device in squares else square

    device = input_device(model)
    with gradient_hooks(model, list(masks), keep_selected):
        mean_nll(model, {k: v.to(device) for k, v in batch.items() if torch.is_tensor(v)}).backward()
    return math.sqrt(sum(float(total) for total in squares.values()))
