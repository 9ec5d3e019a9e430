"""Markdown tables of an ablation: one row per setting, the seeds' mean and each seed's value.

    python bench/ablation_table.py docs/sweeps/ablation_p_builtin.jsonl --by p
    python bench/ablation_table.py assets/reports/tofu_p.jsonl --by p     # a TOFU grid (tofu --grid) as well

Reads the JSON lines of `python -m grin_engine sweep` or `python -m grin_engine tofu --grid` and prints, per value
of --by (the other knobs as they are in the file), the metrics after unlearning: the mean over the seeds, then each
seed's value in brackets. A sweep's rows also carry the gradient norm on the selected weights before and after the
noise (the GRIN paper's question whether the noise wakes a vanished gradient).
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from statistics import mean

SWEEP_COLUMNS = [("forget keyword acc.", "forget_keyword_accuracy"), ("forget ROUGE-L", "forget_rougeL_recall"),
                 ("forget fluency", "forget_fluency"), ("retain keyword acc.", "retain_keyword_accuracy"),
                 ("retain ROUGE-L", "retain_rougeL_recall"), ("grad norm before noise", "grad_norm_before_noise"),
                 ("after noise", "grad_norm_after_noise")]
TOFU_COLUMNS = [("forget quality", "forget_quality"), ("model utility", "model_utility"), ("privleak", "privleak"),
                ("forget ROUGE-L", "forget_rougeL"), ("forget fluency", "forget_fluency"),
                ("grad norm before noise", "grad_norm_before_noise"), ("after noise", "grad_norm_after_noise")]


def tofu_values(point: dict) -> dict:
    scores = point["scores"]
    forget = scores["splits"]["forget"]
    noise = point.get("unlearning", {}).get("noise") or {}
    return {"forget_quality": scores.get("forget_quality"), "model_utility": scores["model_utility"],
            "privleak": scores.get("privleak"), "forget_rougeL": forget["rougeL_recall"],
            "forget_fluency": forget.get("fluency"), "grad_norm_before_noise": noise.get("grad_norm_before"),
            "grad_norm_after_noise": noise.get("grad_norm_after")}


def cell(values: list, fmt: str) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "-"
    if len(values) == 1:
        return format(values[0], fmt)
    return f"{format(mean(values), fmt)} ({', '.join(format(v, fmt) for v in values)})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("lines", help="a sweep's or a TOFU grid's JSON lines")
    parser.add_argument("--by", required=True, help="the knob whose values are the rows (p, sigma2, lr, steps ...)")
    args = parser.parse_args()
    points = [r for r in map(json.loads, open(args.lines).read().splitlines()) if r.get("kind") == "point"]
    tofu = bool(points) and "scores" in points[0]
    columns = TOFU_COLUMNS if tofu else SWEEP_COLUMNS
    groups = defaultdict(list)
    for point in points:
        groups[point.get(args.by)].append(tofu_values(point) if tofu else point)
    seeds = sorted({p.get("seed") for p in points})
    print(f"| {args.by} | seeds | " + " | ".join(name for name, _ in columns) + " |")
    print("| --- " * (len(columns) + 2) + "|")
    for value in sorted(groups, key=lambda v: (v is None, v)):
        rows = groups[value]
        fmt = {"privleak": ".1f", "forget_quality": ".3g"}
        print(f"| {value:g} | {len(rows)} | " + " | ".join(cell([r.get(key) for r in rows], fmt.get(key, ".3f"))
                                                         for _, key in columns) + " |")
    print(f"\n{len(points)} points, seeds {seeds}; a cell: the mean over the seeds (each seed's value)")


if __name__ == "__main__":
    main()
