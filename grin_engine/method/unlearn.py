"""Masked fine-tuning (DESIGN.md §2.7): train only the selected weights with an unlearning loss.

The trick that keeps every other weight bit-identical: the optimiser never sees the full weight matrices. For each
weight matrix with selected entries we gather those entries into a small float32 vector (`TrainableSlice.values`),
hand that vector to AdamW, and after each step write it back into the selected positions only. AdamW's decoupled
weight decay therefore only ever touches selected weights (masking just the gradient would not be enough: weight
decay would still shrink the others), and the optimiser state is the size of the selection, not of the model.

Memory: a hook on each such weight takes its full-size gradient the moment autograd has completed it, keeps the
selected entries and drops the rest; losses of two forward passes come as `losses.Terms` and are backpropagated one
pass at a time, so one weight's full gradient exists at a time (DESIGN.md §5a, memory of masked unlearning).

With no mask (the plain-unlearning baseline) every candidate weight trains whole: a float32 weight as an ordinary
parameter, a bf16/fp16 one through float32 master values (`TrainableSlice`), so that small updates are not lost to
the weight's rounding.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..config import GrinConfig
from ..data import QAItem, forget_batches, qa_batches
from ..events import Progress
from ..models import input_device
from .losses import answer_logprob, get_loss
from .noise import inject_noise, selected_gradient_norm
from .training import TrainResult, train_loop


@dataclass
class TrainableSlice:
    """What the optimiser trains of one weight. Three kinds (DESIGN.md §2.7):
    - masked: `values` is a float32 copy of the selected entries (flat positions `index`);
    - whole, float32 weight: `values` is the weight itself (no copy; `index` None);
    - whole, bf16/fp16 weight: `values` is a float32 copy of every entry, the master values (`index` None).
      Updating a bf16 weight in place rounds it to bf16 at every step, so an update smaller than half an ulp
      (2^-9 to 2^-8 of the weight's magnitude) is lost, every step; the float32 master accumulates such updates,
      and the weight receives the master rounded, once per step.
    For a copy, a hook moves the weight's gradient onto the leaf (`load_gradient`) and `write_back` puts the
    updated values into the weight after each step (`train_slices`)."""
    param: torch.nn.Parameter
    index: torch.Tensor | None  # flat positions of the selected entries; None = every entry trains
    values: torch.Tensor  # the leaf the optimiser updates: a float32 copy (flat), or the parameter itself

    @property
    def copied(self) -> bool:
        """The leaf is a copy: gradients and updates must be carried between it and the weight."""
        return self.values is not self.param

    def load_gradient(self):
        """Move the weight's gradient onto the leaf (only the selected entries, added to what the leaf holds) and
        drop the weight's full-size gradient."""
        if not self.copied:
            return
        grad, self.param.grad = self.param.grad, None
        if grad is None:
            return
        flat = grad.reshape(-1)
        entries = (flat if self.index is None else flat[self.index]).float()
        self.values.grad = entries if self.values.grad is None else self.values.grad + entries

    def write_back(self):
        """Copy the updated values into the weight (cast to its dtype); nothing else in it is written."""
        if not self.copied:
            return
        values = self.values.detach().to(self.param.dtype)
        if self.index is None:
            self.param.view(-1).copy_(values)
        else:
            self.param.view(-1).index_copy_(0, self.index, values)


def trainable_slice(param: torch.nn.Parameter, index: torch.Tensor | None) -> TrainableSlice:
    """The slice of `param` that trains: the entries at `index`, or every entry (index None). A float32 weight
    trained whole is its own leaf; anything else trains through a float32 copy."""
    param.requires_grad_(True)
    if index is None and param.dtype == torch.float32:
        return TrainableSlice(param, None, param)
    flat = param.detach().reshape(-1)
    values = (flat if index is None else flat[index]).to(torch.float32, copy=True).requires_grad_(True)
    return TrainableSlice(param, index, values)


def trainable_slices(params: dict[str, torch.nn.Parameter], names: list[str],
                     masks: dict[str, torch.Tensor] | None) -> list[TrainableSlice]:
    """One slice per weight that will train (masks None: every weight in `names`, whole); weights without a
    selected entry get no gradient at all."""
    slices = []
    for name in names:
        index = None if masks is None else masks[name].reshape(-1).nonzero().squeeze(1)
        if index is None or index.numel() > 0:
            slices.append(trainable_slice(params[name], index))
    return slices


def train_slices(slices: list[TrainableSlice], step_loss, optimizer, steps: int, max_grad_norm: float,
                 progress: Progress | None = None, **loop_args) -> TrainResult:
    """`training.train_loop` over the slices' leaves (`optimizer` holds them): inside backward a hook moves each
    copied slice's weight gradient onto its leaf as soon as autograd has formed it, and after each optimiser step
    the updated values are written into the weights. loop_args go to train_loop (stage, until, what, hint, ...)."""
    @torch.no_grad()
    def write_back():
        for s in slices:
            s.write_back()

    handles = [s.param.register_post_accumulate_grad_hook(lambda param, s=s: s.load_gradient())
               for s in slices if s.copied]
    try:
        return train_loop(step_loss, [s.values for s in slices], optimizer, steps, max_grad_norm, progress,
                          after_update=write_back, **loop_args)
    finally:
        for handle in handles:
            handle.remove()


@dataclass
class TrainingState:
    """Masked unlearning between two pieces of training, as CPU data: a ZeroGPU Space trains in several GPU calls,
    each under its time limit, and what one call leaves the next must cross a process boundary. Resuming from it
    gives the numbers of one uninterrupted run: the trained values (noise included), AdamW's moments and step
    counts, pi_ref's log-probabilities as they were before the first step, and the until-check's history."""
    values: list[torch.Tensor]  # each trained slice's values, in trainable_slices' order
    optimizer: dict  # the optimiser's state_dict
    references: list[tuple]  # (ref_logp of a forget batch, of its refusal sub-batch), in batch order
    steps_done: int
    losses: list[float] = field(default_factory=list)
    until_history: list = field(default_factory=list)  # evaluation/until.ForgetCheck.history
    until_step: int | None = None  # the step where the until-check's target held (training is over)
    seconds: float = 0.0  # training time so far
    noise: dict | None = None  # the first piece's gradient norms before and after the noise (TrainResult.noise)

    @property
    def finished(self) -> bool:
        return self.until_step is not None


def _on_cpu(value):
    """A copy of `value` (tensors, nested in dicts, lists and tuples) with every tensor on the CPU."""
    if torch.is_tensor(value):
        return value.detach().to("cpu", copy=True)
    if isinstance(value, dict):
        return {k: _on_cpu(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_on_cpu(v) for v in value)
    return value


def attach_reference(model, forget_batches: list[dict]) -> None:
    """Cache log pi_ref(y|x) of the current (pre-unlearning) model on each forget batch and its refusal sub-batch.
    The cache travels with its batch (`move_batch`: to the input device); the losses bring it to the device of the
    policy's logits before comparing (`losses.log_ratio`), which on a split model is the last one."""
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
            masks: dict[str, torch.Tensor] | None, progress: Progress | None = None, until=None,
            resume: TrainingState | None = None, last_step: int | None = None) -> TrainResult:
    """Run cfg.steps optimiser steps of cfg.loss on the weights in `names` (only the masked entries if masks).

    Batches cycle in order: step t uses forget batch t mod F and retain batch t mod R. Each step is reported as
    "unlearn" (with its loss); a Stop ends training before the next step. A loss that is nan or inf stops the run
    with a GrinError (the model is then left as after the last good step). `until(step) -> bool`
    (evaluation/until.ForgetCheck) is asked after each step; True ends training there (result.until_step).

    In pieces: `last_step` pauses training after that step, and result.state (TrainingState) is where it stands;
    `resume` starts from such a state (its values written into the model first; the forget batches must carry
    their references already, see unlearn_selected).
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
    if resume is not None:
        with torch.no_grad():
            for s, values in zip(slices, resume.values):
                s.values.copy_(values)
                s.write_back()
        optimizer.load_state_dict(resume.optimizer)  # moves the moments onto each leaf's device

    def step_loss(step):
        forget = move_batch(forget_batches[step % len(forget_batches)], device)
        retain = move_batch(retain_batches[step % len(retain_batches)], device)
        return loss_fn(model, forget, retain, cfg)

    try:
        result = train_slices(slices, step_loss, optimizer, cfg.steps, cfg.max_grad_norm, progress, until=until,
                              hint="a smaller learning rate or sigma2",
                              first_step=resume.steps_done if resume else 0, last_step=last_step)
        if last_step is not None:
            result.state = TrainingState(
                values=[_on_cpu(s.values) for s in slices], optimizer=_on_cpu(optimizer.state_dict()),
                references=[_on_cpu((b.get("ref_logp"), b["idk"].get("ref_logp") if "idk" in b else None))
                            for b in forget_batches],
                steps_done=result.steps_done, losses=(resume.losses if resume else []) + result.losses,
                until_step=result.until_step)
        return result
    finally:
        for param in model.parameters():
            param.requires_grad_(False)
            param.grad = None


def unlearn_selected(model, tokenizer, forget: list[QAItem], retain: list[QAItem], cfg: GrinConfig, names: list[str],
                     masks: dict[str, torch.Tensor] | None, progress: Progress | None = None,
                     until=None, resume: TrainingState | None = None, last_step: int | None = None) -> TrainResult:
    """GRIN's steps 3 and 4 on `model`: noise on the selected weights, then masked fine-tuning (masks=None: every
    weight in `names` trains, no noise: the plain-unlearning baseline). `resume` / `last_step`: in pieces, as in
    `unlearn` (a resumed piece takes the noise and the references from the state, so it adds no noise again)."""
    params = dict(model.named_parameters())
    f_batches = forget_batches(tokenizer, forget, cfg.batch_size, cfg.max_length, cfg.seed, cfg.label_layout)
    r_batches = qa_batches(tokenizer, retain, cfg.batch_size, cfg.max_length, cfg.label_layout)
    if resume is not None:
        for batch, refs in zip(f_batches, resume.references):
            for part, ref in zip((batch, batch.get("idk")), refs):
                if ref is not None:
                    part["ref_logp"] = ref
        result = unlearn(model, f_batches, r_batches, cfg, names, masks, progress, until, resume, last_step)
        result.noise = resume.noise
        if result.state is not None:
            result.state.noise = resume.noise
        return result
    if cfg.ref_before_noise:
        attach_reference(model, f_batches)  # open-unlearning's pi_ref: the model before any change
    noise = None
    if masks is not None:
        # the gradient on the selected weights before and after the noise, on the first forget batch: does the
        # noise wake a vanished gradient (the GRIN paper's open question)? Two extra passes of one batch
        before = selected_gradient_norm(model, f_batches[0], masks)
        inject_noise(params, masks, cfg.sigma2, cfg.seed)
        noise = {"sigma2": cfg.sigma2, "grad_norm_before": before,
                 "grad_norm_after": selected_gradient_norm(model, f_batches[0], masks) if cfg.sigma2 else before}
    if not cfg.ref_before_noise:
        attach_reference(model, f_batches)  # ours: pi_ref = the model right before fine-tuning (after the noise)
    result = unlearn(model, f_batches, r_batches, cfg, names, masks, progress, until, last_step=last_step)
    result.noise = noise
    if result.state is not None:
        result.state.noise = noise
    return result
