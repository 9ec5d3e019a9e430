"""Run the model for evaluation: greedy answers and per-item answer NLLs, then the metrics of DESIGN.md §4.

`metrics.py` holds the formulas (pure functions of strings and numbers); this file produces their inputs from a
model, so every number in a report comes from the model's real outputs.
"""

from __future__ import annotations

import torch

from ..data import IGNORE_INDEX, QAItem, collate, encode_pair, format_prompt
from ..memory import model_shape
from ..method.losses import answer_nll
from ..models import input_device
from . import metrics


# Batching (DESIGN.md §4.1): items sorted by length, so a batch holds similar lengths and little padding, and
# batches sized by a budget of tokens (rows x padded length) instead of a fixed number of rows. On a GPU the budget
# comes from the free memory and what one token costs there; on a CPU it is a constant that measured fastest.
CPU_GENERATION_TOKENS = 2048  # rows x (prompt + new tokens) per generate() call on a CPU
CPU_SCORING_TOKENS = 2048  # rows x (prompt + answer) per forward pass of pair_nlls on a CPU
MAX_ROWS = 512  # one batch never holds more rows: a batch runs until its slowest row ends
# On a CPU, batches larger than 16 rows measured slower (bench/evaluation.py: 1.37x CPU time for generation, 1.22x for
# the NLLs with ~24-32 rows; a CPU is compute-bound and its large logit tensors are costly to allocate), so the
# previous 16 stays the CPU's cap. Generation on a CPU also keeps the questions' order: a batch runs until its
# longest answer ends, and sorting by prompt length mixed short-answer and long-answer items (1.12x CPU time).
CPU_MAX_ROWS = 16


def length_batches(lengths: list[int], budget: int, max_rows: int | None = None,
                   by_length: bool = True) -> list[list[int]]:
    """Indices grouped into batches, each with rows x (its longest length) <= budget (at least one row per batch) and
    at most max_rows rows: shortest first, or in the given order when by_length is False."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i]) if by_length else range(len(lengths))
    batches, current, longest = [], [], 0
    for i in order:
        rows, width = len(current) + 1, max(longest, lengths[i])
        if current and (rows * width > budget or (max_rows is not None and rows > max_rows)):
            batches.append(current)
            current, width = [], lengths[i]
        current.append(i)
        longest = width
    if current:
        batches.append(current)
    return batches


def _free_accelerator_bytes(model) -> int | None:
    """Free memory on the (least free) CUDA device holding the model; None on a CPU (or MPS)."""
    devices = {p.device for p in model.parameters() if p.device.type == "cuda"}
    if not devices:
        return None
    return min(torch.cuda.mem_get_info(d)[0] for d in devices)


def token_budget(model, per_token_bytes: int, cpu_tokens: int) -> tuple[int, int]:
    """(tokens, rows) per batch: half the free accelerator memory over what one token costs, at most MAX_ROWS rows;
    on a CPU the CPU constants."""
    free = _free_accelerator_bytes(model)
    if free is None:
        return cpu_tokens, CPU_MAX_ROWS
    return max(256, int(0.5 * free / max(1, per_token_bytes))), MAX_ROWS


def generation_token_bytes(model) -> int:
    """What one token of a generation batch holds on the device: its KV cache over all layers (2 x layers x
    kv heads x head dim) plus working activations (a few hidden and FFN vectors), in the model's dtype."""
    s = model_shape(model)
    return s.element * (2 * s.layers * s.kv_heads * s.head_dim + 4 * (s.hidden + s.ffn))


@torch.no_grad()
def generate_answers(model, tokenizer, questions: list[str], max_new_tokens: int = 48,
                     batch_size: int | None = None, on_batch=None, return_cut: bool = False):
    """Greedy answers: chat template with generation prompt, left padding, cut at EOS, special tokens dropped.
    With return_cut=True: (answers, cut), cut[i] true when answer i ended at max_new_tokens without EOS (so it
    may stop mid-word; `shown_answer` marks it for a reader).

    On a GPU prompts are sorted by length and batched by a token budget (`length_batches`; `batch_size`, if given,
    caps the rows); on a CPU they keep their order, 16 rows at most. generate() ends a batch once every row has
    produced EOS. Answers come back in the questions' order.
    on_batch(done, total) is called after each batch of questions."""
    device = input_device(model)
    prompts = [format_prompt(tokenizer, q) for q in questions]
    prompt_ids = tokenizer(prompts, add_special_tokens=False)["input_ids"] if prompts else []
    budget, max_rows = token_budget(model, generation_token_bytes(model), CPU_GENERATION_TOKENS)
    batches = length_batches([len(ids) + max_new_tokens for ids in prompt_ids], budget, batch_size or max_rows,
                             by_length=_free_accelerator_bytes(model) is not None)  # see CPU_MAX_ROWS
    was_side = tokenizer.padding_side
    tokenizer.padding_side = "left"  # so every prompt ends right where generation starts
    answers: list[str | None] = [None] * len(questions)
    cut = [False] * len(questions)
    done = 0
    try:
        for rows in batches:
            enc = tokenizer.pad({"input_ids": [prompt_ids[i] for i in rows]}, return_tensors="pt").to(device)
            out = model.generate(
                **enc, max_new_tokens=max_new_tokens, do_sample=False, temperature=None, top_p=None, top_k=None,
                pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
            )
            new_tokens = out[:, enc["input_ids"].shape[1]:]
            texts = tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
            for i, text, was_cut in zip(rows, texts, cut_rows(new_tokens, tokenizer, max_new_tokens)):
                answers[i] = text.strip()
                cut[i] = was_cut
            done += len(rows)
            if on_batch is not None:
                on_batch(done, len(questions))
    finally:
        tokenizer.padding_side = was_side
    return (answers, cut) if return_cut else answers


def cut_rows(new_tokens: torch.Tensor, tokenizer, max_new_tokens: int) -> list[bool]:
    """For each generated row (rows x new tokens): True when it ran to max_new_tokens without producing EOS."""
    eos = tokenizer.eos_token_id
    eos_ids = torch.tensor(eos if isinstance(eos, list) else [eos if eos is not None else -1])
    ended = torch.isin(new_tokens.cpu(), eos_ids).any(dim=1)
    return [not bool(e) and new_tokens.shape[1] >= max_new_tokens for e in ended]


CUT_MARK = " …[cut]"


def shown_answer(text: str, cut: bool) -> str:
    """An answer as a reader sees it: one that hit the token limit ends at its last sentence end (when that keeps
    at least half of it) or else its last whole word, then CUT_MARK; so no answer stops mid-word unmarked.
    Display only: the metrics score the answer as generated."""
    if not cut:
        return text
    sentence = max(text.rfind(". "), text.rfind("! "), text.rfind("? "), text.rfind(".\n"))
    if sentence >= len(text) // 2:
        return text[:sentence + 1] + CUT_MARK
    word = text.rstrip().rfind(" ")
    return (text[:word].rstrip(" ,;:-") if word > 0 else text) + CUT_MARK


def shown_answers(evaluation: dict) -> list[str]:
    """An evaluation's answers (evaluate_split) as shown in reports and tables: each marked where it hit the token
    limit (shown_answer)."""
    cut = evaluation.get("cut") or []
    return [shown_answer(text, i < len(cut) and cut[i]) for i, text in enumerate(evaluation["generations"])]


@torch.no_grad()
def pair_nlls(model, tokenizer, pairs: list[tuple[str, str]], batch_size: int | None = None,
              max_length: int = 256, layout: str = "answer_eos") -> tuple[list[float], list[int]]:
    """Per (question, answer): the summed answer-token NLL and the number of answer tokens.

    Pairs are sorted by length and batched by a token budget (the logits of a batch, rows x length x vocabulary
    floats, are its largest tensor); `batch_size`, if given, caps the rows. Results come back in the pairs' order."""
    device = input_device(model)
    encoded = [encode_pair(tokenizer, q, a, max_length, layout) for q, a in pairs]
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    sums, counts = [0.0] * len(pairs), [0] * len(pairs)
    for rows in scoring_batches(model, encoded, batch_size):
        batch = collate([encoded[i] for i in rows], pad_id)
        nll_sum, n_tokens = answer_nll(model, {k: v.to(device) for k, v in batch.items()})
        for i, s, c in zip(rows, nll_sum.tolist(), n_tokens.tolist()):
            sums[i], counts[i] = s, c
    return sums, counts


def scoring_batches(model, encoded: list[tuple[list[int], list[int]]], batch_size: int | None) -> list[list[int]]:
    """Row indices of encoded (input_ids, labels) pairs grouped for scoring: by length, within a token budget."""
    vocab = model.get_output_embeddings().weight.shape[0] if model.get_output_embeddings() is not None else 1 << 16
    budget, max_rows = token_budget(model, 3 * 4 * vocab, CPU_SCORING_TOKENS)  # logits, float copy, log-softmax
    return length_batches([len(ids) for ids, _ in encoded], budget, batch_size or max_rows)


@torch.no_grad()
def pair_token_nlls(model, tokenizer, pairs: list[tuple[str, str]], batch_size: int | None = None,
                    max_length: int = 256, layout: str = "answer_eos", on_batch=None) -> list[list[float]]:
    """Per (question, answer): the NLL of each labelled answer token, in order (batched as pair_nlls; the result is
    in the order of `pairs`). on_batch(done, total) counts the batches."""
    device = input_device(model)
    encoded = [encode_pair(tokenizer, q, a, max_length, layout) for q, a in pairs]
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    result: list[list[float]] = [[] for _ in pairs]
    batches = scoring_batches(model, encoded, batch_size)
    for b, rows in enumerate(batches):
        batch = {k: v.to(device) for k, v in collate([encoded[i] for i in rows], pad_id).items()}
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1].float()
        labels = batch["labels"][:, 1:].to(logits.device)  # a split model's logits come from its last device
        nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), labels.clamp(min=0), reduction="none")
        for row, i in enumerate(rows):
            result[i] = nll[row][labels[row] != IGNORE_INDEX].tolist()
        if on_batch is not None:
            on_batch(b + 1, len(batches))
    return result


@torch.no_grad()
def shared_prompt_token_nlls(model, tokenizer, question: str, answers: list[str], max_length: int = 256,
                             layout: str = "answer_eos") -> list[list[float]]:
    """Token NLLs of several answers to one question, the same numbers as pair_token_nlls up to float rounding, but
    the prompt runs once and its key/value cache is shared by all answers (TOFU scores 7 answers per question:
    answer, paraphrase, 5 perturbed; this about halves the compute)."""
    device = input_device(model)
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
    targets = ids.to(log_probs.device)  # a split model's logits come from its last device
    result = []
    for row, tail in enumerate(tails):
        nlls = [-first_log_probs[tail[0]].item()]
        if len(tail) > 1:
            picked = log_probs[row, : len(tail) - 1].gather(1, targets[row, 1: len(tail)].unsqueeze(1))
            nlls += (-picked).squeeze(1).tolist()
        result.append(nlls)
    return result


def _per_token(sums: list[float], counts: list[int]) -> list[float]:
    return [s / max(1, c) for s, c in zip(sums, counts)]


def truth_ratio_inputs(model, tokenizer, items: list[QAItem], max_length: int = 256, layout: str = "answer_eos"):
    """Per-token NLL of each item's paraphrased answer (or its answer) and of each of its perturbed answers, with
    the labels of `layout` (data.encode_pair).

    Items without perturbed answers are left out; returns (paraphrased, perturbed) lists or None when none qualify.
    """
    usable = [it for it in items if it.perturbed_answers]
    if not usable:
        return None
    para = _per_token(*pair_nlls(model, tokenizer, [(it.question, it.paraphrased_answer or it.answer) for it in usable],
                                 max_length=max_length, layout=layout))
    flat = [(it.question, p) for it in usable for p in it.perturbed_answers]
    flat_nll = _per_token(*pair_nlls(model, tokenizer, flat, max_length=max_length, layout=layout))
    perturbed, start = [], 0
    for it in usable:
        perturbed.append(flat_nll[start: start + len(it.perturbed_answers)])
        start += len(it.perturbed_answers)
    return para, perturbed


def evaluate_split(model, tokenizer, items: list[QAItem], split: str, max_new_tokens: int = 48,
                   max_length: int = 256, on_batch=None, layout: str = "answer_eos") -> dict:
    """Generations and metrics for one split ("forget" or "retain"); the NLLs with the labels of `layout` (the run's
    label_layout, so that the probabilities measure the tokens the run trained on).

    Returns {"generations": [...], "metrics": {name: MetricResult} (rougeL_recall, keyword_accuracy, probability,
    truth_ratio where the items have perturbed answers, fluency), "truth_ratios": [...] or None,
    "cut": [...] (true where an answer hit max_new_tokens without ending)}.
    on_batch(done, total) reports the generation progress (items answered so far).
    """
    model.eval()
    generations, cut = generate_answers(model, tokenizer, [it.question for it in items], max_new_tokens,
                                        on_batch=on_batch, return_cut=True)
    sums, counts = pair_nlls(model, tokenizer, [(it.question, it.answer) for it in items], max_length=max_length,
                             layout=layout)
    answers = answer_metrics(items, generations)
    results = {
        "rougeL_recall": answers["rougeL_recall"],
        "keyword_accuracy": answers["keyword_accuracy"],
        "probability": metrics.answer_probability(sums, counts),
    }
    ratios = None
    tr_inputs = truth_ratio_inputs(model, tokenizer, items, max_length, layout)
    if tr_inputs is not None:
        results["truth_ratio"] = metrics.truth_ratio(*tr_inputs, split=split)
        ratios = metrics.truth_ratios(*tr_inputs)
    results["fluency"] = answers["fluency"]  # last: how the answers read, beside what they know
    return {"generations": generations, "metrics": results, "truth_ratios": ratios, "cut": cut}


def answer_metrics(items: list[QAItem], generations: list[str]) -> dict[str, metrics.MetricResult]:
    """The metrics of the items' generated answers: ROUGE-L recall, keyword accuracy (the item's keywords, or
    keywords derived from its answer) and fluency. The until-check measures these from the same code."""
    keywords = [it.keywords or metrics.derive_keywords(it.question, it.answer) for it in items]
    return {"rougeL_recall": metrics.rougeL_recall([it.answer for it in items], generations),
            "keyword_accuracy": metrics.keyword_accuracy(generations, keywords),
            "fluency": metrics.fluency(generations)}


@torch.no_grad()
def choice_logliks(model, tokenizer, question: str, choices: list[str], max_length: int = 256) -> list[float]:
    """Summed log-likelihood of each choice as the answer to the question (for MCQ accuracy, e.g. WMDP)."""
    sums, _ = pair_nlls(model, tokenizer, [(question, choice) for choice in choices], max_length=max_length)
    return [-s for s in sums]


def mcq_accuracy(model, tokenizer, questions: list[str], choices: list[list[str]], answers: list[int]):
    """MCQ accuracy: an item counts when its right choice has the highest log-likelihood."""
    logliks = [choice_logliks(model, tokenizer, q, c) for q, c in zip(questions, choices)]
    return metrics.mcq_accuracy(logliks, answers)


def evaluate_both(model, tokenizer, forget: list[QAItem], retain: list[QAItem], cfg, on_batch=None) -> dict:
    """evaluate_split on both sets with cfg's generation lengths and label layout; on_batch(done, total) counts the
    items answered over both."""
    total = len(forget) + len(retain)
    count_f = (lambda done, _n: on_batch(done, total)) if on_batch else None
    count_r = (lambda done, _n: on_batch(len(forget) + done, total)) if on_batch else None
    return {split: evaluate_split(model, tokenizer, items, split, cfg.max_new_tokens, cfg.max_length, count,
                                  cfg.label_layout)
            for split, items, count in (("forget", forget, count_f), ("retain", retain, count_r))}
