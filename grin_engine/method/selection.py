"""The top-p selection (DESIGN.md §2.4-2.5): one threshold tau for the whole model, found exactly without sorting,
the masks it gives, a random mask of the same size, the overlap of two masks, and the per-layer summary.

    mask_i = [S_i >= tau],   tau = the round(p * n)-th largest score of the n candidate weights
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .influence import Candidate

# ---------------------------------------------------------------------------------------------------------------------
# Selection: one global threshold, exact, found without sorting: a radix select on the scores' bit patterns

_DIGIT = 16  # bits of the key settled per pass: a histogram of 65,536 buckets (float32 scores: two passes)
_PIECE = 1 << 26  # scores are read in chunks of at most this many values, so the extra memory stays bounded


def _chunks(scores: dict[str, torch.Tensor], wide: bool):
    """Every score as flat float32 (float64 when `wide`) chunks of at most _PIECE values, device by device.

    The tensors of one device are joined (torch.cat) into as few chunks as their total size allows, so a pass costs
    a number of kernels that grows with the number of scores, not of tensors, and a huge tensor is still read a
    chunk at a time. Each chunk is a fresh copy (cat always copies), which the caller may overwrite in place."""
    dtype = torch.float64 if wide else torch.float32
    by_device: dict[torch.device, list[torch.Tensor]] = {}
    for tensor in scores.values():
        by_device.setdefault(tensor.device, []).append(tensor.detach().reshape(-1))
    for flats in by_device.values():
        pieces, size = [], 0
        for flat in flats:
            while flat.numel():
                piece, flat = flat[:_PIECE - size], flat[_PIECE - size:]
                pieces.append(piece)
                size += piece.numel()
                if size == _PIECE:
                    yield torch.cat(pieces).to(dtype)  # bf16 / fp16 / fp32 widen exactly
                    pieces, size = [], 0
        if pieces:
            yield torch.cat(pieces).to(dtype)


def _ordered_keys(values: torch.Tensor) -> torch.Tensor:
    """Integers that sort exactly like the floats, made in place in `values`' own memory: the IEEE magnitude bits
    (all but the sign bit) read as an integer m, with the float's sign,

        key = m for v >= 0,   key = -m for v < 0,   computed as (m ^ s) - s with s = bits >> (width - 1) in {0, -1}

    so -0.0 and +0.0 get the same key 0. For a positive float the key is the bit pattern itself: exponent (the
    octave, floor(log2 v)), then the mantissa, so the top 16 bits bucket the scores by log2, 128 buckets per octave.
    The sign is applied to every value rather than after testing for negative scores, since that test would read a
    value back to the host (a wait on a GPU) and the arithmetic costs no more than the test."""
    bits = values.view(torch.int64 if values.dtype == torch.float64 else torch.int32)
    width = 8 * bits.element_size()
    sign = bits >> (width - 1)  # -1 for a negative float, else 0
    return bits.bitwise_and_((1 << (width - 1)) - 1).bitwise_xor_(sign).sub_(sign)


def _buckets(keys: torch.Tensor, shift: int, prefix: int | None) -> torch.Tensor:
    """Each key's bucket in the pass that settles its bits [shift, shift + 16), made in place in `keys`.

    First pass (`prefix` None): the top 16 bits, a signed number in [-2^15, 2^15), plus 2^15: a bucket in
    [0, 2^16). Later passes: for a key whose higher bits equal the settled `prefix`, its next 16 bits; for any other
    key, 2^16 + those bits, a second half of the histogram that is dropped. That keeps every key in the count
    without picking out the matching ones (boolean indexing waits for the GPU to say how many there are), and
    spreads the dropped keys over 65,536 counters (one dummy counter would take nearly every write of the pass)."""
    buckets = 1 << _DIGIT
    if prefix is None:
        return keys.bitwise_right_shift_(shift).add_(buckets // 2)
    other = (keys >> (shift + _DIGIT)) != prefix
    return keys.bitwise_right_shift_(shift).bitwise_and_(buckets - 1).add_(other, alpha=buckets)


def _key_value(key: int, wide: bool) -> float:
    """The float whose ordered key is `key` (the inverse of _ordered_keys)."""
    width = 64 if wide else 32
    if key < 0:  # the magnitude -key under the sign bit, written as the signed integer with those bits
        key = -key - (1 << (width - 1))
    bits = torch.tensor([key], dtype=torch.int64 if wide else torch.int32)
    return bits.view(torch.float64 if wide else torch.float32).item()


def kth_largest(scores: dict[str, torch.Tensor], k: int) -> float:
    """The k-th largest value over all tensors (1 <= k <= n), exact, with no sort and on the scores' own devices.

    Radix select (DESIGN.md §2.4): the floats are mapped to integer keys of the same order (`_ordered_keys`); one
    pass per 16 bits of the key counts how many keys share each value of those bits among the keys whose higher
    bits equal the ones already settled (`_buckets`, one index_add_ of ones per chunk into a histogram per device);
    walking that histogram from the top settles the next 16 bits:

        digit = the largest d with  above + #{keys in buckets >= d} >= k,   above += #{keys in buckets > digit}

    float32 scores need two passes, float64 four. The key settled last is exactly the k-th largest key, so the
    value is exact, ties included. Extra memory: one chunk (at most `_PIECE` values), whose copy becomes its keys and
    then its buckets in place, one temporary integer and one bool per value of it (about 9 bytes per value for
    float32 scores, 17 for float64), plus 131,072 counters per device. Host syncs: one per device and pass (its
    histogram read back), whatever the number of tensors; the walk and the result are read on the CPU.
    """
    n = sum(t.numel() for t in scores.values())
    if not 1 <= k <= n:
        raise ValueError(f"k must be in [1, {n}], got {k}")
    wide = any(t.dtype == torch.float64 for t in scores.values())
    width, buckets = (64 if wide else 32), 1 << _DIGIT
    prefix, above = None, 0  # the key's top bits settled so far (a signed number); keys greater than that prefix
    for shift in range(width - _DIGIT, -1, -_DIGIT):
        counts: dict[torch.device, torch.Tensor] = {}  # per device: 2^16 counters and the 2^16 dropped ones
        for values in _chunks(scores, wide):
            if values.device not in counts:
                counts[values.device] = torch.zeros(2 * buckets, dtype=torch.int64, device=values.device)
            index = _buckets(_ordered_keys(values), shift, prefix)
            ones = torch.ones(1, dtype=torch.int64, device=values.device).expand(index.numel())
            counts[values.device].index_add_(0, index, ones)  # a histogram; bincount would wait for the GPU
            del values, index  # this chunk's memory is free before the next chunk is made
        total = sum(c[:buckets].cpu() for c in counts.values())  # the pass's host sync, one per device
        from_top = total.flip(0).cumsum(0)  # from_top[j]: keys in the top j + 1 buckets
        j = int(torch.searchsorted(from_top, torch.tensor([k - above])))  # the first with at least k - above
        digit = buckets - 1 - j
        above += int(from_top[j]) - int(total[digit])
        prefix = digit - buckets // 2 if prefix is None else (prefix << _DIGIT) | digit
    return _key_value(prefix, wide)


def _ints(counts: dict[str, torch.Tensor]) -> dict[str, int]:
    """Each 0-d count tensor as an int, in the dict's order, read with one host sync per device rather than one per
    tensor: the counts of a device are stacked there and read back at once."""
    by_device: dict[torch.device, list[str]] = {}
    for name, count in counts.items():
        by_device.setdefault(count.device, []).append(name)
    read = {}
    for names in by_device.values():
        read.update(zip(names, torch.stack([counts[name] for name in names]).tolist()))
    return {name: read[name] for name in counts}


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
    more peaks at the scores plus one tensor's mask (4 bytes per candidate, not 4 + 1; docs/SERVING.md's memory plan)."""
    tau, n = top_fraction_threshold(scores, p)
    masks = {}
    for name in list(scores):
        masks[name] = (scores.pop(name) if consume else scores[name]) >= tau
    selected = sum(_ints({name: mask.sum() for name, mask in masks.items()}).values())
    return Selection(p=p, threshold=tau, selected=selected, candidates=n, masks=masks)


def top_fraction_counts(scores: dict[str, torch.Tensor], p: float) -> tuple[float, dict[str, int]]:
    """tau and how many weights of each tensor the top-p selection takes, without keeping its masks (a bool per
    weight, 1 byte per parameter at the peak of `score`): each tensor's mask is counted and dropped."""
    tau, _ = top_fraction_threshold(scores, p)
    return tau, _ints({name: (t >= tau).sum() for name, t in scores.items()})


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
    counts = _ints({name: mask.sum() for name, mask in selection.masks.items()})
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


def select_summary(scores: dict[str, torch.Tensor], candidates: dict[str, Candidate], p: float) -> dict:
    """The summary of the top-p selection without its masks (the same numbers as summarize_selection of
    select_top_fraction): each tensor's mask is counted and dropped, so `score`'s peak stays at the scores."""
    threshold, counts = top_fraction_counts(scores, p)
    return summarize_counts(counts, candidates, p, threshold)
