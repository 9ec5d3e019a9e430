"""Benchmark: peak memory of influence scoring (G_f, G_r, the scores) and of masked unlearning steps, in bytes and
in float32 sets of the candidates.

    python bench/score_memory.py [--model default] [--items 8] [--batch-size 2] [--no-park] [--threads 1]
                                 [--train-steps 2] [--p 1] [--loss graddiff]

One float32 set = 4 bytes per candidate parameter. docs/SERVING.md's memory plan: on an accelerator scoring holds weights + one
set (G_f parked in CPU memory), plus activations; on a CPU, weights + two sets (G_f and G_r). Before the plan it
was one more set (a batch's whole gradient set next to both accumulators).

On CUDA the peak is torch.cuda.max_memory_allocated during scoring, also shown as a multiple of the weights (the GPU
target for `score`: <= 3x the bf16 weights). On a CPU it is the rise of the process's peak RSS (Linux VmHWM, reset
before scoring) over its RSS before scoring, after a one-weight warm-up; also the same scoring of one weight only,
whose peak is the activations'. Then `--train-steps` steps of masked unlearning (GradDiff) at the top p%
of those scores: the selection's peak keeping the scores and as a run makes it (the scores consumed into the kept
top scores, then the masks: runs/masks.choose_mask), then the training
steps' peak above the model and the masks. glibc keeps freed memory and fragments it: run with MALLOC_MMAP_THRESHOLD_=65536 so
every tensor is its own mapping and RSS follows the live tensors.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import bench_parser, device_name, load_for_bench, peak_bytes, reset_peak  # noqa: E402

from grin_engine.config import GrinConfig  # noqa: E402
from grin_engine.data import forget_batches, load_items, qa_batches  # noqa: E402
from grin_engine.method.influence import candidate_parameters, compute_influence  # noqa: E402
from grin_engine.method.score_cache import TopScores  # noqa: E402
from grin_engine.method.selection import select_top_fraction  # noqa: E402
from grin_engine.method.unlearn import attach_reference, unlearn  # noqa: E402


def _in_use(device: torch.device) -> int:
    """The memory in use now: CUDA's allocated tensors, or the process's RSS (Linux)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        return torch.cuda.memory_allocated(device)
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) * 1024


def peak_above_start(run, device: torch.device) -> int:
    """Peak memory while `run()` runs, above the memory in use when it starts (grin_engine.memory's peak)."""
    start = _in_use(device)
    reset_peak(device)  # on a CPU: VmHWM := the current RSS
    run()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return peak_bytes(device)[0] - start


def main() -> None:
    parser = bench_parser(__doc__, "items of each set used")
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--train-steps", type=int, default=2, help="masked unlearning steps measured (0: none)")
    parser.add_argument("--p", type=float, default=1.0, help="percent of the candidates trained")
    parser.add_argument("--loss", "--method", dest="loss", default="graddiff", help="the unlearning loss of the measured steps")
    parser.add_argument("--no-park", action="store_true", help="keep G_f on the device (compute_influence "
                                                                 "park_forget=False)")
    args = parser.parse_args()
    base = load_for_bench(args)
    model, tok = base.model, base.tokenizer
    cfg = GrinConfig(batch_size=args.batch_size)
    f_batches = qa_batches(tok, load_items("harry_potter", args.items), cfg.batch_size, cfg.max_length)
    r_batches = qa_batches(tok, load_items("general_knowledge", args.items), cfg.batch_size, cfg.max_length)
    candidates = candidate_parameters(model)
    one_weight = dict(list(candidates.items())[:1])
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    one_set = 4 * sum(c.numel for c in candidates.values())
    park = not args.no_park
    chosen_park = {"park_forget": False} if args.no_park else {}  # else the engine's default (parks)
    print(f"device: {device_name(base.device)}")
    print(f"model {base.name} ({base.dtype}): weights {weights / 2**20:,.0f} MiB; one float32 set of the "
          f"{len(candidates)} candidates {one_set / 2**20:,.0f} MiB; {args.items}+{args.items} items in "
          f"{len(f_batches)}+{len(r_batches)} batches of {cfg.batch_size}; G_f parked off the device: {park}")

    compute_influence(model, f_batches[:1], r_batches[:1], one_weight, cfg.eps)  # warm-up: threads, allocator
    held = {}

    def score(chosen):
        def run():
            held.clear()
            held["scores"] = compute_influence(model, f_batches, r_batches, chosen, cfg.eps, **chosen_park)
        return run

    start = time.perf_counter()
    peak = peak_above_start(score(candidates), base.device)
    seconds = time.perf_counter() - start
    held.clear()
    activations = peak_above_start(score(one_weight), base.device)
    held.clear()
    print(f"scoring: peak {peak / 2**20:,.0f} MiB above the loaded model = {peak / one_set:.2f} float32 sets "
          f"({seconds:.0f} s); weights + peak = {(weights + peak) / weights:.2f}x the weights")
    print(f"scoring one weight only (the activations' peak): {activations / 2**20:,.0f} MiB = "
          f"{activations / one_set:.2f} sets; scoring peak minus that = {(peak - activations) / one_set:.2f} sets")
    if args.train_steps > 0:
        scores = compute_influence(model, f_batches, r_batches, candidates, cfg.eps, **chosen_park)

        def select_keeping_the_scores():
            held.update(masks=select_top_fraction(scores, args.p / 100).masks)

        def select_as_a_run():  # runs/masks.choose_mask: each score tensor becomes its kept top entries, then masks
            top = TopScores.from_scores(scores, candidates, keep=args.p / 100, consume=True)
            held.update(masks=top.select(args.p / 100, {n: w.device for n, w in model.named_parameters()}).masks)

        kept_masks = peak_above_start(select_keeping_the_scores, base.device)
        held.clear()
        consumed = peak_above_start(select_as_a_run, base.device)
        masks = held.pop("masks")
        print(f"selection at p = {args.p:g}%: peak above the scores {kept_masks / one_set:.2f} float32 sets keeping "
              f"the scores, {consumed / one_set:.2f} as a run makes it (the scores turned into the kept top scores, "
              f"then the masks; one set = 4 bytes, a mask 1 byte per candidate)")
        train_cfg = GrinConfig(batch_size=args.batch_size, loss=args.loss, steps=args.train_steps)
        f_train = forget_batches(tok, load_items("harry_potter", args.items), cfg.batch_size, cfg.max_length, seed=0)
        attach_reference(model, f_train)
        start = time.perf_counter()
        trained = peak_above_start(lambda: unlearn(model, f_train, r_batches, train_cfg, list(candidates), masks),
                                   base.device)
        seconds = time.perf_counter() - start
        print(f"masked unlearning, {args.train_steps} {args.loss} steps at p = {args.p:g}%: peak "
              f"{trained / 2**20:,.0f} MiB above the model and the masks = {trained / one_set:.2f} float32 sets ({seconds:.0f} s); the "
              f"activations alone (above) {activations / one_set:.2f} sets")


if __name__ == "__main__":
    main()
