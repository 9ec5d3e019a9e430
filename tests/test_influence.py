"""Tests for grin_engine.method.influence: scores against a slow reference, candidates per architecture, exact top-k
selection (histogram path included), summaries and the random baseline."""

from __future__ import annotations

import math

import pytest
import torch

from grin_engine.method import influence, selection
from grin_engine.config import GrinError
from grin_engine.data import IGNORE_INDEX, encode_pair, qa_batches
from grin_engine.method.influence import candidate_parameters, compute_influence
from grin_engine.method.selection import Selection, kth_largest, random_selection, select_top_fraction, summarize_selection

from conftest import tiny_llama


EPS = 1e-8
MAX_LENGTH = 64

# ---------------------------------------------------------------------------------------------------------------------
# Influence scores against an obvious reference


def _item_nll_sum(model, tokenizer, question: str, answer: str) -> tuple[torch.Tensor, int]:
    """Sum of the answer-token NLLs of ONE item (a batch of one, no padding), written out by hand."""
    ids, labels = encode_pair(tokenizer, question, answer, MAX_LENGTH)
    input_ids = torch.tensor([ids])
    labels = torch.tensor(labels[1:])  # token t+1 is predicted at position t
    logits = model(input_ids=input_ids).logits[0, :-1]
    keep = labels != IGNORE_INDEX
    log_probs = torch.log_softmax(logits.float(), dim=-1)
    nll = -log_probs[keep].gather(1, labels[keep].unsqueeze(1)).squeeze(1)
    return nll.sum(), int(keep.sum())


def _reference_gradient(model, tokenizer, items, names) -> dict[str, torch.Tensor]:
    """G = sum over items of grad(item NLL sum) / (answer tokens of the whole set), one item at a time."""
    params = dict(model.named_parameters())
    weights = [params[n] for n in names]
    for w in weights:
        w.requires_grad_(True)
    total = sum(_item_nll_sum(model, tokenizer, it.question, it.answer)[1] for it in items)
    grads = {n: torch.zeros_like(params[n]) for n in names}
    for it in items:
        nll_sum, _ = _item_nll_sum(model, tokenizer, it.question, it.answer)
        item_grads = torch.autograd.grad(nll_sum / total, weights)
        for n, g in zip(names, item_grads):
            grads[n] += g
    for w in weights:
        w.requires_grad_(False)
    return grads


@pytest.fixture(scope="module")
def reference_scores(tokenizer):
    from conftest import FORGET, RETAIN

    model = tiny_llama(len(tokenizer), seed=3)
    names = list(candidate_parameters(model))
    g_f = _reference_gradient(model, tokenizer, FORGET, names)
    g_r = _reference_gradient(model, tokenizer, RETAIN, names)
    return {n: g_f[n].abs() / (g_r[n].abs() + EPS) for n in names}, g_f, g_r


def _assert_scores_close(scores, g_f, g_r, rel=1e-5):
    """S = |G_f| / (|G_r| + eps) is checked at float32 precision: the gradients may differ from the reference by
    float32 rounding (rel x the tensor's largest gradient), and that error is amplified where |G_r| is tiny, so the
    allowed difference is the first-order propagation of that rounding, plus 1e-5 relative."""
    for name in g_f:
        ref = g_f[name].abs() / (g_r[name].abs() + EPS)
        d_f, d_r = rel * g_f[name].abs().max(), rel * g_r[name].abs().max()
        bound = 1e-5 * ref + (d_f + ref * d_r) / (g_r[name].abs() + EPS)
        diff = (scores[name] - ref).abs()
        assert scores[name].dtype == torch.float32 and scores[name].shape == ref.shape, name
        assert bool((diff <= bound).all()), f"{name}: worst excess {(diff - bound).max().item():.3g}"


@pytest.mark.parametrize("batch_size", [2, 3])
def test_gradients_equal_slow_reference(tokenizer, forget_items, retain_items, reference_scores, batch_size):
    _, g_f, g_r = reference_scores
    model = tiny_llama(len(tokenizer), seed=3)
    names = list(candidate_parameters(model))
    for items, ref in ((forget_items, g_f), (retain_items, g_r)):
        grads = influence.accumulate_gradients(model, qa_batches(tokenizer, items, batch_size, MAX_LENGTH), names)
        assert set(grads) == set(ref)
        for name in names:
            scale = ref[name].abs().max().item()
            assert scale > 0, name  # a zero gradient would make the comparison meaningless
            assert torch.allclose(grads[name], ref[name], rtol=1e-4, atol=1e-5 * scale), (
                f"{name}: max abs diff {(grads[name] - ref[name]).abs().max().item():.3g} (scale {scale:.3g})")


@pytest.mark.parametrize("batch_size", [2, 3])
def test_influence_scores_equal_slow_reference(tokenizer, forget_items, retain_items, reference_scores, batch_size):
    expected, g_f, g_r = reference_scores
    model = tiny_llama(len(tokenizer), seed=3)
    before = {n: p.clone() for n, p in model.state_dict().items()}
    candidates = candidate_parameters(model)
    scores = compute_influence(
        model, qa_batches(tokenizer, forget_items, batch_size, MAX_LENGTH),
        qa_batches(tokenizer, retain_items, batch_size, MAX_LENGTH), candidates, EPS,
    )
    assert set(scores) == set(expected)
    _assert_scores_close(scores, g_f, g_r)
    # Most scores must agree tightly (the loose bound only matters where |G_r| is near zero).
    for name, ref in expected.items():
        close = torch.isclose(scores[name], ref, rtol=1e-4, atol=1e-6).float().mean().item()
        assert close > 0.99, (name, close)
    # Scoring reads the weights and leaves them (and requires_grad) as they were.
    for name, value in model.state_dict().items():
        assert torch.equal(value, before[name]), name
    assert not any(p.requires_grad for p in model.parameters())
    assert all(p.grad is None for p in model.parameters())


def test_influence_scores_do_not_depend_on_batch_size(tokenizer, forget_items, retain_items):
    results = []
    for batch_size in (1, 4):
        model = tiny_llama(len(tokenizer), seed=5)
        names = list(candidate_parameters(model))
        results.append(tuple(
            influence.accumulate_gradients(model, qa_batches(tokenizer, items, batch_size, MAX_LENGTH), names)
            for items in (forget_items, retain_items)))
    g_f, g_r = results[0]
    for other_f, other_r in results[1:]:
        for name in g_f:
            assert torch.allclose(other_f[name], g_f[name], rtol=1e-4, atol=1e-5 * g_f[name].abs().max()), name
            assert torch.allclose(other_r[name], g_r[name], rtol=1e-4, atol=1e-5 * g_r[name].abs().max()), name
        _assert_scores_close(influence.influence_scores(other_f, other_r, eps=EPS), g_f, g_r)


def test_row_chunks_keep_every_row_once_in_order_within_the_budget(tokenizer, forget_items):
    batch = qa_batches(tokenizer, forget_items, 4, MAX_LENGTH)[0]
    rows, width = batch["input_ids"].shape
    for budget, per_chunk in ((10**6, rows), (2 * width + 1, 2), (width, 1), (1, 1)):
        chunks = influence.row_chunks(batch, budget)
        assert [len(c["input_ids"]) for c in chunks] == [min(per_chunk, rows - i) for i in range(0, rows, per_chunk)]
        for key, value in batch.items():
            assert torch.equal(torch.cat([c[key] for c in chunks]), value), key


def _counting_passes(monkeypatch) -> list[tuple[int, int]]:
    """(rows, padded length) of every forward pass the scoring makes from now on."""
    passes, real_nll = [], influence.answer_nll

    def counted(model, batch):
        passes.append(tuple(batch["input_ids"].shape))
        return real_nll(model, batch)
    monkeypatch.setattr(influence, "answer_nll", counted)
    return passes


@pytest.mark.parametrize("mean", influence.GRAD_MEANS)
def test_scores_with_a_tiny_token_budget_equal_those_with_a_large_one(tokenizer, forget_items, retain_items, mean,
                                                                      monkeypatch):
    """A batch over the token budget runs as chunks of its rows, each adding its share of the same whole-set loss
    (L's denominator is the whole set's tokens or items, never a chunk's): G_f, G_r and the scores with one row per
    pass equal those of whole batches, up to float32 rounding."""
    from grin_engine.config import GrinConfig
    from grin_engine.method.influence import compute_influence_scores

    cfg = GrinConfig(batch_size=4, max_length=MAX_LENGTH, grad_mean=mean)
    model = tiny_llama(len(tokenizer), seed=5)
    names = list(candidate_parameters(model))
    g_f, g_r = (influence.accumulate_gradients(model, qa_batches(tokenizer, items, 4, MAX_LENGTH), names, mean=mean,
                                               token_budget=10**9) for items in (forget_items, retain_items))
    passes = _counting_passes(monkeypatch)
    whole = compute_influence_scores(model, tokenizer, forget_items, retain_items, cfg).scores
    assert [rows for rows, _ in passes] == [4, 4]  # the tiny model's own budget holds each batch whole
    passes.clear()
    monkeypatch.setattr(influence, "gradient_token_budget", lambda model: 1)
    chunked = compute_influence_scores(model, tokenizer, forget_items, retain_items, cfg).scores
    assert [rows for rows, _ in passes] == [1] * 8
    _assert_scores_close(whole, g_f, g_r)
    _assert_scores_close(chunked, g_f, g_r)


def test_compute_influence_reports_every_batch(tokenizer, forget_items, retain_items):
    model = tiny_llama(len(tokenizer))
    calls = []
    compute_influence(model, qa_batches(tokenizer, forget_items, 3, MAX_LENGTH),
                      qa_batches(tokenizer, retain_items, 2, MAX_LENGTH), candidate_parameters(model), EPS,
                      on_batch=lambda done, total: calls.append((done, total)))
    # 2 forget batches (3 + 1 items) then 2 retain batches (2 + 2): progress counts over all 4
    assert calls == [(1, 4), (2, 4), (3, 4), (4, 4)]


def test_count_answer_tokens_counts_shifted_labels(tokenizer, forget_items):
    batches = qa_batches(tokenizer, forget_items, 3, MAX_LENGTH)
    by_hand = 0
    for it in forget_items:
        _, labels = encode_pair(tokenizer, it.question, it.answer, MAX_LENGTH)
        by_hand += sum(1 for label in labels[1:] if label != IGNORE_INDEX)
    assert influence.count_answer_tokens(batches) == by_hand


# ---------------------------------------------------------------------------------------------------------------------
# Memory plan (DESIGN.md §5a, memory): one float32 set per pass, G_f parked, scores formed pair by pair


def _odd_llama(tokenizer, dtype=torch.float32):
    """A tiny Llama whose weight shapes no other test's tensors share, so live tensors can be counted by shape."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(4)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=48, intermediate_size=80, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         tie_word_embeddings=True)
    model = LlamaForCausalLM(config).eval().to(dtype)
    model.requires_grad_(False)
    return model


def _previous_accumulation(model, batches, names):
    """The accumulation before the memory plan: a whole backward, then every .grad added into its float32 sum."""
    params = dict(model.named_parameters())
    total, grads = max(1, influence.count_answer_tokens(batches)), {}
    for name in names:
        params[name].requires_grad_(True)
    for batch in batches:
        nll_sum, _ = influence.answer_nll(model, batch)
        (nll_sum.sum() / total).backward()
        for name in names:
            grad, params[name].grad = params[name].grad, None
            grads[name] = grads[name].add_(grad) if name in grads else grad.float()
    for name in names:
        params[name].requires_grad_(False)
    return grads


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gradients_bit_identical_to_the_whole_set_accumulation(tokenizer, forget_items, dtype):
    """Adding each gradient into its sum inside backward (hook) gives exactly the sums of adding whole gradient sets
    after each backward: the same additions in the same order (float32 and bfloat16 weights)."""
    model = _odd_llama(tokenizer, dtype)
    names = list(candidate_parameters(model, include_embeddings=True))  # the tied embedding/head weight included
    batches = qa_batches(tokenizer, forget_items, 2, MAX_LENGTH)
    expected = _previous_accumulation(model, batches, names)
    got = influence.accumulate_gradients(model, batches, names)
    assert set(got) == set(expected) and len(batches) >= 2
    for name in names:
        assert got[name].dtype == torch.float32 and torch.equal(got[name], expected[name]), name


def _gradient_bytes_alive(params: dict, shapes: set) -> int:
    """Bytes of the float32 weight-shaped tensors alive now: the accumulators (and scores) Python can reach, plus the
    .grad of every weight; each buffer counted once."""
    import gc

    seen, total = set(), 0
    reachable = [o for o in gc.get_objects() if type(o) is torch.Tensor]  # plain tensors: not the weights
    for tensor in reachable + [p.grad for p in params.values() if p.grad is not None]:
        if tensor.dtype == torch.float32 and tuple(tensor.shape) in shapes and tensor.data_ptr() not in seen:
            seen.add(tensor.data_ptr())
            total += tensor.numel() * 4
    return total


def test_scoring_holds_at_most_two_float32_sets_and_never_a_whole_gradient_set(tokenizer, forget_items,
                                                                                retain_items, monkeypatch):
    """Sampled whenever a weight's gradient arrives in backward and before each forward: no other weight keeps a
    .grad (the engine's hook took it), and G_f + G_r + the one arriving gradient are all that is alive. Before the
    memory plan a batch's whole gradient set sat next to G_f and G_r (three sets); on an accelerator G_f is parked
    on the CPU, so the device holds one set."""
    model = _odd_llama(tokenizer)
    candidates = candidate_parameters(model)
    params = dict(model.named_parameters())
    shapes = {tuple(params[name].shape) for name in candidates}
    one_set = 4 * sum(c.numel for c in candidates.values())
    largest = 4 * max(c.numel for c in candidates.values())
    samples, hooked = [], []
    import gc

    gc.collect()
    assert _gradient_bytes_alive(params, shapes) == 0  # nothing of these shapes left over from another test

    def sample(arriving=None):  # the arriving weight's own .grad is about to be taken by the engine's hook
        samples.append((_gradient_bytes_alive(params, shapes),
                        sum(params[name].grad is not None and params[name] is not arriving for name in candidates)))

    real_nll = influence.answer_nll

    def sampling_nll(model, batch):
        sample()
        if not hooked:  # the weights require gradients now: watch each one's gradient arrive (after the engine's hook)
            hooked.extend(params[name].register_post_accumulate_grad_hook(sample) for name in candidates)
        return real_nll(model, batch)

    monkeypatch.setattr(influence, "answer_nll", sampling_nll)
    try:
        scores = compute_influence(model, qa_batches(tokenizer, forget_items, 2, MAX_LENGTH),
                                   qa_batches(tokenizer, retain_items, 2, MAX_LENGTH), candidates, EPS)
    finally:
        for handle in hooked:
            handle.remove()
    assert len(samples) > 4 * len(candidates)  # 2 + 2 batches, every weight's gradient seen
    assert max(held for _, held in samples) == 0, "a weight kept its gradient after backward delivered it"
    peak = max(alive for alive, _ in samples)
    assert one_set < peak <= 2 * one_set + largest, f"{peak / one_set:.2f} float32 sets alive at the peak"
    assert _gradient_bytes_alive(params, shapes) == one_set and len(scores) == len(candidates)  # only the scores


def test_compute_influence_parks_the_forget_gradients_before_the_retain_pass(tokenizer, forget_items, retain_items,
                                                                             monkeypatch):
    model = _odd_llama(tokenizer)
    calls = []
    real_accumulate, real_park = influence.accumulate_gradients, influence.park

    def accumulate(model, batches, names, on_batch=None, mean="token"):
        calls.append(("gradients", len(batches)))
        return real_accumulate(model, batches, names, on_batch, mean)

    def park(grads):
        calls.append(("park", len(grads)))
        return real_park(grads)

    monkeypatch.setattr(influence, "accumulate_gradients", accumulate)
    monkeypatch.setattr(influence, "park", park)
    candidates = candidate_parameters(model)
    compute_influence(model, qa_batches(tokenizer, forget_items, 3, MAX_LENGTH),
                      qa_batches(tokenizer, retain_items, 1, MAX_LENGTH), candidates, EPS)
    assert calls == [("gradients", 2), ("park", len(candidates)), ("gradients", len(retain_items))]


def test_park_keeps_cpu_tensors_without_a_copy():
    grads = {"a": torch.randn(3, 4), "b": torch.randn(5)}
    originals = dict(grads)
    parked = influence.park(grads)
    assert all(parked[name] is originals[name] for name in originals) and grads == {}


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_park_copies_device_tensors_into_exactly_sized_pageable_memory():
    """Parked accumulators are ordinary CPU tensors of exactly their own size (not pinned blocks rounded up to a
    power of two), equal to the originals; the device copies leave the dict."""
    originals = {"a": torch.randn(3, 1000), "b": torch.randn(7)}  # 12,000 and 28 bytes: neither a power of two
    grads = {name: t.cuda() for name, t in originals.items()}
    parked = influence.park(grads)
    assert grads == {} and set(parked) == set(originals)
    for name, t in originals.items():
        host = parked[name]
        assert host.device.type == "cpu" and not host.is_pinned() and torch.equal(host, t), name
        assert host.untyped_storage().nbytes() == t.numel() * t.element_size(), name


@pytest.mark.parametrize("in_place", [True, False])
def test_scores_form_on_the_retain_gradients_device(in_place):
    """A G_f parked on the CPU next to a G_r on another device ("meta" stands in for a GPU here): each score is
    formed on G_r's device, the weight's; in place, both dicts are consumed pair by pair."""
    grad_forget = {"w": torch.randn(4, 3), "v": torch.randn(2)}
    grad_retain = {name: torch.empty(t.shape, device="meta") for name, t in grad_forget.items()}
    scores = influence.influence_scores(grad_forget, grad_retain, EPS, in_place=in_place)
    placed = {name: (s.device.type, s.shape) for name, s in scores.items()}
    assert placed == {"w": ("meta", (4, 3)), "v": ("meta", (2,))}
    assert (grad_forget == {} and grad_retain == {}) if in_place else set(grad_forget) == set(grad_retain) == {"w", "v"}


# ---------------------------------------------------------------------------------------------------------------------
# Candidates

LLAMA_KINDS = {
    "self_attn.q_proj": "attention", "self_attn.k_proj": "attention", "self_attn.v_proj": "attention",
    "self_attn.o_proj": "attention", "mlp.gate_proj": "ffn", "mlp.up_proj": "ffn", "mlp.down_proj": "ffn",
}


def test_candidates_tiny_llama_are_block_weights_only(tokenizer):
    model = tiny_llama(len(tokenizer), layers=3)
    candidates = candidate_parameters(model)
    expected = {f"model.layers.{i}.{module}.weight": (i, module, kind)
                for i in range(3) for module, kind in LLAMA_KINDS.items()}
    assert set(candidates) == set(expected)
    params = dict(model.named_parameters())
    for name, cand in candidates.items():
        layer, module, kind = expected[name]
        assert (cand.name, cand.layer, cand.module, cand.kind) == (name, layer, module, kind)
        assert cand.numel == params[name].numel()
        assert params[name].dim() == 2


def test_candidates_embeddings_only_when_asked(tokenizer):
    model = tiny_llama(len(tokenizer))  # tied LM head: the embedding matrix is listed once
    plain = candidate_parameters(model)
    assert not any("embed" in name or "lm_head" in name or "norm" in name for name in plain)
    with_emb = candidate_parameters(model, include_embeddings=True)
    extra = set(with_emb) - set(plain)
    assert extra == {"model.embed_tokens.weight"}
    assert with_emb["model.embed_tokens.weight"].kind == "embedding"
    assert with_emb["model.embed_tokens.weight"].layer is None
    # A tied head is the embedding: include_lm_head alone adds nothing.
    assert set(candidate_parameters(model, include_lm_head=True)) == set(plain)


def _arch_models():
    from transformers import (GPT2Config, GPT2LMHeadModel, GPTNeoXConfig, GPTNeoXForCausalLM, MistralConfig,
                              MistralForCausalLM, OPTConfig, OPTForCausalLM, PhiConfig, PhiForCausalLM, Qwen2Config,
                              Qwen2ForCausalLM)

    torch.manual_seed(0)
    small = dict(num_hidden_layers=2, hidden_size=32, num_attention_heads=4, intermediate_size=64, vocab_size=100)
    return {
        "gpt2": (GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=32, n_head=4, vocab_size=100, bos_token_id=0,
                                            eos_token_id=0)),
                 "transformer.h", {"attn.c_attn": "attention", "attn.c_proj": "attention", "mlp.c_fc": "ffn",
                                   "mlp.c_proj": "ffn"}),
        "gpt_neox": (GPTNeoXForCausalLM(GPTNeoXConfig(**small)), "gpt_neox.layers",
                     {"attention.query_key_value": "attention", "attention.dense": "attention",
                      "mlp.dense_h_to_4h": "ffn", "mlp.dense_4h_to_h": "ffn"}),
        "opt": (OPTForCausalLM(OPTConfig(num_hidden_layers=2, hidden_size=32, num_attention_heads=4, ffn_dim=64,
                                         vocab_size=100, word_embed_proj_dim=32)), "model.decoder.layers",
                {"self_attn.q_proj": "attention", "self_attn.k_proj": "attention", "self_attn.v_proj": "attention",
                 "self_attn.out_proj": "attention", "fc1": "ffn", "fc2": "ffn"}),
        "phi": (PhiForCausalLM(PhiConfig(**small)), "model.layers",
                {"self_attn.q_proj": "attention", "self_attn.k_proj": "attention", "self_attn.v_proj": "attention",
                 "self_attn.dense": "attention", "mlp.fc1": "ffn", "mlp.fc2": "ffn"}),
        "qwen2": (Qwen2ForCausalLM(Qwen2Config(num_key_value_heads=2, **small)), "model.layers", LLAMA_KINDS),
        "mistral": (MistralForCausalLM(MistralConfig(num_key_value_heads=2, **small)), "model.layers", LLAMA_KINDS),
    }


@pytest.fixture(scope="module")
def arch_models():
    return _arch_models()


@pytest.mark.parametrize("arch", ["gpt2", "gpt_neox", "opt", "phi", "qwen2", "mistral"])
def test_candidates_recognise_every_block_weight(arch_models, arch):
    model, blocks_path, kinds = arch_models[arch]
    blocks = model.get_submodule(blocks_path)
    # Expected from the module tree itself: every 2-D weight of block i, named as named_parameters names it.
    expected = {}
    for i, block in enumerate(blocks):
        for sub_name, param in block.named_parameters():
            if param.dim() == 2 and sub_name.endswith(".weight"):
                module = sub_name.removesuffix(".weight")
                expected[f"{blocks_path}.{i}.{sub_name}"] = (i, module, kinds[module])
    assert len(expected) == 2 * len(kinds)
    candidates = candidate_parameters(model)
    assert set(candidates) == set(expected), arch
    for name, cand in candidates.items():
        layer, module, kind = expected[name]
        assert cand.kind != "other", name
        assert (cand.layer, cand.module, cand.kind) == (layer, module, kind), name
    # Embeddings / head only when asked: never "other", never a block layer index.
    for name, cand in candidate_parameters(model, include_embeddings=True, include_lm_head=True).items():
        if name not in expected:
            assert cand.layer is None and cand.kind in ("embedding", "lm_head"), name


# ---------------------------------------------------------------------------------------------------------------------
# kth_largest: exact; the same tau as topk and as the previous algorithm (kept below as the reference)

# The previous algorithm of influence.kth_largest (sampled bracket, histogram passes over 4M-value chunks, topk at
# the end), kept verbatim as the reference the radix select must agree with.
_BINS = 4096  # buckets per histogram pass; each pass narrows the search by about this factor
_GATHER_AT_MOST = 1 << 20  # once the k-th value's bucket holds this few values, gather them and pick it exactly
_CHUNK = 1 << 22  # values handled at once, so the extra memory is bounded whatever the model size


def _chunks(scores: dict[str, torch.Tensor]):
    for tensor in scores.values():
        flat = tensor.reshape(-1)
        for start in range(0, flat.numel(), _CHUNK):
            yield flat[start: start + _CHUNK]


def _in_range(chunk: torch.Tensor, low: float, high: float) -> torch.Tensor:
    """The values v with low < v <= high."""
    return chunk[(chunk > low) & (chunk <= high)]


def _old_kth_largest(scores: dict[str, torch.Tensor], k: int, sample_size: int = 1 << 20) -> float:
    """The k-th largest value over all tensors (1 <= k <= n, finite values), in O(n) time and bounded extra memory.

    1. Guess a narrow interval (low, high] that holds it, from a random sample of the scores.
    2. One counting pass checks the guess: fewer than k values above `high`, at least k above `low`.
    3. Search inside the interval (`_kth_in_interval`); if the guess was wrong, search everything instead.
    The answer is exact either way; the sample only makes the usual case fast (a few cheap passes, no sort).
    """
    low, high = _sample_bracket(scores, k, sample_size)
    above, inside = 0, []
    for chunk in _chunks(scores):
        above += int((chunk > high).sum())
        if sum(v.numel() for v in inside) <= _GATHER_AT_MOST:  # keep memory bounded if the guess was poor
            inside.append(_in_range(chunk, low, high))
    inside = torch.cat(inside)
    if above < k <= above + inside.numel() and inside.numel() <= _GATHER_AT_MOST:
        return inside.topk(k - above).values[-1].item()
    return _kth_in_interval(scores, k, -math.inf, math.inf, 0)


def _sample_bracket(scores: dict[str, torch.Tensor], k: int, sample_size: int = 1 << 20) -> tuple[float, float]:
    """An interval (low, high] that very likely holds the k-th largest score, read off a uniform random sample.

    The sample's rank of the k-th value is about k * m / n, with a standard deviation below sqrt(k * m / n); six
    of those on each side make a miss rare (a miss costs only time, not correctness).
    """
    n = sum(t.numel() for t in scores.values())
    generator = torch.Generator().manual_seed(0)
    sample = torch.cat([
        t.reshape(-1)[torch.randint(t.numel(), (max(1, round(sample_size * t.numel() / n)),), generator=generator)
                      .to(t.device)].cpu()
        for t in scores.values()
    ])
    m = sample.numel()
    expected = k * m / n
    margin = 6 * math.sqrt(expected + 1) + 8
    ranked = sample.sort(descending=True).values  # the sample is small (about a million values)
    high_rank, low_rank = int(expected - margin), int(expected + margin)
    high = ranked[high_rank].item() if high_rank >= 0 else math.inf
    low = ranked[low_rank].item() if low_rank < m else -math.inf
    if low == high:  # ties in the sample: widen so that the tied value is inside (low, high]
        # in the scores' own precision: a float64 step below a float32 value rounds back to it
        low = torch.nextafter(sample.new_tensor(low), sample.new_tensor(-math.inf)).item()
    return low, high


def _kth_in_interval(scores: dict[str, torch.Tensor], k: int, low: float, high: float, above: int) -> float:
    """The k-th largest value, known to lie in (low, high] with `above` values greater than high.

    Histogram search: each pass buckets the values inside the interval (geometric buckets for positive values, since
    scores span many orders of magnitude) and keeps the bucket where the running count from the top reaches k. When
    the interval holds few enough values they are gathered and the exact k-th is picked with topk.
    """
    for _ in range(16):
        inside = 0
        v_min, v_max = math.inf, -math.inf
        for chunk in _chunks(scores):
            values = _in_range(chunk, low, high)
            if values.numel():
                inside += values.numel()
                v_min = min(v_min, values.min().item())
                v_max = max(v_max, values.max().item())
        rank = k - above  # the wanted value is the rank-th largest inside (low, high]
        if v_min == v_max:  # all values inside are equal (ties, e.g. many zero scores)
            return v_min
        if inside <= _GATHER_AT_MOST:
            gathered = torch.cat([_in_range(chunk, low, high) for chunk in _chunks(scores)])
            return gathered.topk(rank).values[-1].item()
        if v_min > 0:
            edges = torch.logspace(math.log10(v_min), math.log10(v_max), _BINS + 1, dtype=torch.float64)
        else:
            edges = torch.linspace(v_min, v_max, _BINS + 1, dtype=torch.float64)
        edges[0], edges[-1] = v_min, v_max
        inner = edges[1:-1].float()
        counts = torch.zeros(_BINS, dtype=torch.long)
        for chunk in _chunks(scores):
            values = _in_range(chunk, low, high)
            if values.numel():
                # bucket j holds inner[j-1] < v <= inner[j] (bucket 0: v <= inner[0]; last: v > inner[-1])
                buckets = torch.bucketize(values, inner.to(values.device))
                counts += torch.bincount(buckets, minlength=_BINS).cpu()
        from_top = counts.flip(0).cumsum(0)
        j = _BINS - 1 - int(torch.searchsorted(from_top, torch.tensor(rank)).item())  # bucket holding the rank-th
        new_above = above + int(counts[j + 1:].sum())
        new_low = inner[j - 1].item() if j > 0 else low
        new_high = inner[j].item() if j < _BINS - 1 else high
        if (new_low, new_high) == (low, high):  # no progress (float resolution): gather what is left
            break
        low, high, above = new_low, new_high, new_above
    gathered = torch.cat([_in_range(chunk, low, high) for chunk in _chunks(scores)])
    return gathered.topk(k - above).values[-1].item()


def _reference_kth(scores: dict[str, torch.Tensor], k: int) -> float:
    flat = torch.cat([t.reshape(-1).double() for t in scores.values()])
    return torch.topk(flat, k).values[-1].item()


def _score_sets():
    g = torch.Generator().manual_seed(1)
    sets = {
        "single": {"a": torch.rand(1, generator=g)},
        "small": {"a": torch.rand(3, 4, generator=g), "b": torch.rand(7, generator=g)},
        "lognormal": {f"w{i}": torch.randn(40, 50, generator=g).exp() ** 4 for i in range(3)},
        "signed": {"a": torch.randn(1000, generator=g), "b": torch.randn(37, 11, generator=g)},
        "many_zeros": {"a": torch.zeros(3000), "b": torch.cat([torch.zeros(2000), torch.rand(500, generator=g)]),
                       "c": torch.rand(20, generator=g)},
        "all_equal": {"a": torch.full((50, 40), 0.25), "b": torch.full((777,), 0.25)},
        "few_values": {"a": torch.randint(0, 4, (3000,), generator=g).float(),
                       "b": torch.randint(0, 4, (60, 30), generator=g).float()},
        "tiny_spread": {"a": 1.0 + torch.arange(5000, dtype=torch.float32) * 1e-7},
        # scores over 60 orders of magnitude, as |G_f| / (|G_r| + eps) gives
        "many_magnitudes": {"a": 10.0 ** (torch.rand(4000, generator=g) * 60 - 30),
                            "b": 10.0 ** (torch.rand(50, 30, generator=g) * 60 - 30)},
        # the ends of float32: the largest finite, subnormals, signed zeros, values one ulp apart
        "extreme": {"a": torch.tensor([3.4028235e38, -3.4028235e38, 1e-45, -1e-45, 1.17549435e-38, 0.0, -0.0,
                                       1.0, 1.0000001, 0.99999994, 1e-45, 3.4028235e38] * 40),
                    "b": torch.rand(100, generator=g) * 1e-40},
        "neighbours": {"a": torch.nextafter(torch.full((600,), 2.0), torch.tensor(3.0)),
                       "b": torch.full((900,), 2.0), "c": torch.nextafter(torch.full((333,), 2.0), torch.tensor(1.0))},
        "bfloat16": {"a": torch.randn(2000, generator=g).exp().bfloat16(),
                     "b": torch.rand(40, 40, generator=g).bfloat16()},
        "float64_mixed": {"a": torch.randn(1500, generator=g, dtype=torch.float64),
                          "b": torch.randn(900, generator=g).exp()},
        "float16": {"a": torch.randn(2000, generator=g).half(), "b": torch.tensor([0.0, -0.0] * 50).half()},
        # one device's tensors are joined into one buffer: fp16, bf16 and fp32 together, signed, with ties
        "halves_mixed": {"a": torch.randn(700, generator=g).half(), "b": torch.randn(30, 30, generator=g).bfloat16(),
                         "c": torch.randn(500, generator=g).mul(4).round()},
    }
    return sets


def _ks(n: int) -> list[int]:
    return sorted({1, 2, n // 1000 + 1, n // 10 + 1, n // 2, n - 1, n} & set(range(1, n + 1)))


@pytest.mark.parametrize("name", list(_score_sets()))
def test_kth_largest_matches_topk_and_the_previous_algorithm(name):
    scores = _score_sets()[name]
    n = sum(t.numel() for t in scores.values())
    for k in _ks(n):
        tau = kth_largest(scores, k)
        assert tau == _reference_kth(scores, k), (name, k)
        if all(t.dtype == torch.float32 for t in scores.values()):  # what the previous algorithm was written for
            assert tau == _old_kth_largest(scores, k, sample_size=2048), (name, k)


@pytest.mark.parametrize("name", list(_score_sets()))
def test_kth_largest_reading_tensors_in_pieces(monkeypatch, name):
    """Tiny pieces: tensors are split at odd places and the histograms are summed over many pieces."""
    monkeypatch.setattr(selection, "_PIECE", 97)
    scores = _score_sets()[name]
    n = sum(t.numel() for t in scores.values())
    for k in _ks(n):
        assert kth_largest(scores, k) == _reference_kth(scores, k), (name, k)


def test_kth_largest_on_random_sizes_against_the_previous_algorithm():
    g = torch.Generator().manual_seed(7)
    for trial in range(6):
        sizes = torch.randint(1, 3000, (int(torch.randint(1, 5, (1,), generator=g)),), generator=g).tolist()
        scores = {f"t{i}": torch.randn(s, generator=g).exp() for i, s in enumerate(sizes)}
        if trial % 2:  # half the values zero: heavy ties at the bottom
            for t in scores.values():
                t[torch.rand(t.shape, generator=g) < 0.5] = 0.0
        n = sum(sizes)
        for k in (1, n // 7 + 1, n // 2, n, int(torch.randint(1, n + 1, (1,), generator=g))):
            assert kth_largest(scores, k) == _old_kth_largest(scores, k, sample_size=2048) == \
                _reference_kth(scores, k), (sizes, k)


def test_kth_largest_refuses_k_out_of_range():
    with pytest.raises(ValueError):
        kth_largest({"a": torch.rand(5)}, 0)
    with pytest.raises(ValueError):
        kth_largest({"a": torch.rand(5)}, 6)


# On a GPU every read of a value to the host (aten::item / aten::_local_scalar_dense) and every boolean index
# (aten::nonzero, which must learn how many are true) waits for the device: selection does a fixed number of them,
# not a number per score tensor (a model has hundreds).
_HOST_READS = ("aten::_local_scalar_dense", "aten::item", "aten::nonzero")


def _host_reads(run) -> dict[str, int]:
    """How many of each op in _HOST_READS `run()` calls, from the profiler's trace."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        run()
    names = [event.name for event in prof.events()]
    return {name: names.count(name) for name in _HOST_READS}


def _scores_in(parts: int) -> dict[str, torch.Tensor]:
    """The same 4,000 scores, signed, with ties and -0.0, cut into `parts` tensors."""
    flat = torch.randn(4000, generator=torch.Generator().manual_seed(3)).mul(40).round().div(8)
    return {f"w{i}": piece.clone() for i, piece in enumerate(flat.chunk(parts))}


def test_selection_reads_the_host_as_often_for_200_tensors_as_for_10():
    reads, results = {}, {}
    for parts in (10, 200):
        scores = _scores_in(parts)
        assert len(scores) == parts
        reads[parts] = [_host_reads(lambda: kth_largest(scores, 1234)),
                        _host_reads(lambda: select_top_fraction(scores, 0.1)),
                        _host_reads(lambda: selection.top_fraction_counts(scores, 0.1))]
        chosen = select_top_fraction(scores, 0.1)
        results[parts] = (kth_largest(scores, 1234), chosen.threshold, chosen.selected)
    assert reads[10] == reads[200], reads
    for counted in reads[200]:
        assert counted["aten::nonzero"] == 0, counted
        assert counted["aten::_local_scalar_dense"] <= 8, counted  # a few per pass of the radix select
    assert results[10] == results[200]


# ---------------------------------------------------------------------------------------------------------------------
# Selection and summary


def _distinct_scores(model) -> dict[str, torch.Tensor]:
    """Scores without ties: a random permutation of 1..n spread over the candidates."""
    candidates = candidate_parameters(model)
    params = dict(model.named_parameters())
    n = sum(c.numel for c in candidates.values())
    values = torch.randperm(n, generator=torch.Generator().manual_seed(0)).float() + 1.0
    scores, start = {}, 0
    for name in candidates:
        size = params[name].numel()
        scores[name] = values[start: start + size].view(params[name].shape).clone()
        start += size
    return scores


def test_select_top_fraction_counts(tokenizer):
    model = tiny_llama(len(tokenizer))
    scores = _distinct_scores(model)
    n = sum(t.numel() for t in scores.values())
    for p in (1.0, 0.5, 0.1, 0.01, 0.001, 1 / n, 0.4 / n):
        selection = select_top_fraction(scores, p)
        k = max(1, round(p * n))
        assert selection.selected == k, p
        assert selection.candidates == n
        assert sum(int(m.sum()) for m in selection.masks.values()) == k
        assert selection.fraction == pytest.approx(k / n)
        # the selected weights are exactly the k highest scores
        assert selection.threshold == n - k + 1
        for name, mask in selection.masks.items():
            assert mask.dtype == torch.bool and mask.shape == scores[name].shape
            assert torch.equal(mask, scores[name] >= n - k + 1)


def test_scores_list_the_weights_in_the_models_order(tokenizer, forget_items, retain_items):
    """Gradients arrive in backward's order (last layer first); the scores come back in the candidates' order."""
    model = tiny_llama(len(tokenizer))
    candidates = candidate_parameters(model)
    scores = compute_influence(model, qa_batches(tokenizer, forget_items, 2, MAX_LENGTH),
                               qa_batches(tokenizer, retain_items, 2, MAX_LENGTH), candidates, EPS)
    assert list(scores) == list(candidates)


def test_select_top_fraction_consuming_the_scores_gives_the_same_selection(tokenizer):
    """consume=True (a run that needs the scores no more): the same tau, count and masks, and each score tensor is
    gone from the dict once its mask exists (so no moment holds every score and every mask)."""
    model = tiny_llama(len(tokenizer))
    scores = _distinct_scores(model)
    kept = dict(scores)
    alive = []

    class Watched(dict):  # records how many score tensors are left each time one is taken
        def pop(self, name, *default):
            alive.append(len(self))
            return super().pop(name, *default)

    watched = Watched(scores)
    consumed = select_top_fraction(watched, 0.05, consume=True)
    plain = select_top_fraction(kept, 0.05)
    assert (consumed.threshold, consumed.selected, consumed.candidates) == \
        (plain.threshold, plain.selected, plain.candidates)
    assert all(torch.equal(consumed.masks[name], plain.masks[name]) for name in plain.masks)
    assert len(watched) == 0 and alive == list(range(len(kept), 0, -1))
    assert len(kept) == len(plain.masks)  # without consume the scores stay


def test_select_top_fraction_real_scores_close_to_p(tokenizer, forget_items, retain_items):
    model = tiny_llama(len(tokenizer))
    candidates = candidate_parameters(model)
    scores = compute_influence(model, qa_batches(tokenizer, forget_items, 4, MAX_LENGTH),
                               qa_batches(tokenizer, retain_items, 4, MAX_LENGTH), candidates, EPS)
    n = sum(c.numel for c in candidates.values())
    for p in (0.01, 0.1, 0.5):
        selection = select_top_fraction(scores, p)
        assert abs(selection.selected - round(p * n)) <= max(1, 0.005 * p * n), p
        # every selected score is >= every unselected score
        sel = torch.cat([scores[k][m] for k, m in selection.masks.items()])
        rest = torch.cat([scores[k][~m] for k, m in selection.masks.items()])
        assert sel.min() >= rest.max()


def test_summarize_selection_totals_add_up(tokenizer):
    model = tiny_llama(len(tokenizer), layers=3)
    candidates = candidate_parameters(model)
    selection = select_top_fraction(_distinct_scores(model), 0.07)
    summary = summarize_selection(selection, candidates)
    assert summary["selected"] == selection.selected
    assert summary["candidates"] == selection.candidates
    assert summary["fraction"] == pytest.approx(selection.selected / selection.candidates)
    assert summary["p"] == 0.07 and summary["threshold"] == selection.threshold
    assert sum(row["selected"] for row in summary["by_layer"]) == selection.selected
    assert sum(row["total"] for row in summary["by_layer"]) == selection.candidates
    by_kind = summary["by_kind"]
    assert set(by_kind) == {"attention", "ffn"}
    assert by_kind["attention"]["total"] + by_kind["ffn"]["total"] == selection.candidates
    assert by_kind["attention"]["selected"] + by_kind["ffn"]["selected"] == selection.selected
    assert len(summary["by_layer"]) == 3 * 7
    for row in summary["by_layer"]:
        assert set(row) == {"layer", "module", "kind", "selected", "total"}
        name = f"model.layers.{row['layer']}.{row['module']}.weight"
        assert row["total"] == candidates[name].numel
        assert row["selected"] == int(selection.masks[name].sum())
        assert row["kind"] == LLAMA_KINDS[row["module"]]


def test_random_selection_count_and_seed(tokenizer):
    model = tiny_llama(len(tokenizer))
    candidates = candidate_parameters(model)
    params = dict(model.named_parameters())
    n = sum(c.numel for c in candidates.values())
    for p in (0.01, 0.3, 1.0):
        selection = random_selection(candidates, params, p, seed=1)
        k = max(1, round(p * n))
        assert isinstance(selection, Selection)
        assert selection.selected == k and selection.candidates == n
        assert sum(int(m.sum()) for m in selection.masks.values()) == k
        for name, mask in selection.masks.items():
            assert mask.shape == params[name].shape and mask.dtype == torch.bool
    a = random_selection(candidates, params, 0.05, seed=11)
    b = random_selection(candidates, params, 0.05, seed=11)
    c = random_selection(candidates, params, 0.05, seed=12)
    assert all(torch.equal(a.masks[name], b.masks[name]) for name in candidates)
    assert not all(torch.equal(a.masks[name], c.masks[name]) for name in candidates)
    assert c.selected == a.selected
    assert a.threshold is None  # a random mask has no score threshold


def test_random_selection_count_is_exact_for_a_large_model():
    """Above 2**27 candidates (SmolLM2-135M with --include-embeddings has 134.5M) the mask is drawn with
    replacement, so duplicates make it smaller than round(p * n). A fake parameter (shape only) keeps this cheap."""
    from types import SimpleNamespace

    from grin_engine.method.influence import Candidate

    n = (1 << 27) + 1000
    candidates = {"w": Candidate("w", 0, "mlp.up_proj", "ffn", n)}
    params = {"w": SimpleNamespace(shape=torch.Size([n]), device=torch.device("cpu"))}
    selection = random_selection(candidates, params, 0.01, seed=0)
    assert selection.candidates == n
    assert int(selection.masks["w"].sum()) == selection.selected
    assert selection.selected == round(0.01 * n), f"{round(0.01 * n) - selection.selected} weights short"


def test_non_finite_scores_are_refused_before_selection(monkeypatch, tiny):
    """Overflowed gradients (inf) would give inf / nan scores, which no threshold can rank: compute_influence must
    stop with a clear GrinError instead of handing them to the selection. (eps = 0 is refused by GrinConfig.)"""
    candidates = candidate_parameters(tiny.model)
    first = next(iter(candidates))

    def overflowing(model, batches, names, on_batch=None, mean="token"):
        grads = {n: torch.ones_like(dict(model.named_parameters())[n]) for n in names}
        grads[first][0, 0] = math.inf
        return grads

    monkeypatch.setattr(influence, "accumulate_gradients", overflowing)
    with pytest.raises(GrinError, match="overflowed"):
        influence.compute_influence(tiny.model, [], [], candidates, eps=1e-8)


@pytest.mark.parametrize("batch_size", [1, 3])
def test_item_grad_mean_is_the_mean_of_per_item_means(tokenizer, forget_items, batch_size):
    """--grad-mean item: G = grad of (1/n) sum_i NLL_i / |y_i|, whatever the batch size; token (default) differs."""
    model = tiny_llama(len(tokenizer), seed=3)
    names = [n for n, _ in model.named_parameters() if n.endswith("q_proj.weight")]
    params = dict(model.named_parameters())
    item = influence.accumulate_gradients(model, qa_batches(tokenizer, forget_items, batch_size, 64), names,
                                          mean="item")
    token = influence.accumulate_gradients(model, qa_batches(tokenizer, forget_items, batch_size, 64), names)
    for p in params.values():
        p.requires_grad_(False)
    for n in names:
        params[n].requires_grad_(True)
    from grin_engine.method.losses import answer_nll
    total = 0
    for it in forget_items:  # one item at a time: its own token-mean NLL
        nll_sum, count = answer_nll(model, qa_batches(tokenizer, [it], 1, 64)[0])
        total = total + nll_sum[0] / count[0]
    (total / len(forget_items)).backward()
    for n in names:
        assert torch.allclose(item[n], params[n].grad, atol=1e-6, rtol=1e-4)
        assert not torch.allclose(token[n], item[n], atol=1e-6, rtol=1e-3)
        params[n].requires_grad_(False)
        params[n].grad = None
    with pytest.raises(GrinError, match="grad mean"):
        influence.accumulate_gradients(model, qa_batches(tokenizer, forget_items, 2, 64), names, mean="median")
