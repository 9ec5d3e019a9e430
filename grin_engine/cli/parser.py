"""The command line's flags: one group of flags per concern, each defined once and shared by the commands that take
it. A flag's destination is the GrinConfig field it sets (--loss -> loss, --grun-lr -> grun_lr), so `config_from`
builds every command's config the same way. docs/CLI.md is the manual.
"""

from __future__ import annotations

import argparse

from ..attacks import ATTACKS, AttackConfig
from ..benchmarks.tofu import DEFAULT_CACHE, TofuRecipe
from ..config import STOP_ONCE_FORGOTTEN, GrinConfig
from ..method.losses import describe_losses
from ..runs.methods import METHODS

DEFAULTS = GrinConfig()
METHOD_HELP = "; ".join(f"{m.name}: {m.description}" for m in METHODS.values())


def model_flags(parser: argparse.ArgumentParser, several_devices: bool = True) -> None:
    parser.add_argument("--model", default="default",
                        help="'default' (SmolLM2-135M-Instruct, packaged), a Hub id or a local folder")
    parser.add_argument("--device", default="auto", help="auto (cuda, mps, cpu), cpu, cuda, cuda:N, mps")
    parser.add_argument("--dtype", default="auto", help="auto (bf16 on GPU, fp32 on CPU), float32, bfloat16, float16")
    if several_devices:
        parser.add_argument("--device-map", default=None,
                            help="spread the model over several GPUs with accelerate: auto, balanced, sequential")
        parser.add_argument("--max-memory", default=None,
                            help="with --device-map: memory per device, e.g. 0=70GiB,1=70GiB,cpu=200GiB")


def data_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--forget", default="harry_potter",
                        help="built-in set name, file (JSONL/JSON/CSV) or tofu:<config>")
    parser.add_argument("--retain", default="general_knowledge", help="built-in set name, file or tofu:<config>")
    parser.add_argument("--max-items", type=int, default=None, help="use at most this many items of each set")


def scoring_flags(parser: argparse.ArgumentParser) -> None:
    """What the influence gradients depend on."""
    parser.add_argument("--batch-size", type=int, default=DEFAULTS.batch_size)
    parser.add_argument("--eps", type=float, default=DEFAULTS.eps, help="eps in |G_f| / (|G_r| + eps)")
    parser.add_argument("--include-embeddings", action="store_true", help="let embeddings be selected too")
    parser.add_argument("--seed", type=int, default=DEFAULTS.seed)
    parser.add_argument("--grad-mean", default=DEFAULTS.grad_mean, choices=("token", "item"),
                        help="influence gradient: token-mean NLL over the set (default) or mean of per-item means")


def unlearning_flags(parser: argparse.ArgumentParser, grid: bool = False,
                     max_new_tokens: int = DEFAULTS.max_new_tokens, until: str | None = None) -> None:
    """How unlearning runs. grid=True (sweep): p, sigma2, lr and steps take several values, one axis each.
    until: the default stop rule (run's: STOP_ONCE_FORGOTTEN; `--until none` runs every step)."""
    many = {"nargs": "+"} if grid else {}
    listed = (lambda value: [value]) if grid else (lambda value: value)
    losses = "; ".join(f"{k}: {v}" for k, v in describe_losses().items())
    parser.add_argument("--loss", "--method", dest="loss", default=DEFAULTS.loss,
                        help=f"the unlearning loss (--method is its old name). {losses}")
    parser.add_argument("--p", type=float, default=listed(DEFAULTS.p), **many,
                        help="fraction of candidate weights to select, in (0, 1]")
    parser.add_argument("--sigma2", type=float, default=listed(DEFAULTS.sigma2), **many,
                        help="variance of the noise on selected weights")
    parser.add_argument("--steps", type=int, default=listed(DEFAULTS.steps), **many)
    parser.add_argument("--lr", type=float, default=listed(DEFAULTS.lr), **many)
    parser.add_argument("--alpha", type=float, default=DEFAULTS.alpha, help="weight of the retain loss")
    parser.add_argument("--beta", type=float, default=None, help="npo/dpo/simnpo beta (default: the loss's)")
    parser.add_argument("--gamma", type=float, default=None,
                        help="weight of the forget term (default: the loss's; 1, simnpo 0.125)")
    parser.add_argument("--max-new-tokens", type=int, default=max_new_tokens)
    parser.add_argument("--label-layout", default=DEFAULTS.label_layout, choices=("answer_eos", "chat_turn"),
                        help="labelled tokens: answer + EOS (ours) or the whole assistant turn (open-unlearning's)")
    parser.add_argument("--ref-before-noise", action="store_true",
                        help="npo/dpo: pi_ref is the model before GRIN's noise (open-unlearning's), not after")
    parser.add_argument("--until", default=until, metavar="TARGET",
                        help="stop unlearning once the forget set meets TARGET, e.g. 'forget_keyword_accuracy<=0.25' "
                             "(checked every --until-every steps; --steps is then the most)" +
                             (f"; default {until!r}, 'none': run every step" if until else ""))
    parser.add_argument("--until-every", type=int, default=DEFAULTS.until_every,
                        help="steps between two until-checks")


def grun_flags(parser: argparse.ArgumentParser, grid: bool = False) -> None:
    many = {"nargs": "+"} if grid else {}
    listed = (lambda value: [value]) if grid else (lambda value: value)
    parser.add_argument("--grun-loss", "--grun-method", dest="grun_loss", default=DEFAULTS.grun_loss,
                        help="GRUN's unlearning loss (default idk: steer forget questions to a refusal)")
    parser.add_argument("--grun-layers", default=None,
                        help="GRUN: comma-separated layer numbers (default: three spread over the upper half)")
    parser.add_argument("--grun-steps", type=int, default=listed(DEFAULTS.grun_steps), **many,
                        help="GRUN's training steps (cheaper than GRIN's: 40 cost about GRIN's 20)")
    parser.add_argument("--grun-rank", type=int, default=DEFAULTS.grun_rank)
    parser.add_argument("--grun-gate", default=DEFAULTS.grun_gate, help="GRUN gate: linear or mlp")
    parser.add_argument("--grun-gate-weight", type=float, default=DEFAULTS.grun_gate_weight)
    parser.add_argument("--grun-lr", type=float, default=listed(DEFAULTS.grun_lr), **many)


def attack_flags(parser: argparse.ArgumentParser, default: str | None = None) -> None:
    defaults = AttackConfig()
    parser.add_argument("--attacks", default=default,
                        help="comma-separated attacks on the unlearned model, or all: "
                             + "; ".join(f"{k}: {v[1]}" for k, v in ATTACKS.items()))
    parser.add_argument("--relearn-steps", type=int, default=defaults.relearn_steps)
    parser.add_argument("--relearn-lr", type=float, default=defaults.relearn_lr)
    parser.add_argument("--samples", type=int, default=defaults.samples, help="answers sampled per forget question")


def tofu_flags(parser: argparse.ArgumentParser) -> None:
    recipe = TofuRecipe()
    parser.add_argument("--forget", default=recipe.forget, help="forget01 or forget05")
    parser.add_argument("--methods", default="grin,graddiff,npo",
                        help=f"comma-separated rows: a comparison method ({','.join(METHODS)}; with --loss), or a "
                             "loss name, shorthand for that loss on all weights (ga, graddiff, npo, simnpo, idk, dpo)")
    parser.add_argument("--target-model", default=None, help="a fine-tuned target model folder (skips its fine-tuning)")
    parser.add_argument("--retain-model", default=None, help="a retain model folder (skips its fine-tuning)")
    parser.add_argument("--cache-dir", default=str(DEFAULT_CACHE), help="where fine-tuned models are cached")
    parser.add_argument("--retain-authors", type=int, default=recipe.retain_authors,
                        help="retain authors (0..n-1) both models learn and model utility is measured on")
    parser.add_argument("--holdout-authors", type=int, default=recipe.holdout_authors,
                        help="authors no model sees, for membership inference")
    parser.add_argument("--tofu-epochs", type=int, default=recipe.epochs, help="fine-tuning epochs")
    parser.add_argument("--tofu-lr", type=float, default=recipe.lr, help="fine-tuning learning rate")
    parser.add_argument("--tofu-batch-size", type=int, default=recipe.batch_size)
    parser.add_argument("--tofu-max-length", type=int, default=recipe.max_length)
    parser.add_argument("--eval-items", type=int, default=recipe.eval_items,
                        help="real-authors and world-facts items evaluated (0: all)")


def sweep_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--methods", default="grin,random", help=f"comma-separated, from {','.join(METHODS)}")
    parser.add_argument("--seeds", type=int, nargs="+", default=None,
                        help="seeds of the noise and random masks (default: --seed)")
    parser.add_argument("--target", default=None, metavar="TARGET",
                        help="auto-p: the smallest p meeting TARGET (e.g. 'forget_keyword_accuracy<=0.25') with the "
                             "best retain metric")
    parser.add_argument("--forget-metric", default="forget_keyword_accuracy", help="the front's x (lower is better)")
    parser.add_argument("--retain-metric", default="retain_keyword_accuracy", help="the front's y (higher is better)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m grin_engine", description="GRIN: find and unlearn the weights "
                                     "that hold a forget set, and measure what it costs.")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="the whole pipeline: scores, selection, noise, unlearning, metrics",
                         description="Run GRIN end to end and write a report.")
    for group in (model_flags, data_flags, scoring_flags):
        group(run)
    unlearning_flags(run, until=STOP_ONCE_FORGOTTEN)  # a run stops once forgotten unless --until none
    attack_flags(run)
    run.add_argument("--no-mask", action="store_true", help="baseline: train all candidate weights, no noise")
    run.add_argument("--reference", default=None, help="a model never trained on the forget set (forget quality)")
    run.add_argument("--save-model", default=None, help="folder to save the unlearned model in (safetensors)")
    run.add_argument("--save-patch", default=None,
                     help="write what the run changed to this .safetensors file (for a later `attack`)")
    run.add_argument("--out", default="report.json", help="where to write the report JSON")

    score = sub.add_parser("score", help="influence scores only: what would be selected at each p",
                           description="Compute influence scores once and summarise the selection at each p.")
    for group in (model_flags, data_flags, scoring_flags):
        group(score)
    score.add_argument("--p", type=float, nargs="+", default=[DEFAULTS.p], help="one or more fractions in (0, 1]")
    score.add_argument("--out", default="selection.json", help="where to write the selection summaries")

    compare = sub.add_parser("compare", help="GRIN, GRUN and baselines on the same data, side by side",
                             description="Run several unlearning methods with the same data, steps and seed and "
                                         f"compare their forget and retain metrics. Methods: {METHOD_HELP}")
    for group in (model_flags, data_flags, scoring_flags, unlearning_flags, grun_flags, attack_flags):
        group(compare)
    compare.add_argument("--methods", default="grin,grun,full", help=f"comma-separated, from {','.join(METHODS)}")
    compare.add_argument("--save-grun", default=None, help="write the trained GRUN edits here (.safetensors)")
    compare.add_argument("--save-patch", default=None,
                         help="an existing folder: write each method's patch to <folder>/<method>.safetensors")
    compare.add_argument("--out", default="compare.json", help="where to write the comparison JSON")

    sweep = sub.add_parser("sweep", help="a grid of methods x p x sigma2 x lr x steps x seeds: the trade-off frontier",
                           description="Run a grid of unlearning runs on the same data, streaming each finished point "
                                       "to --out (JSON lines; a rerun skips the points already there), then write "
                                       "sweep.json (points, Pareto fronts, areas, auto-p) and sweep.csv next to it. "
                                       f"Methods: {METHOD_HELP}")
    for group in (model_flags, data_flags, scoring_flags, sweep_flags):
        group(sweep)
    unlearning_flags(sweep, grid=True)
    grun_flags(sweep, grid=True)
    sweep.add_argument("--out", default="sweep.jsonl",
                       help="the JSON-lines file (sweep.json and sweep.csv go next to it)")

    tofu = sub.add_parser("tofu", help="the TOFU benchmark: forget quality, model utility, privacy leakage",
                          description="Fine-tune a target model (forget + retain authors) and a retain model (retain "
                                      "authors only), both cached; unlearn the forget authors with each method; "
                                      "report forget quality, model utility and privleak as open-unlearning does.")
    model_flags(tofu, several_devices=False)
    tofu_flags(tofu)
    scoring_flags(tofu)
    unlearning_flags(tofu, max_new_tokens=TofuRecipe.max_new_tokens)
    grun_flags(tofu)
    grid = tofu.add_mutually_exclusive_group()
    grid.add_argument("--tune", action="store_true",
                      help="run each method's own 9-point grid and pick its setting by one rule (highest forget "
                           "quality with model utility >= 0.9 x the target's); --out is then a .jsonl file")
    grid.add_argument("--grid", default=None, metavar="KNOBS",
                      help="cross every method with these knob values, e.g. 'p=0.002,0.004 sigma2=1e-3 seed=0,1'; "
                           "--out is then a .jsonl file")
    tofu.add_argument("--report-only", action="store_true",
                      help="with --tune/--grid: write the report and table of the points --out already holds and "
                           "run none (a long tune's table while it runs, or after it stopped)")
    tofu.add_argument("--out", default="tofu.json",
                      help="where to write the report JSON (with --tune/--grid: JSON lines, one per point, resumable; "
                           "the report goes to the same name ending in .json)")

    attack = sub.add_parser("attack", help="attack a saved run: is the forgotten knowledge really gone?",
                            description="Attack the unlearned model(s) of a report written by run or compare with "
                                        "--save-patch, and write each attack's metrics and recovery.")
    attack.add_argument("report", help="a report.json (run) or compare.json (compare) written with --save-patch")
    attack.add_argument("--model", default=None, help="the base model (default: the one the report names)")
    attack.add_argument("--forget", default=None, help="the forget set (default: the one the report names)")
    attack.add_argument("--retain", default=None, help="the retain set (default: the one the report names)")
    attack.add_argument("--device", default="auto")
    attack.add_argument("--dtype", default="auto")
    attack_flags(attack, default="all")
    attack.add_argument("--out", default="attacks.json", help="where to write the attacks JSON")
    return parser
