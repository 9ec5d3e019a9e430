"""Which weights hold the forget set: the candidate weights, their gradients on each set, and the influence scores.

DESIGN.md §2.1-2.3:
    G_f = grad L_f(theta),  G_r = grad L_r(theta)            (L = token-mean answer NLL over the whole set)
    S_i = |G_f[i]| / (|G_r[i]| + eps)                        (GRIN, arXiv 2508.06467)
The top-p selection over these scores is selection.py.
"""

from __future__ import annotations

import contextlib
import re
import time
from dataclasses import dataclass

import torch

from ..config import GrinConfig
from ..data import IGNORE_INDEX, QAItem, qa_batches, require_items
from ..errors import GrinError
from ..memory import gradient_token_budget
from ..models import input_device
from .losses import answer_nll

# ---------------------------------------------------------------------------------------------------------------------
# Candidates: which weights may be selected, and what each one is (layer, module, kind)

# "<anything>.<block index>.<module path>.weight" - the blocks of Llama/Qwen/Mistral/Gemma/Phi (model.layers.N),
# GPT-2 (transformer.h.N), GPT-NeoX (gpt_neox.layers.N), OPT (model.decoder.layers.N) ...
_BLOCK_WEIGHT = re.compile(r"^(?:.*\.)?(?:layers|h|blocks|block|layer)\.(\d+)\.(.+)\.weight$")
_ATTENTION_WORDS = ("attn", "attention", "q_proj", "k_proj", "v_proj", "o_proj", "query_key_value")
_FFN_WORDS = ("mlp", "feed_forward", "ffn", "fc1", "fc2", "dense_h_to_4h", "dense_4h_to_h", "gate_proj", "up_proj",
              "down_proj", "experts")
_EMBEDDING_WORDS = ("embed_tokens", "wte", "embed_in", "word_embeddings")
_HEAD_WORDS = ("lm_head", "embed_out")


@dataclass(frozen=True)
class Candidate:
    name: str  # parameter name, e.g. "model.layers.3.self_attn.q_proj.weight"
    layer: int | None  # block index; None for embeddings / head
    module: str  # module path inside the block, e.g. "self_attn.q_proj" (GPT-2: "attn.c_proj" vs "mlp.c_proj")
    kind: str  # "attention", "ffn", "other" (another 2-D block weight), "embedding" or "lm_head"
    numel: int


def module_kind(module: str) -> str:
    """attention / ffn / other, from the module path inside a block."""
    low = module.lower()
    if any(word in low for word in _ATTENTION_WORDS):
        return "attention"
    if any(word in low for word in _FFN_WORDS):
        return "ffn"
    return "other"


def candidate_parameters(model, include_embeddings: bool = False, include_lm_head: bool = False) -> dict[str, Candidate]:
    """Every 2-D weight of the transformer blocks; embeddings and an untied LM head only when asked for.

    Norms and biases are 1-D and never candidates. A tied LM head is the embedding matrix (named_parameters lists it
    once), so it comes with include_embeddings.
    """
    candidates = {}
    for name, param in model.named_parameters():
        if param.dim() != 2:
            continue
        match = _BLOCK_WEIGHT.match(name)
        if match:
            layer, module = int(match.group(1)), match.group(2)
            candidates[name] = Candidate(name, layer, module, module_kind(module), param.numel())
        elif include_embeddings and any(word in name for word in _EMBEDDING_WORDS):
            candidates[name] = Candidate(name, None, name.removesuffix(".weight"), "embedding", param.numel())
        elif include_lm_head and any(word in name for word in _HEAD_WORDS):
            candidates[name] = Candidate(name, None, name.removesuffix(".weight"), "lm_head", param.numel())
    return candidates


# ---------------------------------------------------------------------------------------------------------------------
# Gradients and scores


def count_answer_tokens(batches: list[dict]) -> int:
    """Tokens that carry a label (the answers), counted as the loss counts them (shifted by one). Each batch's count
    becomes a Python number before they are added, so batches on different devices can be counted together."""
    return sum(int((b["labels"][:, 1:] != IGNORE_INDEX).sum()) for b in batches)


GRAD_MEANS = ("token", "item")


def row_chunks(batch: dict, token_budget: int) -> list[dict]:
    """The batch's rows in consecutive chunks of at most token_budget tokens each (rows x the batch's padded length;
    a row longer than the budget is a chunk of its own)."""
    rows, width = batch["input_ids"].shape
    per_chunk = max(1, token_budget // max(1, width))
    if per_chunk >= rows:
        return [batch]
    return [{k: v[start: start + per_chunk] for k, v in batch.items()} for start in range(0, rows, per_chunk)]


@contextlib.contextmanager
def gradient_hooks(model, names: list[str], on_grad):
    """While open, the named weights take gradients, and on_grad(name, grad) gets each one's gradient inside
    backward, the moment autograd has formed it; the weight keeps none (.grad is dropped at once), so a pass's
    gradients never exist for the whole model together. On leaving, however it is left: the hooks are removed and
    the weights take no gradient again."""
    params = dict(model.named_parameters())

    def hook_for(name: str):
        def hook(param):  # runs inside backward, right after autograd wrote this weight's gradient
            grad, param.grad = param.grad, None
            on_grad(name, grad)
        return hook

    for name in names:
        params[name].requires_grad_(True)
    handles = [params[name].register_post_accumulate_grad_hook(hook_for(name)) for name in names]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
        for name in names:
            params[name].requires_grad_(False)
            params[name].grad = None


def accumulate_gradients(model, batches: list[dict], names: list[str], on_batch=None,
                         mean: str = "token", token_budget: int | None = None) -> dict[str, torch.Tensor]:
    """G = grad L over the whole set, with L (DESIGN.md §2.1)
    - mean="token" (default): (sum of all answer-token NLLs of all batches) / (number of those tokens): every answer
      token weighs the same, so a long answer weighs more than a short one;
    - mean="item": the mean over items of each item's token-mean NLL (every item weighs the same).

    Each batch contributes its share (grad(sum of its token NLLs) / N_total, or grad(sum of its items' mean NLLs) /
    n_items), so the sum over batches is exactly the gradient of L whatever the batch size. Only the named weights
    get gradients (the others are skipped by autograd). Gradients are kept in float32 even for a bf16 model, so the
    sum over batches keeps its precision.

    Memory (DESIGN.md §5a, memory): the accumulators (float32, on each weight's device) are the only model-sized
    buffers. A hook on each weight adds its gradient into its accumulator the moment autograd has computed it and
    drops it, so a batch's gradients never exist for the whole model at once: weights + 4 bytes per candidate
    parameter + one weight's gradient. The sums are the same additions in the same order as adding whole gradient
    sets afterwards. A forward pass holds at most `token_budget` tokens (None: the model's own,
    `memory.gradient_token_budget`): a larger batch runs as chunks of its rows (`row_chunks`), each contributing its
    share of the same whole-set L, so G is the same up to the order of float additions.
    """
    if mean not in GRAD_MEANS:
        raise GrinError(f"grad mean must be one of {', '.join(GRAD_MEANS)}, got {mean!r}")
    for param in model.parameters():
        param.requires_grad_(False)
    total_tokens = max(1, count_answer_tokens(batches))
    total_items = max(1, sum(int(b["labels"].shape[0]) for b in batches))
    grads: dict[str, torch.Tensor] = {}

    def add_into_accumulator(name: str, grad: torch.Tensor) -> None:
        if name in grads:
            grads[name].add_(grad)
        else:  # the first batch's gradient becomes the accumulator: no copy for float32 models
            grads[name] = grad.float()

    device = input_device(model)
    budget = token_budget if token_budget is not None else gradient_token_budget(model)
    with gradient_hooks(model, names, add_into_accumulator):
        for i, batch in enumerate(batches):
            for chunk in row_chunks(batch, budget):
                chunk = {k: v.to(device) for k, v in chunk.items()}
                nll_sum, n_tokens = answer_nll(model, chunk)
                if mean == "token":
                    (nll_sum.sum() / total_tokens).backward()
                else:
                    ((nll_sum / n_tokens.clamp(min=1)).sum() / total_items).backward()
            if on_batch is not None:
                on_batch(i + 1, len(batches))
    # in the order of `names` (the hook filled it in backward's order): scores, masks and everything built from them
    # list the weights in the model's order
    return {name: grads[name] for name in names if name in grads}


def park(grads: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Move the accumulators that sit on an accelerator to CPU memory, freeing the accelerator for the next set.

    The host copies are ordinary (pageable) CPU tensors of exactly each accumulator's size: 4 bytes per parameter,
    each freed as soon as its score has been formed (`influence_scores`). Pinned memory would copy faster, but
    torch's pinned allocator rounds every block up to a power of two and keeps freed blocks cached until the process
    ends: the G_f of a Mistral-shaped 7.2B model, 26 GiB, takes 29 GiB of locked host memory tensor by tensor, and
    32 GiB as one pinned buffer. A copy to pageable memory is synchronous: it is complete when `.to` returns.
    CPU tensors stay as they are (no copy); float32 to float32, so the values are exact. The dict is emptied as it
    goes, so each device buffer is freed as soon as its copy is made."""
    parked = {}
    for name in list(grads):
        tensor = grads.pop(name)
        parked[name] = tensor if tensor.device.type == "cpu" else tensor.to("cpu")
    return parked


def influence_scores(grad_forget: dict[str, torch.Tensor], grad_retain: dict[str, torch.Tensor],
                     eps: float = 1e-8, in_place: bool = False) -> dict[str, torch.Tensor]:
    """S = |G_f| / (|G_r| + eps), per weight, on G_r's device (the weight's): a G_f parked on the CPU (`park`) is
    brought back one tensor at a time. With in_place=True the gradient tensors are reused and consumed: each pair is
    taken out of the two dicts (which end empty) as its score is formed, so G_r's memory turns into the scores'
    tensor by tensor and the peak stays at one model-sized set plus one tensor."""
    scores = {}
    for name in list(grad_forget):
        g_f = grad_forget.pop(name) if in_place else grad_forget[name]
        g_r = grad_retain.pop(name) if in_place else grad_retain[name]
        g_f = g_f.to(g_r.device)  # no copy when already there
        if in_place:
            scores[name] = g_f.abs_().div_(g_r.abs_().add_(eps))
        else:
            scores[name] = g_f.abs() / (g_r.abs() + eps)
    return scores


def gradient_pair(model, forget_batches, retain_batches, names: list[str], on_batch=None, mean: str = "token",
                  park_forget: bool = False):
    """(G_f, G_r): the accumulated answer-NLL gradients on the forget and on the retain batches.
    on_batch(done, total) counts the batches of both. park_forget=True moves G_f to CPU memory (`park`) before G_r
    is formed, so an accelerator holds one float32 accumulator set at a time (on a CPU it changes nothing)."""
    n_batches = len(forget_batches) + len(retain_batches)
    report = (lambda done, _total: on_batch(done, n_batches)) if on_batch else None
    grad_forget = accumulate_gradients(model, forget_batches, names, report, mean=mean)
    if park_forget:
        grad_forget = park(grad_forget)
    report_r = (lambda done, _total: on_batch(len(forget_batches) + done, n_batches)) if on_batch else None
    return grad_forget, accumulate_gradients(model, retain_batches, names, report_r, mean=mean)


def require_finite(scores: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    if not all(bool(torch.isfinite(s).all()) for s in scores.values()):
        raise GrinError("influence: some gradients overflowed (inf or nan scores); "
                        "try float32 (--dtype float32) or fewer, shorter items")
    return scores


def compute_influence(model, forget_batches, retain_batches, candidates: dict[str, Candidate], eps: float,
                      on_batch=None, mean: str = "token", park_forget: bool = True) -> dict[str, torch.Tensor]:
    """Both gradients, then the scores, reusing the gradient memory. Peak extra memory on an accelerator: one float32
    set (G_f, then G_r turning into the scores; G_f waits in CPU memory); on a CPU, or with park_forget=False (no
    bus transfers, for a card with room to spare): two (G_f and G_r)."""
    grad_forget, grad_retain = gradient_pair(model, forget_batches, retain_batches, list(candidates), on_batch, mean,
                                             park_forget=park_forget)
    return require_finite(influence_scores(grad_forget, grad_retain, eps=eps, in_place=True))


@dataclass
class Influence:
    """Scores of every candidate weight for one forget/retain pair; a selection at any p is made from them."""
    candidates: dict[str, Candidate]
    scores: dict[str, torch.Tensor]
    seconds: float


def compute_influence_scores(model, tokenizer, forget: list[QAItem], retain: list[QAItem], cfg: GrinConfig,
                             on_batch=None) -> Influence:
    """Influence score of every candidate weight of `model` (it gets gradients, so pass a copy of a shared base)."""
    require_items(forget, retain)
    start = time.perf_counter()
    candidates = candidate_parameters(model, cfg.include_embeddings, cfg.include_lm_head)
    scores = compute_influence(
        model, qa_batches(tokenizer, forget, cfg.batch_size, cfg.max_length, cfg.label_layout),
        qa_batches(tokenizer, retain, cfg.batch_size, cfg.max_length, cfg.label_layout), candidates, cfg.eps, on_batch,
        cfg.grad_mean,
    )
    return Influence(candidates=candidates, scores=scores, seconds=time.perf_counter() - start)
