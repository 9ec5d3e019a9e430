"""Where masks come from: GRIN's for one run, and every comparison method's for compare and sweep (DESIGN.md §2.4).

Scores are as big as the model, so they are never kept: each scoring method's scores become its *kept scores*
(method/score_cache.TopScores: the top `keep` fraction, enough to select any p up to `keep` bit for bit) as soon as
they are formed. Kept scores handed in (the app keeps GRIN's between visitors) are re-used where they cover `keep`;
the rest come from one set of gradients shared by every method that needs them: one pass over the forget set, and
one over the retain set only when a method's scores read G_r.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from ..config import GrinConfig
from ..data import QAItem, qa_batches
from ..events import Progress, as_progress
from ..models import LoadedModel, copy_model
from ..method.influence import accumulate_gradients, candidate_parameters, gradient_pair, require_finite
from ..method.score_cache import TopScores
from ..method.selection import Selection, random_selection, summarize_counts, summarize_selection
from .methods import METHODS, ComparisonMethod, Gradients


def missing_scores(methods: list[ComparisonMethod], kept: dict[str, TopScores] | None, keep: float) -> list[str]:
    """The score sources `methods` draw from that `kept` does not cover up to `keep`: what needs gradients."""
    kept = kept or {}
    sources = dict.fromkeys(m.score_source for m in methods if m.score_source is not None)
    return [s for s in sources if not (s in kept and kept[s].covers(keep))]


def kept_scores(loaded: LoadedModel, forget: list[QAItem], retain: list[QAItem], cfg: GrinConfig,
                methods: list[ComparisonMethod], keep: float, progress: Progress | None = None,
                kept: dict[str, TopScores] | None = None, copy: bool = False,
                stage: str = "gradients") -> dict[str, TopScores]:
    """The kept top-`keep` scores of every score source of `methods` (see the module docstring); the gradients are
    formed on `loaded` (copy=True: on a private copy of it, for a shared base), reported as `stage`."""
    progress = as_progress(progress)
    missing = [METHODS[source] for source in missing_scores(methods, kept, keep)]
    tops = {source: kept[source] for source in dict.fromkeys(m.score_source for m in methods if m.score_source)
            if METHODS[source] not in missing}
    if not missing:
        return tops
    start = time.perf_counter()
    work = copy_model(loaded) if copy else loaded
    candidates = candidate_parameters(work.model, cfg.include_embeddings, cfg.include_lm_head)
    forget_batches = qa_batches(work.tokenizer, forget, cfg.batch_size, cfg.max_length, cfg.label_layout)
    names, on_batch = list(candidates), progress.stage(stage)
    if any(m.uses_retain for m in missing):  # G_f waits in CPU memory while G_r is formed (park_forget)
        retain_batches = qa_batches(work.tokenizer, retain, cfg.batch_size, cfg.max_length, cfg.label_layout)
        gradients = Gradients(*gradient_pair(work.model, forget_batches, retain_batches, names, on_batch,
                                             mean=cfg.grad_mean, park_forget=True))
    else:  # no retain gradients to form
        gradients = Gradients(accumulate_gradients(work.model, forget_batches, names, on_batch, mean=cfg.grad_mean),
                              None)
    weights = dict(work.model.named_parameters())
    del work
    for i, method in enumerate(missing):  # the last one may reuse the gradients' memory
        scores = require_finite(method.scores(gradients, weights, cfg, in_place=i == len(missing) - 1))
        tops[method.name] = TopScores.from_scores(scores, candidates, keep=keep, consume=True,
                                                  seconds=time.perf_counter() - start)
    return tops


def method_selection(method: ComparisonMethod, tops: dict[str, TopScores], base: LoadedModel,
                     cfg: GrinConfig) -> Selection | None:
    """`method`'s mask at cfg.p: from its kept scores, a random one (seeded by cfg.seed), or None (no mask)."""
    weights = dict(base.model.named_parameters())
    if method.mask == "random":
        candidates = candidate_parameters(base.model, cfg.include_embeddings, cfg.include_lm_head)
        return random_selection(candidates, weights, cfg.p, cfg.seed)
    if method.score_source is None:
        return None
    return tops[method.score_source].select(cfg.p, {name: w.device for name, w in weights.items()})


@dataclass
class Mask:
    """What a run trains: a selection (None: every candidate weight, no noise), its summary for the report, the kept
    scores it was drawn from (for the next run to re-use), and what making it took."""
    selection: Selection | None
    summary: dict
    top: TopScores | None = None
    timings: dict | None = None

    @property
    def masks(self):
        return self.selection.masks if self.selection is not None else None


def given_mask(model, cfg: GrinConfig, selection: Selection | None) -> Mask:
    """A Mask around a ready selection (None: all candidates train, the summary counts them all)."""
    candidates = candidate_parameters(model, cfg.include_embeddings, cfg.include_lm_head)
    summary = (summarize_selection(selection, candidates) if selection is not None else
               summarize_counts({n: c.numel for n, c in candidates.items()}, candidates, 1.0, None))
    return Mask(selection, summary, None, {"scores_s": 0.0, "select_s": 0.0})


def choose_mask(work: LoadedModel, forget: list[QAItem], retain: list[QAItem], cfg: GrinConfig,
                progress: Progress | None = None, kept: TopScores | None = None, keep: float = 0.0) -> Mask:
    """A run's mask: GRIN's at cfg.p (cfg.use_mask False: none). From `kept` when it covers p (no gradients), else
    from scores formed on `work` (a model nobody else reads meanwhile); the kept scores of the result cover
    max(p, keep), so a later run at any p up to that re-uses them."""
    progress = as_progress(progress)
    if not cfg.use_mask:
        return given_mask(work.model, cfg, None)
    start = time.perf_counter()
    top = kept_scores(work, forget, retain, cfg, [METHODS["grin"]], max(cfg.p, keep), progress,
                      {"grin": kept} if kept is not None else None, stage="influence")["grin"]
    scores_s = time.perf_counter() - start if top is not kept else 0.0
    progress("select", 0, 1)
    start = time.perf_counter()
    selection = method_selection(METHODS["grin"], {"grin": top}, work, cfg)
    mask = given_mask(work.model, cfg, selection)
    mask.top, mask.timings = top, {"scores_s": scores_s, "select_s": time.perf_counter() - start}
    return mask
