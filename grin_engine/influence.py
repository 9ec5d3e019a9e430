"""Which weights hold the forget set: gradients, influence scores, a global top-p selection, a per-layer summary.

DESIGN.md §2.1-2.5:
    G_f = grad L_f(theta),  G_r = grad L_r(theta)            (L = token-mean answer NLL over the whole set)
    S_i = |G_f[i]| / (|G_r[i]| + eps)                        (GRIN, arXiv 2508.06467)
    select the weights with S >= tau, one tau for the whole model, so that a fraction p of the candidates is selected.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from .config import GrinError
from .data import IGNORE_INDEX
from .losses import answer_nll
from .models import input_device

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

    Memory (DESIGN.md §5a, memory): the accumulators (float32, on each weight's device) are the only model-sized
    buffers. A hook on each weight adds its gradient into its accumulator the moment autograd has computed it and
    drops it, so a batch's gradients never exist for the whole model at once: weights + 4 bytes per candidate
    parameter + one weight's gradient. The sums are the same additions in the same order as adding whole gradient
    sets afterwards.
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

    def add_into_accumulator(name: str):
        def hook(param):  # runs inside backward, right after autograd wrote this weight's gradient
            grad, param.grad = param.grad, None
            if name in grads:
                grads[name].add_(grad)
            else:  # the first batch's gradient becomes the accumulator: no copy for float32 models
                grads[name] = grad.float()
        return hook

    handles = [params[name].register_post_accumulate_grad_hook(add_into_accumulator(name)) for name in names]
    device = input_device(model)
    try:
        for i, batch in enumerate(batches):
            batch = {k: v.to(device) for k, v in batch.items()}
            nll_sum, n_tokens = answer_nll(model, batch)
            if mean == "token":
                (nll_sum.sum() / total_tokens).backward()
            else:
                ((nll_sum / n_tokens.clamp(min=1)).sum() / total_items).backward()
            if on_batch is not None:
                on_batch(i + 1, len(batches))
    finally:
        for handle in handles:
            handle.remove()
        for name in names:
            params[name].requires_grad_(False)
            params[name].grad = None
    # in the order of `names` (the hook filled it in backward's order): scores, masks and everything built from them
    # list the weights in the model's order
    return {name: grads[name] for name in names if name in grads}


def park(grads: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Move the accumulators that sit on an accelerator to CPU memory, freeing the accelerator for the next set.
    The CPU copies are pinned (page-locked) where possible, so the copies run at full bus speed without stalling
    and come back the same way; CPU tensors stay as they are (no copy). float32 to float32: the values are exact.
    The dict is emptied as it goes, so each device buffer is freed as soon as its copy is queued."""
    parked, devices = {}, set()
    for name in list(grads):
        tensor = grads.pop(name)
        if tensor.device.type == "cpu":
            parked[name] = tensor
            continue
        try:
            host = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True)
        except RuntimeError:  # pinning refused (locked-memory limit, no driver support): ordinary memory
            host = torch.empty(tensor.shape, dtype=tensor.dtype)
        asynchronous = host.is_pinned() and tensor.device.type == "cuda"
        parked[name] = host.copy_(tensor, non_blocking=asynchronous)
        if asynchronous:
            devices.add(tensor.device)
    for device in devices:  # the host copies are complete before anyone reads them
        torch.cuda.synchronize(device)
    return parked


def influence_scores(grad_forget: dict[str, torch.Tensor], grad_retain: dict[str, torch.Tensor],
                     eps: float = 1e-8, in_place: bool = False) -> dict[str, torch.Tensor]:
    """S = |G_f| / (|G_r| + eps), per weight, on G_r's device (the weight's): a G_f parked on the CPU (`park`) is
    brought back one tensor at a time. With in_place=True the gradient tensors are reused and consumed: each pair is
    taken out of the two dicts (which end empty) as its score is formed, so G_r's memory turns into the scores'
    tensor by tensor and the peak stays at one model-sized set plus one tensor."""
    scores = {}
    for name in list(grad_forget):
        g_f = grad_forget.pop(name) if in_place else grad_forget[name]
        g_r = grad_retain.pop(name) if in_place else grad_retain[name]
        g_f = g_f.to(g_r.device, non_blocking=g_f.is_pinned())  # no copy when already there
        if in_place:
            scores[name] = g_f.abs_().div_(g_r.abs_().add_(eps))
        else:
            scores[name] = g_f.abs() / (g_r.abs() + eps)
    return scores


def gradient_pair(model, forget_batches, retain_batches, names: list[str], on_batch=None, mean: str = "token",
                  park_forget: bool = False):
    """(G_f, G_r): the accumulated answer-NLL gradients on the forget and on the retain batches.
    on_batch(done, total) counts the batches of both. park_forget=True moves G_f to CPU memory (`park`) before G_r
    is formed, so an accelerator holds one float32 accumulator set at a time (on a CPU it changes nothing)."""
    n_batches = len(forget_batches) + len(retain_batches)
    report = (lambda done, _total: on_batch(done, n_batches)) if on_batch else None
    grad_forget = accumulate_gradients(model, forget_batches, names, report, mean=mean)
    if park_forget:
        grad_forget = park(grad_forget)
    report_r = (lambda done, _total: on_batch(len(forget_batches) + done, n_batches)) if on_batch else None
    return grad_forget, accumulate_gradients(model, retain_batches, names, report_r, mean=mean)


def require_finite(scores: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    if not all(bool(torch.isfinite(s).all()) for s in scores.values()):
        raise GrinError("influence: some gradients overflowed (inf or nan scores); "
                        "try float32 (--dtype float32) or fewer, shorter items")
    return scores


def compute_influence(model, forget_batches, retain_batches, candidates: dict[str, Candidate], eps: float,
                      on_batch=None, mean: str = "token", park_forget: bool = True) -> dict[str, torch.Tensor]:
    """Both gradients, then the scores, reusing the gradient memory. Peak extra memory on an accelerator: one float32
    set (G_f, then G_r turning into the scores; G_f waits in CPU memory); on a CPU, or with park_forget=False (no
    bus transfers, for a card with room to spare): two (G_f and G_r)."""
    grad_forget, grad_retain = gradient_pair(model, forget_batches, retain_batches, list(candidates), on_batch, mean,
                                             park_forget=park_forget)
    return require_finite(influence_scores(grad_forget, grad_retain, eps=eps, in_place=True))


# ---------------------------------------------------------------------------------------------------------------------
# Selection: one global threshold, exact, found without sorting: a radix select on the scores' bit patterns

_DIGIT = 16  # bits of the key settled per pass: a histogram of 65,536 buckets (float32 scores: two passes)
_PIECE = 1 << 26  # a tensor larger than this is read in pieces of this many values, so the extra memory stays bounded


def _pieces(scores: dict[str, torch.Tensor], wide: bool):
    """Every score as flat float32 (float64 when `wide`) pieces, each on its own tensor's device."""
    for tensor in scores.values():
        flat = tensor.detach().reshape(-1)
        for start in range(0, flat.numel(), _PIECE):
            piece = flat[start: start + _PIECE]
            yield piece.to(torch.float64 if wide else torch.float32)  # bf16 / fp16 / fp32 widen exactly; no copy if same


def _ordered_keys(values: torch.Tensor) -> torch.Tensor:
    """Integers that sort exactly like the floats: the IEEE bit pattern read as a signed integer, with the magnitude
    bits of negative numbers flipped (a more negative float has larger magnitude bits). For positive floats the key
    is the bit pattern itself, no copy: sign, exponent (the octave, floor(log2 v)), then the mantissa, so the top 16
    bits bucket the scores by log2, 128 buckets per octave."""
    bits = values.view(torch.int64 if values.dtype == torch.float64 else torch.int32)
    if bool(values.min() > 0):  # the usual case (scores); min() is a cheap reduction, unlike a sign test per value
        return bits
    width = 8 * bits.element_size()
    keys = bits ^ ((bits >> (width - 1)) & ((1 << (width - 1)) - 1))
    return keys.masked_fill_(keys == -1, 0)  # -0.0 (key -1) is +0.0 (key 0): equal floats get one key


def _key_value(key: int, wide: bool) -> float:
    """The float whose ordered key is `key` (the inverse of _ordered_keys)."""
    width = 64 if wide else 32
    if key < 0:
        key ^= (1 << (width - 1)) - 1
    bits = torch.tensor([key], dtype=torch.int64 if wide else torch.int32)
    return bits.view(torch.float64 if wide else torch.float32).item()


def kth_largest(scores: dict[str, torch.Tensor], k: int) -> float:
    """The k-th largest value over all tensors (1 <= k <= n), exact, with no sort and on the scores' own devices.

    Radix select (DESIGN.md §2.4): the floats are mapped to integer keys of the same order (`_ordered_keys`); one
    pass per 16 bits of the key counts, in one vectorised bincount per tensor, how many keys share each value of
    those bits among the keys whose higher bits equal the ones already settled; walking that histogram from the top
    settles the next 16 bits. float32 scores need two passes, float64 four. The key settled last is exactly the
    k-th largest key, so the value is exact, ties included. Extra memory: one key and one digit per value of the
    piece being counted (`_PIECE`), plus the histograms; the only host syncs are one per tensor and pass.
    """
    n = sum(t.numel() for t in scores.values())
    if not 1 <= k <= n:
        raise ValueError(f"k must be in [1, {n}], got {k}")
    wide = any(t.dtype == torch.float64 for t in scores.values())
    width, buckets = (64 if wide else 32), 1 << _DIGIT
    prefix, above = None, 0  # the key's top bits settled so far (a signed number); keys greater than that prefix
    for shift in range(width - _DIGIT, -1, -_DIGIT):
        counts: dict[torch.device, torch.Tensor] = {}
        for values in _pieces(scores, wide):
            keys = _ordered_keys(values)
            if prefix is None:  # the top bits, as a signed number in [-2^15, 2^15): shifted to a bucket index
                digits = (keys >> shift).add_(buckets // 2)
            else:  # only the keys that share the settled prefix, and their next 16 bits
                keys = keys[(keys >> (shift + _DIGIT)) == prefix]
                digits = (keys >> shift).bitwise_and_(buckets - 1)
            count = torch.bincount(digits, minlength=buckets)
            counts[count.device] = counts[count.device] + count if count.device in counts else count
        total = sum(c.cpu() for c in counts.values())
        from_top = total.flip(0).cumsum(0)  # from_top[j]: keys in the top j + 1 buckets
        j = int(torch.searchsorted(from_top, torch.tensor([k - above])))  # the first with at least k - above
        digit = buckets - 1 - j
        above += int(from_top[j]) - int(total[digit])
        prefix = digit - buckets // 2 if prefix is None else (prefix << _DIGIT) | digit
    return _key_value(prefix, wide)


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


def top_fraction_threshold(scores: dict[str, torch.Tensor], p: float) -> tuple[float, int]:
    """(tau, n): the round(p * n)-th largest of the n scores, the threshold of the top-p selection."""
    n = sum(t.numel() for t in scores.values())
    return kth_largest(scores, min(n, max(1, round(p * n)))), n


def select_top_fraction(scores: dict[str, torch.Tensor], p: float, consume: bool = False) -> Selection:
    """Select the round(p * n) highest-scoring weights over the whole model (more only where scores tie at tau).

    consume=True takes each score tensor out of `scores` as its mask is made, so a caller that needs the scores no
    more peaks at the scores plus one tensor's mask (4 bytes per candidate, not 4 + 1; README's memory plan)."""
    tau, n = top_fraction_threshold(scores, p)
    masks = {}
    for name in list(scores):
        masks[name] = (scores.pop(name) if consume else scores[name]) >= tau
    selected = int(sum(m.sum() for m in masks.values()))
    return Selection(p=p, threshold=tau, selected=selected, candidates=n, masks=masks)


def top_fraction_counts(scores: dict[str, torch.Tensor], p: float) -> tuple[float, dict[str, int]]:
    """tau and how many weights of each tensor the top-p selection takes, without keeping its masks (a bool per
    weight, 1 byte per parameter at the peak of `score`): each tensor's mask is counted and dropped."""
    tau, _ = top_fraction_threshold(scores, p)
    return tau, {name: int((t >= tau).sum()) for name, t in scores.items()}


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
