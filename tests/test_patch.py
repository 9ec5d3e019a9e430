"""Tests for grin_engine.method.patch: base + patch reproduces the unlearned model exactly, and the base stays as it was."""

from __future__ import annotations

import pytest
import torch

from grin_engine.runs import pipeline
from grin_engine.config import GrinConfig
from grin_engine.method.patch import apply_patch
from grin_engine.events import Progress


@pytest.mark.parametrize("use_mask", [True, False])
def test_base_plus_patch_is_the_unlearned_model(tiny, forget_items, retain_items, use_mask):
    base_before = {k: v.clone() for k, v in tiny.model.state_dict().items()}
    cfg = GrinConfig(loss="graddiff", p=0.05, steps=2, lr=1e-2, sigma2=1e-4, use_mask=use_mask, max_new_tokens=4)
    result = pipeline.run(tiny, forget_items, retain_items, cfg, keep_model=True)
    rebuilt = apply_patch(tiny, result.patch)
    for name, value in result.unlearned_model.model.state_dict().items():
        assert torch.equal(rebuilt.model.state_dict()[name], value), name
    assert all(torch.equal(v, base_before[k]) for k, v in tiny.model.state_dict().items())
    if use_mask:  # only the selected entries are kept
        assert result.patch.numel() == result.selection["selected"]
    else:
        assert result.patch.numel() == result.selection["candidates"]
    assert all(values.device.type == "cpu" for _, values in result.patch.entries.values())


# ---------------------------------------------------------------------------------------------------------------------
# Training in place: the base is trained, then written back from the saved originals, bit for bit, however it ends


def _checksums(model) -> dict[str, torch.Tensor]:
    """Every tensor of the model (parameters and buffers), copied: compared with torch.equal after a run."""
    return {name: value.detach().clone() for name, value in model.state_dict().items()}


def _assert_same(model, saved):
    state = model.state_dict()
    assert set(state) == set(saved)
    for name, value in state.items():
        assert torch.equal(value, saved[name]), name
    assert not any(p.requires_grad or p.grad is not None for p in model.parameters())


def _cfg(use_mask=True, **overrides):
    settings = dict(loss="graddiff", p=0.1, steps=3, lr=1e-2, sigma2=1e-4, use_mask=use_mask, batch_size=2,
                    max_length=64, max_new_tokens=4)
    settings.update(overrides)
    return GrinConfig(**settings)


@pytest.mark.parametrize("use_mask", [True, False])
def test_in_place_run_restores_the_base_and_equals_a_run_on_a_copy(tiny, forget_items, retain_items, use_mask):
    saved = _checksums(tiny.model)
    on_copy = pipeline.run(tiny, forget_items, retain_items, _cfg(use_mask))
    in_place = pipeline.run(tiny, forget_items, retain_items, _cfg(use_mask), in_place=True)
    _assert_same(tiny.model, saved)
    assert in_place.losses == on_copy.losses and len(in_place.losses) == 3
    assert in_place.metrics == on_copy.metrics
    assert [g["after"] for g in in_place.generations] == [g["after"] for g in on_copy.generations]
    assert in_place.patch.entries.keys() == on_copy.patch.entries.keys()
    for name, (index, values) in in_place.patch.entries.items():
        other_index, other_values = on_copy.patch.entries[name]
        assert torch.equal(values, other_values) and (index is None or torch.equal(index, other_index))


def test_in_place_run_with_keep_model_gives_a_separate_unlearned_copy(tiny, forget_items, retain_items):
    saved = _checksums(tiny.model)
    result = pipeline.run(tiny, forget_items, retain_items, _cfg(), keep_model=True, in_place=True)
    _assert_same(tiny.model, saved)
    work = result.unlearned_model
    assert work.model is not tiny.model
    rebuilt = apply_patch(tiny, result.patch)
    changed = [n for n, v in work.model.state_dict().items() if not torch.equal(v, saved[n])]
    assert changed
    for name, value in work.model.state_dict().items():
        assert torch.equal(rebuilt.model.state_dict()[name], value), name


def test_in_place_run_stopped_mid_training_restores_the_base(tiny, forget_items, retain_items):
    saved = _checksums(tiny.model)
    events = []
    result = pipeline.run(tiny, forget_items, retain_items, _cfg(steps=5), in_place=True,
                          progress=Progress(lambda stage, *rest: events.append(stage),
                                            lambda: events.count("unlearn") >= 2))
    assert result.stopped and len(result.losses) == 2
    _assert_same(tiny.model, saved)


@pytest.mark.parametrize("use_mask", [True, False])
@pytest.mark.parametrize("failure", ["nan", "exception"])
def test_in_place_run_that_fails_mid_training_restores_the_base(tiny, forget_items, retain_items, monkeypatch,
                                                                   use_mask, failure):
    """Step 1 trains (and noise was added), step 2 fails: a NaN loss (GrinError) or any other exception."""
    from grin_engine.method import losses
    from grin_engine.config import GrinError

    real = losses.LOSSES["graddiff"]
    calls = []

    def flaky(model, forget, retain, cfg):
        calls.append(1)
        if len(calls) < 2:
            return real(model, forget, retain, cfg)
        if failure == "nan":
            return torch.tensor(float("nan"), requires_grad=True)
        raise RuntimeError("CUDA out of memory (simulated)")

    monkeypatch.setitem(losses.LOSSES, "graddiff", flaky)
    saved = _checksums(tiny.model)
    with pytest.raises(GrinError if failure == "nan" else RuntimeError):
        pipeline.run(tiny, forget_items, retain_items, _cfg(use_mask, steps=4), in_place=True)
    assert len(calls) == 2
    _assert_same(tiny.model, saved)


@pytest.mark.parametrize("stop", [False, True])
def test_grun_in_place_removes_its_hooks_and_equals_a_run_on_a_copy(tiny, forget_items, retain_items, stop):
    from grin_engine.evaluation.evaluate import generate_answers

    saved = _checksums(tiny.model)
    questions = [it.question for it in forget_items]
    answers = generate_answers(tiny.model, tiny.tokenizer, questions, 4)
    cfg = _cfg(grun_steps=3, grun_lr=5e-2)
    events = []
    should_stop = (lambda: events.count("unlearn") >= 1) if stop else None
    result = pipeline.run_grun(tiny, forget_items, retain_items, cfg, in_place=True,
                               progress=Progress(lambda stage, *rest: events.append(stage), should_stop))
    _assert_same(tiny.model, saved)
    assert not tiny.model._forward_pre_hooks and not any(m._forward_hooks for m in tiny.model.modules())
    assert generate_answers(tiny.model, tiny.tokenizer, questions, 4) == answers
    assert result.stopped == stop
    if not stop:
        on_copy = pipeline.run_grun(tiny, forget_items, retain_items, cfg)
        assert result.losses == on_copy.losses and result.metrics == on_copy.metrics
        kept = pipeline.run_grun(tiny, forget_items, retain_items, cfg, in_place=True, keep_model=True)
        assert kept.unlearned_model.model is not tiny.model
        from grin_engine.evaluation.evaluate import shown_answer

        answers, cut = generate_answers(kept.unlearned_model.model, tiny.tokenizer, questions, cfg.max_new_tokens,
                                        return_cut=True)
        assert [g["after"] for g in kept.generations if g["split"] == "forget"] == \
            [shown_answer(a, c) for a, c in zip(answers, cut)]  # as shown: marked where cut
        _assert_same(tiny.model, saved)


def test_save_and_load_patch_round_trip(tiny, forget_items, retain_items, tmp_path):
    from grin_engine.config import GrinError
    from grin_engine.method.grun import GrunState
    from grin_engine.method.patch import load_patch, save_patch

    cfg = GrinConfig(p=0.05, steps=1, sigma2=1e-4, max_new_tokens=4, grun_steps=1)
    for use_mask in (True, False):
        patch = pipeline.run(tiny, forget_items, retain_items, GrinConfig(**{**cfg.to_dict(), "use_mask": use_mask})).patch
        loaded = load_patch(save_patch(patch, str(tmp_path / f"p{use_mask}.safetensors"), "tiny"))
        assert set(loaded.entries) == set(patch.entries)
        for name, (index, values) in patch.entries.items():
            assert torch.equal(loaded.entries[name][1], values)
            assert (index is None and loaded.entries[name][0] is None) or torch.equal(loaded.entries[name][0], index)
    state = pipeline.run_grun(tiny, forget_items, retain_items, cfg).patch
    again = load_patch(save_patch(state, str(tmp_path / "grun.safetensors"), "tiny"))
    assert isinstance(again, GrunState) and again.spec == state.spec
    assert all(torch.equal(again.tensors[k], v) for k, v in state.tensors.items())
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(2)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(GrinError, match="not a patch written by grin_engine"):
        load_patch(str(tmp_path / "other.safetensors"))
    (tmp_path / "junk.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(GrinError, match="cannot read"):
        load_patch(str(tmp_path / "junk.safetensors"))
