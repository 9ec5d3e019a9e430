"""Sampling: greedy answers hide what sampled ones still say (arXiv 2410.19482). n answers per forget question at a
temperature; does any of them hold a keyword?"""

from __future__ import annotations

import torch

from ..data import format_prompt
from ..evaluation.evaluate import cut_rows, shown_answer
from ..evaluation.metrics import derive_keywords, keyword_hit
from ..models import input_device
from .base import AttackResult, Context, _answers, _baseline


@torch.no_grad()
def sample_answers(model, tokenizer, questions: list[str], n: int = 8, temperature: float = 1.0,
                   max_new_tokens: int = 48, seed: int = 0, batch_size: int = 8, on_batch=None,
                   return_cut: bool = False):
    """n sampled answers per question (temperature sampling, no top-k / top-p cut), seeded. With return_cut=True:
    (answers, cut), cut[i][k] true when answer k to question i stopped at max_new_tokens without EOS.

    The seed is set inside torch.random.fork_rng, so the same seed gives the same answers and the caller's random
    state is left as it was. Prompts are formatted and padded as in evaluate.generate_answers.
    """
    device = input_device(model)
    was_side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    answers: list[list[str]] = []
    cut: list[list[bool]] = []
    devices = [device] if device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(int(seed))
            for start in range(0, len(questions), batch_size):
                prompts = [format_prompt(tokenizer, q) for q in questions[start: start + batch_size]]
                enc = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
                out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=True, temperature=temperature,
                                     top_k=0, top_p=1.0, num_return_sequences=n,
                                     pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
                new_tokens = out[:, enc["input_ids"].shape[1]:]
                texts = tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
                cuts = cut_rows(new_tokens, tokenizer, max_new_tokens)
                answers += [[t.strip() for t in texts[k * n: (k + 1) * n]] for k in range(len(prompts))]
                cut += [cuts[k * n: (k + 1) * n] for k in range(len(prompts))]
                if on_batch is not None:
                    on_batch(len(answers), len(questions))
    finally:
        tokenizer.padding_side = was_side
    return (answers, cut) if return_cut else answers


def leak_share(samples: list[list[str]], keywords: list[list[str]]) -> tuple[float | None, list[float | None]]:
    """Share of questions with at least one sampled answer that contains one of the item's keywords."""
    per_item = [None if not kw else float(any(keyword_hit(s, kw) for s in answers))
                for answers, kw in zip(samples, keywords)]
    scored = [v for v in per_item if v is not None]
    return (sum(scored) / len(scored) if scored else None), per_item



def sample(ctx: Context) -> AttackResult:
    """n answers sampled per forget question at the set temperature: the share of questions with at least one
    answer holding a keyword, for the base model ("before") and the unlearned model. Its recovery compares that
    share with the greedy keyword accuracy before and after unlearning."""
    questions = [it.question for it in ctx.forget]
    keywords = [it.keywords or derive_keywords(it.question, it.answer) for it in ctx.forget]
    acfg, cfg = ctx.acfg, ctx.cfg

    def draw(loaded):
        return sample_answers(loaded.model, loaded.tokenizer, questions, acfg.samples, acfg.temperature,
                              cfg.max_new_tokens, cfg.seed, on_batch=ctx.on_batch, return_cut=True)
    key = ("sample", tuple(questions), acfg.samples, acfg.temperature, cfg.max_new_tokens, cfg.seed)
    if key not in ctx.cache:
        ctx.cache[key] = leak_share(draw(ctx.base)[0], keywords)
    before_share, before_items = ctx.cache[key]
    samples, cut = draw(ctx.model())
    share, per_item = leak_share(samples, keywords)
    result = AttackResult("sample", ctx.unlearned.method)
    result.metrics["forget"] = {"keyword_accuracy": share}
    baseline = _baseline(ctx.unlearned, "forget")
    result.baseline["forget"] = {w: {"keyword_accuracy": v.get("keyword_accuracy")} for w, v in baseline.items()}
    # shown per question: the first sampled answer with a keyword (else the first), marked where it was cut
    leaked = []
    for answers, cuts, kw in zip(samples, cut, keywords):
        k = next((k for k, text in enumerate(answers) if keyword_hit(text, kw)), 0)
        leaked.append(shown_answer(answers[k], cuts[k]) if answers else "")
    result.answers = _answers(questions, ctx.unlearned.answers("forget"), leaked)
    result.details = {"n": acfg.samples, "temperature": acfg.temperature, "leak_before": before_share,
                      "leak_unlearned": share, "leak_per_item_before": before_items, "leak_per_item": per_item}
    return result


ATTACKS = {"sample": (sample, "n answers sampled at temperature 1: any with a keyword?")}
