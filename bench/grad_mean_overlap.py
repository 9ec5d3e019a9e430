"""How much does the influence normalisation change GRIN's selection? Jaccard of the masks, one run.

    python bench/grad_mean_overlap.py [--model default] [--items 10] [--p 0.01 0.1]

G with --grad-mean token (every answer token weighs the same; the default) against --grad-mean item (every item
weighs the same), on the first --items items of TOFU forget01 (forget) and of TOFU author 0 (retain), both from
assets/tofu; prints the Jaccard overlap of the top-p selections for each p, and the same for G_f alone.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from grin_engine.config import ModelSpec  # noqa: E402
from grin_engine.data import qa_batches, read_items_file  # noqa: E402
from grin_engine.method.influence import accumulate_gradients, candidate_parameters, influence_scores  # noqa: E402
from grin_engine.method.selection import jaccard, select_top_fraction  # noqa: E402
from grin_engine.models import load_model  # noqa: E402

TOFU = Path(__file__).resolve().parent.parent / "assets" / "tofu"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="default")
    parser.add_argument("--items", type=int, default=10)
    parser.add_argument("--p", type=float, nargs="+", default=[0.01, 0.1])
    parser.add_argument("--batch-size", type=int, default=8)
    args = parser.parse_args()
    base = load_model(ModelSpec(args.model))
    forget = read_items_file(TOFU / "forget01_perturbed.json")[: args.items]
    retain = read_items_file(TOFU / "full.json")[: args.items]
    names = list(candidate_parameters(base.model))
    start = time.perf_counter()
    grads = {}
    for mean in ("token", "item"):
        for which, items in (("forget", forget), ("retain", retain)):
            batches = qa_batches(base.tokenizer, items, args.batch_size, 256)
            grads[mean, which] = accumulate_gradients(base.model, batches, names, mean=mean)
    print(f"{args.items} + {args.items} TOFU items, {len(names)} candidate matrices, "
          f"gradients {time.perf_counter() - start:.0f} s")
    scores = {mean: influence_scores(grads[mean, "forget"], grads[mean, "retain"]) for mean in ("token", "item")}
    for p in args.p:
        grin = jaccard(select_top_fraction(scores["token"], p), select_top_fraction(scores["item"], p))
        g_f = jaccard(select_top_fraction({n: g.abs() for n, g in grads["token", "forget"].items()}, p),
                      select_top_fraction({n: g.abs() for n, g in grads["item", "forget"].items()}, p))
        print(f"p = {p:g}: Jaccard(token, item) GRIN score {grin:.3f}, |G_f| alone {g_f:.3f}")


if __name__ == "__main__":
    main()
