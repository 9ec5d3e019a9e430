"""Tests for grin_engine.patch: base + patch reproduces the unlearned model exactly, and the base stays as it was."""

from __future__ import annotations

import pytest
import torch

from grin_engine import pipeline
from grin_engine.config import GrinConfig
from grin_engine.patch import apply_patch


@pytest.mark.parametrize("use_mask", [True, False])
def test_base_plus_patch_is_the_unlearned_model(tiny, forget_items, retain_items, use_mask):
    base_before = {k: v.clone() for k, v in tiny.model.state_dict().items()}
    cfg = GrinConfig(method="graddiff", p=0.05, steps=2, lr=1e-2, sigma2=1e-4, use_mask=use_mask, max_new_tokens=4)
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


def test_save_and_load_patch_round_trip(tiny, forget_items, retain_items, tmp_path):
    from grin_engine.config import GrinError
    from grin_engine.grun import GrunState
    from grin_engine.patch import load_patch, save_patch

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
