"""Benchmark: is GRIN's bookkeeping cheap next to ordinary training? Ratios measured in one run, on one machine.

    python bench/influence.py [--model default] [--items 32] [--repeats 3] [--p 0.01]

Prints three ratios (targets in brackets):
1. token throughput of influence scoring (forget + retain gradients) / of a plain training step
   (forward, backward, AdamW on all candidate weights) over the same batches          [>= 0.9x]
2. threshold selection time / scoring time                                              [<= 5%]
3. time of one masked unlearning step / one plain (unmasked) unlearning step            [<= 1.1x]
Each timing is the median of --repeats runs after one warm-up run. The device and the peak memory of each part
(torch.cuda.max_memory_allocated on a GPU; the peak RSS on a CPU, each since its part began) are printed with the
ratios.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import bench_parser, load_for_bench, device_name, median_time, peak_memory, reset_peak  # noqa: E402

from grin_engine.config import GrinConfig  # noqa: E402
from grin_engine.data import forget_batches, load_items, qa_batches  # noqa: E402
from grin_engine.method.influence import candidate_parameters, compute_influence  # noqa: E402
from grin_engine.method.selection import select_top_fraction  # noqa: E402
from grin_engine.method.losses import mean_nll  # noqa: E402
from grin_engine.models import copy_model  # noqa: E402
from grin_engine.method.unlearn import attach_reference, unlearn  # noqa: E402


def tokens_in(batches) -> int:
    return int(sum(b["attention_mask"].sum() for b in batches))


def plain_training_pass(model, batches, names, lr=1e-5):
    """What a training loop does on these batches: forward, backward, AdamW step on every candidate weight."""
    params = dict(model.named_parameters())
    trainable = [params[n] for n in names]
    for p in trainable:
        p.requires_grad_(True)
    optimizer = torch.optim.AdamW(trainable, lr=lr)
    device = trainable[0].device
    for batch in batches:
        loss = mean_nll(model, {k: v.to(device) for k, v in batch.items()})
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    for p in trainable:
        p.requires_grad_(False)


def main() -> None:
    parser = bench_parser(__doc__, "items of each set used")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--p", type=float, default=0.01)
    parser.add_argument("--steps", type=int, default=4, help="unlearning steps per timed run")
    args = parser.parse_args()
    base = load_for_bench(args)
    work = copy_model(base)  # the plain training pass changes weights: never on the base
    model, tok = work.model, work.tokenizer
    cfg = GrinConfig(p=args.p, steps=args.steps, loss="graddiff")
    forget, retain = load_items("harry_potter", args.items), load_items("general_knowledge", args.items)
    f_batches = qa_batches(tok, forget, cfg.batch_size, cfg.max_length)
    r_batches = qa_batches(tok, retain, cfg.batch_size, cfg.max_length)
    candidates = candidate_parameters(model)
    names = list(candidates)
    tokens = tokens_in(f_batches) + tokens_in(r_batches)
    print(f"device: {device_name(base.device)}")
    print(f"model {base.name} on {base.device} ({base.dtype}); {len(names)} candidate weights "
          f"({sum(c.numel for c in candidates.values()):,} numbers); {tokens} tokens in "
          f"{len(f_batches) + len(r_batches)} batches")

    scores_holder = {}

    def score():
        scores_holder.clear()  # the previous repeat's scores are freed first: the peak is one scoring's
        scores_holder["scores"] = compute_influence(model, f_batches, r_batches, candidates, cfg.eps)

    peaks = {}
    reset_peak(base.device)
    t_score = median_time(score, args.repeats)
    peaks["scoring"] = peak_memory(base.device)
    reset_peak(base.device)
    t_train = median_time(lambda: plain_training_pass(model, f_batches + r_batches, names), args.repeats)
    peaks["plain training"] = peak_memory(base.device)
    t_select = median_time(lambda: select_top_fraction(scores_holder["scores"], args.p), args.repeats)
    masks = select_top_fraction(scores_holder["scores"], args.p).masks
    scores_holder.clear()  # the scores are model-sized: free them before the unlearning timings

    fb = forget_batches(tok, forget, cfg.batch_size, cfg.max_length, cfg.seed)
    attach_reference(model, fb)
    reset_peak(base.device)
    t_masked = median_time(lambda: unlearn(model, fb, r_batches, cfg, names, masks), args.repeats) / cfg.steps
    peaks["masked unlearning"] = peak_memory(base.device)
    t_plain = median_time(lambda: unlearn(model, fb, r_batches, cfg, names, None), args.repeats) / cfg.steps

    score_tps, train_tps = tokens / t_score, tokens / t_train
    rows = [
        ("influence scoring throughput / plain training", score_tps / train_tps, ">= 0.9x",
         f"{score_tps:,.0f} vs {train_tps:,.0f} tokens/s", score_tps / train_tps >= 0.9),
        ("threshold selection / scoring time", t_select / t_score, "<= 5%",
         f"{t_select * 1000:.0f} ms vs {t_score * 1000:.0f} ms", t_select / t_score <= 0.05),
        ("masked unlearning step / plain step", t_masked / t_plain, "<= 1.1x",
         f"{t_masked * 1000:.0f} ms vs {t_plain * 1000:.0f} ms", t_masked / t_plain <= 1.1),
    ]
    for name, ratio, target, detail, ok in rows:
        shown = f"{100 * ratio:.1f}%" if target.endswith("%") else f"{ratio:.2f}x"
        print(f"{name:<48} {shown:>8}  target {target:<8} {'ok' if ok else 'MISSED'}  ({detail})")
    print("peak memory: " + "; ".join(f"{part} {value}" for part, value in peaks.items()))


if __name__ == "__main__":
    main()
