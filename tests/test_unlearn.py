"""Tests for grin_engine.method.unlearn: only selected weights move (weight decay included), callbacks, cancel, the NaN
guard and determinism."""

from __future__ import annotations

import pytest
import torch

from grin_engine.method import losses
from grin_engine.method import unlearn as unlearn_module
from grin_engine.config import GrinConfig, GrinError
from grin_engine.data import forget_batches, qa_batches
from grin_engine.method.influence import candidate_parameters
from grin_engine.method.selection import random_selection
from grin_engine.method.training import train_loop
from grin_engine.method.unlearn import attach_reference, unlearn
from grin_engine.events import Progress

from conftest import tiny_llama


MAX_LENGTH = 64


def _setup(tokenizer, forget_items, retain_items, seed=0, batch_size=2):
    model = tiny_llama(len(tokenizer), seed=seed)
    f_batches = forget_batches(tokenizer, forget_items, batch_size, MAX_LENGTH, seed=0)
    r_batches = qa_batches(tokenizer, retain_items, batch_size, MAX_LENGTH)
    attach_reference(model, f_batches)
    return model, f_batches, r_batches, candidate_parameters(model)


def _masks(model, candidates, p=0.1, seed=0):
    masks = random_selection(candidates, dict(model.named_parameters()), p, seed=seed).masks
    # one candidate with nothing selected at all: it must not move (and gets no optimiser slice)
    empty = next(iter(masks))
    masks[empty] = torch.zeros_like(masks[empty])
    return masks


def _snapshot(model) -> dict[str, torch.Tensor]:
    return {name: value.detach().clone() for name, value in model.state_dict().items()}


@pytest.mark.parametrize("weight_decay", [0.0, 0.5])
def test_masked_unlearning_moves_only_selected_weights(tokenizer, forget_items, retain_items, weight_decay):
    model, f_batches, r_batches, candidates = _setup(tokenizer, forget_items, retain_items)
    masks = _masks(model, candidates)
    before = _snapshot(model)
    cfg = GrinConfig(loss="graddiff", lr=1e-2, steps=4, weight_decay=weight_decay)
    result = unlearn(model, f_batches, r_batches, cfg, list(candidates), masks)
    assert result.steps_done == 4 and not result.stopped
    assert result.trainable == sum(int(m.sum()) for m in masks.values())
    after = model.state_dict()
    changed = total = 0
    for name, value in after.items():
        if name in masks:
            mask = masks[name]
            assert torch.equal(value[~mask], before[name][~mask]), f"{name}: an unselected weight moved"
            changed += int((value[mask] != before[name][mask]).sum())
            total += int(mask.sum())
        else:
            assert torch.equal(value, before[name]), f"{name}: a non-candidate parameter moved"
    assert total > 0
    assert changed >= 0.99 * total, f"only {changed} of {total} selected weights moved"
    assert not any(p.requires_grad for p in model.parameters())
    assert all(p.grad is None for p in model.parameters())


def test_each_weights_gradient_is_taken_as_backward_forms_it(tokenizer, forget_items, retain_items, monkeypatch):
    """Memory: no trained weight keeps its full-size gradient once autograd has completed it (the engine's hook
    takes the selected entries and drops the rest); GradDiff's two forward passes are backpropagated one at a time,
    so each weight's gradient completes once per pass (twice a step), not once after both passes held theirs; and
    the optimiser gets exactly the selected entries of autograd's gradient of the step's whole loss."""
    model, f_batches, r_batches, candidates = _setup(tokenizer, forget_items, retain_items)
    masks = _masks(model, candidates)
    params = dict(model.named_parameters())
    trained = [name for name in candidates if masks[name].any()]
    cfg = GrinConfig(loss="graddiff", lr=1e-2, steps=1, max_grad_norm=0.0)  # no clipping: the step sees raw grads

    for name in trained:  # the reference: step 1's whole gradient of every trained weight, from autograd
        params[name].requires_grad_(True)
    loss = losses.get_loss(cfg.loss)(model, f_batches[0], r_batches[0], cfg)
    reference = dict(zip(trained, torch.autograd.grad(loss, [params[name] for name in trained])))
    for param in model.parameters():
        param.requires_grad_(False)

    held, stepped = [], []
    real_loop = unlearn_module.train_loop

    def spying_loop(step_loss, leaves, optimizer, *args, **kwargs):
        def count_held(_):  # runs after the engine's hook on the arriving weight
            held.append(sum(params[name].grad is not None for name in trained))

        hooks = [params[name].register_post_accumulate_grad_hook(count_held) for name in trained]
        real_step = optimizer.step

        def step(*a, **k):
            stepped.append([leaf.grad.clone() for leaf in leaves])
            return real_step(*a, **k)

        optimizer.step = step
        try:
            return real_loop(step_loss, leaves, optimizer, *args, **kwargs)
        finally:
            for hook in hooks:
                hook.remove()

    monkeypatch.setattr(unlearn_module, "train_loop", spying_loop)
    unlearn(model, f_batches, r_batches, cfg, list(candidates), masks)
    assert len(held) == 2 * len(trained) and max(held) == 0, f"weights holding a full gradient: {held}"
    (grads,) = stepped
    for name, grad in zip(trained, grads, strict=True):
        index = masks[name].reshape(-1).nonzero().squeeze(1)
        assert torch.equal(grad, reference[name].reshape(-1)[index].float()), name


def test_weight_decay_alone_moves_only_selected_weights(tokenizer, forget_items, retain_items, monkeypatch):
    """With a loss whose gradient is zero everywhere, only AdamW's decoupled decay acts: it must still stay inside the
    mask (masking only the gradient would let the decay shrink every weight)."""
    model, f_batches, r_batches, candidates = _setup(tokenizer, forget_items, retain_items)
    masks = _masks(model, candidates)
    monkeypatch.setitem(losses.LOSSES, "ga", lambda model, forget, retain, cfg: 0.0 * losses.mean_nll(model, forget))
    before = _snapshot(model)
    cfg = GrinConfig(loss="ga", lr=0.1, steps=3, weight_decay=1.0)
    unlearn(model, f_batches, r_batches, cfg, list(candidates), masks)
    for name, value in model.state_dict().items():
        if name in masks:
            mask = masks[name]
            assert torch.equal(value[~mask], before[name][~mask]), name
            # decay shrinks each selected weight by (1 - lr * wd) per step
            expected = before[name][mask] * (1 - 0.1 * 1.0) ** 3
            assert torch.allclose(value[mask], expected, rtol=1e-5, atol=1e-7), name
        else:
            assert torch.equal(value, before[name]), name


def test_no_mask_trains_every_candidate(tokenizer, forget_items, retain_items):
    model, f_batches, r_batches, candidates = _setup(tokenizer, forget_items, retain_items)
    before = _snapshot(model)
    cfg = GrinConfig(loss="graddiff", lr=1e-2, steps=3, weight_decay=0.01)
    result = unlearn(model, f_batches, r_batches, cfg, list(candidates), None)
    assert result.trainable == sum(c.numel for c in candidates.values())
    for name, value in model.state_dict().items():
        if name in candidates:
            moved = (value != before[name]).float().mean().item()
            assert moved > 0.99, f"{name}: only {moved:.1%} of the weights moved"
        else:
            assert torch.equal(value, before[name]), f"{name}: a non-candidate parameter moved"


def test_float32_weights_train_whole_without_a_copy(tokenizer):
    model = tiny_llama(len(tokenizer))
    params = dict(model.named_parameters())
    slices = unlearn_module.trainable_slices(params, list(candidate_parameters(model)), None)
    assert slices and all(s.values is s.param and not s.copied and s.index is None for s in slices)


def _bf16_training(tokenizer, forget_items, master: bool, lr: float, steps: int):
    """A bf16 tiny Llama trained whole with gradient ascent: through float32 master values (train_slices), or, as
    before, with AdamW on the bf16 weights themselves (bf16 state). (start, weights after, masters or None)."""
    model = tiny_llama(len(tokenizer)).to(torch.bfloat16)
    params = dict(model.named_parameters())
    names = list(candidate_parameters(model))
    start = {name: params[name].detach().clone() for name in names}
    batches = qa_batches(tokenizer, forget_items, 2, MAX_LENGTH)

    def step_loss(step):
        return -losses.mean_nll(model, batches[step % len(batches)])

    if master:
        slices = unlearn_module.trainable_slices(params, names, None)
        optimizer = torch.optim.AdamW([s.values for s in slices], lr=lr, weight_decay=0.0)
        unlearn_module.train_slices(slices, step_loss, optimizer, steps, 0.0)
        masters = {name: s.values.detach().view(s.param.shape) for name, s in zip(names, slices)}
    else:
        leaves = [params[name].requires_grad_(True) for name in names]
        train_loop(step_loss, leaves, torch.optim.AdamW(leaves, lr=lr, weight_decay=0.0), steps, 0.0)
        masters = None
    return start, {name: params[name].detach() for name in names}, masters


def test_bf16_weights_train_through_float32_master_values(tokenizer, forget_items):
    """AdamW moves each weight by about lr per step. At lr 1e-6 that is far below half an ulp of every bf16 weight
    of magnitude >= 2^-7 (2^-15 = 3e-5): updating the bf16 weights in place leaves all of those as they were, step
    after step; the float32 masters accumulate every update, and each weight holds its master rounded to bf16."""
    lr, steps = 1e-6, 4
    start, before_weights, _ = _bf16_training(tokenizer, forget_items, master=False, lr=lr, steps=steps)
    for name, value in before_weights.items():
        large = start[name].float().abs() >= 2 ** -7
        assert large.sum() > 0 and torch.equal(value[large], start[name][large]), name
    start, weights, masters = _bf16_training(tokenizer, forget_items, master=True, lr=lr, steps=steps)
    for name, master in masters.items():
        assert master.dtype == torch.float32 and weights[name].dtype == torch.bfloat16
        moved = master - start[name].float()
        assert (moved != 0).float().mean() > 0.99, name
        assert moved.abs().max() <= 2 * lr * steps, name
        assert torch.equal(weights[name], master.to(torch.bfloat16)), name


def test_on_step_called_once_per_step_with_the_loss(tokenizer, forget_items, retain_items):
    model, f_batches, r_batches, candidates = _setup(tokenizer, forget_items, retain_items)
    calls = []
    cfg = GrinConfig(loss="npo", lr=1e-3, steps=5)
    result = unlearn(model, f_batches, r_batches, cfg, list(candidates), _masks(model, candidates),
                     Progress(lambda stage, step, steps, loss: calls.append((step, steps, loss))))
    assert [(s, n) for s, n, _ in calls] == [(1, 5), (2, 5), (3, 5), (4, 5), (5, 5)]
    assert [loss for _, _, loss in calls] == result.losses
    assert all(isinstance(loss, float) for loss in result.losses)
    assert len(result.losses) == result.steps_done == 5


def test_should_stop_stops_after_exactly_two_steps(tokenizer, forget_items, retain_items):
    model, f_batches, r_batches, candidates = _setup(tokenizer, forget_items, retain_items)
    steps_seen = []

    def should_stop():
        return len(steps_seen) >= 2

    cfg = GrinConfig(loss="graddiff", lr=1e-3, steps=10)
    result = unlearn(model, f_batches, r_batches, cfg, list(candidates), _masks(model, candidates),
                     Progress(lambda stage, step, steps, loss: steps_seen.append(step), should_stop))
    assert result.stopped is True
    assert result.steps_done == 2
    assert len(result.losses) == 2
    assert steps_seen == [1, 2]


def test_nan_loss_raises_grin_error(tokenizer, forget_items, retain_items, monkeypatch):
    model, f_batches, r_batches, candidates = _setup(tokenizer, forget_items, retain_items)
    monkeypatch.setitem(losses.LOSSES, "ga", lambda *args: torch.tensor(float("nan"), requires_grad=True))
    before = _snapshot(model)
    cfg = GrinConfig(loss="ga", lr=1e-3, steps=3)
    with pytest.raises(GrinError, match=r"(?i)step 1.*nan.*learning rate"):
        unlearn(model, f_batches, r_batches, cfg, list(candidates), _masks(model, candidates))
    for name, value in model.state_dict().items():  # nothing was applied
        assert torch.equal(value, before[name]), name
    assert not any(p.requires_grad for p in model.parameters())


@pytest.mark.parametrize("use_mask", [True, False])
def test_huge_learning_rate_raises_grin_error(tokenizer, forget_items, retain_items, use_mask):
    model, f_batches, r_batches, candidates = _setup(tokenizer, forget_items, retain_items)
    masks = _masks(model, candidates, p=0.5) if use_mask else None
    cfg = GrinConfig(loss="graddiff", steps=20)
    cfg.lr = 1e30  # past the config's own bound (a GrinError there): the loop's NaN guard is what is tested here
    with pytest.raises(GrinError, match=r"(?i)(nan|inf).*learning rate") as info:
        unlearn(model, f_batches, r_batches, cfg, list(candidates), masks)
    assert "\n" not in str(info.value)


def test_same_seed_same_weights(tokenizer, forget_items, retain_items):
    results = []
    for _ in range(2):
        model, f_batches, r_batches, candidates = _setup(tokenizer, forget_items, retain_items)
        masks = _masks(model, candidates, p=0.2, seed=4)
        cfg = GrinConfig(loss="npo", lr=1e-2, steps=4, seed=7)
        result = unlearn(model, f_batches, r_batches, cfg, list(candidates), masks)
        results.append((result.losses, _snapshot(model)))
    (losses_a, weights_a), (losses_b, weights_b) = results
    assert losses_a == losses_b
    for name, value in weights_a.items():
        assert torch.equal(value, weights_b[name]), name


def test_batches_cycle_in_order(tokenizer, forget_items, retain_items, monkeypatch):
    """Step t uses forget batch t mod F and retain batch t mod R."""
    model, f_batches, r_batches, candidates = _setup(tokenizer, forget_items, retain_items, batch_size=3)
    seen = []

    def spy(model, forget, retain, cfg):
        seen.append((forget["input_ids"].shape[0], retain["input_ids"].shape[0]))
        return losses.grad_diff(model, forget, retain, cfg)

    monkeypatch.setitem(losses.LOSSES, "graddiff", spy)
    cfg = GrinConfig(loss="graddiff", lr=1e-3, steps=4)
    unlearn(model, f_batches, r_batches, cfg, list(candidates), None)
    # forget: batches of 3 and 1 items; retain: 3 and 1
    assert seen == [(3, 3), (1, 1), (3, 3), (1, 1)]
