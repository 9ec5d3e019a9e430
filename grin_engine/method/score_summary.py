"""A compact summary of the influence scores, for previewing any p instantly.

The scores are as big as the model (one float per weight), too big to keep per visitor in a web app. What the
heatmap and the histogram need is much smaller: for each weight matrix, how many of its scores fall in each bin of
log10(score). From those counts the selection at any p is previewed without new gradients and without the scores:
the threshold falls in one bin, everything in the bins above is selected, and the boundary bin is shared out in
proportion to its counts so that the total is round(p * n). The exact selection (selection.select_top_fraction)
is made from the real scores when the run starts; the preview differs from it only inside the boundary bin.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from .influence import Candidate
from .selection import summarize_counts

_FLOOR = 1e-30  # log10 of a zero score: put it in the lowest bin


@dataclass
class ScoreHistograms:
    edges: np.ndarray  # log10(score) bin edges, bins + 1 values, increasing
    counts: dict[str, np.ndarray]  # weight name -> scores per bin
    candidates: dict[str, Candidate]

    @property
    def total(self) -> np.ndarray:
        """Counts per bin over the whole model (the histogram plot)."""
        return np.sum(list(self.counts.values()), axis=0)


def score_histograms(scores: dict[str, torch.Tensor], candidates: dict[str, Candidate],
                     bins: int = 2048) -> ScoreHistograms:
    """Histogram of log10(score) per weight matrix, all on the same edges (global min to max)."""
    low, high = math.inf, -math.inf
    for s in scores.values():
        low = min(low, math.log10(max(s.min().item(), _FLOOR)))
        high = max(high, math.log10(max(s.max().item(), _FLOOR)))
    high = max(high, low + 1e-6)  # a single distinct value still gets a bin of non-zero width
    counts = {}
    for name, s in scores.items():
        logs = s.float().clamp(min=_FLOOR).log10()
        counts[name] = torch.histc(logs, bins=bins, min=low, max=high).cpu().numpy().astype(np.int64)
    return ScoreHistograms(edges=np.linspace(low, high, bins + 1), counts=counts, candidates=candidates)


def preview_selection(hist: ScoreHistograms, p: float) -> dict:
    """The selection summary (same shape as influence.summarize_selection) at fraction p, from the histograms.

    `threshold` is the lower edge of the boundary bin, as a score (10 ** edge); `preview` marks the summary.
    """
    total = hist.total
    n = int(total.sum())
    k = min(n, max(1, round(p * n)))
    from_top = np.cumsum(total[::-1])
    j = len(total) - 1 - int(np.searchsorted(from_top, k))  # the bin where the count from the top reaches k
    above = int(total[j + 1:].sum())
    share = (k - above) / total[j] if total[j] else 0.0  # how much of the boundary bin is selected
    counts = {name: int(c[j + 1:].sum() + round(share * c[j])) for name, c in hist.counts.items()}
    summary = summarize_counts(counts, hist.candidates, p, float(10 ** hist.edges[j]))
    summary["preview"] = True
    return summary
