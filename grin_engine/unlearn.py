"""Masked fine-tuning (DESIGN.md §2.7): train only the selected weights with an unlearning loss.

The trick that keeps every other weight bit-identical: the optimiser never sees the full weight matrices. For each
weight matrix with selected entries we gather those entries into a small float32 vector (`TrainableSlice.values`),
hand that vector to AdamW, and after each step write it back into the selected positions only. AdamW's decoupled
weight decay therefore only ever touches selected weights (masking just the gradient would not be enough: weight
decay would still shrink the others), and the optimiser state is the size of the selection, not of the model.

Memory: a hook on each such weight takes its full-size gradient the moment autograd has completed it, keeps the
selected entries and drops the rest; losses of two forward passes come as `losses.Terms` and are backpropagated one
pass at a time, so one weight's full gradient exists at a time (DESIGN.md §5a, memory of masked unlearning).

With no mask (the plain-unlearning baseline) every candidate weight trains as an ordinary parameter.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from .config import GrinConfig, GrinError
from .losses import Terms, answer_logprob, get_loss
from .models import input_device


@dataclass
class TrainableSlice:
    param: torch.nn.Parameter
    index: torch.Tensor | None  # flat positions of the selected entries; None = the whole weight trains
    values: torch.Tensor  # the leaf the optimiser updates (the selected entries, or the parameter itself)

    def load_gradient(self):
        """Move the weight's gradient onto the leaf (only the selected entries, added to what the leaf holds) and
        drop the weight's full-size gradient."""
        if self.index is None:
            return
        grad, self.param.grad = self.param.grad, None
        if grad is None:
            return
        entries = grad.reshape(-1)[self.index].float()
        self.values.grad = entries if self.values.grad is None else self.values.grad + entries

    def write_back(self):
        """Copy the updated entries into the weight; nothing else in it is written."""
        if self.index is not None:
            self.param.view(-1).index_copy_(0, self.index, self.values.detach().to(self.param.dtype))


def trainable_slices(params: dict[str, torch.nn.Parameter], names: list[str],
                     masks: dict[str, torch.Tensor] | None) -> list[TrainableSlice]:
    """One slice per weight that will train; weights without a selected entry get no gradient at all."""
    slices = []
    for name in names:
        param = params[name]
        if masks is None:
            param.requires_grad_(True)
            slices.append(TrainableSlice(param, None, param))
            continue
        index = masks[name].reshape(-1).nonzero().squeeze(1)
        if index.numel() == 0:
            continue
        param.requires_grad_(True)
        values = param.detach().reshape(-1)[index].float().clone().requires_grad_(True)
        slices.append(TrainableSlice(param, index, values))
    return slices


@dataclass
class UnlearnResult:
    losses: list[float] = field(default_factory=list)
    steps_done: int = 0
    stopped: bool = False  # True when the cancel flag stopped the run early
    trainable: int = 0  # number of weights that could move
    until_step: int | None = None  # the step after which the until-check said the target holds (None: it never did)


def attach_reference(model, forget_batches: list[dict]) -> None:
    """Cache log pi_ref(y|x) of the current (pre-unlearning) model on each forget batch and its refusal sub-batch."""
    device = input_device(model)
    with torch.no_grad():
        for batch in forget_batches:
            for part in (batch, batch.get("idk")):
                if part is not None:
                    tensors = {k: v.to(device) for k, v in part.items() if k != "idk" and torch.is_tensor(v)}
                    part["ref_logp"] = answer_logprob(model, tensors).detach()


def move_batch(batch: dict, device) -> dict:
    """The batch (and its sub-batches) on `device`."""
    return {k: (move_batch(v, device) if isinstance(v, dict) else v.to(device)) for k, v in batch.items()}


def train_loop(step_loss, leaves: list[torch.Tensor], optimizer, steps: int, max_grad_norm: float, on_step=None,
               should_stop=None, after_update=None, what: str = "unlearning",
               hint: str = "a smaller learning rate", until=None) -> UnlearnResult:
    """The one optimisation loop of the engine (masked unlearning here, GRUN in grun.py), `steps` steps of:

        should_stop()? -> loss = step_loss(step) -> finite? -> backward -> clip the gradient norm of `leaves` to
        max_grad_norm (0: no clipping) -> optimizer step -> after_update() -> on_step(...)

    A loss given as `losses.Terms` is backpropagated term by term (one backward per forward pass; the gradients add
    up to the sum's), so a pass's weight gradients are complete before the next pass's are formed.

    `should_stop()` is checked before each step, so a cancel takes effect within one step. A loss that is nan or
    inf ends the loop with a GrinError before it is applied (the model is left as after the last good step).
    """
    result = UnlearnResult(trainable=sum(leaf.numel() for leaf in leaves))
    for step in range(steps):
        if should_stop is not None and should_stop():
            result.stopped = True
            break
        loss = step_loss(step)
        value = loss.item()
        if not math.isfinite(value):
            raise GrinError(f"{what} stopped at step {step + 1}: the loss became {value} (try {hint})")
        optimizer.zero_grad(set_to_none=True)
        for term in (loss if isinstance(loss, Terms) else (loss,)):
            term.backward()
        if max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(leaves, max_grad_norm)
        optimizer.step()
        if after_update is not None:
            after_update()
        result.losses.append(value)
        result.steps_done = step + 1
        if on_step is not None:
            on_step(step + 1, steps, value)
        if until is not None and until(step + 1):  # the until-check (until.ForgetCheck): the target holds, stop
            result.until_step = step + 1
            break
    optimizer.zero_grad(set_to_none=True)
    return result


def unlearn(model, forget_batches: list[dict], retain_batches: list[dict], cfg: GrinConfig, names: list[str],
            masks: dict[str, torch.Tensor] | None, on_step=None, should_stop=None, until=None) -> UnlearnResult:
    """Run cfg.steps optimiser steps of cfg.method on the weights in `names` (only the masked entries if masks).

    Batches cycle in order: step t uses forget batch t mod F and retain batch t mod R. `on_step(step, steps, loss)`
    is called after each step; `should_stop()` is checked before each step, so a cancel takes effect within one step.
    A loss that is nan or inf stops the run with a GrinError (the model is then left as after the last good step).
    `until(step) -> bool` (until.ForgetCheck) is asked after each step; True ends training there (result.until_step).
    """
    loss_fn = get_loss(cfg.method)
    device = input_device(model)
    params = dict(model.named_parameters())
    for param in model.parameters():
        param.requires_grad_(False)
    slices = trainable_slices(params, names, masks)
    if not slices:
        return UnlearnResult()
    leaves = [s.values for s in slices]
    optimizer = torch.optim.AdamW(leaves, lr=cfg.lr, weight_decay=cfg.weight_decay)

    def step_loss(step):
        forget = move_batch(forget_batches[step % len(forget_batches)], device)
        retain = move_batch(retain_batches[step % len(retain_batches)], device)
        return loss_fn(model, forget, retain, cfg)

    @torch.no_grad()
    def write_back():  # the updated entries into the weights; nothing else in them is written
        for s in slices:
            s.write_back()

    # each selected weight's gradient goes onto its leaf inside backward, as soon as autograd has formed it
    handles = [s.param.register_post_accumulate_grad_hook(lambda param, s=s: s.load_gradient())
               for s in slices if s.index is not None]
    try:
        return train_loop(step_loss, leaves, optimizer, cfg.steps, cfg.max_grad_norm, on_step, should_stop,
                          after_update=write_back, hint="a smaller learning rate or sigma2", until=until)
    finally:
        for handle in handles:
            handle.remove()
        for param in model.parameters():
            param.requires_grad_(False)
            param.grad = None
