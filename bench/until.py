"""Unlearn until forgotten vs a fixed step count, on the same items from the same base evaluation.

    python bench/until.py --max-items 13 --until "forget_keyword_accuracy<=0.25" --out until.json

Runs GRIN twice with the same settings: once for --steps steps, once with --until (--steps is then the most),
and prints forget / retain metrics of both and the step where the until-run stopped. One model load and one base
evaluation serve both runs. --held-out SET also answers a set neither run trains on (e.g. facts like the forget
set's: what over-unlearning costs beyond the retain items that GradDiff trains on) with the base and both results.
--loss, --lr, --sigma2, --alpha set the rest (e.g. the app's "aggressively" preset). The numbers are measured,
not asserted: this is a measurement, not a test.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from anywhere, like the other bench scripts

from grin_engine import data, models  # noqa: E402
from grin_engine.config import GrinConfig, ModelSpec  # noqa: E402
from grin_engine.evaluation.evaluate import evaluate_both, evaluate_split, shown_answers  # noqa: E402
from grin_engine.method.patch import unlearned_copy  # noqa: E402
from grin_engine.models import copy_model  # noqa: E402
from grin_engine.runs.masks import choose_mask  # noqa: E402
from grin_engine.runs.pipeline import finish  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--forget", default="harry_potter")
    parser.add_argument("--retain", default="general_knowledge")
    parser.add_argument("--max-items", type=int, default=13)
    parser.add_argument("--steps", type=int, default=GrinConfig.steps)
    parser.add_argument("--p", type=float, default=GrinConfig.p)
    parser.add_argument("--loss", "--method", dest="loss", default=GrinConfig.loss)
    parser.add_argument("--lr", type=float, default=GrinConfig.lr)
    parser.add_argument("--sigma2", type=float, default=GrinConfig.sigma2)
    parser.add_argument("--alpha", type=float, default=GrinConfig.alpha)
    parser.add_argument("--until", default="forget_keyword_accuracy<=0.25")
    parser.add_argument("--until-every", type=int, default=GrinConfig.until_every)
    parser.add_argument("--held-out", default=None, help="a set no run trains on, answered by every model")
    parser.add_argument("--held-out-items", type=int, default=40)
    parser.add_argument("--out", default=None, help="write both runs' metrics here (JSON)")
    args = parser.parse_args()

    forget = data.load_items(args.forget, args.max_items)
    retain = data.load_items(args.retain, args.max_items)
    held_out = data.load_items(args.held_out, args.held_out_items) if args.held_out else None
    base = models.load_model(ModelSpec("default"))
    fixed_cfg = GrinConfig(steps=args.steps, p=args.p, loss=args.loss, lr=args.lr, sigma2=args.sigma2,
                           alpha=args.alpha)
    until_cfg = replace(fixed_cfg, until=args.until, until_every=args.until_every)
    GrinConfig(**until_cfg.to_dict())  # validated like any config
    start = time.perf_counter()
    before = evaluate_both(base.model, base.tokenizer, forget, retain, fixed_cfg)
    if held_out:
        before["held_out"] = evaluate_split(base.model, base.tokenizer, held_out, "retain", fixed_cfg.max_new_tokens)
    print(f"base evaluated in {time.perf_counter() - start:.0f} s", flush=True)
    rows = {}
    for name, cfg in (("fixed", fixed_cfg), ("until", until_cfg)):
        start = time.perf_counter()
        work = copy_model(base)  # the run's stages, from the one base evaluation above
        result = finish(base, work, forget, retain, cfg, choose_mask(work, forget, retain, cfg),
                        {split: before[split] for split in ("forget", "retain")})
        rows[name] = {"steps": len(result.losses), "seconds": time.perf_counter() - start,
                      "until": result.until, "before": result.metrics["before"], "after": result.metrics["after"],
                      "generations": result.generations}  # the answers, to read what the numbers mean
        if held_out:
            unlearned = unlearned_copy(base, result.patch)
            answered = evaluate_split(unlearned.model, unlearned.tokenizer, held_out, "retain", cfg.max_new_tokens)
            rows[name]["before"]["held_out"] = {m: r.value for m, r in before["held_out"]["metrics"].items()}
            rows[name]["after"]["held_out"] = {m: r.value for m, r in answered["metrics"].items()}
            rows[name]["held_out_answers"] = [{"question": it.question, "before": b, "after": a} for it, b, a in
                                              zip(held_out, shown_answers(before["held_out"]),
                                                  shown_answers(answered))]
            del unlearned
        print(f"{name}: done in {rows[name]['seconds']:.0f} s", flush=True)
    metrics = ("keyword_accuracy", "rougeL_recall", "probability", "fluency")
    print(f"{len(forget)} forget + {len(retain)} retain items, {args.loss}, p = {args.p}, lr = {args.lr}, "
          f"sigma2 = {args.sigma2}, alpha = {args.alpha}, up to {args.steps} steps; until "
          f"{args.until} checked every {args.until_every} steps")
    splits = ("forget", "retain") + (("held_out",) if held_out else ())
    print(f"{'':<8}{'steps':>6}" + "".join(f"{s[0]}:{m[:8]:>10}" for s in splits for m in metrics))
    b = rows["fixed"]["before"]
    print(f"{'base':<8}{'':>6}" + "".join(f"{b[s][m]:>12.3f}" for s in splits for m in metrics))
    for name, row in rows.items():
        a = row["after"]
        print(f"{name:<8}{row['steps']:>6}" + "".join(f"{a[s][m]:>12.3f}" for s in splits for m in metrics))
    if rows["until"]["until"]:
        print("until checks (step: values):", ", ".join(
            f"{c['step']}: " + " ".join("-" if v is None else f"{v:.3f}" for v in c["values"].values())
            for c in rows["until"]["until"]["checks"]))
    if args.out:
        with open(args.out, "w") as handle:
            json.dump({"args": vars(args), "runs": rows}, handle, indent=1)


if __name__ == "__main__":
    main()
