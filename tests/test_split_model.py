"""Every stage on a model split over two devices, without two devices (DESIGN.md §5a, "Several devices").

On a model spread over GPUs (accelerate's device_map) the batch enters at the input embeddings' device and the
logits come out of the LM head on another one. An op that takes a batch tensor (labels, a cached ref_logp, token
ids) together with something computed from the logits then fails: "Expected all tensors to be on the same device".
A CPU-only machine cannot show that failure (and the "meta" device computes nothing), so `HeadOnAnotherDevice`
stands in for the second device:

- it is a TorchFunctionMode, so it sees every torch call made while it is active (not the calls made inside one);
- the LM head's output is tagged as living on HEAD, a device that is never used, and so is everything computed
  from a tagged tensor: the head's side of the model;
- `tensor.device` of a tagged tensor reports HEAD; `.to(HEAD)` (e.g. `labels.to(logits.device)`) runs on the CPU
  and tags its result, `.to(<another device>)` or `.cpu()` moves a tensor off the head's side;
- a call that takes tensors of both sides is recorded in `mixed`: the call a real split would refuse.

The tests run each stage under the mode and expect `mixed` to be empty.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode
from torch.utils import _pytree as pytree
from torch.utils.weak import WeakIdKeyDictionary

from grin_engine.config import GrinConfig
from grin_engine.data import QAItem, qa_batches
from grin_engine.evaluation import evaluate
from grin_engine.method import grun, influence, losses, unlearn
from grin_engine.method.selection import random_selection

from conftest import tiny_llama

HEAD = torch.device("cuda", 1)  # reported, never used: tagged tensors really live on the CPU
_DEVICE_OF = torch.Tensor.device.__get__


def _names_head(value) -> bool:
    return isinstance(value, (torch.device, str)) and str(value) == str(HEAD)


class HeadOnAnotherDevice(TorchFunctionMode):
    """While active: `model`'s LM head output and what is computed from it live on HEAD (see the module docstring);
    `mixed` lists every call that took tensors of both sides, with the line of the engine that made it."""

    def __init__(self, model):
        super().__init__()
        self.model = model
        self.on_head = WeakIdKeyDictionary()  # the tensors on HEAD (weak: the tensors die as usual)
        self.mixed: list[str] = []

    def __enter__(self):
        tag = lambda _module, _args, output: self.on_head.__setitem__(output, True)  # noqa: E731
        self._hook = self.model.get_output_embeddings().register_forward_hook(tag)
        return super().__enter__()

    def __exit__(self, *exc):
        self._hook.remove()
        return super().__exit__(*exc)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func == _DEVICE_OF:
            return HEAD if args[0] in self.on_head else func(*args)
        leaves = pytree.tree_leaves((args, kwargs))
        to_head = any(_names_head(x) for x in leaves)  # a move to HEAD, or a tensor made there
        if to_head:
            args, kwargs = pytree.tree_map(lambda x: torch.device("cpu") if _names_head(x) else x, (args, kwargs))
        sides = [t in self.on_head for t in leaves if isinstance(t, torch.Tensor)]
        out = func(*args, **kwargs)
        if func in (torch.Tensor.to, torch.Tensor.cpu):
            target = next((x for x in leaves[1:] if isinstance(x, (torch.device, str, torch.Tensor))), None)
            if func is torch.Tensor.cpu or (target is not None and not isinstance(target, torch.Tensor)):
                on_head = to_head
            else:  # .to(dtype) stays where it is; .to(tensor) goes where that tensor is
                on_head = sides[0] if target is None else target in self.on_head
            if on_head != sides[0] and out is args[0]:  # .to() of the real device returns the same tensor
                out = out.clone()
        else:
            if any(sides) and not all(sides):
                self.mixed.append(f"{getattr(func, '__name__', func)} at {_engine_line()}")
            on_head = to_head or any(sides)
        if on_head:
            for tensor in pytree.tree_leaves(out):
                if isinstance(tensor, torch.Tensor):
                    self.on_head[tensor] = True
        return out


def _engine_line() -> str:
    """file:line of the innermost engine frame on the stack (where the mixing call was written)."""
    import traceback

    frames = [f for f in traceback.extract_stack() if "grin_engine" in f.filename]
    return f"{frames[-1].filename.split('grin_engine/')[-1]}:{frames[-1].lineno}" if frames else "?"


MAX_LENGTH = 64


def test_the_stand_in_sees_a_batch_tensor_meet_the_logits(tokenizer, forget_items):
    """The stand-in itself: labels as they come with the batch mix with the logits; moved to logits.device they
    do not, and the values are those of the plain model."""
    model = tiny_llama(len(tokenizer))
    batch = qa_batches(tokenizer, forget_items, 2, MAX_LENGTH)[0]
    plain = model(input_ids=batch["input_ids"]).logits
    with HeadOnAnotherDevice(model) as split:
        logits = model(input_ids=batch["input_ids"]).logits
        assert logits.device == HEAD and batch["labels"].device.type == "cpu" and split.mixed == []
        flat = logits.reshape(-1, logits.size(-1))
        F.cross_entropy(flat, batch["labels"].reshape(-1))
        assert len(split.mixed) == 1
        moved = batch["labels"].to(logits.device)
        F.cross_entropy(flat, moved.reshape(-1))
        assert len(split.mixed) == 1 and moved.device == HEAD and batch["labels"].device.type == "cpu"
        assert logits.float().cpu().device.type == "cpu"
    assert torch.equal(logits, plain)


@pytest.mark.parametrize("loss", list(losses.LOSSES))
@pytest.mark.parametrize("masked", [False, True])
def test_unlearning_with_every_loss_on_a_split_model(tokenizer, forget_items, retain_items, loss, masked):
    """Reference log-probabilities (computed once, carried with the batch), labels and the policy's logits meet
    on the logits' device; noise and masked or whole-weight training do not touch the head's side."""
    model = tiny_llama(len(tokenizer))
    cfg = GrinConfig(loss=loss, steps=1, batch_size=2, max_length=MAX_LENGTH, sigma2=1e-4)
    candidates = influence.candidate_parameters(model)
    masks = random_selection(candidates, dict(model.named_parameters()), 0.2, seed=0).masks if masked else None
    with HeadOnAnotherDevice(model) as split:
        result = unlearn.unlearn_selected(model, tokenizer, forget_items, retain_items, cfg, list(candidates), masks)
    assert result.steps_done == 1 and split.mixed == []


@pytest.mark.parametrize("mean", influence.GRAD_MEANS)
def test_influence_scores_on_a_split_model(tokenizer, forget_items, retain_items, mean):
    model = tiny_llama(len(tokenizer))
    cfg = GrinConfig(batch_size=2, max_length=MAX_LENGTH, grad_mean=mean)
    with HeadOnAnotherDevice(model) as split:
        scores = influence.compute_influence_scores(model, tokenizer, forget_items, retain_items, cfg).scores
    assert split.mixed == [] and len(scores) == len(influence.candidate_parameters(model))


def test_evaluation_on_a_split_model(tokenizer, forget_items):
    """Answers, answer NLLs, truth-ratio NLLs, per-token NLLs and TOFU's shared-prompt NLLs."""
    items = [QAItem(it.question, it.answer, it.keywords, paraphrased_answer=it.answer + " Yes.",
                    perturbed_answers=["I have no idea.", "Paris is the one."]) for it in forget_items]
    pairs = [(it.question, it.answer) for it in items]
    model = tiny_llama(len(tokenizer))
    with HeadOnAnotherDevice(model) as split:
        evaluation = evaluate.evaluate_split(model, tokenizer, items, "forget", max_new_tokens=4,
                                             max_length=MAX_LENGTH)
        token_nlls = evaluate.pair_token_nlls(model, tokenizer, pairs, max_length=MAX_LENGTH)
        shared = evaluate.shared_prompt_token_nlls(model, tokenizer, items[0].question, items[0].perturbed_answers,
                                                   max_length=MAX_LENGTH)
    assert split.mixed == []
    assert evaluation["truth_ratios"] is not None and all(token_nlls) and len(shared) == 2


@pytest.mark.parametrize("loss", ["idk", "dpo"])
def test_grun_on_a_split_model(tokenizer, forget_items, retain_items, loss):
    """GRUN's training (its reference is the model with the edits off) and its gate values."""
    model = tiny_llama(len(tokenizer))
    cfg = GrinConfig(grun_loss=loss, grun_steps=1, batch_size=2, max_length=MAX_LENGTH, grun_layers=[0, 1])
    edits = grun.grun_for(model, cfg).attach(model, tokenizer)
    with HeadOnAnotherDevice(model) as split:
        grun.train_grun(model, tokenizer, edits, forget_items, retain_items, cfg)
        gates = grun.gate_values(model, tokenizer, edits, [it.question for it in forget_items])
    edits.detach()
    assert split.mixed == [] and len(gates) == len(forget_items)
