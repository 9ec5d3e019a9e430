"""The comparison methods: GRIN, GRUN and the baselines that explain them, one registry entry each (`METHODS`).

Each method answers a question about GRIN, and its entry says everything compare, sweep, the app's Compare methods
and Sweep tabs, their progress, tables and plots need: its name and description, the sweep knobs it reads, how its
mask is made (`mask`: "scores" = the top p of `scores`, "random", "none" = every candidate trains, "grun" = no weight
changes at all) and how its run differs from GRIN's (`configure`).

A score function forms one score per candidate weight from the gradients of the answer NLL (`Gradients`: G_f on the
forget set and, when `uses_retain`, G_r on the retain set) and the weights; the mask keeps the top p of it over the
whole model. It may reuse the gradients' memory (`in_place=True`: it is their last user) but must give the same
numbers either way. To add a mask baseline: one score function and one entry here (docs/CONTRIBUTING.md).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable

import torch

from ..config import GrinConfig
from ..errors import GrinError
from ..method.influence import influence_scores


@dataclass
class Gradients:
    """The answer-NLL gradients a score function reads: G_f per candidate weight (possibly parked in CPU memory),
    and G_r on the weights' devices when some method needs it (else None)."""
    forget: dict[str, torch.Tensor]
    retain: dict[str, torch.Tensor] | None


def _forget_on(gradients: Gradients, name: str, weight: torch.Tensor, in_place: bool) -> torch.Tensor:
    """G_f of one weight on the weight's device (a parked G_f comes back), taken out of `gradients` if in_place."""
    grad = gradients.forget.pop(name) if in_place else gradients.forget[name]
    return grad.to(weight.device, non_blocking=grad.is_pinned())


def grin_scores(gradients: Gradients, weights: dict, cfg: GrinConfig, in_place: bool) -> dict[str, torch.Tensor]:
    """GRIN's influence ratio S = |G_f| / (|G_r| + eps) (method/influence.influence_scores)."""
    return influence_scores(gradients.forget, gradients.retain, cfg.eps, in_place=in_place)


def forget_grad_scores(gradients: Gradients, weights: dict, cfg: GrinConfig, in_place: bool) -> dict:
    """|G_f|: how much a weight matters for the forget set, whatever it does for the retain set."""
    return {name: (grad.abs_() if in_place else grad.abs())
            for name, grad in ((n, _forget_on(gradients, n, weights[n], in_place)) for n in list(gradients.forget))}


def snip_scores(gradients: Gradients, weights: dict, cfg: GrinConfig, in_place: bool) -> dict:
    """|theta * G_f|: a weight-times-gradient saliency (SNIP's connection sensitivity, Lee et al. 2019, on the
    forget loss): the first-order change of the forget loss if the weight were set to zero."""
    return {name: (grad.mul_(weights[name]).abs_() if in_place else (grad * weights[name]).abs())
            for name, grad in ((n, _forget_on(gradients, n, weights[n], in_place)) for n in list(gradients.forget))}


def fisher_ratio_scores(gradients: Gradients, weights: dict, cfg: GrinConfig, in_place: bool) -> dict:
    """G_f^2 / (G_r^2 + eps): the ratio of squared gradients of the two sets' mean losses, a diagonal-Fisher-style
    influence estimate. It ranks the weights as GRIN's ratio squared would, except where G_r^2 is near eps (so it
    departs from GRIN only for weights the retain set barely uses; eps then acts on |G_r| at sqrt(eps))."""
    scores = {}
    for name in list(gradients.forget):
        g_f = _forget_on(gradients, name, weights[name], in_place)
        g_r = gradients.retain.pop(name) if in_place else gradients.retain[name]
        scores[name] = g_f.square_().div_(g_r.square_().add_(cfg.eps)) if in_place else g_f.square() / (
            g_r.square() + cfg.eps)
    return scores


MASK_KNOBS = ("p", "sigma2", "lr", "steps", "seed")  # what a masked weight run reads (seed: its noise and mask)


@dataclass(frozen=True)
class ComparisonMethod:
    name: str
    label: str  # how tables, plots and the progress bar name it
    description: str  # one line: what it does
    question: str  # the question about GRIN it answers (the Learn tab's table)
    knobs: tuple[str, ...]  # the sweep axes it reads ("seed": it has randomness of its own)
    mask: str  # "scores", "random", "none" or "grun" (module docstring)
    scores: Callable | None = None  # (gradients, weights, cfg, in_place) -> scores, for mask == "scores"
    scores_of: str | None = None  # select from another method's scores instead (no new formula)
    uses_retain: bool = False  # its scores read G_r (else only G_f is formed for it)
    configure: Callable[[GrinConfig], GrinConfig] = lambda cfg: cfg  # its run's config, from the shared one

    @property
    def score_source(self) -> str | None:
        """Whose scores its mask is drawn from (None: it draws no scores)."""
        return self.scores_of or (self.name if self.scores is not None else None)


METHODS = {m.name: m for m in [
    ComparisonMethod("grin", "GRIN", "GRIN: influence-ratio mask + noise + masked fine-tuning",
                     "the method itself", MASK_KNOBS, "scores", grin_scores, uses_retain=True),
    ComparisonMethod("grun", "GRUN", "GRUN: gated representation edits, weights frozen",
                     "is changing no weight at all a better way to protect the rest?",
                     ("grun_lr", "grun_steps", "seed"), "grun"),
    ComparisonMethod("full", "Full", "Full: every candidate weight trains, no mask, no noise",
                     "what does selecting weights buy?", ("lr", "steps"), "none",
                     configure=lambda cfg: replace(cfg, use_mask=False)),
    ComparisonMethod("random", "Random mask", "Random mask: same number of weights, chosen at random",
                     "is the influence score better than luck?", MASK_KNOBS, "random"),
    ComparisonMethod("forget-grad", "|G_f|-only mask", "|G_f| mask: top p by the forget gradient alone",
                     "does the retain side of the ratio matter?", MASK_KNOBS, "scores", forget_grad_scores),
    ComparisonMethod("grin-nonoise", "GRIN without noise", "GRIN without noise (sigma2 = 0)",
                     "does the noise help?", ("p", "lr", "steps"), "scores", scores_of="grin",
                     configure=lambda cfg: replace(cfg, sigma2=0.0)),
    ComparisonMethod("snip", "SNIP mask", "SNIP mask: top p by |theta * G_f|, a weight-times-gradient saliency",
                     "is the ratio a better influence estimate than the forget loss's saliency?",
                     MASK_KNOBS, "scores", snip_scores),
    ComparisonMethod("fisher-ratio", "Fisher ratio mask", "Fisher ratio mask: top p by G_f^2 / (G_r^2 + eps)",
                     "does squaring the gradients (a Fisher-style estimate) change which weights are chosen?",
                     MASK_KNOBS, "scores", fisher_ratio_scores, uses_retain=True),
]}


def get_methods(names) -> list[ComparisonMethod]:
    """'grin,grun,full' or a list of names -> their entries (checked, duplicates dropped, order kept)."""
    if isinstance(names, str):
        names = names.split(",")
    names = list(dict.fromkeys(str(n).strip().lower() for n in names if str(n).strip()))
    unknown = [n for n in names if n not in METHODS]
    if unknown or not names:
        raise GrinError(f"methods: unknown {', '.join(unknown) or '(none given)'}; choose from {', '.join(METHODS)}")
    return [METHODS[n] for n in names]


def parse_methods(text: str) -> list[str]:
    """'grin,grun,full' -> ['grin', 'grun', 'full'] (checked, duplicates dropped, order kept)."""
    return [m.name for m in get_methods(text)]
