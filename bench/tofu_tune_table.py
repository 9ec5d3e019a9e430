"""Markdown tables of a tuned TOFU report: each method at the setting the rule chose, then every grid point.

    python bench/tofu_tune_table.py assets/reports/tofu_forget01_tune.json

Reads the report `python -m grin_engine tofu --tune --out X.jsonl` writes next to its lines (X.json; rewritten after
every finished point, so a stopped or unfinished tune gives the tables of what it finished; `--report-only` rewrites
it). The first table is the one the TOFU tab shows: the target and the retain model, then each method at its chosen
point, with how many of its grid points had finished when it was picked. The second lists every finished point, the
chosen ones in bold. The third: each method's pick by the report's second rule, the same among only its points
whose forget answers are fluent (forget quality rewards answers that loop, so a method can win the first by
gibberish).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
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


def fluent_table(report: dict) -> list[str]:
    """Each method's pick by the report's fluent rule (its `chosen_fluent`)."""
    lines = ["| method | pick among points with fluent forget answers | keeps 0.9 x utility | forget quality "
             "| model utility | privleak | forget fluency |", "| --- " * 7 + "|"]
    for row, chosen in report["chosen_fluent"].items():
        if chosen is None:
            lines.append(f"| {row} | no fluent point (of {report['chosen'][row]['of']}) | - | - | - | - | - |")
            continue
        scores = chosen["scores"]
        keeps = "yes" if chosen["keeps_utility"] else "**no**"
        lines.append(f"| {row} | {chosen['setting']} ({chosen['of']}) | {keeps} "
                     f"| {num(scores.get('forget_quality'), '.3g')} | {scores['model_utility']:.3f} "
                     f"| {num(scores.get('privleak'), '.1f')} | {scores['splits']['forget']['fluency']:.3f} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("report", help="the .json report of python -m grin_engine tofu --tune")
    args = parser.parse_args()
    report = json.load(open(args.report))
    if "chosen" not in report:
        raise SystemExit(f"{args.report}: not a tuned TOFU report (no chosen settings); make one with tofu --tune")
    print("\n".join(chosen_table(report)))
    print(f"\nRule: {report['rule']}. {report['finished']} of {report['points']} grid points finished.\n")
    print("\n".join(grid_table(report)))
    if "chosen_fluent" in report:
        print(f"\nThe second rule: {report['fluent_rule']}.\n")
        print("\n".join(fluent_table(report)))


if __name__ == "__main__":
    main()
