"""Is it really gone? Attacks on an unlearned model (DESIGN.md §8), one module per family:

    relearn       fine-tune on half A of the forget set, test half B
    quantisation  round the weights to 8 or 4 bits (ours and GGUF's formats)
    prompting     a forced answer start, the questions reworded, a related fact first
    sampling      n sampled answers instead of the greedy one

Every attack takes an unlearned model (the base plus a run's patch, always on a private copy: the base and the run
stay as they were) and measures the forget metrics again, next to the same items' values before and after
unlearning, with recovery = (attacked - unlearned) / (before - unlearned) per metric (base.recovery). `ATTACKS`
gathers each family's entries: name -> (attack(ctx) -> AttackResult, one line for --help and the app).
"""

from __future__ import annotations

import time
from pathlib import Path

from ..data import QAItem
from ..errors import GrinError
from ..events import Progress, as_progress
from ..method.patch import load_patch
from ..models import LoadedModel
from . import prompting, quantisation, relearn, sampling
from .base import AttackConfig, AttackResult, Context, Unlearned, _finish

ATTACKS = {**relearn.ATTACKS, **quantisation.ATTACKS, **prompting.ATTACKS, **sampling.ATTACKS}


def parse_attacks(text: str) -> list[str]:
    """'relearn,quant4' -> ["relearn", "quant4"]; 'all' -> every attack. Unknown names are a GrinError."""
    names = [n.strip().lower().replace("-", "_") for n in str(text or "").split(",") if n.strip()]
    if names == ["all"]:
        return list(ATTACKS)
    unknown = [n for n in names if n not in ATTACKS]
    if unknown or not names:
        raise GrinError(f"attacks: unknown {', '.join(unknown) or '(none given)'}; choose from "
                        f"{', '.join(ATTACKS)} or all")
    return list(dict.fromkeys(names))


def attack_unlearned(base: LoadedModel, unlearned: list[Unlearned], forget: list[QAItem], retain: list[QAItem], cfg,
                     names: list[str], acfg: AttackConfig | None = None,
                     progress: Progress | None = None) -> list[AttackResult]:
    """Every named attack on every unlearned model, each on its own copy (the base and the patches are only read).

    progress reports "<method>/<attack>"; a Stop raises events.Stopped there (the caller keeps what it had).
    """
    progress = as_progress(progress)
    acfg = acfg or AttackConfig()
    names = parse_attacks(",".join(names))
    cache: dict = {}
    results = []
    for one in unlearned:
        ctx = Context(base, one, forget, retain, cfg, acfg, progress.within(one.method), "", cache)
        for name in names:
            ctx.attack = name
            start = time.perf_counter()
            result = ATTACKS[name][0](ctx)
            result.seconds = time.perf_counter() - start
            results.append(_finish(result))
        ctx._model = None  # free the shared copy before the next unlearned model
    return results


def saved_unlearned(report: dict, folder, n_forget: int, n_retain: int) -> list[Unlearned]:
    """The unlearned models of a saved report: a run's (`patch_file`) or each method of a comparison (`patch_files`).

    Relative patch paths are taken from `folder` (the report's). The report's per-item metrics must be about as
    many items as the sets loaded now, or the before / unlearned baselines would belong to other questions.
    """
    def path_of(name) -> str:
        p = Path(str(name))
        return str(p if p.is_absolute() or p.exists() else Path(folder) / p)

    if "patch_files" in report:  # compare: each method's per-item metrics, answers from the shared table
        methods = report.get("methods") or {}
        rows = report.get("generations") or []
        pairs = [(name, file, methods.get(name) or {},
                  [{"split": r["split"], "question": r["question"], "answer": r["answer"], "before": r["before"],
                    "after": r.get(name, "")} for r in rows])
                 for name, file in report["patch_files"].items()]
    elif report.get("patch_file"):
        method = "grin" if (report.get("config") or {}).get("use_mask", True) else "full"
        pairs = [(method, report["patch_file"], report, report.get("generations") or [])]
    else:
        raise GrinError("attack: the report names no saved patch; run it again with --save-patch")
    unlearned = []
    for method, file, part, generations in pairs:
        per_item = part.get("metrics_per_item") or {}
        after = per_item.get("after") or {}
        counts = (len(next(iter((after.get("forget") or {"": []}).values()))),
                  len(next(iter((after.get("retain") or {"": []}).values()))))
        if counts != (n_forget, n_retain):
            raise GrinError(f"attack: the report's {method} run measured {counts[0]} forget and {counts[1]} retain "
                            f"items, but the sets loaded now have {n_forget} and {n_retain}; give the same sets")
        unlearned.append(Unlearned(method, load_patch(path_of(file)), per_item, generations))
    return unlearned


def attacks_report(results: list[AttackResult]) -> dict:
    """The report's `attacks` section: {method: {attack: its result as plain data}}."""
    out: dict = {}
    for r in results:
        out.setdefault(r.method, {})[r.attack] = r.to_dict()
    return out


def recovery_table(results: list[AttackResult], metric: str = "keyword_accuracy") -> list[dict]:
    """One row per (method, attack): the forget metric before / unlearned / attacked and its recovery (the headline
    group: forget_B for relearning, forget otherwise)."""
    rows = []
    for r in results:
        group = "forget_B" if "forget_B" in r.metrics else "forget"
        base = r.baseline.get(group, {})
        rows.append({"method": r.method, "attack": r.attack, "group": group,
                     "before": base.get("before", {}).get(metric), "unlearned": base.get("unlearned", {}).get(metric),
                     "attacked": r.metrics.get(group, {}).get(metric),
                     "recovery": r.recovery.get(group, {}).get(metric),
                     "retain_attacked": r.metrics.get("retain", {}).get(metric),
                     "retain_unlearned": r.baseline.get("retain", {}).get("unlearned", {}).get(metric),
                     "skipped": r.skipped, "seconds": r.seconds})
    return rows
