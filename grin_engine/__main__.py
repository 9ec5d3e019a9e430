"""Command line: python -m grin_engine {run,score,compare,sweep,tofu,attack} ...

    python -m grin_engine run --out report.json          # GRIN with the defaults on the built-in sets
    python -m grin_engine run --no-mask --out plain.json # the same unlearning on all weights (baseline)
    python -m grin_engine score --p 0.001 0.01 0.05      # influence only: what would be selected
    python -m grin_engine compare --methods grin,grun,full,random,forget-grad --out compare.json
    python -m grin_engine tofu --forget forget01 --methods grin,graddiff,npo --out tofu.json
    python -m grin_engine sweep --p 0.001 0.01 0.05 --methods grin,random --seeds 0 1 --target "forget_keyword_accuracy<=0.25"
    python -m grin_engine run --attacks relearn,quant4,quant8,prefix,paraphrase,sample --out report.json
    python -m grin_engine run --save-patch run.safetensors --out report.json && python -m grin_engine attack report.json

A mistake in the arguments prints one line to stderr and exits with status 2; nothing is written.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from . import outputs
from .config import DataSpec, GrinConfig, GrinError, ModelSpec
from .losses import describe_losses

DEFAULTS = GrinConfig()


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="default",
                        help="'default' (SmolLM2-135M-Instruct, packaged), a Hub id or a local folder")
    parser.add_argument("--forget", default="harry_potter", help="built-in set name, file (JSONL/JSON/CSV) or tofu:<config>")
    parser.add_argument("--retain", default="general_knowledge", help="built-in set name, file or tofu:<config>")
    parser.add_argument("--max-items", type=int, default=None, help="use at most this many items of each set")
    parser.add_argument("--device", default="auto", help="auto (cuda, mps, cpu), cpu, cuda, cuda:N, mps")
    parser.add_argument("--dtype", default="auto", help="auto (bf16 on GPU, fp32 on CPU), float32, bfloat16, float16")
    parser.add_argument("--device-map", default=None,
                        help="spread the model over several GPUs with accelerate: auto, balanced, sequential")
    parser.add_argument("--max-memory", default=None,
                        help="with --device-map: memory per device, e.g. 0=70GiB,1=70GiB,cpu=200GiB")
    parser.add_argument("--batch-size", type=int, default=DEFAULTS.batch_size)
    parser.add_argument("--eps", type=float, default=DEFAULTS.eps, help="eps in |G_f| / (|G_r| + eps)")
    parser.add_argument("--include-embeddings", action="store_true", help="let embeddings be selected too")
    parser.add_argument("--seed", type=int, default=DEFAULTS.seed)
    parser.add_argument("--grad-mean", default=DEFAULTS.grad_mean, choices=("token", "item"),
                        help="influence gradient: token-mean NLL over the set (default) or mean of per-item means")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m grin_engine", description="GRIN: find and unlearn the weights "
                                     "that hold a forget set, and measure what it costs.")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="the whole pipeline: scores, selection, noise, unlearning, metrics",
                         description="Run GRIN end to end and write a report.")
    _add_common(run)
    _add_unlearning(run)
    run.add_argument("--no-mask", action="store_true", help="baseline: train all candidate weights, no noise")
    run.add_argument("--reference", default=None, help="a model never trained on the forget set (forget quality)")
    run.add_argument("--save-model", default=None, help="folder to save the unlearned model in (safetensors)")
    run.add_argument("--save-patch", default=None,
                     help="write what the run changed to this .safetensors file (for a later `attack`)")
    _add_attacks(run)
    run.add_argument("--out", default="report.json", help="where to write the report JSON")

    score = sub.add_parser("score", help="influence scores only: what would be selected at each p",
                           description="Compute influence scores once and summarise the selection at each p.")
    _add_common(score)
    score.add_argument("--p", type=float, nargs="+", default=[DEFAULTS.p], help="one or more fractions in (0, 1]")
    score.add_argument("--out", default="selection.json", help="where to write the selection summaries")

    from .compare import METHODS

    compare = sub.add_parser("compare", help="GRIN, GRUN and baselines on the same data, side by side",
                             description="Run several unlearning methods with the same data, steps and seed and "
                                         "compare their forget and retain metrics. Methods: "
                                         + "; ".join(f"{k}: {v}" for k, v in METHODS.items()))
    _add_common(compare)
    _add_unlearning(compare)
    compare.add_argument("--methods", default="grin,grun,full", help=f"comma-separated, from {','.join(METHODS)}")
    compare.add_argument("--grun-method", default=DEFAULTS.grun_method,
                         help="GRUN's unlearning loss (default idk: steer forget questions to a refusal)")
    compare.add_argument("--grun-layers", default=None,
                         help="GRUN: comma-separated layer numbers (default: three spread over the upper half)")
    compare.add_argument("--grun-steps", type=int, default=DEFAULTS.grun_steps,
                         help="GRUN's training steps (cheaper than GRIN's: 40 cost about GRIN's 20)")
    compare.add_argument("--grun-rank", type=int, default=DEFAULTS.grun_rank)
    compare.add_argument("--grun-gate", default=DEFAULTS.grun_gate, help="GRUN gate: linear or mlp")
    compare.add_argument("--grun-gate-weight", type=float, default=DEFAULTS.grun_gate_weight)
    compare.add_argument("--grun-lr", type=float, default=DEFAULTS.grun_lr)
    compare.add_argument("--save-grun", default=None, help="write the trained GRUN edits here (.safetensors)")
    compare.add_argument("--save-patch", default=None,
                         help="an existing folder: write each method's patch to <folder>/<method>.safetensors")
    _add_attacks(compare)
    compare.add_argument("--out", default="compare.json", help="where to write the comparison JSON")
    attack = sub.add_parser("attack", help="attack a saved run: is the forgotten knowledge really gone?",
                            description="Attack the unlearned model(s) of a report written by run or compare with "
                                        "--save-patch, and write each attack's metrics and recovery.")
    attack.add_argument("report", help="a report.json (run) or compare.json (compare) written with --save-patch")
    attack.add_argument("--model", default=None, help="the base model (default: the one the report names)")
    attack.add_argument("--forget", default=None, help="the forget set (default: the one the report names)")
    attack.add_argument("--retain", default=None, help="the retain set (default: the one the report names)")
    attack.add_argument("--device", default="auto")
    attack.add_argument("--dtype", default="auto")
    _add_attacks(attack, default="all")
    attack.add_argument("--out", default="attacks.json", help="where to write the attacks JSON")
    _add_sweep(sub)
    _add_tofu(sub)
    return parser


def _add_attacks(parser: argparse.ArgumentParser, default: str | None = None) -> None:
    from .attacks import ATTACKS, AttackConfig

    defaults = AttackConfig()
    parser.add_argument("--attacks", default=default,
                        help="comma-separated attacks on the unlearned model, or all: "
                             + "; ".join(f"{k}: {v[1]}" for k, v in ATTACKS.items()))
    parser.add_argument("--relearn-steps", type=int, default=defaults.relearn_steps)
    parser.add_argument("--relearn-lr", type=float, default=defaults.relearn_lr)
    parser.add_argument("--samples", type=int, default=defaults.samples, help="answers sampled per forget question")


def _attack_config(args):
    from .attacks import AttackConfig, parse_attacks

    if not args.attacks:
        return None, []
    return AttackConfig(relearn_steps=args.relearn_steps, relearn_lr=args.relearn_lr,
                        samples=args.samples), parse_attacks(args.attacks)


def _add_tofu(sub) -> None:
    from .tofu import DEFAULT_CACHE, TofuRecipe

    recipe = TofuRecipe()
    tofu = sub.add_parser("tofu", help="the TOFU benchmark: forget quality, model utility, privacy leakage",
                          description="Fine-tune a target (forget + retain authors) and a retain model (retain "
                                      "authors only), both cached; unlearn the forget authors with each method; "
                                      "report forget quality, model utility and privleak as open-unlearning does.")
    tofu.add_argument("--model", default="default", help="'default' (SmolLM2-135M-Instruct), a Hub id or a folder")
    tofu.add_argument("--forget", default=recipe.forget, help="forget01 or forget05")
    tofu.add_argument("--methods", default="grin,graddiff,npo",
                      help="comma-separated: grin (GRIN's mask, --method's loss), grun, or a loss name (that loss on "
                           "all weights: ga, graddiff, npo, simnpo, idk, dpo)")
    tofu.add_argument("--device", default="auto")
    tofu.add_argument("--dtype", default="auto")
    tofu.add_argument("--batch-size", type=int, default=DEFAULTS.batch_size, help="unlearning batch size")
    tofu.add_argument("--eps", type=float, default=DEFAULTS.eps)
    tofu.add_argument("--include-embeddings", action="store_true")
    tofu.add_argument("--seed", type=int, default=DEFAULTS.seed)
    tofu.add_argument("--grad-mean", default=DEFAULTS.grad_mean, choices=("token", "item"))
    _add_unlearning(tofu, max_new_tokens=200)
    tofu.add_argument("--target", default=None, help="a fine-tuned target model folder (skips its fine-tuning)")
    tofu.add_argument("--retain-model", default=None, help="a retain model folder (skips its fine-tuning)")
    tofu.add_argument("--cache-dir", default=str(DEFAULT_CACHE), help="where fine-tuned models are cached")
    tofu.add_argument("--retain-authors", type=int, default=recipe.retain_authors,
                      help="retain authors (0..n-1) both models learn and model utility is measured on")
    tofu.add_argument("--holdout-authors", type=int, default=recipe.holdout_authors,
                      help="authors no model sees, for membership inference")
    tofu.add_argument("--tofu-epochs", type=int, default=recipe.epochs, help="fine-tuning epochs")
    tofu.add_argument("--tofu-lr", type=float, default=recipe.lr, help="fine-tuning learning rate")
    tofu.add_argument("--tofu-batch-size", type=int, default=recipe.batch_size)
    tofu.add_argument("--tofu-max-length", type=int, default=recipe.max_length)
    tofu.add_argument("--eval-items", type=int, default=recipe.eval_items,
                      help="real-authors and world-facts items evaluated (0: all)")
    tofu.add_argument("--out", default="tofu.json", help="where to write the report JSON")


def _add_sweep(sub) -> None:
    from .compare import METHODS

    sweep = sub.add_parser("sweep", help="a grid of methods x p x sigma2 x lr x steps x seeds: the trade-off frontier",
                           description="Run a grid of unlearning runs on the same data, streaming each finished point "
                                       "to --out (JSON lines; a rerun skips the points already there), then write "
                                       "sweep.json (points, Pareto fronts, areas, auto-p) and sweep.csv next to it.")
    _add_common(sweep)
    sweep.add_argument("--methods", default="grin,random", help=f"comma-separated, from {','.join(METHODS)}")
    sweep.add_argument("--method", default=DEFAULTS.method, help="the unlearning loss of every weight method")
    sweep.add_argument("--p", type=float, nargs="+", default=[DEFAULTS.p], help="fractions in (0, 1]")
    sweep.add_argument("--sigma2", type=float, nargs="+", default=[DEFAULTS.sigma2])
    sweep.add_argument("--lr", type=float, nargs="+", default=[DEFAULTS.lr])
    sweep.add_argument("--steps", type=int, nargs="+", default=[DEFAULTS.steps])
    sweep.add_argument("--seeds", type=int, nargs="+", default=None, help="seeds of the noise and random masks "
                       "(default: --seed)")
    sweep.add_argument("--grun-lr", type=float, nargs="+", default=[DEFAULTS.grun_lr])
    sweep.add_argument("--grun-steps", type=int, nargs="+", default=[DEFAULTS.grun_steps])
    sweep.add_argument("--grun-method", default=DEFAULTS.grun_method, help="GRUN's unlearning loss")
    sweep.add_argument("--alpha", type=float, default=DEFAULTS.alpha, help="weight of the retain loss")
    sweep.add_argument("--beta", type=float, default=None, help="npo/dpo/simnpo beta (default: the method's)")
    sweep.add_argument("--max-new-tokens", type=int, default=DEFAULTS.max_new_tokens)
    _add_until(sweep)
    sweep.add_argument("--target", default=None, metavar="TARGET",
                       help="auto-p: the smallest p meeting TARGET (e.g. 'forget_keyword_accuracy<=0.25') with the "
                            "best retain metric")
    sweep.add_argument("--forget-metric", default="forget_keyword_accuracy", help="the front's x (lower is better)")
    sweep.add_argument("--retain-metric", default="retain_keyword_accuracy", help="the front's y (higher is better)")
    sweep.add_argument("--out", default="sweep.jsonl", help="the JSON-lines file (sweep.json and sweep.csv go next "
                                                           "to it)")


def _add_unlearning(parser: argparse.ArgumentParser, max_new_tokens: int = DEFAULTS.max_new_tokens) -> None:
    methods = "; ".join(f"{k}: {v}" for k, v in describe_losses().items())
    parser.add_argument("--method", default=DEFAULTS.method, help=f"unlearning loss. {methods}")
    parser.add_argument("--p", type=float, default=DEFAULTS.p, help="fraction of candidate weights to select, in (0, 1]")
    parser.add_argument("--sigma2", type=float, default=DEFAULTS.sigma2, help="variance of the noise on selected weights")
    parser.add_argument("--steps", type=int, default=DEFAULTS.steps)
    parser.add_argument("--lr", type=float, default=DEFAULTS.lr)
    parser.add_argument("--alpha", type=float, default=DEFAULTS.alpha, help="weight of the retain loss")
    parser.add_argument("--beta", type=float, default=None, help="npo/dpo/simnpo beta (default: the method's)")
    parser.add_argument("--gamma", type=float, default=None,
                        help="weight of the forget term (default: the method's; 1, simnpo 0.125)")
    parser.add_argument("--max-new-tokens", type=int, default=max_new_tokens)
    parser.add_argument("--label-layout", default=DEFAULTS.label_layout, choices=("answer_eos", "chat_turn"),
                        help="labelled tokens: answer + EOS (ours) or the whole assistant turn (open-unlearning's)")
    parser.add_argument("--ref-before-noise", action="store_true",
                        help="npo/dpo: pi_ref is the model before GRIN's noise (open-unlearning's), not after")
    _add_until(parser)


def _add_until(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--until", default=None, metavar="TARGET",
                        help="stop unlearning once the forget set meets TARGET, e.g. 'forget_keyword_accuracy<=0.25' "
                             "(checked every --until-every steps; --steps is then the most)")
    parser.add_argument("--until-every", type=int, default=DEFAULTS.until_every,
                        help="steps between two until-checks")


def _unlearning_config(args, **extra) -> GrinConfig:
    return GrinConfig(method=args.method, p=args.p, sigma2=args.sigma2, lr=args.lr, steps=args.steps,
                      batch_size=args.batch_size, alpha=args.alpha, beta=args.beta, eps=args.eps,
                      include_embeddings=args.include_embeddings, seed=args.seed, max_new_tokens=args.max_new_tokens,
                      gamma=args.gamma, label_layout=args.label_layout, grad_mean=args.grad_mean,
                      ref_before_noise=args.ref_before_noise, until=args.until,
                      until_every=args.until_every, **extra)


def _progress_bars():
    """A progress callback drawing one tqdm bar per stage (with the loss on training stages)."""
    from tqdm import tqdm

    bars: dict[str, tqdm] = {}

    def progress(stage, done, total, loss=None):
        bar = bars.get(stage)
        if bar is None or done < bar.n or bar.n >= bar.total:  # a new stage, or the same stage again (sweeps)
            unit = {"unlearn": "step", "finetune": "step", "influence": "batch", "gradients": "batch", "nll": "batch"}.get(stage.split("/")[-1], "answer")
            bar = bars[stage] = tqdm(total=total, desc=stage, unit=unit, file=sys.stderr, leave=True)
        bar.update(done - bar.n)
        if loss is not None:
            bar.set_postfix(loss=f"{loss:.4f}")
        if done >= total:
            bar.close()
    return progress


def _load(args):
    """Validate everything cheap first, so a typo fails in a second, not after loading a model."""
    from . import data, models

    model_spec = ModelSpec(args.model, args.device, args.dtype, args.device_map, _memory_map(args.max_memory))
    data_spec = DataSpec(args.forget, args.retain, args.max_items)
    forget = data.load_items(data_spec.forget, data_spec.max_items)
    retain = data.load_items(data_spec.retain, data_spec.max_items)
    start = time.perf_counter()
    print(f"loading model {model_spec.name!r} ...", flush=True)
    base = models.load_model(model_spec)
    return base, forget, retain, time.perf_counter() - start


def _memory_map(text: str | None) -> dict | None:
    """'0=70GiB,cpu=200GiB' -> {0: '70GiB', 'cpu': '200GiB'} (accelerate's max_memory)."""
    if text is None:
        return None
    memory = {}
    for part in text.split(","):
        device, _, size = part.strip().partition("=")
        if not device or not size:
            raise GrinError(f"--max-memory: give device=size pairs such as 0=70GiB,cpu=200GiB; got {text!r}")
        memory[int(device) if device.isdigit() else device] = size
    return memory


def _check_out(path: str, flag: str = "--out") -> Path:
    return outputs.check_file(path, flag)


def command_run(args) -> None:
    from . import memory, pipeline
    from .models import check_source, load_model, save_model_folder

    cfg = _unlearning_config(args, use_mask=not args.no_mask)
    out = _check_out(args.out)
    save_to = outputs.check_folder(args.save_model, "--save-model") if args.save_model is not None else None
    if args.reference is not None:
        check_source(ModelSpec(args.reference, args.device, args.dtype).name)  # before the slow loads
    acfg, attack_names = _attack_config(args)
    patch_to = _check_out(args.save_patch, "--save-patch") if args.save_patch is not None else None
    base, forget, retain, load_s = _load(args)
    reference = (load_model(ModelSpec(args.reference, args.device, args.dtype, args.device_map,
                                      _memory_map(args.max_memory))) if args.reference else None)
    memory.start_measuring(base.model)  # the run's peak, from here (the loads are not in it)
    # in place: this process is the base's only user, so the run trains it and restores it (no model copy)
    result = pipeline.run(base, forget, retain, cfg, on_progress=_progress_bars(), reference=reference,
                          keep_model=save_to is not None, in_place=True)
    result.timings["load_s"] = load_s
    report = result.to_report()
    report["memory"] = memory.memory_report(base.model)
    report["data"] = {"forget": args.forget, "retain": args.retain, "max_items": args.max_items}
    if patch_to is not None and result.patch is not None:
        report["patch_file"] = str(patch_to)
    if attack_names and not result.stopped:
        from .attacks import Target

        method = "grin" if cfg.use_mask else "full"
        report.update(_run_attacks(base, [Target.of(method, result)], forget, retain, cfg, attack_names, acfg))
    staged = outputs.Outputs()  # every output appears at once, or none
    try:
        staged.text(out, json.dumps(report, indent=2))
        if save_to is not None:
            save_model_folder(result.unlearned_model, staged.folder(save_to))
        if "patch_file" in report:
            from .patch import save_patch

            save_patch(result.patch, str(staged.file(patch_to)), base.name)
        staged.commit()
    finally:
        staged.discard()
    if save_to is not None:
        print(f"unlearned model written to {save_to} (safetensors)")
    if "patch_file" in report:
        print(f"patch written to {patch_to} (safetensors)")
    print(format_summary(report))
    print(memory.format_memory(report["memory"]))
    if "attack_table" in report:
        print(format_attacks(report["attack_table"]))
    warning = pipeline.retain_collapse(report["metrics"])
    if warning:
        print(f"warning: {warning}", file=sys.stderr)
    print(f"report written to {out}")


def _run_attacks(base, targets, forget, retain, cfg, names, acfg) -> dict:
    """The report's attack sections: `attacks` (every attack's metrics, baselines, recovery and answers per method)
    and `attack_table` (one row per method and attack: forget keyword accuracy before / unlearned / attacked)."""
    from .attacks import attack_targets, attacks_report, recovery_table

    start = time.perf_counter()
    results = attack_targets(base, targets, forget, retain, cfg, names, acfg, on_progress=_progress_bars())
    return {"attacks": attacks_report(results), "attack_table": recovery_table(results),
            "attack_settings": {**vars(acfg), "names": names, "seconds": time.perf_counter() - start}}


def format_attacks(rows: list[dict]) -> str:
    """The attacks for the terminal: forget keyword accuracy before / unlearned / attacked, and the recovery."""
    fmt = lambda v: f"{v:>10.3f}" if v is not None else f"{'-':>10}"  # noqa: E731
    lines = [f"{'method':<8}{'attack':<12}{'items':<10}{'before':>10}{'unlearned':>10}{'attacked':>10}"
             f"{'recovery':>10}{'retain':>10}   (keyword accuracy)"]
    for r in rows:
        if r["skipped"]:
            lines.append(f"{r['method']:<8}{r['attack']:<12}skipped: {r['skipped']}")
            continue
        lines.append(f"{r['method']:<8}{r['attack']:<12}{r['group']:<10}{fmt(r['before'])}{fmt(r['unlearned'])}"
                     f"{fmt(r['attacked'])}{fmt(r['recovery'])}{fmt(r['retain_attacked'])}")
    return "\n".join(lines)


def format_summary(report: dict) -> str:
    """A short before/after table for the terminal."""
    sel = report["selection"]
    lines = [f"selected {sel['selected']:,} of {sel['candidates']:,} candidate weights ({100 * sel['fraction']:.3f}%);"
             f" attention {sel['by_kind']['attention']['selected']:,}, ffn {sel['by_kind']['ffn']['selected']:,}",
             f"{'metric':<18}{'forget before':>15}{'forget after':>14}{'retain before':>15}{'retain after':>14}"]
    m = report["metrics"]
    for name in m["before"]["forget"]:
        row = [m[when][split].get(name) for split in ("forget", "retain") for when in ("before", "after")]
        lines.append(f"{name:<18}" + "".join(f"{v:>15.3f}" if v is not None else f"{'-':>15}" for v in row))
    t = report["timings"]
    if report.get("until"):
        u = report["until"]
        lines.append(f"until {u['target']}: " + (f"met after step {u['stopped_at']}" if u["stopped_at"] is not None
                                                  else "not met; all steps ran"))
    lines.append("time: " + ", ".join(f"{k[:-2]} {v:.1f}s" for k, v in t.items() if k.endswith("_s")))
    return "\n".join(lines)


def command_score(args) -> None:
    from . import memory, pipeline

    cfg = GrinConfig(p=args.p[0], batch_size=args.batch_size, eps=args.eps, include_embeddings=args.include_embeddings,
                     seed=args.seed, grad_mean=args.grad_mean)
    for p in args.p:  # validate every p before the slow part
        GrinConfig(p=p)
    out = _check_out(args.out)
    base, forget, retain, load_s = _load(args)
    memory.start_measuring(base.model)
    # gradients change no weight, and nobody else uses this base: no copy
    influence = pipeline.compute_influence_scores(base.model, base.tokenizer, forget, retain, cfg)
    summaries = []
    for p in args.p:
        start = time.perf_counter()
        summary = pipeline.select_summary(influence, p)  # no masks: the peak stays at the scores
        summary["select_s"] = time.perf_counter() - start
        summaries.append(summary)
        print(f"p={p:g}: selected {summary['selected']:,} of {summary['candidates']:,} "
              f"(attention {summary['by_kind']['attention']['selected']:,}, ffn {summary['by_kind']['ffn']['selected']:,})")
    staged = outputs.Outputs()
    try:
        usage = memory.memory_report(base.model)
        staged.text(out, json.dumps({"model": base.facts(), "timings": {"load_s": load_s,
                                                                       "scores_s": influence.seconds},
                                     "memory": usage, "selections": summaries}, indent=2))
        staged.commit()
    finally:
        staged.discard()
    print(memory.format_memory(usage))
    print(f"selection written to {out}")


def _layer_list(text: str | None) -> list[int] | None:
    if text is None:
        return None
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise GrinError(f"--grun-layers: give layer numbers separated by commas, e.g. 15,22,29; got {text!r}") from None


def command_compare(args) -> None:
    from .compare import compare, parse_methods
    from .grun import save_grun

    methods = parse_methods(args.methods)
    cfg = _unlearning_config(args, grun_method=args.grun_method, grun_layers=_layer_list(args.grun_layers),
                             grun_steps=args.grun_steps, grun_rank=args.grun_rank,
                             grun_gate=args.grun_gate, grun_gate_weight=args.grun_gate_weight, grun_lr=args.grun_lr)
    out = _check_out(args.out)
    if args.save_grun is not None and "grun" not in methods:
        raise GrinError("--save-grun needs grun among --methods")
    save_grun_to = _check_out(args.save_grun, "--save-grun") if args.save_grun is not None else None
    if args.save_patch is not None and not Path(args.save_patch).is_dir():
        raise GrinError(f"--save-patch: folder {args.save_patch!r} does not exist")
    acfg, attack_names = _attack_config(args)
    base, forget, retain, load_s = _load(args)
    start = time.perf_counter()
    comparison = compare(base, forget, retain, cfg, methods, on_progress=_progress_bars(), in_place=True)
    comparison.timings.update(load_s=load_s, total_s=time.perf_counter() - start)
    report = comparison.to_report()
    report["data"] = {"forget": args.forget, "retain": args.retain, "max_items": args.max_items}
    finished = {name: r for name, r in comparison.results.items() if not r.stopped and r.patch is not None}
    if args.save_patch is not None:
        report["patch_files"] = {name: str(Path(args.save_patch) / f"{name}.safetensors") for name in finished}
    if attack_names and finished:
        from .attacks import Target

        targets = [Target.of(name, r) for name, r in finished.items()]
        report.update(_run_attacks(base, targets, forget, retain, cfg, attack_names, acfg))
    grun = comparison.results.get("grun")
    staged = outputs.Outputs()
    try:
        staged.text(out, json.dumps(report, indent=2))
        if save_grun_to is not None and grun is not None and grun.patch is not None:
            save_grun(grun.patch, str(staged.file(save_grun_to)), base.name)
        if args.save_patch is not None:
            from .patch import save_patch

            for name, path in report["patch_files"].items():
                save_patch(finished[name].patch, str(staged.file(Path(path))), base.name)
        staged.commit()
    finally:
        staged.discard()
    if save_grun_to is not None:
        print(f"GRUN edits written to {save_grun_to} (safetensors)" if grun is not None and grun.patch is not None
              else "GRUN did not finish (stopped): no edits written")
    if args.save_patch is not None:
        print(f"patches written to {args.save_patch}/ (safetensors)")
    print(format_comparison(report))
    if "attack_table" in report:
        print(format_attacks(report["attack_table"]))
    print(f"comparison written to {out}")


def command_attack(args) -> None:
    """Attack the unlearned model(s) of a saved report (run or compare, written with --save-patch)."""
    from . import data, models
    from .attacks import saved_targets

    path = Path(args.report)
    if not path.is_file():
        raise GrinError(f"report: file {args.report!r} not found")
    try:
        report = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise GrinError(f"report: {args.report} is not a JSON report ({exc})") from None
    acfg, names = _attack_config(args)
    out = _check_out(args.out)
    saved = report.get("data") or {}
    if not isinstance(saved, dict) or not isinstance(report.get("config"), dict):
        raise GrinError(f"report: {args.report} is not a report written by run or compare")
    forget = data.load_items(args.forget or saved.get("forget") or "harry_potter", saved.get("max_items"))
    retain = data.load_items(args.retain or saved.get("retain") or "general_knowledge", saved.get("max_items"))
    targets = saved_targets(report, path.parent, len(forget), len(retain))
    cfg = GrinConfig(**{k: v for k, v in report["config"].items() if k in GrinConfig.__dataclass_fields__})
    model_name = args.model or (report.get("model") or {}).get("name") or "default"
    print(f"loading model {model_name!r} ...", flush=True)
    base = models.load_model(ModelSpec(model_name, args.device, args.dtype))
    result = {"report": str(path), "model": base.facts(), "config": cfg.to_dict(),
              **_run_attacks(base, targets, forget, retain, cfg, names, acfg)}
    out.write_text(json.dumps(result, indent=2))
    print(format_attacks(result["attack_table"]))
    print(f"attacks written to {out}")


def format_comparison(report: dict) -> str:
    """The comparison table for the terminal: keyword accuracy and ROUGE-L on both splits, gates, time."""
    lines = [f"{'method':<14}{'forget KA':>10}{'retain KA':>10}{'forget RL':>10}{'retain RL':>10}"
             f"{'gate f/r':>12}{'seconds':>9}"]
    fmt = lambda v: f"{v:>10.3f}" if v is not None else f"{'-':>10}"  # noqa: E731
    rows = report["table"]
    if rows:
        r = rows[0]
        lines.append(f"{'(before)':<14}{fmt(r['forget_keyword_accuracy_before'])}{fmt(r['retain_keyword_accuracy_before'])}"
                     f"{fmt(r['forget_rougeL_recall_before'])}{fmt(r['retain_rougeL_recall_before'])}")
    for r in rows:
        gates = (f"{r['forget_gate']:.2f}/{r['retain_gate']:.2f}" if r["forget_gate"] is not None else "-")
        lines.append(f"{r['method']:<14}{fmt(r['forget_keyword_accuracy'])}{fmt(r['retain_keyword_accuracy'])}"
                     f"{fmt(r['forget_rougeL_recall'])}{fmt(r['retain_rougeL_recall'])}{gates:>12}{r['seconds']:>9.0f}")
    if report["overlap"]:
        lines.append("GRIN mask overlap (Jaccard): " + ", ".join(f"{k} {v:.3f}" for k, v in report["overlap"].items()))
    if report["stopped"]:
        lines.append("(stopped early: the methods above finished)")
    return "\n".join(lines)


def command_tofu(args) -> None:
    from . import models
    from .tofu import TofuRecipe, format_table, parse_methods, run_tofu

    methods = parse_methods(args.methods)
    recipe = TofuRecipe(forget=args.forget, retain_authors=args.retain_authors, holdout_authors=args.holdout_authors,
                        epochs=args.tofu_epochs, lr=args.tofu_lr, batch_size=args.tofu_batch_size,
                        max_length=args.tofu_max_length, seed=args.seed, eval_items=args.eval_items or None,
                        label_layout=args.label_layout)
    cfg = _unlearning_config(args, max_length=recipe.max_length)
    out = _check_out(args.out)
    for flag, folder in (("--target", args.target), ("--retain-model", args.retain_model)):
        if folder and not Path(folder).is_dir():
            raise GrinError(f"{flag}: folder {folder!r} not found")
    model_spec = ModelSpec(args.model, args.device, args.dtype)
    start = time.perf_counter()
    print(f"loading model {model_spec.name!r} ...", flush=True)
    base = models.load_model(model_spec)
    def write(report):  # after every evaluated model, so a stopped run keeps the rows it finished
        report["timings"]["total_s"] = time.perf_counter() - start
        tmp = out.with_name(out.name + ".tmp")
        tmp.write_text(json.dumps(report, indent=2))
        tmp.replace(out)

    report = run_tofu(base, recipe, methods, cfg, args.cache_dir, args.target, args.retain_model,
                      on_progress=_progress_bars(), on_report=write)
    print(format_table(report))
    print(f"report written to {out}")


def command_sweep(args) -> None:
    from .sweep import SweepGrid, format_frontier, output_paths, result_from_file, sweep, write_outputs
    from .until import parse_target

    grid = SweepGrid(methods=args.methods.split(","), p=args.p, sigma2=args.sigma2, lr=args.lr, steps=args.steps,
                     seeds=args.seeds if args.seeds is not None else [args.seed], grun_lr=args.grun_lr,
                     grun_steps=args.grun_steps)
    cfg = GrinConfig(method=args.method, batch_size=args.batch_size, alpha=args.alpha, beta=args.beta, eps=args.eps,
                     include_embeddings=args.include_embeddings, seed=grid.seeds[0],
                     max_new_tokens=args.max_new_tokens, grun_method=args.grun_method, until=args.until,
                     until_every=args.until_every, grad_mean=args.grad_mean)
    for column in (args.forget_metric, args.retain_metric):
        parse_target(f"{column}<=0")  # the same names as targets: a typo fails here, before the model loads
    if args.target:
        parse_target(args.target)
    out, json_path, csv_path = output_paths(args.out)
    base, forget, retain, load_s = _load(args)
    total = len(grid.points())

    def on_point(record, done, total):
        print(f"[{done}/{total}] {record['key']}: {args.forget_metric} {record.get(args.forget_metric)}, "
              f"{args.retain_metric} {record.get(args.retain_metric)} ({record['seconds']:.0f} s)", flush=True)

    print(f"sweep: {total} points -> {out}", flush=True)
    try:
        result = sweep(base, forget, retain, cfg, grid, out, on_point=on_point, on_progress=_progress_bars(),
                       in_place=True)
    except KeyboardInterrupt:  # the finished points are in the file already; sweep.json from what is there
        print("interrupted: the finished points are kept; run the same command to go on", file=sys.stderr)
        result = result_from_file(out, cfg.to_dict(), base.facts(), grid.to_dict(), total)
    result.timings["load_s"] = load_s
    report = write_outputs(result, out, args.forget_metric, args.retain_metric, args.target)
    print(format_frontier(report))
    print(f"points in {out}, report in {json_path}, table in {csv_path}")


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    args = build_parser().parse_args(argv)
    try:
        {"run": command_run, "score": command_score, "compare": command_compare,
         "sweep": command_sweep, "tofu": command_tofu, "attack": command_attack}[args.command](args)
    except GrinError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted (fine-tuned TOFU models that were complete stay cached)", file=sys.stderr)
        return 130
    except Exception as exc:  # a bug or the machine (out of memory ...): one line, the traceback only on request
        if os.environ.get("GRIN_DEBUG"):
            raise
        print(f"error: unexpected {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''} "
              f"(set GRIN_DEBUG=1 to see the traceback)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
