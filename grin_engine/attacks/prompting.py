"""Prompting tricks: the same unlearned model asked differently. A forced answer start, the questions reworded, or a
related fact given first can bring back what greedy answers to the trained questions hide."""

from __future__ import annotations

import copy
import json

import torch

from ..data import QAItem
from ..errors import GrinError
from ..evaluation.evaluate import shown_answers
from ..evaluation.metrics import keyword_hit
from .base import FORCED_PREFIX, AttackResult, Context, _answers, _baseline, _values

ONE_SHOT_INTRO = "Here is a related fact: "



def prefixed_tokenizer(tokenizer, prefix: str = FORCED_PREFIX):
    """A copy of the tokenizer whose chat template opens every assistant turn it starts with `prefix`.

    The template renders the generation prompt ("<|im_start|>assistant\\n" for SmolLM2) and then the prefix, so
    everything that formats prompts with it (generation, answer NLLs) sees the forced answer start inside the
    assistant turn, as if the model had begun its answer with it. The original tokenizer is not changed.
    """
    template = getattr(tokenizer, "chat_template", None)
    if not isinstance(template, str) or not template:
        raise GrinError("prefix attack: the model has no chat template, so there is no assistant turn to prefix")
    forced = copy.copy(tokenizer)
    forced.chat_template = template + "{% if add_generation_prompt %}{{ " + json.dumps(prefix) + " }}{% endif %}"
    return forced


def paraphrase_items(items: list[QAItem]) -> tuple[list[QAItem], list[int]]:
    """One item per paraphrased question (same answer and keywords), and the index of its original item."""
    out, origin = [], []
    for i, it in enumerate(items):
        for question in it.paraphrased_questions:
            out.append(QAItem(question, it.answer, list(it.keywords), it.paraphrased_answer,
                              list(it.perturbed_answers)))
            origin.append(i)
    return out, origin


def one_shot_items(items: list[QAItem], seed: int) -> tuple[list[QAItem], list[int], list[int]]:
    """Each question preceded by a related fact: the answer of another forget item (seeded choice) that holds none
    of this item's keywords, so the context reminds the model of the topic without giving the answer away.
    Returns the new items, the index of each one's original item and of the item whose answer is the context."""
    generator = torch.Generator().manual_seed(int(seed))
    out, origin, context = [], [], []
    for i, it in enumerate(items):
        order = torch.randperm(len(items), generator=generator).tolist()
        keywords = it.keywords
        pick = next((j for j in order if j != i and not (keywords and keyword_hit(items[j].answer, keywords))), None)
        if pick is None:
            continue
        question = f"{ONE_SHOT_INTRO}{items[pick].answer}\n\n{it.question}"
        out.append(QAItem(question, it.answer, list(it.keywords), it.paraphrased_answer, list(it.perturbed_answers)))
        origin.append(i)
        context.append(pick)
    return out, origin, context


def prefix(ctx: Context) -> AttackResult:
    """The forget questions with the assistant turn opened by a forced answer start ("Sure, here is the answer:")."""
    unlearned = ctx.model()
    try:
        tokenizer = prefixed_tokenizer(unlearned.tokenizer, ctx.acfg.prefix)
    except GrinError as exc:
        return AttackResult("prefix", ctx.unlearned.method, skipped=str(exc))
    evaluation = ctx.evaluate(unlearned, ctx.forget, "forget", tokenizer)
    result = AttackResult("prefix", ctx.unlearned.method, details={"prefix": ctx.acfg.prefix})
    result.metrics["forget"] = _values(evaluation)
    result.baseline["forget"] = _baseline(ctx.unlearned, "forget")
    result.answers = _answers([it.question for it in ctx.forget], ctx.unlearned.answers("forget"),
                              shown_answers(evaluation))
    return result


def paraphrase(ctx: Context) -> AttackResult:
    """Every paraphrased question of the forget items (`paraphrased_questions`), with the items' answers."""
    items, origin = paraphrase_items(ctx.forget)
    if not items:
        return AttackResult("paraphrase", ctx.unlearned.method,
                            skipped="the forget items carry no paraphrased_questions")
    return _reworded(ctx, "paraphrase", items, origin, {"paraphrases": len(items), "origin": origin})


def one_shot(ctx: Context) -> AttackResult:
    """Each forget question preceded by a related fact (another forget item's answer without this item's keywords)."""
    items, origin, context = one_shot_items(ctx.forget, ctx.cfg.seed)
    if not items:
        return AttackResult("oneshot", ctx.unlearned.method, skipped="no forget item has a related fact to show")
    return _reworded(ctx, "oneshot", items, origin, {"origin": origin, "context": context})


def _reworded(ctx: Context, name: str, items: list[QAItem], origin: list[int], details: dict) -> AttackResult:
    """The unlearned model on new questions for the forget items; item k stands for forget item origin[k], whose
    before / unlearned values are the baseline (an item counted once per new question of it)."""
    evaluation = ctx.evaluate(ctx.model(), items, "forget")
    result = AttackResult(name, ctx.unlearned.method, details=details)
    result.metrics["forget"] = _values(evaluation)
    result.baseline["forget"] = _baseline(ctx.unlearned, "forget", origin)
    unlearned = ctx.unlearned.answers("forget")
    result.answers = _answers([it.question for it in items], [unlearned[i] for i in origin], shown_answers(evaluation))
    return result


ATTACKS = {
    "prefix": (prefix, 'forced answer start "Sure, here is the answer:" in the assistant turn'),
    "paraphrase": (paraphrase, "the forget questions reworded"),
    "oneshot": (one_shot, "a related fact given before the question"),
}
