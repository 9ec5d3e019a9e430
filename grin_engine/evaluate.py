"""Run the model for evaluation: greedy answers and per-item answer NLLs, then the metrics of DESIGN.md §4.

`metrics.py` holds the formulas (pure functions of strings and numbers); this file produces their inputs from a
model, so every number in a report comes from the model's real outputs.
"""

from __future__ import annotations

import torch

from . import metrics
from .data import IGNORE_INDEX, QAItem, collate, encode_pair, format_prompt, make_batches
from .losses import answer_nll


@torch.no_grad()
def generate_answers(model, tokenizer, questions: list[str], max_new_tokens: int = 48,
                     batch_size: int = 16, on_batch=None) -> list[str]:
    """Greedy answers: chat template with generation prompt, left padding, cut at EOS, special tokens dropped.

    on_batch(done, total) is called after each batch of questions."""
    device = next(model.parameters()).device
    was_side = tokenizer.padding_side
    tokenizer.padding_side = "left"  # so every prompt ends right where generation starts
    answers = []
    try:
        for start in range(0, len(questions), batch_size):
            prompts = [format_prompt(tokenizer, q) for q in questions[start: start + batch_size]]
            enc = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
            out = model.generate(
                **enc, max_new_tokens=max_new_tokens, do_sample=False, temperature=None, top_p=None, top_k=None,
                pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
            )
            new_tokens = out[:, enc["input_ids"].shape[1]:]
            answers += [t.strip() for t in tokenizer.batch_decode(new_tokens, skip_special_tokens=True)]
            if on_batch is not None:
                on_batch(len(answers), len(questions))
    finally:
        tokenizer.padding_side = was_side
    return answers


@torch.no_grad()
def pair_nlls(model, tokenizer, pairs: list[tuple[str, str]], batch_size: int = 16,
              max_length: int = 256, layout: str = "answer_eos") -> tuple[list[float], list[int]]:
    """Per (question, answer): the summed answer-token NLL and the number of answer tokens."""
    device = next(model.parameters()).device
    sums, counts = [], []
    for batch in make_batches(tokenizer, pairs, batch_size, max_length, layout):
        nll_sum, n_tokens = answer_nll(model, {k: v.to(device) for k, v in batch.items()})
        sums += nll_sum.tolist()
        counts += n_tokens.tolist()
    return sums, counts


@torch.no_grad()
def pair_token_nlls(model, tokenizer, pairs: list[tuple[str, str]], batch_size: int = 16, max_length: int = 256,
                    layout: str = "answer_eos", on_batch=None) -> list[list[float]]:
    """Per (question, answer): the NLL of each labelled answer token, in order.

    The pairs are batched by length (shortest first), so little compute goes into padding; the result is in the
    order of `pairs`. on_batch(done, total) counts the batches.
    """
    device = next(model.parameters()).device
    encoded = [encode_pair(tokenizer, q, a, max_length, layout) for q, a in pairs]
    order = sorted(range(len(pairs)), key=lambda i: len(encoded[i][0]))
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    result: list[list[float]] = [[] for _ in pairs]
    n_batches = (len(order) + batch_size - 1) // batch_size
    for b, start in enumerate(range(0, len(order), batch_size)):
        rows = order[start: start + batch_size]
        batch = {k: v.to(device) for k, v in collate([encoded[i] for i in rows], pad_id).items()}
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1].float()
        labels = batch["labels"][:, 1:]
        nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), labels.clamp(min=0), reduction="none")
        for row, i in enumerate(rows):
            result[i] = nll[row][labels[row] != IGNORE_INDEX].tolist()
        if on_batch is not None:
            on_batch(b + 1, n_batches)
    return result


@torch.no_grad()
def shared_prompt_token_nlls(model, tokenizer, question: str, answers: list[str], max_length: int = 256,
                             layout: str = "answer_eos") -> list[list[float]]:
    """Token NLLs of several answers to one question, the same numbers as pair_token_nlls up to float rounding, but
    the prompt runs once and its key/value cache is shared by all answers (TOFU scores 7 answers per question:
    answer, paraphrase, 5 perturbed; this about halves the compute)."""
    device = next(model.parameters()).device
    encoded = [encode_pair(tokenizer, question, a, max_length, layout) for a in answers]
    n_prompt = next(i for i, lab in enumerate(encoded[0][1]) if lab != IGNORE_INDEX)
    prompt = torch.tensor([encoded[0][0][:n_prompt]], device=device)
    out = model(input_ids=prompt, use_cache=True)
    first_log_probs = torch.log_softmax(out.logits[0, -1].float(), dim=-1)  # predicts every answer's first token
    cache = out.past_key_values
    tails = [ids[n_prompt:] for ids, _ in encoded]
    width = max(len(t) for t in tails)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    ids = torch.full((len(tails), width), pad_id, dtype=torch.long, device=device)
    mask = torch.zeros((len(tails), n_prompt + width), dtype=torch.long, device=device)
    mask[:, :n_prompt] = 1
    for row, tail in enumerate(tails):
        ids[row, :len(tail)] = torch.tensor(tail, device=device)
        mask[row, n_prompt: n_prompt + len(tail)] = 1
    cache.batch_repeat_interleave(len(tails))
    log_probs = torch.log_softmax(model(input_ids=ids, attention_mask=mask, past_key_values=cache).logits.float(), -1)
    result = []
    for row, tail in enumerate(tails):
        nlls = [-first_log_probs[tail[0]].item()]
        if len(tail) > 1:
            nlls += (-log_probs[row, : len(tail) - 1].gather(1, ids[row, 1: len(tail)].unsqueeze(1))).squeeze(1).tolist()
        result.append(nlls)
    return result


def _per_token(sums: list[float], counts: list[int]) -> list[float]:
    return [s / max(1, c) for s, c in zip(sums, counts)]


def truth_ratio_inputs(model, tokenizer, items: list[QAItem], max_length: int = 256):
    """Per-token NLL of each item's paraphrased answer (or its answer) and of each of its perturbed answers.

    Items without perturbed answers are left out; returns (paraphrased, perturbed) lists or None when none qualify.
    """
    usable = [it for it in items if it.perturbed_answers]
    if not usable:
        return None
    para = _per_token(*pair_nlls(model, tokenizer, [(it.question, it.paraphrased_answer or it.answer) for it in usable],
                                 max_length=max_length))
    flat = [(it.question, p) for it in usable for p in it.perturbed_answers]
    flat_nll = _per_token(*pair_nlls(model, tokenizer, flat, max_length=max_length))
    perturbed, start = [], 0
    for it in usable:
        perturbed.append(flat_nll[start: start + len(it.perturbed_answers)])
        start += len(it.perturbed_answers)
    return para, perturbed


def evaluate_split(model, tokenizer, items: list[QAItem], split: str, max_new_tokens: int = 48,
                   max_length: int = 256, on_batch=None) -> dict:
    """Generations and metrics for one split ("forget" or "retain").

    Returns {"generations": [...], "metrics": {name: MetricResult}, "truth_ratios": [...] or None}.
    on_batch(done, total) reports the generation progress (items answered so far).
    """
    model.eval()
    generations = generate_answers(model, tokenizer, [it.question for it in items], max_new_tokens,
                                   on_batch=on_batch)
    keywords = [it.keywords or metrics.derive_keywords(it.question, it.answer) for it in items]
    sums, counts = pair_nlls(model, tokenizer, [(it.question, it.answer) for it in items], max_length=max_length)
    results = {
        "rougeL_recall": metrics.rougeL_recall([it.answer for it in items], generations),
        "keyword_accuracy": metrics.keyword_accuracy(generations, keywords),
        "probability": metrics.answer_probability(sums, counts),
    }
    ratios = None
    tr_inputs = truth_ratio_inputs(model, tokenizer, items, max_length)
    if tr_inputs is not None:
        results["truth_ratio"] = metrics.truth_ratio(*tr_inputs, split=split)
        ratios = metrics.truth_ratios(*tr_inputs)
    return {"generations": generations, "metrics": results, "truth_ratios": ratios}


@torch.no_grad()
def choice_logliks(model, tokenizer, question: str, choices: list[str], max_length: int = 256) -> list[float]:
    """Summed log-likelihood of each choice as the answer to the question (for MCQ accuracy, e.g. WMDP)."""
    sums, _ = pair_nlls(model, tokenizer, [(question, choice) for choice in choices], max_length=max_length)
    return [-s for s in sums]


def mcq_accuracy(model, tokenizer, questions: list[str], choices: list[list[str]], answers: list[int]):
    """MCQ accuracy: an item counts when its right choice has the highest log-likelihood."""
    logliks = [choice_logliks(model, tokenizer, q, c) for q, c in zip(questions, choices)]
    return metrics.mcq_accuracy(logliks, answers)
