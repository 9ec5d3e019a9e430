"""Tests for grin_engine.method.noise: Gaussian noise of variance sigma2 on the selected weights, nothing else touched."""

from __future__ import annotations

import math

import pytest
import torch

from grin_engine.method.influence import candidate_parameters
from grin_engine.method.selection import random_selection
from grin_engine.method.noise import inject_noise

from conftest import tiny_llama



def _setup(tokenizer, p=0.2, seed=0):
    model = tiny_llama(len(tokenizer))
    params = dict(model.named_parameters())
    candidates = candidate_parameters(model)
    masks = random_selection(candidates, params, p, seed=seed).masks
    return model, params, masks


def _snapshot(model) -> dict[str, torch.Tensor]:
    return {name: value.detach().clone() for name, value in model.state_dict().items()}


def test_noise_lands_only_on_selected_weights(tokenizer):
    model, params, masks = _setup(tokenizer)
    before = _snapshot(model)
    moved = inject_noise(params, masks, sigma2=1e-2, seed=0)
    assert moved == sum(int(m.sum()) for m in masks.values())
    after = model.state_dict()
    for name, value in after.items():
        if name in masks:
            mask = masks[name]
            assert torch.equal(value[~mask], before[name][~mask]), f"{name}: an unselected weight moved"
            assert (value[mask] != before[name][mask]).all(), f"{name}: a selected weight did not move"
        else:  # embeddings, norms: not candidates, untouched
            assert torch.equal(value, before[name]), name


def test_same_seed_same_noise_and_other_seed_other_noise(tokenizer):
    results = []
    for seed in (3, 3, 4):
        model, params, masks = _setup(tokenizer)
        inject_noise(params, masks, sigma2=1e-3, seed=seed)
        results.append(_snapshot(model))
    same, other = results[1], results[2]
    for name, value in results[0].items():
        assert torch.equal(value, same[name]), name
    assert not all(torch.equal(value, other[name]) for name, value in results[0].items())


def test_the_noise_does_not_depend_on_the_order_of_the_masks(tokenizer):
    """The same masks listed in another order (scores used to come in backward's order, so the CLI and the app drew
    different noise for one mask) give the same weights: the draws follow the model's order."""
    results = []
    for reverse in (False, True):
        model, params, masks = _setup(tokenizer)
        ordered = dict(reversed(list(masks.items()))) if reverse else masks
        inject_noise(params, ordered, sigma2=1e-3, seed=3)
        results.append(_snapshot(model))
    for name, value in results[0].items():
        assert torch.equal(value, results[1][name]), name


def test_sigma2_zero_changes_nothing(tokenizer):
    model, params, masks = _setup(tokenizer, p=1.0)
    before = _snapshot(model)
    assert inject_noise(params, masks, sigma2=0.0, seed=0) == 0
    for name, value in model.state_dict().items():
        assert torch.equal(value, before[name]), name


def test_empty_mask_changes_nothing(tokenizer):
    model, params, masks = _setup(tokenizer)
    before = _snapshot(model)
    empty = {name: torch.zeros_like(mask) for name, mask in masks.items()}
    assert inject_noise(params, empty, sigma2=1.0, seed=0) == 0
    for name, value in model.state_dict().items():
        assert torch.equal(value, before[name]), name


@pytest.mark.parametrize("sigma2", [1e-4, 0.25])
def test_noise_variance_is_sigma2(sigma2):
    """sigma2 is the variance (not the standard deviation): the added values have mean 0 and variance sigma2."""
    torch.manual_seed(0)
    weight = torch.nn.Parameter(torch.randn(400, 500), requires_grad=False)
    mask = torch.rand(400, 500) < 0.5  # about 100k selected
    before = weight.detach().clone()
    inject_noise({"w": weight}, {"w": mask}, sigma2=sigma2, seed=1)
    added = (weight.detach() - before)[mask].double()
    n = added.numel()
    assert n > 90_000
    # the sample variance of n normals has relative standard error sqrt(2/n) (0.45% here): allow 5 of them
    assert added.var().item() == pytest.approx(sigma2, rel=5 * math.sqrt(2 / n))
    assert abs(added.mean().item()) < 5 * math.sqrt(sigma2 / n)
    assert torch.equal(weight.detach()[~mask], before[~mask])


def test_selected_gradient_norm_counts_only_the_selected_entries(tiny, forget_items):
    """The norm over the mask equals the norm of the full NLL gradient's masked entries, computed the plain way;
    an empty mask gives 0, the full mask the whole gradient's norm; the model keeps no gradient afterwards."""
    from grin_engine.data import qa_batches
    from grin_engine.method.influence import candidate_parameters
    from grin_engine.method.losses import mean_nll
    from grin_engine.method.noise import selected_gradient_norm

    model = tiny.model
    batch = qa_batches(tiny.tokenizer, forget_items, 4, 64)[0]
    names = list(candidate_parameters(model))
    params = dict(model.named_parameters())
    generator = torch.Generator().manual_seed(0)
    masks = {n: torch.rand(params[n].shape, generator=generator) < 0.1 for n in names}
    for n in names:
        params[n].requires_grad_(True)
    grads = torch.autograd.grad(mean_nll(model, batch), [params[n] for n in names])
    for n in names:
        params[n].requires_grad_(False)
    plain = torch.sqrt(sum((g[masks[n]] ** 2).sum() for n, g in zip(names, grads))).item()
    assert selected_gradient_norm(model, batch, masks) == pytest.approx(plain, rel=1e-5)
    assert selected_gradient_norm(model, batch, {n: torch.zeros_like(m) for n, m in masks.items()}) == 0.0
    whole = torch.sqrt(sum((g ** 2).sum() for g in grads)).item()
    assert selected_gradient_norm(model, batch, {n: torch.ones_like(m) for n, m in masks.items()}) == \
        pytest.approx(whole, rel=1e-5)
    assert all(p.grad is None and not p.requires_grad for p in model.parameters())


def test_a_run_reports_the_gradient_norm_before_and_after_the_noise(tiny, forget_items, retain_items):
    from grin_engine.config import GrinConfig
    from grin_engine.runs import pipeline

    reports = {}
    for sigma2 in (0.0, 1e-2):
        cfg = GrinConfig(loss="graddiff", p=0.1, sigma2=sigma2, steps=1, batch_size=2, max_length=64,
                         max_new_tokens=4)
        reports[sigma2] = pipeline.run(tiny, forget_items, retain_items, cfg).to_report()["noise"]
    assert reports[0.0]["grad_norm_before"] == reports[0.0]["grad_norm_after"] > 0  # no noise, nothing moved
    assert reports[1e-2]["grad_norm_before"] == reports[0.0]["grad_norm_before"]  # same mask, same base
    assert reports[1e-2]["grad_norm_after"] != reports[1e-2]["grad_norm_before"] and reports[1e-2]["sigma2"] == 1e-2
    no_mask = pipeline.run(tiny, forget_items, retain_items, GrinConfig(use_mask=False, steps=1, batch_size=2,
                                                                        max_length=64, max_new_tokens=4))
    assert no_mask.noise is None
