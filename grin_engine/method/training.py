"""The one training loop of the engine: masked unlearning (unlearn.py), GRUN's edits (grun.py), TOFU's fine-tuning
(benchmarks/tofu.py) and the relearning attack (attacks/relearn.py) all step through `train_loop`.

    for each step:  stop asked? -> loss = step_loss(step) -> finite? -> backward -> clip -> optimiser step
                    -> after_update() -> report (stage, step, steps, loss) -> until(step)? stop early

Each caller brings what differs: how a step's loss is formed (`step_loss`), which tensors train (`leaves`, handed to
its optimiser), and what happens after the optimiser step (`after_update`: masked unlearning writes the trained
entries back into the weights). The checks are here, once: a loss that is nan or inf ends training with a GrinError
before it is applied, the gradient norm of the leaves is clipped, the user's Stop is honoured between steps.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from ..errors import GrinError
from ..events import Progress, as_progress
from .losses import Terms


@dataclass
class TrainResult:
    losses: list[float] = field(default_factory=list)  # one per step taken
    steps_done: int = 0
    stopped: bool = False  # True when the user's Stop ended training early
    trainable: int = 0  # number of values that could move
    until_step: int | None = None  # the step after which the until-check said the target holds (None: it never did)
    until: dict | None = None  # the until-check's own report (evaluation/until.ForgetCheck.report), when one ran
    seconds: float = 0.0
    state: object = None  # masked unlearning trained in pieces: where it stands (method/unlearn.TrainingState)
    noise: dict | None = None  # masked unlearning: the selected weights' gradient norm before and after the noise


def train_loop(step_loss, leaves: list[torch.Tensor], optimizer, steps: int, max_grad_norm: float,
               progress: Progress | None = None, stage: str = "unlearn", after_update=None, until=None,
               what: str = "unlearning", hint: str = "a smaller learning rate", first_step: int = 0,
               last_step: int | None = None) -> TrainResult:
    """`steps` optimiser steps (see the module docstring); returns the losses and how training ended.

    A loss given as `losses.Terms` is backpropagated term by term (one backward per forward pass; the gradients add
    up to the sum's), so a pass's weight gradients are complete before the next pass's are formed. Gradients of
    `leaves` are clipped to a total norm of max_grad_norm (0: no clipping). The stop is checked before each step, so
    a Stop takes effect within one step; progress.update(stage, step, steps, loss) follows each step.
    `until(step) -> bool` (evaluation/until.ForgetCheck) is asked after each step; True ends training there.
    Training in pieces runs steps first_step + 1 ... last_step of `steps` (numbered as in one piece, so batches,
    reports and until-checks fall on the same steps); steps_done counts from the start.
    """
    progress = as_progress(progress)
    result = TrainResult(trainable=sum(leaf.numel() for leaf in leaves), steps_done=first_step)
    for step in range(first_step, steps if last_step is None else min(last_step, steps)):
        if progress.stop_requested():
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
        progress.update(stage, step + 1, steps, value)
        if until is not None and until(step + 1):
            result.until_step = step + 1
            break
    optimizer.zero_grad(set_to_none=True)
    return result
