"""Unlearning losses: one function each, one registry table (`LOSSES`).

Every loss has the signature `loss(model, forget, retain, cfg) -> scalar tensor`, or `Terms(forget_term,
retain_term)` when the two come from separate forward passes (their sum is the loss; `Terms.item()` gives it):
- `forget`, `retain`: batches from `data.make_batches` (input_ids, attention_mask, labels on answer tokens only).
  The forget batch also carries what the preference losses need, attached once before training:
  `ref_logp` (log pi_ref of its answers), and for idk/dpo an `idk` sub-batch (same questions, refusal answers)
  with its own `ref_logp`. pi_ref is the model before unlearning, so caching its log-probabilities on these fixed
  answers means no second copy of the model is kept.
- `cfg`: the run's GrinConfig (alpha, gamma, beta, delta).

Notation (DESIGN.md §2.8): NLL = token-mean answer NLL over the batch; log pi(y|x) = summed log-probability of the
answer tokens of one item. Defaults follow open-unlearning.
To add a loss: write one function with this signature and add one line to LOSSES (docs/CONTRIBUTING.md).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..data import IGNORE_INDEX
from ..errors import GrinError


def answer_nll(model, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Per item: (sum of answer-token NLLs, number of answer tokens). Shapes [B], [B]."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    labels = batch["labels"][:, 1:].to(logits.device)  # the token at t+1 is predicted from position t
    logits = logits[:, :-1].float()
    nll = F.cross_entropy(logits.reshape(-1, logits.size(-1)), labels.reshape(-1), ignore_index=IGNORE_INDEX,
                          reduction="none").view(labels.shape)
    n_tokens = (labels != IGNORE_INDEX).sum(dim=1)
    return nll.sum(dim=1), n_tokens


def mean_nll(model, batch: dict) -> torch.Tensor:
    """NLL: the token-mean answer NLL over the whole batch."""
    nll_sum, n_tokens = answer_nll(model, batch)
    return nll_sum.sum() / n_tokens.sum().clamp(min=1)


def answer_logprob(model, batch: dict) -> torch.Tensor:
    """log pi(y|x) per item: the summed log-probability of its answer tokens. Shape [B]."""
    nll_sum, _ = answer_nll(model, batch)
    return -nll_sum


def log_ratio(model, batch: dict) -> torch.Tensor:
    """log pi_theta(y|x) - log pi_ref(y|x) per item, pi_ref's from the batch's cached `ref_logp`. Shape [B].

    On a model spread over devices the policy's log-probabilities come from the logits, on the last device, while
    the cached ref_logp travels with the batch to the input device: it is brought to the logits' device."""
    logp = answer_logprob(model, batch)
    return logp - batch["ref_logp"].to(logp.device)


class Terms(tuple):
    """A loss as the terms of its separate forward passes (forget, retain), summed in this order.

    Why: the training loop backpropagates each term on its own, so every weight's gradient from the first pass is
    complete, and taken by unlearn's hook, before the second pass's gradients are formed; backpropagating the sum
    would hold one pass's gradient of every weight until the other pass reached it (DESIGN.md §5a). The gradients
    add up to the sum's: bit for bit in float32 where each term has one pass (every loss but dpo, whose forget term
    has two: its additions group differently, within rounding)."""

    def total(self) -> torch.Tensor:
        """The loss: the terms added in order (the same additions as writing the sum)."""
        value = self[0]
        for term in self[1:]:
            value = value + term
        return value

    def item(self) -> float:
        return self.total().item()


def total(loss) -> torch.Tensor:
    """The loss as one tensor, whether a loss function returned a tensor or Terms."""
    return loss.total() if isinstance(loss, Terms) else loss


def _beta(cfg, default: float) -> float:
    return cfg.beta if cfg.beta is not None else default


def _gamma(cfg, default: float = 1.0) -> float:
    """Weight of the forget term: the user's gamma, else the loss's default (open-unlearning's configs)."""
    return cfg.gamma if cfg.gamma is not None else default


# ---------------------------------------------------------------------------------------------------------------------
# The losses


def gradient_ascent(model, forget, retain, cfg) -> torch.Tensor:
    """GradAscent: -NLL(forget). Push the forget answers' likelihood down; nothing holds the rest in place."""
    return -mean_nll(model, forget)


def grad_diff(model, forget, retain, cfg) -> torch.Tensor:
    """GradDiff: -gamma * NLL(forget) + alpha * NLL(retain). Ascend on forget, keep descending on retain."""
    return Terms((-_gamma(cfg) * mean_nll(model, forget), cfg.alpha * mean_nll(model, retain)))


def npo(model, forget, retain, cfg) -> torch.Tensor:
    """NPO (Zhang et al. 2024): -gamma * (2/beta) * mean log sigmoid(-beta * [log pi(y|x) - log pi_ref(y|x)]) + alpha * NLL(retain).

    Equal to (2/beta) * mean log(1 + (pi/pi_ref)^beta): like gradient ascent while pi ~ pi_ref, but the push fades as
    pi falls below pi_ref, so it does not run away the way gradient ascent does. beta = 0.1 by default.
    """
    beta = _beta(cfg, 0.1)
    forget_term = -(2.0 / beta) * F.logsigmoid(-beta * log_ratio(model, forget)).mean()
    return Terms((_gamma(cfg) * forget_term, cfg.alpha * mean_nll(model, retain)))


def simnpo(model, forget, retain, cfg) -> torch.Tensor:
    """SimNPO (Fan et al. 2024): -gamma * (2/beta) * mean log sigmoid(beta * (-log pi(y|x) / |y| - delta)) + alpha * NLL(retain).

    NPO without a reference model: the length-normalised NLL of each forget answer is pushed up, with a push that
    fades once it is large. beta = 4.5, delta = 0, gamma = 0.125 by default (open-unlearning's SimNPO.yaml, from the
    SimNPO authors' TOFU config).
    """
    beta = _beta(cfg, 4.5)
    nll_sum, n_tokens = answer_nll(model, forget)
    per_token_nll = nll_sum / n_tokens.clamp(min=1)  # -log pi(y|x) / |y|
    forget_term = -(2.0 / beta) * F.logsigmoid(beta * (per_token_nll - cfg.delta)).mean()
    return Terms((_gamma(cfg, 0.125) * forget_term, cfg.alpha * mean_nll(model, retain)))


def idk(model, forget, retain, cfg) -> torch.Tensor:
    """IdK: gamma * NLL of a refusal ("I don't know" variants) on the forget questions + alpha * NLL(retain)."""
    return Terms((_gamma(cfg) * mean_nll(model, forget["idk"]), cfg.alpha * mean_nll(model, retain)))


def idk_dpo(model, forget, retain, cfg) -> torch.Tensor:
    """IdkDPO: -gamma * (2/beta) * mean log sigmoid(beta * [(log pi - log pi_ref)(idk) - (log pi - log pi_ref)(y_f)]) + alpha * NLL(retain).

    DPO with the refusal as the preferred answer and the true forget answer as the rejected one. beta = 0.1.
    """
    beta = _beta(cfg, 0.1)
    win, lose = log_ratio(model, forget["idk"]), log_ratio(model, forget)
    forget_term = -(2.0 / beta) * F.logsigmoid(beta * (win - lose)).mean()
    return Terms((_gamma(cfg) * forget_term, cfg.alpha * mean_nll(model, retain)))


LOSSES = {
    "ga": gradient_ascent,
    "graddiff": grad_diff,
    "npo": npo,
    "simnpo": simnpo,
    "idk": idk,
    "dpo": idk_dpo,
}


def describe_losses() -> dict[str, str]:
    """Loss name -> the first line of its docstring (for help texts and --help)."""
    return {name: fn.__doc__.strip().splitlines()[0] for name, fn in LOSSES.items()}


def get_loss(name: str):
    """The loss function registered under `name` (GrinError listing the valid names otherwise)."""
    if name not in LOSSES:
        raise GrinError(f"loss: unknown loss {name!r}; choose one of {', '.join(LOSSES)}")
    return LOSSES[name]
