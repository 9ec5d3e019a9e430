"""Tests for grin_engine.method.grun: the hooks never touch the base weights, "off" is exactly the original model, the gate
learns to open on forget questions and stay shut on retain questions, and a trained GRUN saves and loads."""

from __future__ import annotations

import pytest
import torch

from grin_engine.config import GrinConfig, GrinError
from grin_engine.data import format_prompt
from grin_engine.evaluation.evaluate import generate_answers
from grin_engine.method.grun import (Grun, GrunSpec, default_layers, export_state, gate_values, last_prompt_positions,
                              load_grun, prompt_end_ids, save_grun, train_grun)


def _cfg(**overrides) -> GrinConfig:
    settings = dict(grun_loss="idk", grun_steps=30, batch_size=4, max_length=64, grun_lr=1e-2, seed=0)
    settings.update(overrides)
    return GrinConfig(**settings)


def _grun(model, **spec) -> Grun:
    settings = dict(hidden_size=model.config.hidden_size, layers=[0, 1], rank=4, gate="linear")
    settings.update(spec)
    return Grun(GrunSpec(**settings), seed=0)


def _prompts(tokenizer, questions, side="right"):
    tokenizer.padding_side = side
    try:
        return tokenizer([format_prompt(tokenizer, q) for q in questions], return_tensors="pt", padding=True,
                         add_special_tokens=False)
    finally:
        tokenizer.padding_side = "right"


def test_default_layers_spread_over_the_upper_half():
    assert default_layers(30) == [15, 22, 29]
    assert default_layers(24) == [12, 18, 23]
    assert default_layers(2) == [1]
    assert default_layers(4) == [2, 3]


def test_last_prompt_positions_with_left_and_right_padding(tokenizer, forget_items):
    end = prompt_end_ids(tokenizer)
    questions = [it.question for it in forget_items[:3]]
    for side in ("left", "right"):
        enc = _prompts(tokenizer, questions, side)
        rows, positions = last_prompt_positions(enc["input_ids"], end)
        assert rows.tolist() == [0, 1, 2]
        for row, pos in zip(rows.tolist(), positions.tolist()):
            real = enc["attention_mask"][row].nonzero().squeeze(1)
            assert pos == int(real[-1])  # a prompt's last real token
    one_token = torch.tensor([[5], [6]])  # generation steps feed one token: nothing to edit
    assert last_prompt_positions(one_token, end)[0].numel() == 0


def test_a_fresh_grun_is_the_identity(tiny, forget_items):
    """W = R and b = 0 at the start: the edit is zero, the outputs are the base model's."""
    enc = _prompts(tiny.tokenizer, [it.question for it in forget_items])
    base_logits = tiny.model(**enc).logits
    grun = _grun(tiny.model).attach(tiny.model, tiny.tokenizer)
    R = grun.edits[0].rotate.weight
    assert torch.allclose(R @ R.T, torch.eye(4), atol=1e-5)
    assert torch.allclose(tiny.model(**enc).logits, base_logits, atol=1e-6)


def test_training_leaves_the_base_weights_bit_identical_and_off_is_the_base(tiny, forget_items, retain_items):
    weights = {k: v.clone() for k, v in tiny.model.state_dict().items()}
    enc = _prompts(tiny.tokenizer, [it.question for it in forget_items + retain_items])
    base_logits = tiny.model(**enc).logits
    grun = _grun(tiny.model).attach(tiny.model, tiny.tokenizer)
    result = train_grun(tiny.model, tiny.tokenizer, grun, forget_items, retain_items, _cfg(grun_steps=5))
    assert result.steps_done == 5 and result.trainable == sum(p.numel() for p in grun.parameters())
    for name, value in tiny.model.state_dict().items():
        assert torch.equal(value, weights[name]), name  # bit-identical, not just close
    assert all(p.grad is None for p in tiny.model.parameters())
    with torch.no_grad():
        assert not torch.equal(tiny.model(**enc).logits, base_logits)  # the edits do something ...
        with grun.off():
            assert torch.equal(tiny.model(**enc).logits, base_logits)  # ... and off is exactly the original
        grun.detach()
        assert torch.equal(tiny.model(**enc).logits, base_logits)
    R = grun.edits[0].rotate.weight
    assert torch.allclose(R @ R.T, torch.eye(4), atol=1e-5)  # still orthonormal rows after training


@pytest.mark.parametrize("method, gate", [("idk", "linear"), ("npo", "mlp"), ("graddiff", "linear")])
def test_the_gate_trains_toward_its_targets(tokenizer, forget_items, retain_items, method, gate):
    """On a 4-layer model, edits on its upper half (in a random 2-layer model the last prompt token's state at
    layer 0 is nearly the same for every question: nothing for a gate to tell apart)."""
    from conftest import tiny_llama
    from grin_engine.models import LoadedModel

    model = tiny_llama(len(tokenizer), layers=4)
    tiny = LoadedModel(model, tokenizer, "tiny4", "local", torch.device("cpu"), torch.float32)
    grun = _grun(tiny.model, gate=gate, layers=default_layers(4)).attach(tiny.model, tiny.tokenizer)
    questions_f = [it.question for it in forget_items]
    questions_r = [it.question for it in retain_items]
    before_f = gate_values(tiny.model, tiny.tokenizer, grun, questions_f)
    before_r = gate_values(tiny.model, tiny.tokenizer, grun, questions_r)
    train_grun(tiny.model, tiny.tokenizer, grun, forget_items, retain_items, _cfg(grun_loss=method))
    after_f = gate_values(tiny.model, tiny.tokenizer, grun, questions_f)
    after_r = gate_values(tiny.model, tiny.tokenizer, grun, questions_r)
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    assert mean(after_f) > mean(before_f) + 0.1 and mean(after_r) < mean(before_r) - 0.1
    assert min(after_f) > max(after_r)  # every forget question opens the gate more than any retain question


def test_generation_uses_the_edits_and_off_restores_it(tiny, forget_items, retain_items):
    questions = [it.question for it in forget_items]
    base_answers = generate_answers(tiny.model, tiny.tokenizer, questions, max_new_tokens=6)
    grun = _grun(tiny.model).attach(tiny.model, tiny.tokenizer)
    train_grun(tiny.model, tiny.tokenizer, grun, forget_items, retain_items, _cfg(grun_lr=5e-2))
    with grun.off():
        assert generate_answers(tiny.model, tiny.tokenizer, questions, max_new_tokens=6) == base_answers
    assert generate_answers(tiny.model, tiny.tokenizer, questions, max_new_tokens=6) != base_answers


def test_save_and_load_give_the_same_outputs(tiny, forget_items, retain_items, tmp_path):
    grun = _grun(tiny.model).attach(tiny.model, tiny.tokenizer)
    train_grun(tiny.model, tiny.tokenizer, grun, forget_items, retain_items, _cfg(grun_steps=5))
    enc = _prompts(tiny.tokenizer, [it.question for it in forget_items])
    with torch.no_grad():
        trained = tiny.model(**enc).logits
    path = save_grun(export_state(grun), tmp_path / "grun.safetensors", "tiny")
    assert (tmp_path / "grun.safetensors").stat().st_size < 200_000
    grun.detach()
    loaded = load_grun(path)
    assert loaded.spec == grun.spec
    loaded.build().attach(tiny.model, tiny.tokenizer)
    with torch.no_grad():
        assert torch.equal(tiny.model(**enc).logits, trained)


def test_bad_grun_inputs_are_clear_errors(tiny, tmp_path):
    with pytest.raises(GrinError, match="do not exist"):
        _grun(tiny.model, layers=[0, 7]).attach(tiny.model, tiny.tokenizer)
    with pytest.raises(GrinError, match="gate"):
        GrinConfig(grun_gate="tree")
    with pytest.raises(GrinError, match="grun layers"):
        GrinConfig(grun_layers=[])
    (tmp_path / "x.safetensors").write_bytes(b"not a file")
    with pytest.raises(GrinError, match="not a GRUN file"):
        load_grun(tmp_path / "x.safetensors")
    grun = _grun(tiny.model).attach(tiny.model, tiny.tokenizer)
    with pytest.raises(GrinError, match="already attached"):
        grun.attach(tiny.model, tiny.tokenizer)


def test_training_batches_follow_the_label_layout(tiny, forget_items, retain_items, monkeypatch):
    """--label-layout applies to GRUN's training batches as to GRIN's."""
    from grin_engine.method import grun as grun_module

    layouts = []
    real_qa, real_forget = grun_module.qa_batches, grun_module.forget_batches
    monkeypatch.setattr(grun_module, "qa_batches", lambda *a, **k: layouts.append(a[4]) or real_qa(*a, **k))
    monkeypatch.setattr(grun_module, "forget_batches", lambda *a, **k: layouts.append(a[5]) or real_forget(*a, **k))
    grun = _grun(tiny.model).attach(tiny.model, tiny.tokenizer)
    try:
        train_grun(tiny.model, tiny.tokenizer, grun, forget_items, retain_items,
                   _cfg(grun_steps=1, label_layout="chat_turn"))
    finally:
        grun.detach()
    assert layouts == ["chat_turn", "chat_turn"]
