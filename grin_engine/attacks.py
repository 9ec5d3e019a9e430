"""Is it really gone? Attacks on an unlearned model (DESIGN.md §7).

Unlearning is usually judged by greedy answers to the very questions it trained on. That overstates forgetting:
a few steps of fine-tuning on related data (Hu et al., arXiv 2406.13356; Deeb & Roger, arXiv 2410.08827), a 4-bit
quantisation (Zhang et al., arXiv 2410.16454), a forced answer start, a reworded question, or sampling instead of
greedy decoding (arXiv 2410.19482) can bring the "forgotten" answers back. Each attack here takes an unlearned
model (the base plus a run's patch, always on a private copy: the base and the run stay as they were) and measures
the forget metrics again. One registry, `ATTACKS`: a new attack is one function and one line.

Every attack reports, per group of items ("forget", "retain", or the relearning halves "forget_A" / "forget_B"),
the metric values after the attack next to the same items' values before unlearning and after unlearning, and

    recovery = (attacked - unlearned) / (before - unlearned)      (0: nothing came back, 1: all of it)

per metric (`recovery()`; None where before == unlearned: nothing was forgotten, so nothing can come back).
"""

from __future__ import annotations

import copy
import json
import math
import time
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F

from .config import GrinError
from .data import QAItem, qa_batches
from .evaluate import cut_rows, evaluate_split, shown_answer, shown_answers
from .grun import GrunState
from .influence import candidate_parameters
from .metrics import keyword_hit
from .models import LoadedModel, input_device
from .patch import WeightPatch, unlearned_copy

FORCED_PREFIX = "Sure, here is the answer:"
ONE_SHOT_INTRO = "Here is a related fact: "
MAX_RELEARN_STEPS = 500  # bounds that keep one visitor's attack from holding a shared machine for hours
MAX_SAMPLES = 64
RECOVERY_TOLERANCE = 1e-12  # |before - unlearned| below this counts as "nothing was forgotten"


@dataclass
class AttackConfig:
    """The attacks' own settings (the run's GrinConfig gives seed, batch size and generation length)."""
    relearn_steps: int = 10  # fine-tuning steps on half A of the forget set (a few minutes on a 2-core CPU)
    relearn_lr: float = 5e-5  # a tenth of the unlearning lr: a "small" step for this model size
    samples: int = 8  # answers sampled per forget question
    temperature: float = 1.0
    group_size: int = 32  # round-to-nearest quantisation: one scale per this many weights of a row (GGUF's block)
    prefix: str = FORCED_PREFIX

    def __post_init__(self):
        for name, most in (("relearn_steps", MAX_RELEARN_STEPS), ("samples", MAX_SAMPLES), ("group_size", 4096)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= most:
                raise GrinError(f"attack {name.replace('_', ' ')} must be a whole number from 1 to {most}, "
                                f"got {value!r}")
        for name in ("relearn_lr", "temperature"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not (math.isfinite(value)
                                                                                       and value > 0):
                raise GrinError(f"attack {name.replace('_', ' ')} must be a number > 0, got {value!r}")
        if not isinstance(self.prefix, str) or not self.prefix.strip():
            raise GrinError("attack prefix: give the text the forced answer starts with")


@dataclass
class Target:
    """One unlearned model to attack: a run's patch and what the run measured before and after unlearning."""
    method: str  # "grin", "full", "grun" ... (a label for reports)
    patch: WeightPatch | GrunState
    metrics_per_item: dict  # RunResult.metrics_per_item: {"before"|"after": {split: {metric: [per item]}}}
    generations: list[dict]  # RunResult.generations: split, question, answer, before, after

    @classmethod
    def of(cls, method: str, result) -> "Target":
        if result.patch is None or result.stopped:
            raise GrinError(f"attack: the {method} run has no unlearned model (stopped, or its patch was not kept)")
        return cls(method, result.patch, result.metrics_per_item, result.generations)

    def answers(self, split: str, when: str = "after") -> list[str]:
        return [g[when] for g in self.generations if g["split"] == split]


@dataclass
class AttackResult:
    attack: str
    method: str
    metrics: dict = field(default_factory=dict)  # group -> metric -> value after the attack
    baseline: dict = field(default_factory=dict)  # group -> {"before": {metric: v}, "unlearned": {metric: v}}
    recovery: dict = field(default_factory=dict)  # group -> metric -> recovery (None: undefined)
    answers: list[dict] = field(default_factory=list)  # forget questions: the unlearned and the attacked answer
    details: dict = field(default_factory=dict)  # what else the attack measured (split, survival, samples ...)
    seconds: float = 0.0
    skipped: str | None = None  # why the attack could not run on this data or model

    def to_dict(self) -> dict:
        return asdict(self)


# ---------------------------------------------------------------------------------------------------------------------
# Pure pieces: recovery, the split


def recovery(before: float | None, unlearned: float | None, attacked: float | None) -> float | None:
    """(attacked - unlearned) / (before - unlearned): the share of what unlearning removed that the attack restored.

    0 = nothing came back, 1 = all of it; it is not clipped (below 0: the attack removed even more; above 1: it
    overshot the base model). None when any value is missing, or when before == unlearned (to 1e-12): unlearning
    changed nothing on this metric, so there is nothing to recover and any ratio would be noise divided by zero.
    """
    if before is None or unlearned is None or attacked is None:
        return None
    gap = before - unlearned
    if abs(gap) <= RECOVERY_TOLERANCE:
        return None
    return (attacked - unlearned) / gap


def split_halves(n: int, seed: int) -> tuple[list[int], list[int]]:
    """Indices of halves A and B of n items: a permutation seeded with `seed`, A its first n // 2, both sorted."""
    if n < 2:
        raise GrinError(f"relearn: the forget set needs at least 2 items to split in halves, it has {n}")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(int(seed))).tolist()
    return sorted(order[: n // 2]), sorted(order[n // 2:])


def _subset_mean(values: list, indices: list[int]) -> float | None:
    picked = [values[i] for i in indices if values[i] is not None]
    return float(sum(picked) / len(picked)) if picked else None


def _baseline(target: Target, split: str, indices: list[int] | None = None) -> dict:
    """Before / unlearned metric values of the split's items (all of them, or those at `indices`)."""
    out = {}
    for when, key in (("before", "before"), ("unlearned", "after")):
        per_metric = (target.metrics_per_item.get(key) or {}).get(split) or {}
        out[when] = {m: _subset_mean(v, indices if indices is not None else list(range(len(v))))
                     for m, v in per_metric.items()}
    return out


def _values(evaluation: dict) -> dict:
    return {m: r.value for m, r in evaluation["metrics"].items()}


def _finish(result: AttackResult) -> AttackResult:
    """Fill in the recovery of every metric of every group from `metrics` and `baseline`."""
    for group, values in result.metrics.items():
        base = result.baseline.get(group, {})
        result.recovery[group] = {m: recovery(base.get("before", {}).get(m), base.get("unlearned", {}).get(m), v)
                                  for m, v in values.items()}
    return result


# ---------------------------------------------------------------------------------------------------------------------
# Quantisation arithmetic


def rtn_round_trip(weight: torch.Tensor, bits: int, group_size: int = 32) -> torch.Tensor:
    """Round-to-nearest, symmetric, group-wise: quantise and dequantise each row in groups of `group_size`.

        d = bf16(max |w| over the group / qmax),   q = clamp(round(w / d), -qmax, qmax),   w' = q * d
        qmax = 2^(bits-1) - 1 (127 at 8 bits, 7 at 4 bits)

    This is GGUF's Q8_0 / Q4_0 recipe (absmax scale per block of 32), except that the scale is rounded to bfloat16
    (8 significant bits) instead of float16: q * d is then exact in float32, so a second round trip returns the same
    tensor bit for bit, and the error is at most d / 2 per weight (tests/test_attacks.py checks both).
    """
    qmax = 2 ** (bits - 1) - 1
    shape, width = weight.shape, weight.shape[-1]
    rows = weight.detach().float().reshape(-1, width)
    pad = (-width) % group_size
    if pad:
        rows = F.pad(rows, (0, pad))
    groups = rows.reshape(rows.shape[0], -1, group_size)
    scale = (groups.abs().amax(-1, keepdim=True) / qmax).to(torch.bfloat16).float()
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))  # an all-zero group stays zero
    q = (groups / safe).round().clamp(-qmax, qmax)
    out = (q * scale).reshape(rows.shape[0], -1)[:, :width]
    return out.reshape(shape).to(weight.dtype)


def gguf_round_trip(weight: torch.Tensor, qtype: str) -> torch.Tensor | None:
    """Quantise and dequantise with the `gguf` package's own quantisers (llama.cpp's reference arithmetic in
    numpy); rows are GGUF's rows (the input dimension). None when the row length is not a multiple of the block."""
    import numpy as np
    from gguf import GGMLQuantizationType, quants
    from gguf.constants import GGML_QUANT_SIZES

    kind = GGMLQuantizationType[qtype]
    block = GGML_QUANT_SIZES[kind][0]
    if weight.shape[-1] % block:
        return None
    data = weight.detach().float().cpu().numpy().astype(np.float32)
    out = quants.dequantize(quants.quantize(data, kind), kind)
    return torch.from_numpy(np.ascontiguousarray(out)).reshape(weight.shape).to(weight.device, weight.dtype)


QUANTISERS = {  # attack name -> (weight -> dequantised weight or None, description)
    "quant8": (lambda w, gs: rtn_round_trip(w, 8, gs), "8-bit round-to-nearest, absmax scale per group"),
    "quant4": (lambda w, gs: rtn_round_trip(w, 4, gs), "4-bit round-to-nearest, absmax scale per group"),
    "gguf_q8_0": (lambda w, gs: gguf_round_trip(w, "Q8_0"), "GGUF Q8_0 round trip (gguf package)"),
    "gguf_q4_0": (lambda w, gs: gguf_round_trip(w, "Q4_0"), "GGUF Q4_0 round trip (gguf package)"),
    "gguf_q4_1": (lambda w, gs: gguf_round_trip(w, "Q4_1"), "GGUF Q4_1 round trip: the default model's own format"),
}


def quantise_model(model, quantise, base_model=None, patch: WeightPatch | None = None, say=None) -> dict:
    """Replace every candidate weight (the 2-D weights of the transformer blocks) by its round trip, in place.

    With `base_model` and a WeightPatch, also count for the patched weights how many of the entries the run changed
    still differ from the base after both are quantised the same way ("the change survives"). Returns
    {"quantised", "skipped" (weights a format cannot hold), "changed", "survived", "survival"}.
    """
    params = dict(model.named_parameters())
    base_params = dict(base_model.named_parameters()) if base_model is not None else {}
    patched = set(patch.entries) if isinstance(patch, WeightPatch) else set()
    names = list(candidate_parameters(model))
    quantised, skipped, changed, survived = 0, [], 0, 0
    with torch.no_grad():
        for i, name in enumerate(names):
            weight = params[name]
            new = quantise(weight)
            if new is None:
                skipped.append(name)
                continue
            if name in patched and name in base_params:
                base_w = base_params[name]
                moved = weight != base_w
                after_base = quantise(base_w)
                changed += int(moved.sum())
                survived += int((moved & (new != after_base)).sum())
            weight.copy_(new)
            quantised += 1
            if say is not None:
                say(i + 1, len(names))
    return {"quantised": quantised, "skipped": skipped, "changed": changed if patched else None,
            "survived": survived if patched else None,
            "survival": (survived / changed) if patched and changed else None}


# ---------------------------------------------------------------------------------------------------------------------
# Prompting tricks and sampling


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


@torch.no_grad()
def sample_answers(model, tokenizer, questions: list[str], n: int = 8, temperature: float = 1.0,
                   max_new_tokens: int = 48, seed: int = 0, batch_size: int = 8, on_batch=None,
                   return_cut: bool = False):
    """n sampled answers per question (temperature sampling, no top-k / top-p cut), seeded. With return_cut=True:
    (answers, cut), cut[i][k] true when answer k to question i stopped at max_new_tokens without EOS.

    The seed is set inside torch.random.fork_rng, so the same seed gives the same answers and the caller's random
    state is left as it was. Prompts are formatted and padded as in evaluate.generate_answers.
    """
    from .data import format_prompt

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


# ---------------------------------------------------------------------------------------------------------------------
# The attacks. Each: attack(ctx) -> AttackResult, on a private copy of the unlearned model.


@dataclass
class Context:
    """What one attack on one target works with."""
    base: LoadedModel
    target: Target
    forget: list[QAItem]
    retain: list[QAItem]
    cfg: object  # the run's GrinConfig
    acfg: AttackConfig
    say: object  # say(done, total): progress, and raises pipeline.RunStopped on Stop
    cache: dict  # shared by the targets of one call: what the base model gives under an attack
    _unlearned: LoadedModel | None = None

    def unlearned(self) -> LoadedModel:
        """The unlearned model (base + patch on a copy), built once and shared by the attacks that only read it."""
        if self._unlearned is None:
            self._unlearned = unlearned_copy(self.base, self.target.patch)
        return self._unlearned

    def evaluate(self, loaded: LoadedModel, items: list[QAItem], split: str, tokenizer=None) -> dict:
        return evaluate_split(loaded.model, tokenizer or loaded.tokenizer, items, split, self.cfg.max_new_tokens,
                              self.cfg.max_length, on_batch=self.say)


def _answers(questions: list[str], unlearned: list[str], attacked: list[str]) -> list[dict]:
    return [{"question": q, "unlearned": u, "attacked": a} for q, u, a in zip(questions, unlearned, attacked)]


def relearn(ctx: Context) -> AttackResult:
    """Fine-tune a copy of the unlearned model on half A of the forget set (all weights, small lr, k steps), then
    evaluate half B (never seen in the attack), half A, and the retain set."""
    a_idx, b_idx = split_halves(len(ctx.forget), ctx.cfg.seed)
    work = unlearned_copy(ctx.base, ctx.target.patch)
    model = work.model
    params = [p for p in model.parameters()]
    for p in params:
        p.requires_grad_(True)
    optimiser = torch.optim.AdamW(params, lr=ctx.acfg.relearn_lr, weight_decay=0.0)
    batches = qa_batches(work.tokenizer, [ctx.forget[i] for i in a_idx], ctx.cfg.batch_size, ctx.cfg.max_length)
    losses = []
    model.train()
    for step in range(ctx.acfg.relearn_steps):
        batch = {k: v.to(work.device) for k, v in batches[step % len(batches)].items()}
        loss = model(**batch).loss  # token-mean cross-entropy on the answer tokens (labels are -100 elsewhere)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, ctx.cfg.max_grad_norm)
        optimiser.step()
        losses.append(float(loss.detach()))
        ctx.say(step + 1, ctx.acfg.relearn_steps)
    model.eval()
    for p in params:
        p.requires_grad_(False)
    del optimiser
    result = AttackResult("relearn", ctx.target.method)
    unlearned = ctx.target.answers("forget")
    for group, idx in (("forget_B", b_idx), ("forget_A", a_idx)):
        evaluation = ctx.evaluate(work, [ctx.forget[i] for i in idx], "forget")
        result.metrics[group] = _values(evaluation)
        result.baseline[group] = _baseline(ctx.target, "forget", idx)
        if group == "forget_B":
            result.answers = _answers([ctx.forget[i].question for i in idx], [unlearned[i] for i in idx],
                                      shown_answers(evaluation))
    result.metrics["retain"] = _values(ctx.evaluate(work, ctx.retain, "retain"))
    result.baseline["retain"] = _baseline(ctx.target, "retain")
    result.details = {"A": a_idx, "B": b_idx, "steps": ctx.acfg.relearn_steps, "lr": ctx.acfg.relearn_lr,
                      "losses": losses}
    return result


def _quantisation(name: str):
    quantise_fn, _ = QUANTISERS[name]

    def attack(ctx: Context) -> AttackResult:
        work = unlearned_copy(ctx.base, ctx.target.patch)
        survival = quantise_model(work.model, lambda w: quantise_fn(w, ctx.acfg.group_size), ctx.base.model,
                                  ctx.target.patch, say=ctx.say)
        result = AttackResult(name, ctx.target.method, details=survival)
        for split, items in (("forget", ctx.forget), ("retain", ctx.retain)):
            evaluation = ctx.evaluate(work, items, split)
            result.metrics[split] = _values(evaluation)
            result.baseline[split] = _baseline(ctx.target, split)
            if split == "forget":
                result.answers = _answers([it.question for it in items], ctx.target.answers("forget"),
                                          shown_answers(evaluation))
        return result
    attack.__doc__ = f"{QUANTISERS[name][1]} of every 2-D weight of the transformer blocks, then evaluate."
    return attack


def prefix(ctx: Context) -> AttackResult:
    """The forget questions with the assistant turn opened by a forced answer start ("Sure, here is the answer:")."""
    unlearned = ctx.unlearned()
    try:
        tokenizer = prefixed_tokenizer(unlearned.tokenizer, ctx.acfg.prefix)
    except GrinError as exc:
        return AttackResult("prefix", ctx.target.method, skipped=str(exc))
    evaluation = ctx.evaluate(unlearned, ctx.forget, "forget", tokenizer)
    result = AttackResult("prefix", ctx.target.method, details={"prefix": ctx.acfg.prefix})
    result.metrics["forget"] = _values(evaluation)
    result.baseline["forget"] = _baseline(ctx.target, "forget")
    result.answers = _answers([it.question for it in ctx.forget], ctx.target.answers("forget"),
                              shown_answers(evaluation))
    return result


def paraphrase(ctx: Context) -> AttackResult:
    """Every paraphrased question of the forget items (`paraphrased_questions`), with the items' answers."""
    items, origin = paraphrase_items(ctx.forget)
    if not items:
        return AttackResult("paraphrase", ctx.target.method,
                            skipped="the forget items carry no paraphrased_questions")
    return _reworded(ctx, "paraphrase", items, origin, {"paraphrases": len(items), "origin": origin})


def one_shot(ctx: Context) -> AttackResult:
    """Each forget question preceded by a related fact (another forget item's answer without this item's keywords)."""
    items, origin, context = one_shot_items(ctx.forget, ctx.cfg.seed)
    if not items:
        return AttackResult("oneshot", ctx.target.method, skipped="no forget item has a related fact to show")
    return _reworded(ctx, "oneshot", items, origin, {"origin": origin, "context": context})


def _reworded(ctx: Context, name: str, items: list[QAItem], origin: list[int], details: dict) -> AttackResult:
    """The unlearned model on new questions for the forget items; item k stands for forget item origin[k], whose
    before / unlearned values are the baseline (an item counted once per new question of it)."""
    evaluation = ctx.evaluate(ctx.unlearned(), items, "forget")
    result = AttackResult(name, ctx.target.method, details=details)
    result.metrics["forget"] = _values(evaluation)
    result.baseline["forget"] = _baseline(ctx.target, "forget", origin)
    unlearned = ctx.target.answers("forget")
    result.answers = _answers([it.question for it in items], [unlearned[i] for i in origin], shown_answers(evaluation))
    return result


def sample(ctx: Context) -> AttackResult:
    """n answers sampled per forget question at the set temperature: the share of questions with at least one
    answer holding a keyword, for the base model ("before") and the unlearned model. Its recovery compares that
    share with the greedy keyword accuracy before and after unlearning."""
    from .metrics import derive_keywords

    questions = [it.question for it in ctx.forget]
    keywords = [it.keywords or derive_keywords(it.question, it.answer) for it in ctx.forget]
    acfg, cfg = ctx.acfg, ctx.cfg

    def draw(loaded):
        return sample_answers(loaded.model, loaded.tokenizer, questions, acfg.samples, acfg.temperature,
                              cfg.max_new_tokens, cfg.seed, on_batch=ctx.say, return_cut=True)
    key = ("sample", tuple(questions), acfg.samples, acfg.temperature, cfg.max_new_tokens, cfg.seed)
    if key not in ctx.cache:
        ctx.cache[key] = leak_share(draw(ctx.base)[0], keywords)
    before_share, before_items = ctx.cache[key]
    samples, cut = draw(ctx.unlearned())
    share, per_item = leak_share(samples, keywords)
    result = AttackResult("sample", ctx.target.method)
    result.metrics["forget"] = {"keyword_accuracy": share}
    baseline = _baseline(ctx.target, "forget")
    result.baseline["forget"] = {w: {"keyword_accuracy": v.get("keyword_accuracy")} for w, v in baseline.items()}
    # shown per question: the first sampled answer with a keyword (else the first), marked where it was cut
    leaked = []
    for answers, cuts, kw in zip(samples, cut, keywords):
        k = next((k for k, text in enumerate(answers) if keyword_hit(text, kw)), 0)
        leaked.append(shown_answer(answers[k], cuts[k]) if answers else "")
    result.answers = _answers(questions, ctx.target.answers("forget"), leaked)
    result.details = {"n": acfg.samples, "temperature": acfg.temperature, "leak_before": before_share,
                      "leak_unlearned": share, "leak_per_item_before": before_items, "leak_per_item": per_item}
    return result


ATTACKS = {  # name -> (attack, one line for --help and the app)
    "relearn": (relearn, "fine-tune on half A of the forget set, test half B"),
    **{name: (_quantisation(name), text) for name, (_, text) in QUANTISERS.items()},
    "prefix": (prefix, 'forced answer start "Sure, here is the answer:" in the assistant turn'),
    "paraphrase": (paraphrase, "the forget questions reworded"),
    "oneshot": (one_shot, "a related fact given before the question"),
    "sample": (sample, "n answers sampled at temperature 1: any with a keyword?"),
}


def parse_attacks(text: str) -> list[str]:
    """'relearn,quant4' -> ["relearn", "quant4"]; 'all' -> every attack. Unknown names are a GrinError."""
    names = [n.strip().lower().replace("-", "_") for n in str(text or "").split(",") if n.strip()]
    if names == ["all"]:
        return list(ATTACKS)
    unknown = [n for n in names if n not in ATTACKS]
    if unknown or not names:
        raise GrinError(f"attacks: unknown {', '.join(unknown) or '(none given)'}; choose from "
                        f"{', '.join(ATTACKS)} or all")
    return list(dict.fromkeys(names))


def attack_targets(base: LoadedModel, targets: list[Target], forget: list[QAItem], retain: list[QAItem], cfg,
                   names: list[str], acfg: AttackConfig | None = None, on_progress=None,
                   should_stop=None) -> list[AttackResult]:
    """Every named attack on every target, each on its own copy (the base and the targets' patches are only read).

    on_progress(stage, done, total) with stage "<method>/<attack>"; should_stop() is checked at each report and
    ends the work by raising pipeline.RunStopped (the caller keeps what it had).
    """
    from .pipeline import RunStopped

    acfg = acfg or AttackConfig()
    names = parse_attacks(",".join(names))
    cache: dict = {}
    results = []
    for target in targets:
        ctx = Context(base, target, forget, retain, cfg, acfg, None, cache)
        for name in names:
            def say(done, total, _stage=f"{target.method}/{name}"):
                if on_progress is not None:
                    on_progress(_stage, done, total)
                if should_stop is not None and should_stop():
                    raise RunStopped
            ctx.say = say
            start = time.perf_counter()
            result = ATTACKS[name][0](ctx)
            result.seconds = time.perf_counter() - start
            results.append(_finish(result))
        ctx._unlearned = None  # free the shared copy before the next target
    return results


def saved_targets(report: dict, folder, n_forget: int, n_retain: int) -> list[Target]:
    """The targets of a saved report: a run's (`patch_file`) or each method of a comparison (`patch_files`).

    Relative patch paths are taken from `folder` (the report's). The report's per-item metrics must be about as
    many items as the sets loaded now, or the before / unlearned baselines would belong to other questions.
    """
    from pathlib import Path

    from .patch import load_patch

    def path_of(name) -> str:
        p = Path(str(name))
        return str(p if p.is_absolute() or p.exists() else Path(folder) / p)

    if "patch_files" in report:  # compare: each method's per-item metrics, answers from the shared table
        methods = report.get("methods") or {}
        rows = report.get("generations") or []
        pairs = [(name, file, methods.get(name) or {},
                  [{"split": r["split"], "question": r["question"], "answer": r["answer"], "before": r["before"],
                    "after": r.get(name, "")} for r in rows])
                 for name, file in report["patch_files"].items()]
    elif report.get("patch_file"):
        method = "grin" if (report.get("config") or {}).get("use_mask", True) else "full"
        pairs = [(method, report["patch_file"], report, report.get("generations") or [])]
    else:
        raise GrinError("attack: the report names no saved patch; run it again with --save-patch")
    targets = []
    for method, file, part, generations in pairs:
        per_item = part.get("metrics_per_item") or {}
        after = per_item.get("after") or {}
        counts = (len(next(iter((after.get("forget") or {"": []}).values()))),
                  len(next(iter((after.get("retain") or {"": []}).values()))))
        if counts != (n_forget, n_retain):
            raise GrinError(f"attack: the report's {method} run measured {counts[0]} forget and {counts[1]} retain "
                            f"items, but the sets loaded now have {n_forget} and {n_retain}; give the same sets")
        targets.append(Target(method, load_patch(path_of(file)), per_item, generations))
    return targets


def attacks_report(results: list[AttackResult]) -> dict:
    """The report's `attacks` section: {method: {attack: its result as plain data}}."""
    out: dict = {}
    for r in results:
        out.setdefault(r.method, {})[r.attack] = r.to_dict()
    return out


def recovery_table(results: list[AttackResult], metric: str = "keyword_accuracy") -> list[dict]:
    """One row per (method, attack): the forget metric before / unlearned / attacked and its recovery (the headline
    group: forget_B for relearning, forget otherwise)."""
    rows = []
    for r in results:
        group = "forget_B" if "forget_B" in r.metrics else "forget"
        base = r.baseline.get(group, {})
        rows.append({"method": r.method, "attack": r.attack, "group": group,
                     "before": base.get("before", {}).get(metric), "unlearned": base.get("unlearned", {}).get(metric),
                     "attacked": r.metrics.get(group, {}).get(metric),
                     "recovery": r.recovery.get(group, {}).get(metric),
                     "retain_attacked": r.metrics.get("retain", {}).get(metric),
                     "retain_unlearned": r.baseline.get("retain", {}).get("unlearned", {}).get(metric),
                     "skipped": r.skipped, "seconds": r.seconds})
    return rows
