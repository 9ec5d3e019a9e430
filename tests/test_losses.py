"""Tests for grin_engine.method.losses: every loss lowers its own objective, and each formula against a hand computation."""

from __future__ import annotations

import math

import pytest
import torch

from grin_engine.method import losses
from grin_engine.config import GrinConfig, GrinError
from grin_engine.data import IGNORE_INDEX, forget_batches, qa_batches
from grin_engine.method.influence import candidate_parameters
from grin_engine.method.losses import LOSSES, answer_logprob, answer_nll, get_loss, mean_nll
from grin_engine.method.unlearn import attach_reference, unlearn

from conftest import tiny_llama


MAX_LENGTH = 64


def _batches(tokenizer, forget_items, retain_items, model):
    """One forget batch (with its idk sub-batch) and one retain batch, with pi_ref cached from `model`."""
    f_batches = forget_batches(tokenizer, forget_items, 4, MAX_LENGTH, seed=0)
    r_batches = qa_batches(tokenizer, retain_items, 4, MAX_LENGTH)
    attach_reference(model, f_batches)
    return f_batches, r_batches


def _hand_nll(model, batch) -> tuple[torch.Tensor, torch.Tensor]:
    """Per item: summed answer-token NLL and token count, from log_softmax, item by item (no padding involved)."""
    sums, counts = [], []
    for row in range(batch["input_ids"].shape[0]):
        length = int(batch["attention_mask"][row].sum())
        ids = batch["input_ids"][row, :length].unsqueeze(0)
        labels = batch["labels"][row, 1:length]
        log_probs = torch.log_softmax(model(input_ids=ids).logits[0, :-1].double(), dim=-1)
        keep = labels != IGNORE_INDEX
        sums.append(-log_probs[keep].gather(1, labels[keep].unsqueeze(1)).sum())
        counts.append(int(keep.sum()))
    return torch.stack(sums), torch.tensor(counts)


@pytest.mark.parametrize("method", list(LOSSES))
def test_every_loss_decreases_its_own_objective(tokenizer, forget_items, retain_items, method):
    model = tiny_llama(len(tokenizer), seed=1)
    f_batches, r_batches = _batches(tokenizer, forget_items, retain_items, model)
    cfg = GrinConfig(loss=method, lr=3e-3, steps=5, weight_decay=0.0)
    loss_fn = get_loss(method)
    with torch.no_grad():
        before = loss_fn(model, f_batches[0], r_batches[0], cfg).item()
    result = unlearn(model, f_batches, r_batches, cfg, list(candidate_parameters(model)), None)
    with torch.no_grad():
        after = loss_fn(model, f_batches[0], r_batches[0], cfg).item()
    assert math.isfinite(before) and math.isfinite(after)
    assert result.steps_done == 5
    assert result.losses[0] == pytest.approx(before, rel=1e-5)  # step 1 sees the untouched model
    assert after < before - 1e-3, f"{method}: {before} -> {after}"


def test_answer_nll_matches_hand_computation(tokenizer, forget_items):
    model = tiny_llama(len(tokenizer), seed=2)
    batch = qa_batches(tokenizer, forget_items, 4, MAX_LENGTH)[0]  # right padding: rows of different lengths
    assert len(set(batch["attention_mask"].sum(1).tolist())) > 1
    with torch.no_grad():
        sums, counts = answer_nll(model, batch)
        hand_sums, hand_counts = _hand_nll(model, batch)
        assert torch.equal(counts, hand_counts)
        assert torch.allclose(sums.double(), hand_sums, rtol=1e-5)
        # NLL is the token mean over the whole batch (not a mean of per-item means)
        assert mean_nll(model, batch).item() == pytest.approx((hand_sums.sum() / hand_counts.sum()).item(), rel=1e-5)
        assert torch.allclose(answer_logprob(model, batch).double(), -hand_sums, rtol=1e-5)


def test_ga_graddiff_idk_formulas(tokenizer, forget_items, retain_items):
    model = tiny_llama(len(tokenizer), seed=2)
    f_batches, r_batches = _batches(tokenizer, forget_items, retain_items, model)
    forget, retain = f_batches[0], r_batches[0]
    cfg = GrinConfig(loss="graddiff", alpha=0.7, gamma=1.3)
    with torch.no_grad():
        nll_f, nll_r, nll_idk = mean_nll(model, forget), mean_nll(model, retain), mean_nll(model, forget["idk"])
        assert LOSSES["ga"](model, forget, retain, cfg).item() == pytest.approx(-nll_f.item(), rel=1e-6)
        assert LOSSES["graddiff"](model, forget, retain, cfg).item() == pytest.approx(
            -1.3 * nll_f.item() + 0.7 * nll_r.item(), rel=1e-6)
        assert LOSSES["idk"](model, forget, retain, cfg).item() == pytest.approx(  # gamma weighs every forget term
            1.3 * nll_idk.item() + 0.7 * nll_r.item(), rel=1e-6)


@pytest.mark.parametrize("beta, alpha", [(None, 1.0), (0.5, 0.3)])
def test_npo_at_the_reference_point(tokenizer, forget_items, retain_items, beta, alpha):
    """pi == pi_ref: every log ratio is 0, log sigmoid(0) = -log 2, so the forget term is (2/beta) log 2."""
    model = tiny_llama(len(tokenizer), seed=2)
    f_batches, r_batches = _batches(tokenizer, forget_items, retain_items, model)
    cfg = GrinConfig(loss="npo", beta=beta, alpha=alpha)
    b = 0.1 if beta is None else beta
    with torch.no_grad():
        value = LOSSES["npo"](model, f_batches[0], r_batches[0], cfg).item()
        expected = (2 / b) * math.log(2) + alpha * mean_nll(model, r_batches[0]).item()
    assert value == pytest.approx(expected, rel=1e-5)


def test_npo_forget_term_by_hand(tokenizer, forget_items, retain_items):
    """Away from the reference: (2/beta) * mean log(1 + (pi/pi_ref)^beta), with pi from another model."""
    reference = tiny_llama(len(tokenizer), seed=2)
    model = tiny_llama(len(tokenizer), seed=9)
    f_batches, r_batches = _batches(tokenizer, forget_items, retain_items, reference)
    forget = f_batches[0]
    beta = 0.3
    cfg = GrinConfig(loss="npo", beta=beta, alpha=0.0)
    with torch.no_grad():
        value = LOSSES["npo"](model, forget, r_batches[0], cfg).item()
        log_pi = -_hand_nll(model, forget)[0]
        log_pi_ref = -_hand_nll(reference, forget)[0]
    ratio_beta = torch.exp(beta * (log_pi - log_pi_ref))
    expected = (2 / beta) * torch.log1p(ratio_beta).mean().item()
    assert abs((log_pi - log_pi_ref).mean().item()) > 0.1  # really away from the reference
    assert value == pytest.approx(expected, rel=1e-5)
    # the retain term is added with weight alpha
    cfg2 = GrinConfig(loss="npo", beta=beta, alpha=2.0)
    with torch.no_grad():
        with_retain = LOSSES["npo"](model, forget, r_batches[0], cfg2).item()
        assert with_retain == pytest.approx(value + 2.0 * mean_nll(model, r_batches[0]).item(), rel=1e-5)


@pytest.mark.parametrize("beta, delta, alpha", [(None, 0.0, 0.4), (0.5, 6.0, 0.0), (2.0, 5.5, 0.3)])
def test_simnpo_by_hand(tokenizer, forget_items, retain_items, beta, delta, alpha):
    """The random model's per-token NLL is about ln(vocab) = 6, so delta near 6 puts the sigmoid in its sensitive
    range (with delta = 0 and beta = 4.5 the forget term is ~1e-12 and would hide any mistake in it)."""
    model = tiny_llama(len(tokenizer), seed=4)
    f_batches, r_batches = _batches(tokenizer, forget_items, retain_items, model)
    cfg = GrinConfig(loss="simnpo", beta=beta, delta=delta, alpha=alpha)
    b = 4.5 if beta is None else beta
    with torch.no_grad():
        value = LOSSES["simnpo"](model, f_batches[0], r_batches[0], cfg).item()
        nll_sum, n_tokens = answer_nll(model, f_batches[0])
        retain = mean_nll(model, r_batches[0]).item()
    per_token = [s / n for s, n in zip(nll_sum.tolist(), n_tokens.tolist())]  # -log pi(y|x) / |y|
    forget_term = -(2 / b) * sum(math.log(1 / (1 + math.exp(-b * (x - delta)))) for x in per_token) / len(per_token)
    if delta:
        assert forget_term > 0.1  # the term really matters in this case
    # gamma left at None: SimNPO's own default 0.125 weighs the forget term (open-unlearning's SimNPO.yaml)
    assert value == pytest.approx(0.125 * forget_term + alpha * retain, rel=1e-5)


def test_dpo_by_hand(tokenizer, forget_items, retain_items):
    reference = tiny_llama(len(tokenizer), seed=2)
    model = tiny_llama(len(tokenizer), seed=9)
    f_batches, r_batches = _batches(tokenizer, forget_items, retain_items, reference)
    forget, retain = f_batches[0], r_batches[0]
    beta = 0.2
    cfg = GrinConfig(loss="dpo", beta=beta, alpha=0.6)
    with torch.no_grad():
        value = LOSSES["dpo"](model, forget, retain, cfg).item()
        win = (-answer_nll(model, forget["idk"])[0]) - (-answer_nll(reference, forget["idk"])[0])
        lose = (-answer_nll(model, forget)[0]) - (-answer_nll(reference, forget)[0])
        retain_nll = mean_nll(model, retain).item()
    margins = (beta * (win - lose)).tolist()
    forget_term = -(2 / beta) * sum(math.log(1 / (1 + math.exp(-m))) for m in margins) / len(margins)
    assert value == pytest.approx(forget_term + 0.6 * retain_nll, rel=1e-5)
    # at the reference point both log ratios are 0: (2/beta) log 2
    with torch.no_grad():
        at_ref = LOSSES["dpo"](reference, forget, retain, GrinConfig(loss="dpo", beta=beta, alpha=0.0)).item()
    assert at_ref == pytest.approx((2 / beta) * math.log(2), rel=1e-5)


def test_attach_reference_caches_log_probs(tokenizer, forget_items):
    model = tiny_llama(len(tokenizer), seed=2)
    f_batches = forget_batches(tokenizer, forget_items, 3, MAX_LENGTH, seed=0)
    attach_reference(model, f_batches)
    for batch in f_batches:
        for part in (batch, batch["idk"]):
            with torch.no_grad():
                expected = -_hand_nll(model, part)[0]
            assert part["ref_logp"].shape == (part["input_ids"].shape[0],)
            assert not part["ref_logp"].requires_grad
            assert torch.allclose(part["ref_logp"].double(), expected, rtol=1e-5)


def test_get_loss_unknown_name_lists_valid_names():
    with pytest.raises(GrinError) as info:
        get_loss("nope")
    message = str(info.value)
    assert "'nope'" in message
    for name in LOSSES:
        assert name in message
    assert get_loss("npo") is losses.npo


def test_describe_losses_covers_every_method():
    described = losses.describe_losses()
    assert list(described) == list(LOSSES)
    assert all(isinstance(text, str) and text for text in described.values())


def test_losses_are_differentiable_scalars(tokenizer, forget_items, retain_items):
    """Each loss is a scalar, or Terms: one scalar per forward pass (forget, retain), each with its own graph (so
    they can be backpropagated apart), whose sum is the loss and whose gradients add up to the sum's."""
    model = tiny_llama(len(tokenizer), seed=1)
    f_batches, r_batches = _batches(tokenizer, forget_items, retain_items, model)
    weight = model.model.layers[0].mlp.down_proj.weight
    weight.requires_grad_(True)
    try:
        for method, fn in LOSSES.items():
            value = fn(model, f_batches[0], r_batches[0], GrinConfig(loss=method))
            parts = value if isinstance(value, losses.Terms) else (value,)
            assert all(part.dim() == 0 for part in parts), method
            assert value.item() == sum(parts[1:], parts[0]).item(), method
            (whole,) = torch.autograd.grad(losses.total(value), weight, retain_graph=True)
            apart = [torch.autograd.grad(part, weight)[0] for part in parts]  # each part alone: graphs are separate
            assert whole.abs().max() > 0, method
            if method == "dpo":  # three passes (idk, forget, retain): the additions group differently, same sum
                assert torch.allclose(sum(apart[1:], apart[0]), whole, rtol=1e-5, atol=1e-8), method
            else:  # one pass per term: the same single addition per entry
                assert torch.equal(sum(apart[1:], apart[0]), whole), method
        assert not isinstance(LOSSES["ga"](model, f_batches[0], r_batches[0], GrinConfig(loss="ga")), losses.Terms)
    finally:
        weight.requires_grad_(False)


# --- open-unlearning parity: gamma on the forget term (trainer/unlearn/{npo,simnpo,dpo}.py at d3d7cf9) -----------
#
# Their losses, written out from their code: compute_batch_nll = summed answer NLL per item;
# compute_dpo_loss(win, lose) = -2/beta * logsigmoid(beta * (win_log_ratio - lose_log_ratio)).mean() with
# log_ratio = -(nll - nll_ref); NPO = compute_dpo_loss(win=None, lose=forget); SimNPO's forget loss =
# -logsigmoid(beta * (nll / |y| - delta)).mean() * 2 / beta; every trainer returns gamma * forget + alpha * retain.


def _their_forget_term(method, model, reference, forget, beta, delta=0.0):
    with torch.no_grad():
        nll, n = answer_nll(model, forget)
        if method == "simnpo":
            return (-torch.nn.functional.logsigmoid(beta * (nll / n - delta)).mean() * 2 / beta).item()
        lose_ratio = -(nll - answer_nll(reference, forget)[0])
        win_ratio = 0.0
        if method == "dpo":
            win_ratio = -(answer_nll(model, forget["idk"])[0] - answer_nll(reference, forget["idk"])[0])
        return (-2 / beta * torch.nn.functional.logsigmoid(beta * (win_ratio - lose_ratio)).mean()).item()


@pytest.mark.parametrize("method, beta, delta", [("npo", 0.1, 0.0), ("dpo", 0.2, 0.0), ("simnpo", 2.0, 5.5)])
@pytest.mark.parametrize("gamma", [0.3, 2.0])
def test_gamma_weighs_the_forget_term_as_open_unlearning(tokenizer, forget_items, retain_items, method, beta, delta,
                                                         gamma):
    reference = tiny_llama(len(tokenizer), seed=2)
    model = tiny_llama(len(tokenizer), seed=9)
    f_batches, r_batches = _batches(tokenizer, forget_items, retain_items, reference)
    forget, retain = f_batches[0], r_batches[0]
    cfg = GrinConfig(loss=method, beta=beta, delta=delta, alpha=0.6, gamma=gamma)
    with torch.no_grad():
        value = LOSSES[method](model, forget, retain, cfg).item()
        retain_nll = mean_nll(model, retain).item()
    forget_term = _their_forget_term(method, model, reference, forget, beta, delta)
    assert abs(forget_term) > 0.05  # the term is large enough that a dropped gamma would show
    assert value == pytest.approx(gamma * forget_term + 0.6 * retain_nll, rel=1e-5)


@pytest.mark.parametrize("method, default", [("graddiff", 1.0), ("npo", 1.0), ("dpo", 1.0), ("idk", 1.0),
                                             ("simnpo", 0.125)])
def test_gamma_none_is_the_methods_default(tokenizer, forget_items, retain_items, method, default):
    model = tiny_llama(len(tokenizer), seed=4)
    f_batches, r_batches = _batches(tokenizer, forget_items, retain_items, tiny_llama(len(tokenizer), seed=2))
    with torch.no_grad():
        implicit = LOSSES[method](model, f_batches[0], r_batches[0], GrinConfig(loss=method, delta=6.0)).item()
        explicit = LOSSES[method](model, f_batches[0], r_batches[0],
                                  GrinConfig(loss=method, delta=6.0, gamma=default)).item()
        other = LOSSES[method](model, f_batches[0], r_batches[0],
                               GrinConfig(loss=method, delta=6.0, gamma=default * 3)).item()
    assert implicit == pytest.approx(explicit, rel=1e-7)
    assert abs(other - implicit) > 1e-3
