"""Unlearning recipes on look-alike pairs: does a default forget, keep and stay fluent on data it was not chosen on?

    OMP_NUM_THREADS=1 python bench/recipes.py --recipes old,new --out docs/sweeps/recipes.jsonl

A pair is a set of facts to forget and a neighbouring set to keep (assets/datasets/pairs/: European vs other
capitals, footballers vs other athletes, writers vs inventors), plus the built-in sets at the app's 16 items. Every
model also answers a third set that no run trains on (pairs/held_out.jsonl: everyday facts). Each (pair, recipe)
starts from the same base evaluation and writes one JSON line; a rerun skips the lines already in --out.

The bar a recipe must meet on every pair:
    forgets:  forget keyword accuracy <= 0.25
    keeps:    retain and held-out keyword accuracy >= 0.9 x their base value
    fluent:   at most 0.1 of the forget answers loop (evaluation/metrics.is_loop); the fluency metric (neither a loop
              nor a non-answer) is reported beside it
The numbers are measured, not asserted: this is a measurement, not a test.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run from anywhere, like the other bench scripts

from grin_engine import data, models  # noqa: E402
from grin_engine.config import GrinConfig, ModelSpec  # noqa: E402
from grin_engine.evaluation.evaluate import evaluate_both, evaluate_split  # noqa: E402
from grin_engine.method.patch import unlearned_copy  # noqa: E402
from grin_engine.models import copy_model  # noqa: E402
from grin_engine.runs.masks import choose_mask  # noqa: E402
from grin_engine.runs.pipeline import finish  # noqa: E402

PAIRS_DIR = ROOT / "assets" / "datasets" / "pairs"
PAIRS = {  # name: (forget, retain, max items); a pair's files are the facts the default model knows (build_sets.py)
    "built-in": ("harry_potter", "general_knowledge", 16),
    "capitals": (str(PAIRS_DIR / "capitals_europe.jsonl"), str(PAIRS_DIR / "capitals_world.jsonl"), None),
    "sports": (str(PAIRS_DIR / "football_players.jsonl"), str(PAIRS_DIR / "other_athletes.jsonl"), None),
    "creators": (str(PAIRS_DIR / "writers.jsonl"), str(PAIRS_DIR / "inventors.jsonl"), None),
}
HELD_OUT = str(PAIRS_DIR / "held_out.jsonl")
STOP_ONCE = "forget_keyword_accuracy<=0.25"
RECIPES = {  # name: the GrinConfig fields it sets; everything else is GrinConfig's default
    "old": {"loss": "graddiff", "p": 0.01, "lr": 5e-4, "steps": 20},  # the CLI's default before the pairs
    "stop-once": {"loss": "graddiff", "p": 0.01, "lr": 5e-4, "steps": 20, "until": STOP_ONCE},  # the app's
    "graddiff-2e-4-stop-once": {"loss": "graddiff", "p": 0.01, "lr": 2e-4, "steps": 40, "until": STOP_ONCE},
    "npo-stop-once": {"loss": "npo", "p": 0.01, "lr": 5e-4, "steps": 20, "until": STOP_ONCE},
    "idk-stop-once": {"loss": "idk", "p": 0.01, "lr": 5e-4, "steps": 20, "until": STOP_ONCE},
    "dpo-stop-once": {"loss": "dpo", "p": 0.01, "lr": 5e-4, "steps": 20, "until": STOP_ONCE},
    # second round, after the first failed to keep the capitals pair: smaller steps, checked every step, and a
    # heavier retain term
    "graddiff-1e-4-every-step": {"loss": "graddiff", "p": 0.01, "lr": 1e-4, "steps": 40, "until": STOP_ONCE,
                                 "until_every": 1},
    "graddiff-2e-4-alpha-5": {"loss": "graddiff", "p": 0.01, "lr": 2e-4, "steps": 40, "alpha": 5.0,
                              "until": STOP_ONCE, "until_every": 1},
    "npo-1e-4-alpha-5": {"loss": "npo", "p": 0.01, "lr": 1e-4, "steps": 40, "alpha": 5.0, "until": STOP_ONCE,
                         "until_every": 1},
    "idk-alpha-5": {"loss": "idk", "p": 0.01, "lr": 5e-4, "steps": 40, "alpha": 5.0, "until": STOP_ONCE,
                    "until_every": 1},
    "dpo-2e-4-alpha-5": {"loss": "dpo", "p": 0.01, "lr": 2e-4, "steps": 40, "alpha": 5.0, "until": STOP_ONCE,
                         "until_every": 1},
    "npo-2e-4-alpha-5": {"loss": "npo", "p": 0.01, "lr": 2e-4, "steps": 40, "alpha": 5.0, "until": STOP_ONCE,
                         "until_every": 1},
    "graddiff-p-0.1%": {"loss": "graddiff", "p": 0.001, "lr": 1e-3, "steps": 40, "until": STOP_ONCE,
                        "until_every": 1},
}
BAR = {"forget": 0.25, "keep": 0.9, "looping": 0.1}


def verdict(before: dict, after: dict, looping: float) -> dict:
    """Which parts of the bar a row meets (keyword accuracy before and after, the looping share after)."""
    keeps = all(after[s]["keyword_accuracy"] >= BAR["keep"] * before[s]["keyword_accuracy"]
                for s in ("retain", "held_out"))
    return {"forgets": after["forget"]["keyword_accuracy"] <= BAR["forget"], "keeps": keeps,
            "fluent": looping <= BAR["looping"]}


def run_pair(base, pair: str, recipes: list[str], done: set, out: Path | None) -> list[dict]:
    forget_source, retain_source, max_items = PAIRS[pair]
    forget = data.load_items(forget_source, max_items)
    retain = data.load_items(retain_source, max_items)
    trained = {it.question for it in forget + retain}
    held_out = [it for it in data.load_items(HELD_OUT) if it.question not in trained]  # no run trains on these
    cfg = GrinConfig()
    start = time.perf_counter()
    before = evaluate_both(base.model, base.tokenizer, forget, retain, cfg)
    held_before = evaluate_split(base.model, base.tokenizer, held_out, "retain", cfg.max_new_tokens)
    print(f"{pair}: {len(forget)} forget, {len(retain)} retain, {len(held_out)} held-out items; base evaluated in "
          f"{time.perf_counter() - start:.0f} s", flush=True)
    rows = []
    for recipe in recipes:
        if (pair, recipe) in done:
            continue
        cfg = GrinConfig(**RECIPES[recipe])
        start = time.perf_counter()
        work = copy_model(base)
        result = finish(base, work, forget, retain, cfg, choose_mask(work, forget, retain, cfg),
                        {split: before[split] for split in ("forget", "retain")})
        unlearned = unlearned_copy(base, result.patch)
        held_after = evaluate_split(unlearned.model, unlearned.tokenizer, held_out, "retain", cfg.max_new_tokens)
        del unlearned, work
        values = {"before": dict(result.metrics["before"]), "after": dict(result.metrics["after"])}
        values["before"]["held_out"] = {m: r.value for m, r in held_before["metrics"].items()}
        values["after"]["held_out"] = {m: r.value for m, r in held_after["metrics"].items()}
        looping = {when: result.fluency[when]["forget"]["looping"] for when in ("before", "after")}
        row = {"pair": pair, "recipe": recipe, "config": RECIPES[recipe], "items": [len(forget), len(retain),
               len(held_out)], "steps": len(result.losses), "seconds": round(time.perf_counter() - start, 1),
               **values, "forget_looping": looping, **verdict(values["before"], values["after"], looping["after"]),
               "forget_answers": [g["after"] for g in result.generations if g["split"] == "forget"],
               "retain_answers": [g["after"] for g in result.generations if g["split"] == "retain"]}
        rows.append(row)
        if out:
            with open(out, "a", encoding="utf-8") as handle:
                handle.write(json.dumps(row) + "\n")
        print(line(row), flush=True)
    return rows


def line(row: dict) -> str:
    b, a = row["before"], row["after"]
    cells = " ".join(f"{s[:1]} {b[s]['keyword_accuracy']:.2f}->{a[s]['keyword_accuracy']:.2f}"
                     for s in ("forget", "retain", "held_out"))
    marks = "".join(k[0].upper() if row[k] else "-" for k in ("forgets", "keeps", "fluent"))
    return (f"{row['pair']:<9} {row['recipe']:<24} {row['steps']:>3} steps  {cells}  looping "
            f"{row['forget_looping']['after']:.2f} fluency {a['forget']['fluency']:.2f}  [{marks}]  "
            f"{row['seconds']:.0f} s")


def markdown(rows: list[dict]) -> str:
    """The rows as a markdown table, pair by pair: keyword accuracy before -> after, the looping share, the bar."""
    lines = ["| pair | recipe | steps | forget keyword acc. | retain keyword acc. | held-out keyword acc. | forget "
             "looping | forget fluency | forgets / keeps / fluent |", "| --- " * 9 + "|"]
    for row in sorted(rows, key=lambda r: (list(PAIRS).index(r["pair"]), list(RECIPES).index(r["recipe"]))):
        b, a = row["before"], row["after"]
        cells = [f"{b[s]['keyword_accuracy']:.2f} -> {a[s]['keyword_accuracy']:.2f}" for s in ("forget", "retain",
                                                                                              "held_out")]
        marks = " / ".join("yes" if row[k] else "**no**" for k in ("forgets", "keeps", "fluent"))
        lines.append(f"| {row['pair']} | {row['recipe']} | {row['steps']} | " + " | ".join(cells) +
                     f" | {row['forget_looping']['before']:.2f} -> {row['forget_looping']['after']:.2f} | "
                     f"{b['forget']['fluency']:.2f} -> {a['forget']['fluency']:.2f} | {marks} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", default=",".join(PAIRS), help=f"comma-separated, of: {', '.join(PAIRS)}")
    parser.add_argument("--recipes", default=",".join(RECIPES), help=f"comma-separated, of: {', '.join(RECIPES)}")
    parser.add_argument("--out", default=None, help="JSON lines, one per (pair, recipe); a rerun skips those there")
    parser.add_argument("--table", nargs="+", default=None, metavar="LINES",
                        help="run nothing: print the markdown table of these JSON-lines files")
    args = parser.parse_args()
    if args.table:
        print(markdown([json.loads(line) for path in args.table for line in Path(path).read_text().splitlines()]))
        return
    pairs, recipes = args.pairs.split(","), args.recipes.split(",")
    unknown = [p for p in pairs if p not in PAIRS] + [r for r in recipes if r not in RECIPES]
    if unknown:
        sys.exit(f"unknown pair or recipe: {', '.join(unknown)}")
    out = Path(args.out) if args.out else None
    done = set()
    if out and out.exists():
        done = {(r["pair"], r["recipe"]) for r in map(json.loads, out.read_text().splitlines()) if r}
    base = models.load_model(ModelSpec("default"))
    for pair in pairs:
        if all((pair, r) in done for r in recipes):
            continue
        run_pair(base, pair, recipes, done, out)
    if out:
        print("\nall rows in", out)
        for row in map(json.loads, out.read_text().splitlines()):
            print(line(row))


if __name__ == "__main__":
    main()
