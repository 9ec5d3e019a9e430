"""Influence scores kept for re-use: the top of the scores, enough to re-select any p up to a bound exactly.

Computing the scores costs two gradient passes over the data; selecting at p needs only the weights whose score is
at least the threshold tau(p), i.e. the top p of the scores. `TopScores` keeps, for every candidate weight matrix,
the flat indices and the values of its scores >= floor, where floor is the K-th largest score of the whole model and
K = round(keep * n). For every p with k = round(p * n) <= K (influence.select_top_fraction's k):

    kth_largest(all scores, k) == kth_largest(kept scores, k)   (the k largest scores are all kept: tau >= floor)
    {i : s_i >= tau}           == {kept i : s_i >= tau}          (every score >= tau >= floor is kept)

so `select(p)` gives the same tau, the same masks and the same count as `select_top_fraction(scores, p)`, bit for
bit (tests/test_score_cache.py). Above the kept fraction (`covers(p)` false) the scores must be computed again.

Memory: keep * n * (value 4 bytes + index 4 bytes; 8 for a matrix of more than 2^31 weights), plus ties at the
floor: 85 MB for the default model (106 M candidates) at keep = 10%.

`score_key` names what the scores depend on, so that a cache (grin_ui/state.py) gives them back only to the same
question: the model, the forget and retain items (question and answer text) and every config field the gradients
read (eps, grad_mean, label_layout, include_embeddings, include_lm_head, max_length, batch_size: a different
batching sums the same gradient in another order, so it is not bit-identical).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

import torch

from ..config import GrinConfig
from ..data import QAItem
from .influence import Candidate
from .selection import Selection, kth_largest

KEEP = 0.10  # the largest p the app offers (the p slider and public mode's cap): every p up to it is exact
SCORE_FIELDS = ("eps", "grad_mean", "label_layout", "include_embeddings", "include_lm_head", "max_length", "batch_size")


def score_key(model_id: str, forget: list[QAItem], retain: list[QAItem], cfg: GrinConfig) -> str:
    """A fingerprint of everything the influence scores depend on (see the module docstring)."""
    pairs = [[(it.question, it.answer) for it in items] for items in (forget, retain)]
    text = json.dumps([model_id, *pairs, {name: getattr(cfg, name) for name in SCORE_FIELDS}], default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def _top_k(n: int, p: float) -> int:
    """The number of weights select_top_fraction aims at for fraction p of n (the same formula)."""
    return min(n, max(1, round(p * n)))


@dataclass
class TopScores:
    """The scores >= floor (the K-th largest, K = round(keep * n)) of every candidate, as flat indices + values."""
    keep: float
    floor: float
    n: int  # all candidate weights
    shapes: dict[str, tuple[int, ...]]
    indices: dict[str, torch.Tensor]  # int32 (int64 for a matrix of 2^31 weights or more), ascending, CPU
    values: dict[str, torch.Tensor]  # the scores at those indices, in the scores' own dtype, CPU
    candidates: dict[str, Candidate]
    seconds: float = 0.0  # what computing the scores took (for the status: the time a re-use saves)

    @classmethod
    def from_scores(cls, scores: dict[str, torch.Tensor], candidates: dict[str, Candidate], keep: float = KEEP,
                    seconds: float = 0.0, consume: bool = False) -> "TopScores":
        """The top `keep` of `scores`; consume=True takes each score tensor out of `scores` as it is read (for a
        caller that needs them no more: the peak stays at the scores plus one tensor's comparison)."""
        n = sum(t.numel() for t in scores.values())
        floor = kth_largest(scores, _top_k(n, keep))
        shapes, indices, values = {}, {}, {}
        for name in list(scores):
            tensor = scores.pop(name) if consume else scores[name]
            flat = tensor.detach().reshape(-1)
            where = torch.nonzero(flat >= floor).reshape(-1)
            shapes[name] = tuple(tensor.shape)
            values[name] = flat[where].cpu()
            indices[name] = where.to(torch.int32 if flat.numel() < 2**31 else torch.int64).cpu()
        return cls(keep=keep, floor=floor, n=n, shapes=shapes, indices=indices, values=values,
                   candidates=candidates, seconds=seconds)

    @property
    def kept(self) -> int:
        return sum(v.numel() for v in self.values.values())

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for d in (self.indices, self.values) for t in d.values())

    def covers(self, p: float) -> bool:
        """Whether select(p) is exact: its top k lie within the kept scores."""
        return _top_k(self.n, p) <= _top_k(self.n, self.keep)

    def select(self, p: float, devices: dict[str, torch.device] | None = None) -> Selection:
        """select_top_fraction(scores, p), bit for bit, from the kept scores (masks on `devices`, else the CPU)."""
        if not self.covers(p):
            raise ValueError(f"p = {p} is above the kept fraction {self.keep}: compute the scores again")
        tau = kth_largest(self.values, _top_k(self.n, p))
        masks = {}
        for name, shape in self.shapes.items():
            mask = torch.zeros(self.candidates[name].numel, dtype=torch.bool)
            mask[self.indices[name][self.values[name] >= tau].long()] = True
            masks[name] = mask.view(shape).to((devices or {}).get(name, "cpu"))
        selected = int(sum(int((v >= tau).sum()) for v in self.values.values()))
        return Selection(p=p, threshold=tau, selected=selected, candidates=self.n, masks=masks)


EVALUATION_FIELDS = ("max_new_tokens", "max_length", "label_layout")  # label_layout: which tokens the NLLs cover


def evaluation_key(model_id: str, forget: list[QAItem], retain: list[QAItem], cfg: GrinConfig) -> str:
    """A fingerprint of everything the base model's evaluation (evaluation/evaluate.evaluate_both) depends on: the model, every
    field of every item (answers, keywords, perturbed answers feed the metrics), the generation lengths and the label
    layout."""
    text = json.dumps([model_id, [it.to_dict() for it in forget], [it.to_dict() for it in retain],
                       {name: getattr(cfg, name) for name in EVALUATION_FIELDS}], default=str)
    return hashlib.sha256(text.encode()).hexdigest()
