"""The commands: python -m grin_engine {run,score,compare,sweep,tofu,attack} ... (docs/CLI.md).

Each command checks everything cheap first (the flags, the data files, the output paths), so a typo fails in a
second, not after loading a model; then it loads the model, composes the engine's functions, writes its outputs all
at once (outputs.Outputs) and prints its table (tables.py). A mistake prints one line to stderr and exits with
status 2; nothing is written.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from .. import data, memory, models
from ..attacks import AttackConfig, Unlearned, attack_unlearned, attacks_report, parse_attacks, recovery_table
from ..attacks import saved_unlearned
from ..benchmarks.tofu import TofuRecipe, parse_methods as parse_tofu_methods, run_tofu
from ..benchmarks.tofu_grid import grid_points, parse_grid, run_grid
from ..config import DataSpec, GrinConfig, ModelSpec
from ..errors import GrinError
from ..events import Progress
from ..method.grun import save_grun
from ..method.influence import compute_influence_scores
from ..method.patch import save_patch
from ..method.selection import select_summary
from ..runs.compare import compare
from ..runs.frontier import SETTING_KNOBS
from ..runs.methods import parse_methods
from ..runs.pipeline import retain_collapse, run
from ..runs.sweep import SweepGrid, output_paths, result_from_file, sweep, write_outputs
from ..targets import parse_target
from . import outputs, tables
from .parser import build_parser


def config_from(args, **overrides) -> GrinConfig:
    """The GrinConfig of the flags present in `args` (each flag's destination is a config field; a sweep axis gives
    its first value), with `overrides` on top; checked like any config."""
    values = {name: getattr(args, name) for name in GrinConfig.__dataclass_fields__ if hasattr(args, name)}
    values.update({k: v[0] for k, v in values.items() if k in SETTING_KNOBS and isinstance(v, list)})
    if str(values.get("until")).strip().lower() == "none":  # run's --until none: every step, no stop rule
        values["until"] = None
    if isinstance(values.get("grun_layers"), str):
        values["grun_layers"] = _layer_list(values["grun_layers"])
    return GrinConfig(**{**values, **overrides})


def _layer_list(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise GrinError(f"--grun-layers: give layer numbers separated by commas, e.g. 15,22,29; got {text!r}") from None


def progress_bars() -> Progress:
    """A Progress drawing one tqdm bar per stage (with the loss on training stages)."""
    from tqdm import tqdm

    bars: dict[str, tqdm] = {}
    units = {"unlearn": "step", "finetune": "step", "influence": "batch", "gradients": "batch", "nll": "batch"}

    def draw(stage, done, total, loss=None):
        bar = bars.get(stage)
        if bar is None or done < bar.n or bar.n >= bar.total:  # a new stage, or the same stage again (sweeps)
            unit = units.get(stage.split("/")[-1], "answer")
            bar = bars[stage] = tqdm(total=total, desc=stage, unit=unit, file=sys.stderr, leave=True)
        bar.update(done - bar.n)
        if loss is not None:
            bar.set_postfix(loss=f"{loss:.4f}")
        if done >= total:
            bar.close()
    return Progress(draw)


def _memory_map(text: str | None) -> dict | None:
    """'0=70GiB,cpu=200GiB' -> {0: '70GiB', 'cpu': '200GiB'} (accelerate's max_memory)."""
    if text is None:
        return None
    memory_map = {}
    for part in text.split(","):
        device, _, size = part.strip().partition("=")
        if not device or not size:
            raise GrinError(f"--max-memory: give device=size pairs such as 0=70GiB,cpu=200GiB; got {text!r}")
        memory_map[int(device) if device.isdigit() else device] = size
    return memory_map


def _model_spec(args, name: str | None = None) -> ModelSpec:
    return ModelSpec(name or args.model, args.device, args.dtype, getattr(args, "device_map", None),
                     _memory_map(getattr(args, "max_memory", None)))


def _load(args):
    """The data (checked first: cheap) and then the model: (base, forget, retain, seconds the model took)."""
    model_spec = _model_spec(args)
    data_spec = DataSpec(args.forget, args.retain, args.max_items)
    forget = data.load_items(data_spec.forget, data_spec.max_items)
    retain = data.load_items(data_spec.retain, data_spec.max_items)
    start = time.perf_counter()
    print(f"loading model {model_spec.name!r} ...", flush=True)
    base = models.load_model(model_spec)
    return base, forget, retain, time.perf_counter() - start


def _attack_config(args) -> tuple[AttackConfig | None, list[str]]:
    if not args.attacks:
        return None, []
    return AttackConfig(relearn_steps=args.relearn_steps, relearn_lr=args.relearn_lr,
                        samples=args.samples), parse_attacks(args.attacks)


def _run_attacks(base, unlearned, forget, retain, cfg, names, acfg) -> dict:
    """The report's attack sections: `attacks` (every attack's metrics, baselines, recovery and answers per method)
    and `attack_table` (one row per method and attack: forget keyword accuracy before / unlearned / attacked)."""
    start = time.perf_counter()
    results = attack_unlearned(base, unlearned, forget, retain, cfg, names, acfg, progress_bars())
    return {"attacks": attacks_report(results), "attack_table": recovery_table(results),
            "attack_settings": {**vars(acfg), "names": names, "seconds": time.perf_counter() - start}}


def command_run(args) -> None:
    cfg = config_from(args, use_mask=not args.no_mask)
    out = outputs.check_file(args.out, "--out")
    save_to = outputs.check_folder(args.save_model, "--save-model") if args.save_model is not None else None
    if args.reference is not None:
        models.check_source(ModelSpec(args.reference, args.device, args.dtype).name)  # before the slow loads
    acfg, attack_names = _attack_config(args)
    patch_to = outputs.check_file(args.save_patch, "--save-patch") if args.save_patch is not None else None
    base, forget, retain, load_s = _load(args)
    reference = models.load_model(_model_spec(args, args.reference)) if args.reference else None
    memory.start_measuring(base.model)  # the run's peak, from here (the loads are not in it)
    # in place: this process is the base's only user, so the run trains it and restores it (no model copy)
    result = run(base, forget, retain, cfg, progress_bars(), reference=reference, keep_model=save_to is not None,
                 in_place=True)
    result.timings["load_s"] = load_s
    report = result.to_report()
    report["memory"] = memory.memory_report(base.model)
    report["data"] = {"forget": args.forget, "retain": args.retain, "max_items": args.max_items}
    if patch_to is not None and result.patch is not None:
        report["patch_file"] = str(patch_to)
    if attack_names and not result.stopped:
        method = "grin" if cfg.use_mask else "full"
        report.update(_run_attacks(base, [Unlearned.of(method, result)], forget, retain, cfg, attack_names, acfg))
    staged = outputs.Outputs()  # every output appears at once, or none
    try:
        staged.text(out, json.dumps(report, indent=2))
        if save_to is not None:
            models.save_model_folder(result.unlearned_model, staged.folder(save_to))
        if "patch_file" in report:
            save_patch(result.patch, str(staged.file(patch_to)), base.name)
        staged.commit()
    finally:
        staged.discard()
    if save_to is not None:
        print(f"unlearned model written to {save_to} (safetensors)")
    if "patch_file" in report:
        print(f"patch written to {patch_to} (safetensors)")
    print(tables.format_summary(report))
    print(tables.format_memory(report["memory"]))
    if "attack_table" in report:
        print(tables.format_attacks(report["attack_table"]))
    warning = retain_collapse(report["metrics"])
    if warning:
        print(f"warning: {warning}", file=sys.stderr)
    print(f"report written to {out}")


def command_score(args) -> None:
    cfg = config_from(args, p=args.p[0])
    for p in args.p:  # validate every p before the slow part
        GrinConfig(p=p)
    out = outputs.check_file(args.out, "--out")
    base, forget, retain, load_s = _load(args)
    memory.start_measuring(base.model)
    # gradients change no weight, and nobody else uses this base: no copy
    influence = compute_influence_scores(base.model, base.tokenizer, forget, retain, cfg)
    summaries = []
    for p in args.p:
        start = time.perf_counter()
        summary = select_summary(influence.scores, influence.candidates, p)  # no masks: the peak stays at the scores
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
    print(tables.format_memory(usage))
    print(f"selection written to {out}")


def command_compare(args) -> None:
    methods = parse_methods(args.methods)
    cfg = config_from(args)
    out = outputs.check_file(args.out, "--out")
    if args.save_grun is not None and "grun" not in methods:
        raise GrinError("--save-grun needs grun among --methods")
    save_grun_to = outputs.check_file(args.save_grun, "--save-grun") if args.save_grun is not None else None
    if args.save_patch is not None and not Path(args.save_patch).is_dir():
        raise GrinError(f"--save-patch: folder {args.save_patch!r} does not exist")
    acfg, attack_names = _attack_config(args)
    base, forget, retain, load_s = _load(args)
    start = time.perf_counter()
    comparison = compare(base, forget, retain, cfg, methods, progress_bars(), in_place=True)
    comparison.timings.update(load_s=load_s, total_s=time.perf_counter() - start)
    report = comparison.to_report()
    report["data"] = {"forget": args.forget, "retain": args.retain, "max_items": args.max_items}
    finished = {name: r for name, r in comparison.results.items() if not r.stopped and r.patch is not None}
    if args.save_patch is not None:
        report["patch_files"] = {name: str(Path(args.save_patch) / f"{name}.safetensors") for name in finished}
    if attack_names and finished:
        unlearned = [Unlearned.of(name, r) for name, r in finished.items()]
        report.update(_run_attacks(base, unlearned, forget, retain, cfg, attack_names, acfg))
    grun = comparison.results.get("grun")
    staged = outputs.Outputs()
    try:
        staged.text(out, json.dumps(report, indent=2))
        if save_grun_to is not None and grun is not None and grun.patch is not None:
            save_grun(grun.patch, str(staged.file(save_grun_to)), base.name)
        for name, path in report.get("patch_files", {}).items():
            save_patch(finished[name].patch, str(staged.file(Path(path))), base.name)
        staged.commit()
    finally:
        staged.discard()
    if save_grun_to is not None:
        print(f"GRUN edits written to {save_grun_to} (safetensors)" if grun is not None and grun.patch is not None
              else "GRUN did not finish (stopped): no edits written")
    if args.save_patch is not None:
        print(f"patches written to {args.save_patch}/ (safetensors)")
    print(tables.format_comparison(report))
    if "attack_table" in report:
        print(tables.format_attacks(report["attack_table"]))
    print(f"comparison written to {out}")


def command_attack(args) -> None:
    """Attack the unlearned model(s) of a saved report (run or compare, written with --save-patch)."""
    path = Path(args.report)
    if not path.is_file():
        raise GrinError(f"report: file {args.report!r} not found")
    try:
        report = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise GrinError(f"report: {args.report} is not a JSON report ({exc})") from None
    acfg, names = _attack_config(args)
    out = outputs.check_file(args.out, "--out")
    saved = report.get("data") or {}
    if not isinstance(saved, dict) or not isinstance(report.get("config"), dict):
        raise GrinError(f"report: {args.report} is not a report written by run or compare")
    forget = data.load_items(args.forget or saved.get("forget") or "harry_potter", saved.get("max_items"))
    retain = data.load_items(args.retain or saved.get("retain") or "general_knowledge", saved.get("max_items"))
    unlearned = saved_unlearned(report, path.parent, len(forget), len(retain))
    cfg = GrinConfig.from_dict(report["config"])  # also a report written before `method` was called `loss`
    model_name = args.model or (report.get("model") or {}).get("name") or "default"
    print(f"loading model {model_name!r} ...", flush=True)
    base = models.load_model(ModelSpec(model_name, args.device, args.dtype))
    result = {"report": str(path), "model": base.facts(), "config": cfg.to_dict(),
              **_run_attacks(base, unlearned, forget, retain, cfg, names, acfg)}
    out.write_text(json.dumps(result, indent=2))
    print(tables.format_attacks(result["attack_table"]))
    print(f"attacks written to {out}")


def command_tofu(args) -> None:
    methods = parse_tofu_methods(args.methods)
    recipe = TofuRecipe(forget=args.forget, retain_authors=args.retain_authors, holdout_authors=args.holdout_authors,
                        epochs=args.tofu_epochs, lr=args.tofu_lr, batch_size=args.tofu_batch_size,
                        max_length=args.tofu_max_length, seed=args.seed, eval_items=args.eval_items or None,
                        label_layout=args.label_layout, max_new_tokens=args.max_new_tokens)
    cfg = config_from(args, max_length=recipe.max_length)
    out = outputs.check_file(args.out, "--out")
    for flag, folder in (("--target-model", args.target_model), ("--retain-model", args.retain_model)):
        if folder and not Path(folder).is_dir():
            raise GrinError(f"{flag}: folder {folder!r} not found")
    if args.tune or args.grid:
        if out.suffix != ".jsonl":
            raise GrinError(f"--out: with --tune or --grid, a JSON-lines file ending in .jsonl; got {str(out)!r}")
        if args.target_model or args.retain_model:
            raise GrinError("--tune/--grid fine-tune (or reuse from the cache) their own target and retain models; "
                            "leave out --target-model and --retain-model")
        grid_points(methods, parse_grid(args.grid) if args.grid else None)  # a bad grid fails before the model loads
        if args.report_only and not out.is_file():
            raise GrinError(f"--report-only: {str(out)!r} not found; it reports the points of an earlier --tune/--grid")
    elif args.report_only:
        raise GrinError("--report-only goes with --tune or --grid (it reports the points of their --out file)")
    start = time.perf_counter()
    print(f"loading model {args.model!r} ...", flush=True)
    base = models.load_model(_model_spec(args))

    def write(report):  # after every evaluated model, so a stopped run keeps the rows it finished
        report["timings"]["total_s"] = time.perf_counter() - start
        tmp = out.with_name(out.name + ".tmp")
        tmp.write_text(json.dumps(report, indent=2))
        tmp.replace(out)

    if args.tune or args.grid:
        lines_path, out = out, out.with_suffix(".json")
        report = run_grid(base, recipe, methods, cfg, lines_path, parse_grid(args.grid) if args.grid else None,
                          args.cache_dir, progress_bars(), on_point=write, run_points=not args.report_only)
        write(report)
        print(tables.format_tofu_grid(report))
        print(f"points in {lines_path}, report written to {out}")
        return
    report = run_tofu(base, recipe, methods, cfg, args.cache_dir, args.target_model, args.retain_model,
                      progress_bars(), on_report=write)
    print(tables.format_tofu(report))
    print(f"report written to {out}")


def command_sweep(args) -> None:
    grid = SweepGrid(methods=args.methods.split(","), p=args.p, sigma2=args.sigma2, lr=args.lr, steps=args.steps,
                     seeds=args.seeds if args.seeds is not None else [args.seed], grun_lr=args.grun_lr,
                     grun_steps=args.grun_steps)
    cfg = config_from(args, seed=grid.seeds[0])
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
        result = sweep(base, forget, retain, cfg, grid, out, on_point=on_point, progress=progress_bars(),
                       in_place=True)
    except KeyboardInterrupt:  # the finished points are in the file already; sweep.json from what is there
        print("interrupted: the finished points are kept; run the same command to go on", file=sys.stderr)
        result = result_from_file(out, cfg.to_dict(), base.facts(), grid.to_dict(), total)
    result.timings["load_s"] = load_s
    report = write_outputs(result, out, args.forget_metric, args.retain_metric, args.target)
    print(tables.format_frontier(report))
    print(f"points in {out}, report in {json_path}, table in {csv_path}")


COMMANDS = {"run": command_run, "score": command_score, "compare": command_compare, "sweep": command_sweep,
            "tofu": command_tofu, "attack": command_attack}


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    args = build_parser().parse_args(argv)
    try:
        COMMANDS[args.command](args)
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
