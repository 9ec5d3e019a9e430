"""Which device did the work and the most memory it held: the CLI's `run` and `score` print it and write it in their
reports, and bench/ prints it beside every ratio (figures are only comparable on the same device). Also what one
token of a batch costs in activations, from the model's shape, and so how many tokens a gradient batch may hold.

On CUDA the peak is torch.cuda.max_memory_allocated of each GPU the model sits on (the tensors; the caching
allocator reserves a little more). On a CPU it is the process's resident-set high-water mark (Linux VmHWM, which
`reset_peak` sets back to the current RSS), so it includes the loaded model, Python and the libraries.
"""

from __future__ import annotations

import os
import platform
import resource
from dataclasses import dataclass

import torch


def device_name(device: torch.device) -> str:
    """The GPU's name, or the CPU's with its core count and torch's thread count."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads"


def reset_peak(device: torch.device) -> None:
    """Start a new peak: CUDA's allocator statistics, or on a CPU the kernel's RSS high-water mark (Linux resets
    VmHWM to the current RSS when "5" is written to /proc/self/clear_refs)."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass  # not Linux: peak_bytes falls back to the whole process's peak


def peak_bytes(device: torch.device) -> tuple[int, str]:
    """(the peak since the last reset_peak, how it was measured)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device), "torch.cuda.max_memory_allocated"
    try:
        with open("/proc/self/status") as f:
            kib = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
        return kib * 1024, "peak RSS of the process"
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "peak RSS of the process (since start)"


@dataclass(frozen=True)
class ModelShape:
    """The sizes of a decoder-only transformer that decide its activations' memory."""
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    ffn: int  # the feed-forward (MLP) width
    vocab: int
    element: int  # bytes per value in the weights' dtype


def model_shape(model) -> ModelShape:
    """The model's shape from its config (Llama-style names, GPT-2's where those are absent)."""
    cfg = model.config
    hidden = getattr(cfg, "hidden_size", None) or getattr(cfg, "n_embd", 1024)
    heads = getattr(cfg, "num_attention_heads", None) or getattr(cfg, "n_head", 1)
    return ModelShape(hidden=hidden, layers=getattr(cfg, "num_hidden_layers", None) or getattr(cfg, "n_layer", 1),
                      heads=heads, kv_heads=getattr(cfg, "num_key_value_heads", None) or heads,
                      head_dim=getattr(cfg, "head_dim", None) or hidden // heads,
                      ffn=getattr(cfg, "intermediate_size", None) or 4 * hidden,
                      vocab=getattr(cfg, "vocab_size", None) or 1 << 16,
                      element=next(model.parameters()).element_size())


def gradient_token_bytes(model) -> int:
    """What one token of a batch holds from the forward pass until backward has used it, in bytes:
        layers x (10 x hidden + 4 x ffn) x element   +   vocab x (element + 4 + 4)
    Per decoder layer about ten hidden-sized vectors (the norms' inputs and outputs, q, k, v, the attention output,
    the projections' inputs) and four FFN-sized ones (gate and up outputs, the activation, their product) are saved
    for backward, in the weights' dtype; then the token's logits row, its float32 copy and its log-softmax
    (losses.answer_nll). A Mistral-shaped 7.2B model in bf16: 6.6 MB per token."""
    s = model_shape(model)
    return s.layers * (10 * s.hidden + 4 * s.ffn) * s.element + s.vocab * (s.element + 4 + 4)


# A gradient pass's activations may take 1/8 of the weights' bytes, or 2 GiB where that is more: scoring then peaks
# at about the weights + one float32 gradient set + max(weights / 8, 2 GiB) (bf16 weights: 3x them + that). The floor
# keeps small models' batches whole: 1/8 of the 135M default model's weights is a few dozen tokens.
ACTIVATIONS_SHARE = 1 / 8
ACTIVATIONS_FLOOR = 2 * 2**30


def gradient_token_budget(model) -> int:
    """Tokens (rows x padded length) one gradient pass may hold: max(weights / 8, 2 GiB) / gradient_token_bytes.
    In bf16: a Mistral-shaped 7.2B model 324 tokens (2 GiB decides), Llama-2-13B 368 (1/8 of its weights); the 135M
    default model in float32: 1,064 (2 GiB)."""
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    return max(1, int(max(ACTIVATIONS_SHARE * weights, ACTIVATIONS_FLOOR) // gradient_token_bytes(model)))


def model_devices(model) -> list[torch.device]:
    """The devices the model's weights sit on (several under accelerate's device_map), in a stable order."""
    return sorted({p.device for p in model.parameters()}, key=str)


def start_measuring(model) -> None:
    """reset_peak on every device of the model (the CLI calls it once the model is loaded)."""
    for device in model_devices(model):
        reset_peak(device)


def memory_report(model) -> dict:
    """Per device of the model: its name, the weights on it, the peak since start_measuring and the ratio."""
    report = {}
    for device in model_devices(model):
        weights = sum(p.numel() * p.element_size() for p in model.parameters() if p.device == device)
        peak, measured = peak_bytes(device)
        report[str(device)] = {"name": device_name(device), "weights_bytes": weights, "peak_bytes": peak,
                               "measured": measured, "peak_over_weights": peak / weights if weights else None}
    return report




def release_gpu_cache() -> None:
    """Hand the CUDA caching allocator's free blocks back to the driver, where CUDA is already in use.

    A server runs job after job on one base model: without this, memory a finished job freed stays reserved by the
    cache, `torch.cuda.mem_get_info` counts it as used, and the next job's evaluation batches (sized from free
    memory) shrink. Never initialises CUDA itself (a process that has not touched the GPU has nothing cached).
    """
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()
