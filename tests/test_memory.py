"""Tests for grin_engine.memory: the device's name and the peak memory the CLI and bench/ report."""

from __future__ import annotations

import torch

from grin_engine import memory
from grin_engine.cli.tables import format_memory

from conftest import tiny_llama


def test_cpu_name_says_cores_and_threads():
    name = memory.device_name(torch.device("cpu"))
    assert "cores" in name and f"{torch.get_num_threads()} torch threads" in name


def test_peak_follows_a_large_allocation_and_resets():
    """A 256 MiB tensor, filled (so its pages are resident), raises the peak by about its size; after it is freed,
    reset_peak brings the peak back down."""
    cpu = torch.device("cpu")
    memory.reset_peak(cpu)
    before, how = memory.peak_bytes(cpu)
    big = torch.ones(64 * 2**20)  # 256 MiB of float32
    during, _ = memory.peak_bytes(cpu)
    del big
    memory.reset_peak(cpu)
    after, _ = memory.peak_bytes(cpu)
    assert "RSS" in how
    assert during - before >= 200 * 2**20
    assert after < during - 200 * 2**20


def test_memory_report_of_a_model(tokenizer):
    model = tiny_llama(len(tokenizer))
    memory.start_measuring(model)
    report = memory.memory_report(model)
    assert list(report) == ["cpu"]
    cpu = report["cpu"]
    assert cpu["weights_bytes"] == sum(p.numel() * p.element_size() for p in model.parameters())
    assert cpu["peak_bytes"] > 0 and cpu["peak_over_weights"] == cpu["peak_bytes"] / cpu["weights_bytes"]
    line = format_memory(report)
    assert line.startswith("memory on cpu (") and "x the weights" in line


def _shaped(dtype, **sizes):
    """A Llama of the given sizes on the "meta" device: its shape and parameter bytes, no memory."""
    from transformers import LlamaConfig, LlamaForCausalLM

    with torch.device("meta"):
        return LlamaForCausalLM(LlamaConfig(**sizes)).to(dtype)


def test_gradient_token_budget_of_large_models():
    """Activations of at most max(weights / 8, 2 GiB). A Mistral-shaped 7.2B model in bf16 holds 6.6 MB per token
    (32 layers x (10 x 4096 + 4 x 14336) x 2 bytes + 32768 x 10 bytes); 1/8 of its 14.5 GB of weights is below
    2 GiB, so 2 GiB decides: 324 tokens, and a batch of 8 items of ~68 tokens runs in two passes. A Llama-2-13B
    shape: 1/8 of its 26 GB decides, 368 tokens."""
    mistral = _shaped(torch.bfloat16, vocab_size=32768, hidden_size=4096, intermediate_size=14336,
                      num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8)
    llama13 = _shaped(torch.bfloat16, vocab_size=32000, hidden_size=5120, intermediate_size=13824,
                      num_hidden_layers=40, num_attention_heads=40)
    assert memory.gradient_token_bytes(mistral) == 32 * (10 * 4096 + 4 * 14336) * 2 + 32768 * 10
    for model, allowed, tokens in ((mistral, memory.ACTIVATIONS_FLOOR, 324), (llama13, None, 368)):
        weights = sum(p.numel() * p.element_size() for p in model.parameters())
        allowed = allowed or weights / 8
        assert allowed == max(weights / 8, memory.ACTIVATIONS_FLOOR)
        budget, per_token = memory.gradient_token_budget(model), memory.gradient_token_bytes(model)
        assert budget == tokens and budget * per_token <= allowed < (budget + 1) * per_token
    assert memory.gradient_token_budget(mistral) < 8 * 68


def test_gradient_token_budget_of_a_small_model_is_the_2_gib_floor(tokenizer):
    model = tiny_llama(len(tokenizer))
    budget, per_token = memory.gradient_token_budget(model), memory.gradient_token_bytes(model)
    assert budget * per_token <= memory.ACTIVATIONS_FLOOR < (budget + 1) * per_token


def test_release_gpu_cache_empties_the_cache_only_where_cuda_is_in_use(monkeypatch):
    """After a job the CUDA cache goes back to the driver; a process that never touched CUDA is not made to."""
    emptied = []
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: emptied.append(True))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: False)
    memory.release_gpu_cache()
    assert emptied == []
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    memory.release_gpu_cache()
    assert emptied == [True]
