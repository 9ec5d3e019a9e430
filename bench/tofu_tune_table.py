"""Markdown tables of a tuned TOFU report: each method at the setting the rule chose, then every grid point.

    python bench/tofu_tune_table.py assets/reports/tofu_forget01_tune.json
    python bench/tofu_tune_table.py assets/reports/tofu_forget01_tune.json --fluent 0.9

Reads the report `python -m grin_engine tofu --tune --out X.jsonl` writes next to its lines (X.json; rewritten after
every finished point, so a stopped or unfinished tune gives the tables of what it finished; `--report-only` rewrites
it). The first table is the one the TOFU tab shows: the target and the retain model, then each method at its chosen
point, with how many of its grid points had finished when it was picked. The second lists every finished point, the
chosen ones in bold. `--fluent F` adds each method's pick by the same rule among only its points whose forget
answers are at least F fluent: a view to read beside the rule's, not the rule (forget quality rewards answers that
loop, so a method can win it by gibberish).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from grin_engine.benchmarks.tofu_grid import pick, setting  # noqa: E402
from grin_engine.cli.tables import num  # noqa: E402


def chosen_table(report: dict) -> list[str]:
    lines = ["| model | setting (of the points run) | keeps 0.9 x utility | forget quality | model utility | privleak "
             "| forget ROUGE-L | forget fluency | retain ROUGE-L |", "| --- " * 9 + "|"]
    for name, row in report["rows"].items():
        chosen = report.get("chosen", {}).get(name)
        setting = f"{chosen['setting']} ({chosen['of']})" if chosen else "-"
        keeps = ("yes" if chosen["keeps_utility"] else "**no**: its highest-utility point") if chosen else "-"
        forget, retain = row["splits"]["forget"], row["splits"]["retain"]
        lines.append(f"| {name} | {setting} | {keeps} | {num(row.get('forget_quality'), '.3g')} "
                     f"| {row['model_utility']:.3f} | {num(row.get('privleak'), '.1f')} "
                     f"| {forget['rougeL_recall']:.3f} | {num(forget.get('fluency'), '.3f')} "
                     f"| {retain['rougeL_recall']:.3f} |")
    return lines


def grid_table(report: dict) -> list[str]:
    picked = {(row, c["setting"]) for row, c in report.get("chosen", {}).items()}
    lines = ["| method | setting | forget quality | model utility | privleak | forget ROUGE-L | forget fluency "
             "| minutes |", "| --- " * 8 + "|"]
    for point in report["grid"]:
        mark = "**" if (point["row"], point["setting"]) in picked else ""
        lines.append(f"| {point['row']} | {mark}{point['setting']}{mark} | {num(point.get('forget_quality'), '.3g')} "
                     f"| {point['model_utility']:.3f} | {num(point.get('privleak'), '.1f')} "
                     f"| {num(point.get('forget_rougeL_recall'), '.3f')} | {num(point.get('forget_fluency'), '.3f')} "
                     f"| {point['seconds'] / 60:.1f} |")
    return lines


def fluent_table(report: dict, fluent: float) -> list[str]:
    """Each method's pick by the report's rule among its points with forget fluency >= `fluent`."""
    target_utility = report["rows"]["target"]["model_utility"]
    lines = [f"| method | pick among points with forget fluency >= {fluent:g} | keeps 0.9 x utility | forget quality "
             "| model utility | privleak | forget fluency |", "| --- " * 7 + "|"]
    for row in report.get("chosen", {}):
        fluent_points = [p for p in report["grid"] if p["row"] == row and (p.get("forget_fluency") or 0) >= fluent]
        chosen, keeps = pick([{**p, "scores": p} for p in fluent_points], target_utility)
        if chosen is None:
            lines.append(f"| {row} | none of its {sum(p['row'] == row for p in report['grid'])} points | - | - | - "
                         "| - | - |")
            continue
        lines.append(f"| {row} | {setting(chosen)} | {'yes' if keeps else '**no**'} "
                     f"| {num(chosen.get('forget_quality'), '.3g')} | {chosen['model_utility']:.3f} "
                     f"| {num(chosen.get('privleak'), '.1f')} | {chosen['forget_fluency']:.3f} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("report", help="the .json report of python -m grin_engine tofu --tune")
    parser.add_argument("--fluent", type=float, default=None,
                        help="also each method's pick among its points with at least this forget fluency")
    args = parser.parse_args()
    report = json.load(open(args.report))
    if "chosen" not in report:
        raise SystemExit(f"{args.report}: not a tuned TOFU report (no chosen settings); make one with tofu --tune")
    print("\n".join(chosen_table(report)))
    print(f"\nRule: {report['rule']}. {report['finished']} of {report['points']} grid points finished.\n")
    print("\n".join(grid_table(report)))
    if args.fluent is not None:
        print("\nNot the rule: the same rule among each method's points with fluent forget answers.\n")
        print("\n".join(fluent_table(report, args.fluent)))


if __name__ == "__main__":
    main()
