"""What every bench script reports with its ratios: the device that gave them and the peak memory."""

from __future__ import annotations

import os
import platform
import resource
import statistics
import time

import torch


def device_name(device: torch.device) -> str:
    """The GPU's name, or the CPU's with its core count (bench figures are only comparable on the same device)."""
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
    VmHWM to the current RSS when "5" is written to /proc/self/clear_refs), so each part gets its own peak."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass  # not Linux: peak_memory falls back to the whole process's peak


def _rss_high_water_kib() -> int | None:
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
    except (OSError, StopIteration):
        return None


def peak_memory(device: torch.device) -> str:
    """torch.cuda.max_memory_allocated on CUDA, the peak RSS on a CPU (both since the last reset_peak; the whole
    process's peak RSS where the kernel cannot reset it)."""
    if device.type == "cuda":
        return f"{torch.cuda.max_memory_allocated(device) / 2**30:.2f} GiB (torch.cuda.max_memory_allocated)"
    since_reset = _rss_high_water_kib()
    if since_reset is not None:
        return f"{since_reset / 2**20:.2f} GiB (peak RSS since this part began)"
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return f"{peak_kib / 2**20:.2f} GiB (peak RSS of the process)"


def sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def median_time(fn, repeats: int) -> float:
    fn()  # warm-up: allocator, kernels, caches
    times = []
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench_parser(doc: str, items_help: str):
    """The arguments every benchmark takes: model, device, items per set and CPU threads."""
    import argparse

    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="default")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--items", type=int, default=32, help=items_help)
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads for torch (default: torch's); 1 on a CPU shared with other jobs")
    return parser


def load_for_bench(args):
    """Apply --threads, then load the model the arguments name."""
    from grin_engine.config import ModelSpec
    from grin_engine.models import load_model

    if args.threads:
        torch.set_num_threads(args.threads)
    return load_model(ModelSpec(args.model, device=args.device))
