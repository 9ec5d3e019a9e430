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
