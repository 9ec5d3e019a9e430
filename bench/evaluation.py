"""Benchmark: evaluation batching. Greedy answers and answer NLLs with today's batching (length-sorted batches sized
by a token budget, evaluate.py) against the previous one (16 rows in question order), on one machine in one run.

    python bench/evaluation.py [--model default] [--device auto] [--items 32] [--max-new-tokens 48]

Prints the median wall time of each (--repeats runs, alternating, after a short warm-up), the ratio new / previous
[<= 1.0x], the same in process CPU seconds (fairer on a shared machine),
whether the answers are the same (they must be), the largest NLL difference, the device and the peak memory.
The previous batching is reproduced exactly by handing generate_answers / pair_nlls 16 items at a time.
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import bench_parser, load_for_bench, device_name, peak_memory, reset_peak, sync  # noqa: E402
from grin_engine.evaluation import evaluate  # noqa: E402
from grin_engine.data import load_items  # noqa: E402

PREVIOUS_ROWS = 16


class unlimited_budget:
    """Within this block a CPU token budget never splits a group of 16 (the previous batching had no budget)."""

    def __enter__(self):
        self.saved = evaluate.CPU_GENERATION_TOKENS, evaluate.CPU_SCORING_TOKENS
        evaluate.CPU_GENERATION_TOKENS = evaluate.CPU_SCORING_TOKENS = 1 << 40

    def __exit__(self, *exc):
        evaluate.CPU_GENERATION_TOKENS, evaluate.CPU_SCORING_TOKENS = self.saved


def previous_answers(model, tok, questions, max_new_tokens):
    """The previous batching: 16 questions per generate() call, in the questions' order."""
    with unlimited_budget():
        return [a for i in range(0, len(questions), PREVIOUS_ROWS)
                for a in evaluate.generate_answers(model, tok, questions[i: i + PREVIOUS_ROWS], max_new_tokens,
                                                   batch_size=PREVIOUS_ROWS)]


def previous_nlls(model, tok, pairs):
    sums = []
    with unlimited_budget():
        for i in range(0, len(pairs), PREVIOUS_ROWS):
            sums += evaluate.pair_nlls(model, tok, pairs[i: i + PREVIOUS_ROWS], batch_size=PREVIOUS_ROWS)[0]
    return sums


def timed(fn):
    """(result, wall seconds, process CPU seconds). On a CPU shared with other jobs the CPU seconds are the fairer
    comparison: wall time also counts the time other processes held the cores."""
    sync()
    start, cpu = time.perf_counter(), time.process_time()
    out = fn()
    sync()
    return out, time.perf_counter() - start, time.process_time() - cpu


def alternating(first, second, repeats):
    """Run first, second, first, second ... (so that a change in the machine's load hits both alike); return each
    one's last result and its median wall and CPU seconds."""
    runs = {0: [], 1: []}
    for _ in range(repeats):
        for i, fn in enumerate((first, second)):
            runs[i].append(timed(fn))
    return [(r[-1][0], statistics.median(x[1] for x in r), statistics.median(x[2] for x in r))
            for r in (runs[0], runs[1])]


def main() -> None:
    parser = bench_parser(__doc__, "items of each built-in set")
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--repeats", type=int, default=2, help="timed runs of each, alternating; medians shown")
    args = parser.parse_args()
    base = load_for_bench(args)
    model, tok = base.model, base.tokenizer
    items = load_items("harry_potter", args.items) + load_items("general_knowledge", args.items)
    questions, pairs = [it.question for it in items], [(it.question, it.answer) for it in items]
    print(f"device: {device_name(base.device)}")
    print(f"model {base.name} on {base.device} ({base.dtype}); {len(items)} questions, {args.max_new_tokens} new tokens")
    evaluate.generate_answers(model, tok, questions[:4], 4)  # warm-up

    reset_peak(base.device)
    (old, t_old, c_old), (new, t_new, c_new) = alternating(
        lambda: previous_answers(model, tok, questions, args.max_new_tokens),
        lambda: evaluate.generate_answers(model, tok, questions, args.max_new_tokens), args.repeats)
    (old_nll, t_old_nll, c_old_nll), ((new_nll, _), t_new_nll, c_new_nll) = alternating(
        lambda: previous_nlls(model, tok, pairs), lambda: evaluate.pair_nlls(model, tok, pairs), args.repeats)
    differ = sum(a != b for a, b in zip(old, new))
    print(f"{'greedy answers, sorted + budget / 16 in order':<48} {t_new / t_old:>6.2f}x  target <= 1.0x  "
          f"(wall {t_new:.1f} s vs {t_old:.1f} s, CPU {c_new:.1f} s vs {c_old:.1f} s = {c_new / c_old:.2f}x; "
          f"{differ} of {len(questions)} answers differ)")
    print(f"{'answer NLLs, sorted + budget / 16 in order':<48} {t_new_nll / t_old_nll:>6.2f}x  target <= 1.0x  "
          f"(wall {t_new_nll:.2f} s vs {t_old_nll:.2f} s, CPU {c_new_nll:.2f} s vs {c_old_nll:.2f} s = "
          f"{c_new_nll / c_old_nll:.2f}x; largest NLL difference {max(abs(a - b) for a, b in zip(old_nll, new_nll)):.2e})")
    print(f"peak memory: {peak_memory(base.device)}")


if __name__ == "__main__":
    main()
