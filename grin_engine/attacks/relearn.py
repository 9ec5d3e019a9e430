"""Relearning: a few steps of fine-tuning on related data bring "forgotten" answers back (Hu et al., arXiv
2406.13356; Deeb & Roger, arXiv 2410.08827). Half A of the forget set trains, half B (never seen by the attack) is
the test."""

from __future__ import annotations

import torch

from ..data import qa_batches
from ..events import Stopped
from ..method.patch import unlearned_copy
from ..method.unlearn import train_slices, trainable_slice
from .base import AttackResult, Context, _answers, _baseline, _values, split_halves
from ..evaluation.evaluate import shown_answers


def relearn(ctx: Context) -> AttackResult:
    """Fine-tune a copy of the unlearned model on half A of the forget set (all weights, small lr, k steps), then
    evaluate half B (never seen in the attack), half A, and the retain set."""
    a_idx, b_idx = split_halves(len(ctx.forget), ctx.cfg.seed)
    work = unlearned_copy(ctx.base, ctx.unlearned.patch)
    model = work.model
    params = list(model.parameters())
    # every weight trains; a bf16 / fp16 weight through float32 master values, as unlearning's own baselines do, so
    # the attack's small steps are not lost to rounding on a GPU
    slices = [trainable_slice(p, None) for p in params]
    batches = qa_batches(work.tokenizer, [ctx.forget[i] for i in a_idx], ctx.cfg.batch_size, ctx.cfg.max_length,
                         ctx.cfg.label_layout)
    model.train()
    try:  # token-mean cross-entropy on the answer tokens (labels are -100 elsewhere)
        trained = train_slices(slices, lambda step: model(**{k: v.to(work.device) for k, v in
                                                             batches[step % len(batches)].items()}).loss,
                               torch.optim.AdamW([s.values for s in slices], lr=ctx.acfg.relearn_lr, weight_decay=0.0),
                               ctx.acfg.relearn_steps, ctx.cfg.max_grad_norm, ctx.progress, stage=ctx.attack,
                               what="relearning", hint="a smaller relearning learning rate")
    finally:
        model.eval()
        for p in params:
            p.requires_grad_(False)
            p.grad = None
    if trained.stopped:
        raise Stopped
    losses = trained.losses
    result = AttackResult("relearn", ctx.unlearned.method)
    unlearned = ctx.unlearned.answers("forget")
    for group, idx in (("forget_B", b_idx), ("forget_A", a_idx)):
        evaluation = ctx.evaluate(work, [ctx.forget[i] for i in idx], "forget")
        result.metrics[group] = _values(evaluation)
        result.baseline[group] = _baseline(ctx.unlearned, "forget", idx)
        if group == "forget_B":
            result.answers = _answers([ctx.forget[i].question for i in idx], [unlearned[i] for i in idx],
                                      shown_answers(evaluation))
    result.metrics["retain"] = _values(ctx.evaluate(work, ctx.retain, "retain"))
    result.baseline["retain"] = _baseline(ctx.unlearned, "retain")
    result.details = {"A": a_idx, "B": b_idx, "steps": ctx.acfg.relearn_steps, "lr": ctx.acfg.relearn_lr,
                      "losses": losses}
    return result



ATTACKS = {"relearn": (relearn, "fine-tune on half A of the forget set, test half B")}
