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

from dataclasses import dataclass

import torch

from ..config import GrinConfig
from ..data import QAItem, forget_batches, qa_batches
from ..events import Progress
from ..models import input_device
from .losses import answer_logprob, get_loss
from .noise import inject_noise
from .training import TrainResult, train_loop


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


def unlearn(model, forget_batches: list[dict], retain_batches: list[dict], cfg: GrinConfig, names: list[str],
            masks: dict[str, torch.Tensor] | None, progress: Progress | None = None, until=None) -> TrainResult:
    """Run cfg.steps optimiser steps of cfg.loss on the weights in `names` (only the masked entries if masks).

    Batches cycle in order: step t uses forget batch t mod F and retain batch t mod R. Each step is reported as
    "unlearn" (with its loss); a Stop ends training before the next step. A loss that is nan or inf stops the run
    with a GrinError (the model is then left as after the last good step). `until(step) -> bool`
    (evaluation/until.ForgetCheck) is asked after each step; True ends training there (result.until_step).
    """
    loss_fn = get_loss(cfg.loss)
    device = input_device(model)
    params = dict(model.named_parameters())
    for param in model.parameters():
        param.requires_grad_(False)
    slices = trainable_slices(params, names, masks)
    if not slices:
        return TrainResult()
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
        return train_loop(step_loss, leaves, optimizer, cfg.steps, cfg.max_grad_norm, progress,
                          after_update=write_back, until=until, hint="a smaller learning rate or sigma2")
    finally:
        for handle in handles:
            handle.remove()
        for param in model.parameters():
            param.requires_grad_(False)
            param.grad = None


def unlearn_selected(model, tokenizer, forget: list[QAItem], retain: list[QAItem], cfg: GrinConfig, names: list[str],
                     masks: dict[str, torch.Tensor] | None, progress: Progress | None = None,
                     until=None) -> TrainResult:
    """GRIN's steps 3 and 4 on `model`: noise on the selected weights, then masked fine-tuning (masks=None: every
    weight in `names` trains, no noise: the plain-unlearning baseline)."""
    params = dict(model.named_parameters())
    f_batches = forget_batches(tokenizer, forget, cfg.batch_size, cfg.max_length, cfg.seed, cfg.label_layout)
    r_batches = qa_batches(tokenizer, retain, cfg.batch_size, cfg.max_length, cfg.label_layout)
    if cfg.ref_before_noise:
        attach_reference(model, f_batches)  # open-unlearning's pi_ref: the model before any change
    if masks is not None:
        inject_noise(params, masks, cfg.sigma2, cfg.seed)
    if not cfg.ref_before_noise:
        attach_reference(model, f_batches)  # ours: pi_ref = the model right before fine-tuning (after the noise)
    return unlearn(model, f_batches, r_batches, cfg, names, masks, progress, until=until)
