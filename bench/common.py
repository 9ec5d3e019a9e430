"""What every bench script reports with its ratios: the device that gave them and the peak memory."""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from grin_engine.memory import device_name, peak_bytes, reset_peak  # noqa: E402,F401  (re-exported for the benches)


def peak_memory(device: torch.device) -> str:
    """The peak since the last reset_peak (grin_engine.memory: torch.cuda.max_memory_allocated on CUDA, the peak RSS
    on a CPU), in GiB with how it was measured."""
    peak, measured = peak_bytes(device)
    return f"{peak / 2**30:.2f} GiB ({measured})"


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
