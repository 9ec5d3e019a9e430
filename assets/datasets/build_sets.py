"""Build the built-in sets: keep only the candidate items that the default model answers correctly.

    python assets/datasets/build_sets.py            # all sets in candidates/
    python assets/datasets/build_sets.py harry_potter
    python assets/datasets/build_sets.py --paraphrases harry_potter   # only re-check the kept items' paraphrases
    python assets/datasets/build_sets.py --folder pairs                # the look-alike pairs: pairs/candidates/

For each candidates/<name>.jsonl this asks the default model (SmolLM2-135M-Instruct, greedy, the same generation
the evaluation uses) every question and keeps the items whose answer contains one of the item's keywords.
Unlearning can only be shown on facts the model knows before it starts. Writes <name>.jsonl (the kept items) and
<name>.meta.json (model, pass rate, and the model's answer to every candidate, kept or not).

A candidate may carry `paraphrased_questions` (the same question reworded, for the paraphrase attack in
grin_engine/attacks.py). Each paraphrase of a kept item is checked the same way, and only those the default model
answers correctly are written: a paraphrase the model does not know would look "forgotten" before any unlearning.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent.parent))  # run from anywhere without installing the package

from grin_engine.config import ModelSpec  # noqa: E402
from grin_engine.data import read_items_file  # noqa: E402
from grin_engine.evaluation.evaluate import generate_answers  # noqa: E402
from grin_engine.evaluation.metrics import keyword_hit  # noqa: E402
from grin_engine.models import load_model  # noqa: E402


def build(name: str, loaded, folder: Path = HERE) -> dict:
    items = read_items_file(folder / "candidates" / f"{name}.jsonl")
    answers = generate_answers(loaded.model, loaded.tokenizer, [it.question for it in items])
    passed = [keyword_hit(answer, it.keywords) for it, answer in zip(items, answers)]
    kept = [it for it, ok in zip(items, passed) if ok]
    paraphrases = check_paraphrases(kept, loaded)
    write_items(folder / f"{name}.jsonl", kept, paraphrases["kept"])
    meta = {
        "name": name,
        "model": loaded.name,
        "model_source": loaded.source,
        "check": "greedy answer (grin_engine.evaluate.generate_answers) contains one of the item's keywords",
        "candidates": len(items),
        "kept": sum(passed),
        "pass_rate": sum(passed) / len(items),
        "answers": [{"question": it.question, "keywords": it.keywords, "model_answer": a, "kept": ok}
                    for it, a, ok in zip(items, answers, passed)],
        "paraphrases": paraphrases["meta"],
    }
    (folder / f"{name}.meta.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    return meta


def check_paraphrases(items, loaded) -> dict:
    """Ask the model every paraphrased question of the items; keep those whose answer holds one of the item's
    keywords. Returns {"kept": [kept paraphrases per item], "meta": {counts, the model's answer to each}}."""
    asked = [(i, q) for i, it in enumerate(items) for q in it.paraphrased_questions]
    answers = generate_answers(loaded.model, loaded.tokenizer, [q for _, q in asked]) if asked else []
    kept = [[] for _ in items]
    checks = []
    for (i, question), answer in zip(asked, answers):
        ok = keyword_hit(answer, items[i].keywords)
        if ok:
            kept[i].append(question)
        checks.append({"question": question, "of": items[i].question, "model_answer": answer, "kept": ok})
    meta = {"candidates": len(asked), "kept": sum(len(k) for k in kept),
            "items_with_one": sum(1 for k in kept if k), "items": len(items), "answers": checks}
    return {"kept": kept, "meta": meta}


def write_items(path: Path, items, paraphrases) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for it, para in zip(items, paraphrases):
            record = {"question": it.question, "answer": it.answer, "keywords": it.keywords}
            if para:
                record["paraphrased_questions"] = para
            f.write(json.dumps(record) + "\n")


def rebuild_paraphrases(name: str, loaded) -> dict:
    """Re-check only the paraphrases of the kept items (from candidates/), keeping the built set's items as they are:
    faster than a full build, and the set cannot change under the other tools."""
    candidates = {it.question: it for it in read_items_file(HERE / "candidates" / f"{name}.jsonl")}
    items = read_items_file(HERE / f"{name}.jsonl")
    items = [dataclasses.replace(it, paraphrased_questions=candidates[it.question].paraphrased_questions
                                 if it.question in candidates else []) for it in items]
    paraphrases = check_paraphrases(items, loaded)
    write_items(HERE / f"{name}.jsonl", items, paraphrases["kept"])
    meta_path = HERE / f"{name}.meta.json"
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    meta["paraphrases"] = paraphrases["meta"]
    meta_path.write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    return paraphrases["meta"]


def main(names: list[str]) -> None:
    only_paraphrases = "--paraphrases" in names
    folder = HERE
    if "--folder" in names:  # a folder under this one with its own candidates/, e.g. the look-alike pairs
        at = names.index("--folder")
        folder = HERE / names[at + 1]
        names = names[:at] + names[at + 2:]
    names = [n for n in names if n != "--paraphrases"]
    names = names or sorted(p.stem for p in (folder / "candidates").glob("*.jsonl"))
    loaded = load_model(ModelSpec("default", device="cpu"))
    if only_paraphrases:
        for name in names:
            meta = rebuild_paraphrases(name, loaded)
            print(f"{name}: kept {meta['kept']} of {meta['candidates']} paraphrases; "
                  f"{meta['items_with_one']} of {meta['items']} items have at least one")
        return
    for name in names:
        meta = build(name, loaded, folder)
        print(f"{name}: kept {meta['kept']} of {meta['candidates']} ({100 * meta['pass_rate']:.0f}%)")


if __name__ == "__main__":
    main(sys.argv[1:])
