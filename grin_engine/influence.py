"""Which weights hold the forget set: gradients, influence scores, a global top-p selection, a per-layer summary.

DESIGN.md §2.1-2.5:
    G_f = grad L_f(theta),  G_r = grad L_r(theta)            (L = token-mean answer NLL over the whole set)
    S_i = |G_f[i]| / (|G_r[i]| + eps)                        (GRIN, arXiv 2508.06467)
    select the weights with S >= tau, one tau for the whole model, so that a fraction p of the candidates is selected.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import torch

from .config import GrinError
from .data import IGNORE_INDEX
from .losses import answer_nll

# ---------------------------------------------------------------------------------------------------------------------
# Candidates: which weights may be selected, and what each one is (layer, module, kind)

# "<anything>.<block index>.<module path>.weight" - the blocks of Llama/Qwen/Mistral/Gemma/Phi (model.layers.N),
# GPT-2 (transformer.h.N), GPT-NeoX (gpt_neox.layers.N), OPT (model.decoder.layers.N) ...
_BLOCK_WEIGHT = re.compile(r"^(?:.*\.)?(?:layers|h|blocks|block|layer)\.(\d+)\.(.+)\.weight$")
_ATTENTION_WORDS = ("attn", "attention", "q_proj", "k_proj", "v_proj", "o_proj", "query_key_value")
_FFN_WORDS = ("mlp", "feed_forward", "ffn", "fc1", "fc2", "dense_h_to_4h", "dense_4h_to_h", "gate_proj", "up_proj",
              "down_proj", "experts")
_EMBEDDING_WORDS = ("embed_tokens", "wte", "embed_in", "word_embeddings")
_HEAD_WORDS = ("lm_head", "embed_out")


@dataclass(frozen=True)
class Candidate:
    name: str  # parameter name, e.g. "model.layers.3.self_attn.q_proj.weight"
    layer: int | None  # block index; None for embeddings / head
    module: str  # module path inside the block, e.g. "self_attn.q_proj" (GPT-2: "attn.c_proj" vs "mlp.c_proj")
    kind: str  # "attention", "ffn", "other" (another 2-D block weight), "embedding" or "lm_head"
    numel: int


def module_kind(module: str) -> str:
    """attention / ffn / other, from the module path inside a block."""
    low = module.lower()
    if any(word in low for word in _ATTENTION_WORDS):
        return "attention"
    if any(word in low for word in _FFN_WORDS):
        return "ffn"
    return "other"


def candidate_parameters(model, include_embeddings: bool = False, include_lm_head: bool = False) -> dict[str, Candidate]:
    """Every 2-D weight of the transformer blocks; embeddings and an untied LM head only when asked for.

    Norms and biases are 1-D and never candidates. A tied LM head is the embedding matrix (named_parameters lists it
    once), so it comes with include_embeddings.
    """
    candidates = {}
    for name, param in model.named_parameters():
        if param.dim() != 2:
            continue
        match = _BLOCK_WEIGHT.match(name)
        if match:
            layer, module = int(match.group(1)), match.group(2)
            candidates[name] = Candidate(name, layer, module, module_kind(module), param.numel())
        elif include_embeddings and any(word in name for word in _EMBEDDING_WORDS):
            candidates[name] = Candidate(name, None, name.removesuffix(".weight"), "embedding", param.numel())
        elif include_lm_head and any(word in name for word in _HEAD_WORDS):
            candidates[name] = Candidate(name, None, name.removesuffix(".weight"), "lm_head", param.numel())
    return candidates


# ---------------------------------------------------------------------------------------------------------------------
# Gradients and scores


def count_answer_tokens(batches: list[dict]) -> int:
    """Tokens that carry a label (the answers), counted as the loss counts them (shifted by one)."""
    return int(sum((b["labels"][:, 1:] != IGNORE_INDEX).sum() for b in batches))


GRAD_MEANS = ("token", "item")


def accumulate_gradients(model, batches: list[dict], names: list[str], on_batch=None,
                         mean: str = "token") -> dict[str, torch.Tensor]:
    """G = grad L over the whole set, with L (DESIGN.md §2.1)
    - mean="token" (default): (sum of all answer-token NLLs of all batches) / (number of those tokens): every answer
      token weighs the same, so a long answer weighs more than a short one;
    - mean="item": the mean over items of each item's token-mean NLL (every item weighs the same).

    Each batch contributes its share (grad(sum of its token NLLs) / N_total, or grad(sum of its items' mean NLLs) /
    n_items), so the sum over batches is exactly the gradient of L whatever the batch size. Only the named weights get gradients (the others are skipped
    by autograd). Gradients are kept in float32 even for a bf16 model, so the sum over batches keeps its precision.
    """
    params = dict(model.named_parameters())
    for param in model.parameters():
        param.requires_grad_(False)
    for name in names:
        params[name].requires_grad_(True)
    if mean not in GRAD_MEANS:
        raise GrinError(f"grad mean must be one of {', '.join(GRAD_MEANS)}, got {mean!r}")
    total_tokens = max(1, count_answer_tokens(batches))
    total_items = max(1, sum(int(b["labels"].shape[0]) for b in batches))
    grads: dict[str, torch.Tensor] = {}
    device = next(model.parameters()).device
    try:
        for i, batch in enumerate(batches):
            batch = {k: v.to(device) for k, v in batch.items()}
            nll_sum, n_tokens = answer_nll(model, batch)
            if mean == "token":
                (nll_sum.sum() / total_tokens).backward()
            else:
                ((nll_sum / n_tokens.clamp(min=1)).sum() / total_items).backward()
            for name in names:
                grad = params[name].grad
                params[name].grad = None
                if name in grads:
                    grads[name].add_(grad)
                else:  # the first batch's gradient becomes the accumulator: no copy for float32 models
                    grads[name] = grad.float()
            if on_batch is not None:
                on_batch(i + 1, len(batches))
    finally:
        for name in names:
            params[name].requires_grad_(False)
            params[name].grad = None
    return grads


def influence_scores(grad_forget: dict[str, torch.Tensor], grad_retain: dict[str, torch.Tensor],
                     eps: float = 1e-8, in_place: bool = False) -> dict[str, torch.Tensor]:
    """S = |G_f| / (|G_r| + eps), per weight. With in_place=True the gradient tensors are reused (no extra memory)."""
    scores = {}
    for name, g_f in grad_forget.items():
        g_r = grad_retain[name]
        if in_place:
            scores[name] = g_f.abs_().div_(g_r.abs_().add_(eps))
        else:
            scores[name] = g_f.abs() / (g_r.abs() + eps)
    return scores


def gradient_pair(model, forget_batches, retain_batches, names: list[str], on_batch=None, mean: str = "token"):
    """(G_f, G_r): the accumulated answer-NLL gradients on the forget and on the retain batches.
    on_batch(done, total) counts the batches of both."""
    n_batches = len(forget_batches) + len(retain_batches)
    report = (lambda done, _total: on_batch(done, n_batches)) if on_batch else None
    grad_forget = accumulate_gradients(model, forget_batches, names, report, mean)
    report_r = (lambda done, _total: on_batch(len(forget_batches) + done, n_batches)) if on_batch else None
    return grad_forget, accumulate_gradients(model, retain_batches, names, report_r, mean)


def require_finite(scores: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    if not all(bool(torch.isfinite(s).all()) for s in scores.values()):
        raise GrinError("influence: some gradients overflowed (inf or nan scores); "
                        "try float32 (--dtype float32) or fewer, shorter items")
    return scores


def compute_influence(model, forget_batches, retain_batches, candidates: dict[str, Candidate], eps: float,
                      on_batch=None, mean: str = "token") -> dict[str, torch.Tensor]:
    """Both gradients, then the scores, reusing the gradient memory: peak extra memory is two model-sized buffers."""
    grad_forget, grad_retain = gradient_pair(model, forget_batches, retain_batches, list(candidates), on_batch, mean)
    return require_finite(influence_scores(grad_forget, grad_retain, eps=eps, in_place=True))


# ---------------------------------------------------------------------------------------------------------------------
# Selection: one global threshold, found without sorting all the weights

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


def kth_largest(scores: dict[str, torch.Tensor], k: int) -> float:
    """The k-th largest value over all tensors (1 <= k <= n, finite values), in O(n) time and bounded extra memory.

    1. Guess a narrow interval (low, high] that holds it, from a random sample of the scores.
    2. One counting pass checks the guess: fewer than k values above `high`, at least k above `low`.
    3. Search inside the interval (`_kth_in_interval`); if the guess was wrong, search everything instead.
    The answer is exact either way; the sample only makes the usual case fast (a few cheap passes, no sort).
    """
    low, high = _sample_bracket(scores, k)
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


@dataclass
class Selection:
    p: float
    threshold: float | None  # tau: a weight is selected when its score >= tau (None: not a score threshold)
    selected: int
    candidates: int
    masks: dict[str, torch.Tensor]  # bool, same shape as each weight

    @property
    def fraction(self) -> float:
        return self.selected / max(1, self.candidates)


def select_top_fraction(scores: dict[str, torch.Tensor], p: float) -> Selection:
    """Select the round(p * n) highest-scoring weights over the whole model (more only where scores tie at tau)."""
    n = sum(t.numel() for t in scores.values())
    k = min(n, max(1, round(p * n)))
    tau = kth_largest(scores, k)
    masks = {name: t >= tau for name, t in scores.items()}
    selected = int(sum(m.sum() for m in masks.values()))
    return Selection(p=p, threshold=tau, selected=selected, candidates=n, masks=masks)


def random_selection(candidates: dict[str, Candidate], params: dict[str, torch.Tensor], p: float,
                     seed: int) -> Selection:
    """A uniformly random mask of the same size round(p * n) (a baseline: is the influence score better than luck?)."""
    names = list(candidates)
    sizes = [candidates[name].numel for name in names]
    n = sum(sizes)
    k = min(n, max(1, round(p * n)))
    generator = torch.Generator().manual_seed(seed)
    flat = torch.zeros(n, dtype=torch.bool)
    if n <= (1 << 26):
        flat[torch.randperm(n, generator=generator)[:k]] = True
    else:  # a full permutation would take 8 bytes per weight: draw positions, then top up the duplicates
        while (missing := k - int(flat.sum())) > 0:
            flat[torch.randint(0, n, (missing,), generator=generator)] = True
    masks, start = {}, 0
    for name, size in zip(names, sizes):
        masks[name] = flat[start: start + size].view(params[name].shape).to(params[name].device)
        start += size
    return Selection(p=p, threshold=None, selected=int(flat.sum()), candidates=n, masks=masks)


def jaccard(a: Selection, b: Selection) -> float:
    """|A and B| / |A or B| of two masks over the same weights: 1 = the same weights, 0 = none in common."""
    both = either = 0
    for name, mask in a.masks.items():
        other = b.masks[name].to(mask.device)
        both += int((mask & other).sum())
        either += int((mask | other).sum())
    return both / either if either else 1.0


# ---------------------------------------------------------------------------------------------------------------------
# Summary: what the heatmap and the report show


def summarize_selection(selection: Selection, candidates: dict[str, Candidate]) -> dict:
    """Selected / total per (layer, module), and totals for attention and feed-forward (report contract)."""
    counts = {name: int(mask.sum()) for name, mask in selection.masks.items()}
    return summarize_counts(counts, candidates, selection.p, selection.threshold)


def summarize_counts(counts: dict[str, int], candidates: dict[str, Candidate], p: float, threshold: float) -> dict:
    """The summary from the number of selected weights of each candidate."""
    by_layer, by_kind = [], {"attention": {"selected": 0, "total": 0}, "ffn": {"selected": 0, "total": 0}}
    for name, cand in candidates.items():
        selected = counts.get(name, 0)
        by_layer.append({"layer": cand.layer, "module": cand.module, "kind": cand.kind,
                         "selected": selected, "total": cand.numel})
        if cand.kind in by_kind:
            by_kind[cand.kind]["selected"] += selected
            by_kind[cand.kind]["total"] += cand.numel
    selected, total = sum(counts.values()), sum(c.numel for c in candidates.values())
    return {
        "p": p,
        "threshold": threshold,
        "selected": selected,
        "candidates": total,
        "fraction": selected / max(1, total),
        "by_kind": by_kind,
        "by_layer": by_layer,
    }
