"""Tests for grin_engine.models: every way a model name can be wrong is one GrinError; a saved local folder loads
back exactly; copies protect the base; device choice. One slow test loads the real default model."""

from __future__ import annotations

import time

import pytest
import torch

from grin_engine import models
from grin_engine.config import GrinConfig, GrinError, ModelSpec
from grin_engine.data import forget_batches, qa_batches
from grin_engine.method.influence import candidate_parameters
from grin_engine.models import LoadedModel, copy_model, load_model, resolve_device, resolve_dtype
from grin_engine.method.unlearn import attach_reference, unlearn

from conftest import tiny_llama



def _load_error(name: str, *fragments: str) -> str:
    with pytest.raises(GrinError) as info:
        load_model(ModelSpec(name, device="cpu"))
    message = str(info.value)
    assert "\n" not in message, message
    for fragment in fragments:
        assert fragment in message, (fragment, message)
    return message


def test_unknown_hub_id_fails_quickly_offline():
    start = time.perf_counter()
    _load_error("no-such-org/no-such-model-xyz", "no-such-org/no-such-model-xyz")
    assert time.perf_counter() - start < 10


def test_name_that_is_neither_folder_nor_hub_id(tmp_path):
    _load_error(str(tmp_path / "missing" / "folder"), "neither an existing folder nor")
    _load_error("not a valid id!", "neither an existing folder nor")


def test_folder_without_config(tmp_path):
    (tmp_path / "weights.bin").write_bytes(b"\x00")
    _load_error(str(tmp_path), "holds no model")


def test_path_to_a_file(tmp_path):
    path = tmp_path / "model.safetensors"
    path.write_bytes(b"\x00" * 8)
    _load_error(str(path), "is a file")


def test_folder_with_a_non_causal_model(tmp_path):
    from transformers import BertConfig, BertModel

    config = BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=64)
    BertModel(config).save_pretrained(tmp_path)
    _load_error(str(tmp_path), "not a causal language model")


def test_folder_with_a_broken_config(tmp_path):
    (tmp_path / "config.json").write_text("{not json", encoding="utf-8")
    _load_error(str(tmp_path), str(tmp_path))


def test_saved_tiny_llama_loads_back_identically(tmp_path, tokenizer):
    original = tiny_llama(len(tokenizer), seed=4)
    original.save_pretrained(tmp_path, safe_serialization=True)
    tokenizer.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    loaded = load_model(ModelSpec(str(tmp_path), device="cpu"))
    assert isinstance(loaded, LoadedModel)
    assert loaded.source == "local" and loaded.name == str(tmp_path)
    assert loaded.device == torch.device("cpu") and loaded.dtype == torch.float32
    assert type(loaded.model).__name__ == "LlamaForCausalLM"
    assert not loaded.model.training
    assert not any(p.requires_grad for p in loaded.model.parameters())
    expected = original.state_dict()
    got = loaded.model.state_dict()
    assert set(got) == set(expected)
    for name, value in expected.items():
        assert got[name].dtype == torch.float32, name
        assert torch.equal(got[name], value), name
    # the tokenizer came back too, chat template included
    assert loaded.tokenizer("Hedwig")["input_ids"] == tokenizer("Hedwig")["input_ids"]
    assert loaded.tokenizer.chat_template == tokenizer.chat_template
    assert loaded.tokenizer.pad_token is not None
    facts = loaded.facts()
    assert facts["layers"] == 2 and facts["source"] == "local" and facts["chat_template"] is True
    assert facts["parameters"] == sum(p.numel() for p in original.parameters())


def test_saved_model_loads_in_bfloat16_when_asked(tmp_path, tokenizer):
    original = tiny_llama(len(tokenizer), seed=4)
    original.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    loaded = load_model(ModelSpec(str(tmp_path), device="cpu", dtype="bfloat16"))
    assert loaded.dtype == torch.bfloat16
    assert all(p.dtype == torch.bfloat16 for p in loaded.model.parameters())


def test_copy_model_protects_the_base(tiny, forget_items, retain_items):
    before = {name: value.clone() for name, value in tiny.model.state_dict().items()}
    work = copy_model(tiny)
    assert work.model is not tiny.model and work.tokenizer is tiny.tokenizer
    base_ptrs = {p.data_ptr() for p in tiny.model.parameters()}
    assert not any(p.data_ptr() in base_ptrs for p in work.model.parameters())
    f_batches = forget_batches(tiny.tokenizer, forget_items, 4, 64, seed=0)
    r_batches = qa_batches(tiny.tokenizer, retain_items, 4, 64)
    attach_reference(work.model, f_batches)
    cfg = GrinConfig(loss="graddiff", lr=1e-2, steps=3)
    unlearn(work.model, f_batches, r_batches, cfg, list(candidate_parameters(work.model)), None)
    moved = any(not torch.equal(v, before[n]) for n, v in work.model.state_dict().items())
    assert moved, "the copy did not train, so the test proves nothing"
    for name, value in tiny.model.state_dict().items():
        assert torch.equal(value, before[name]), name


def test_resolve_device_auto(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(GrinError, match="CUDA"):
        resolve_device("cuda")
    with pytest.raises(GrinError, match="CUDA"):
        resolve_device("cuda:1")
    with pytest.raises(GrinError, match="MPS"):
        resolve_device("mps")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == torch.device("cuda")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA GPU: auto picks it, not the CPU")
def test_resolve_device_auto_is_cpu_here():
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        pytest.skip("this machine has Apple MPS: auto picks it")
    assert resolve_device("auto") == torch.device("cpu")


def test_resolve_dtype():
    assert resolve_dtype("auto", torch.device("cpu")) == torch.float32
    assert resolve_dtype("auto", torch.device("cuda")) == torch.bfloat16
    assert resolve_dtype("float16", torch.device("cpu")) == torch.float16


def test_default_name_on_a_space_uses_the_hub(monkeypatch):
    monkeypatch.setenv("SPACE_ID", "someone/grin")
    assert models._where_to_load("default")[:2] == ("hub", models.DEFAULT_HUB_ID)


@pytest.mark.slow
def test_default_model_loads_and_knows_paris():
    from grin_engine.evaluation.evaluate import generate_answers

    loaded = load_model(ModelSpec("default", device="cpu"))
    assert loaded.source == "gguf"
    assert loaded.facts()["layers"] == 30
    assert loaded.model.config.num_hidden_layers == 30
    assert loaded.dtype == torch.float32
    (answer,) = generate_answers(loaded.model, loaded.tokenizer, ["What is the capital of France?"], max_new_tokens=16)
    assert "Paris" in answer, answer


def test_save_weights_round_trips_through_safetensors(tmp_path, tiny):
    from safetensors.torch import load_model

    from grin_engine.models import save_weights

    path = save_weights(tiny.model, tmp_path / "weights.safetensors")
    fresh = tiny_llama(len(tiny.tokenizer), seed=123)  # different random weights
    assert not torch.equal(fresh.model.embed_tokens.weight, tiny.model.model.embed_tokens.weight)
    load_model(fresh, path)
    for (name, a), (_, b) in zip(tiny.model.state_dict().items(), fresh.state_dict().items()):
        assert torch.equal(a, b), name


def test_save_model_folder_loads_back_with_the_same_outputs(tmp_path, tiny):
    from grin_engine.models import save_model_folder

    folder = save_model_folder(tiny, tmp_path / "saved")
    loaded = load_model(ModelSpec(folder, device="cpu"))
    x = torch.tensor([[1, 2, 3, 4, 5]])
    with torch.no_grad():
        assert torch.equal(loaded.model(x).logits, tiny.model(x).logits)
    assert not list(tmp_path.glob("saved/*.bin")) and (tmp_path / "saved" / "model.safetensors").is_file()


# ---------------------------------------------------------------------------------------------------------------------
# Loading straight to the device(s), and accelerate's placement (as far as a CPU-only machine allows)

_LAYER_MAP = {"model.embed_tokens": "cpu", "model.layers.0": "cpu", "model.layers.1": "cpu", "model.norm": "cpu",
              "model.rotary_emb": "cpu", "lm_head": "cpu"}


def _saved(tmp_path, tokenizer, seed=4):
    original = tiny_llama(len(tokenizer), seed=seed)
    original.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    return original


def test_local_folder_loads_straight_through_from_pretrained_device_map(tmp_path, tokenizer, monkeypatch):
    """No CPU round trip: the device goes to from_pretrained (device_map), the model is not moved afterwards."""
    from transformers import AutoModelForCausalLM

    _saved(tmp_path, tokenizer)
    calls = []
    real = AutoModelForCausalLM.from_pretrained

    def spy(*args, **kwargs):
        calls.append(dict(kwargs, max_memory=dict(kwargs.get("max_memory") or {})))
        return real(*args, **kwargs)

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", spy)
    load_model(ModelSpec(str(tmp_path), device="cpu", dtype="bfloat16"))
    assert calls[-1]["device_map"] == "cpu" and calls[-1]["dtype"] == torch.bfloat16
    load_model(ModelSpec(str(tmp_path), device="cpu", device_map="auto", max_memory={"cpu": "1GiB"}))
    assert calls[-1]["device_map"] == "auto" and calls[-1]["max_memory"] == {"cpu": "1GiB"}


@pytest.mark.parametrize("device_map", ["auto", "sequential", _LAYER_MAP])
def test_device_map_loads_a_folder_with_the_same_outputs(tmp_path, tokenizer, device_map):
    original = _saved(tmp_path, tokenizer)
    loaded = load_model(ModelSpec(str(tmp_path), device="cpu", device_map=device_map))
    assert loaded.facts()["devices"] == ["cpu"] and loaded.device == torch.device("cpu")
    ids = torch.tensor([tokenizer("Who is Harry's enemy?")["input_ids"]])
    with torch.no_grad():
        assert torch.equal(loaded.model(ids).logits, original(ids).logits)


def test_device_map_refuses_a_bad_value():
    for bad in ("everywhere", 3):
        with pytest.raises(GrinError, match="device map"):
            ModelSpec("default", device_map=bad)
    with pytest.raises(GrinError, match="max memory"):
        ModelSpec("default", max_memory={"cpu": "1GiB"})  # without a device map


def test_offloaded_weights_are_refused_with_a_clear_message(tiny):
    with torch.device("meta"):
        tiny.model.model.layers[1].mlp.down_proj.weight = torch.nn.Parameter(torch.empty(32, 64))
    with pytest.raises(GrinError, match="offloaded"):
        models.require_resident(tiny.model, "tiny")


@pytest.mark.parametrize("device_map", [_LAYER_MAP, "auto"])
def test_every_stage_runs_on_an_accelerate_dispatched_model(tokenizer, forget_items, retain_items, device_map):
    """Scores, selection, noise, masked unlearning, GRUN and evaluation through accelerate's dispatch hooks (forced
    on: on a CPU-only machine every module maps to the CPU) give exactly what the plain model gives."""
    from grin_engine.runs import pipeline

    def loaded(model):
        return LoadedModel(model=model, tokenizer=tokenizer, name="tiny", source="local",
                           device=models.input_device(model), dtype=torch.float32)

    plain = loaded(tiny_llama(len(tokenizer), seed=2))
    placed = loaded(models.place_model(tiny_llama(len(tokenizer), seed=2), device_map,
                                       {"cpu": "1GiB"} if device_map == "auto" else None))
    assert any(hasattr(m, "_hf_hook") for m in placed.model.modules())  # the hooks are on
    saved = {k: v.clone() for k, v in placed.model.state_dict().items()}
    cfg = GrinConfig(p=0.1, steps=2, lr=1e-2, sigma2=1e-4, batch_size=2, max_length=64, max_new_tokens=4,
                     grun_steps=2)
    for run in (pipeline.run, pipeline.run_grun):
        a = run(plain, forget_items, retain_items, cfg, in_place=True)
        b = run(placed, forget_items, retain_items, cfg, in_place=True)
        assert a.losses == b.losses and a.metrics == b.metrics and a.selection == b.selection, run.__name__
    assert all(torch.equal(v, saved[k]) for k, v in placed.model.state_dict().items())
