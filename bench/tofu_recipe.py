"""Is a TOFU fine-tuning recipe any good? A cheap probe before the whole protocol (DESIGN.md §7, "CPU recipe").

    python bench/tofu_recipe.py --kind retain --tofu-lr 1e-4 [--tofu-epochs 3] [--retain-authors 1] [--threads 1]
    python bench/tofu_recipe.py --kind base

Fine-tunes the target or the retain model with grin_engine.benchmarks.tofu's own code (cached_finetune: the model lands in the
same cache the protocol reads, so a probed recipe that becomes the default is not trained twice), then prints the
greedy answers' ROUGE-L recall on the first --items forget items, 2 x --items real-author and world-fact items and
--items retain-author items, with fewer new tokens than the protocol's 200 (the gold answers of real authors and world
facts are a few words). What a good recipe shows: the target's forget recall high, the retain model's low, and both
models' real-author / world-fact recall near the base model's (it would be 0 if the fine-tuning wiped what the model
knew). --kind base probes the base model itself.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common import bench_parser, load_for_bench  # noqa: E402

from grin_engine.evaluation import metrics  # noqa: E402
from grin_engine.evaluation.evaluate import generate_answers  # noqa: E402
from grin_engine.benchmarks.tofu import DEFAULT_CACHE, TofuRecipe, cached_finetune, load_tofu  # noqa: E402


def main() -> None:
    parser = bench_parser(__doc__.splitlines()[0], "forget and retain items probed (twice as many real authors and "
                                                   "world facts)")
    parser.set_defaults(items=10)
    parser.add_argument("--kind", default="target", choices=("target", "retain", "base"))
    recipe = TofuRecipe()
    parser.add_argument("--tofu-lr", type=float, default=recipe.lr)
    parser.add_argument("--tofu-epochs", type=int, default=recipe.epochs)
    parser.add_argument("--retain-authors", type=int, default=recipe.retain_authors)
    parser.add_argument("--cache-dir", default=str(DEFAULT_CACHE))
    args = parser.parse_args()

    start = time.perf_counter()
    base = load_for_bench(args)
    recipe = TofuRecipe(lr=args.tofu_lr, epochs=args.tofu_epochs, retain_authors=args.retain_authors)
    data = load_tofu(recipe)
    if args.kind == "base":
        model = base
    else:
        items = data.forget + data.retain_train if args.kind == "target" else data.retain_train
        started = time.perf_counter()
        model, folder, reused = cached_finetune(base, items, recipe, args.kind, Path(args.cache_dir))
        print(f"{args.kind}: {folder} ({'reused' if reused else 'fine-tuned'} in {time.perf_counter() - started:.0f} s)")
    n = args.items
    for split, items, new_tokens in (("forget", data.forget[:n], 80), ("real_authors", data.real_authors[:2 * n], 48),
                                     ("world_facts", data.world_facts[:2 * n], 48), ("retain", data.retain_eval[:n], 80)):
        answers = generate_answers(model.model, model.tokenizer, [it.question for it in items], new_tokens)
        recall = metrics.rougeL_recall([it.answer for it in items], answers).value
        print(f"{split:<13} ROUGE-L recall {recall:.3f}  ({len(items)} items, {new_tokens} new tokens)")
        for it, answer in list(zip(items, answers))[:3]:
            print(f"    {it.answer[:40]!r:<44} <- {answer[:90]!r}")
    print(f"total {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
