"""Every table and summary the command line prints, in one place: plain functions from a report (the JSON each
command writes) to text."""

from __future__ import annotations

from ..runs.frontier import SETTING_KNOBS


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
    parts = (report.get("fluency") or {}).get("after") or {}
    if parts:  # the two ways an answer is not fluent
        lines.append("not fluent after: " + "; ".join(
            f"{split} {p['looping']:.0%} looping, {p['non_answer']:.0%} non-answers"
            for split, p in parts.items() if p["looping"] is not None))
    t = report["timings"]
    if report.get("until"):
        u = report["until"]
        lines.append(f"until {u['target']}: " + (f"met after step {u['stopped_at']}" if u["stopped_at"] is not None
                                                  else "not met; all steps ran"))
    lines.append("time: " + ", ".join(f"{k[:-2]} {v:.1f}s" for k, v in t.items() if k.endswith("_s")))
    return "\n".join(lines)


def format_comparison(report: dict) -> str:
    """The comparison table for the terminal: keyword accuracy, ROUGE-L and fluency on both splits, gates, time."""
    columns = [f"{split}_{metric}" for metric in ("keyword_accuracy", "rougeL_recall", "fluency")
               for split in ("forget", "retain")]
    lines = [f"{'method':<14}{'forget KA':>10}{'retain KA':>10}{'forget RL':>10}{'retain RL':>10}"
             f"{'forget FL':>10}{'retain FL':>10}{'gate f/r':>12}{'seconds':>9}"]
    fmt = lambda v: f"{v:>10.3f}" if v is not None else f"{'-':>10}"  # noqa: E731
    rows = report["table"]
    if rows:  # an older report has no fluency: "-"
        lines.append(f"{'(before)':<14}" + "".join(fmt(rows[0].get(c + "_before")) for c in columns))
    for r in rows:
        gates = (f"{r['forget_gate']:.2f}/{r['retain_gate']:.2f}" if r["forget_gate"] is not None else "-")
        lines.append(f"{r['method']:<14}" + "".join(fmt(r.get(c)) for c in columns)
                     + f"{gates:>12}{r['seconds']:>9.0f}")
    if report["overlap"]:
        lines.append("GRIN mask overlap (Jaccard): " + ", ".join(f"{k} {v:.3f}" for k, v in report["overlap"].items()))
    if report["stopped"]:
        lines.append("(stopped early: the methods above finished)")
    return "\n".join(lines)


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


def format_frontier(report: dict) -> str:
    """The terminal summary: one line per setting (mean over seeds), fronts, areas, auto-p."""
    frontier = report["frontier"]
    fk, rk = frontier["forget_metric"], frontier["retain_metric"]
    before = report["before"].get("metrics", {})

    def base_value(column):  # "forget_fluency" -> the base's fluency on the forget split
        split, _, metric = column.partition("_")
        return _fmt((before.get(split) or {}).get(metric))

    lines = [f"base model: {fk} {base_value(fk)}, {rk} {base_value(rk)}",
             f"{'method':<13}{'setting':<40}{'forget':>14}{'retain':>14}{'seeds':>6}  front"]
    for row in frontier["settings"]:
        setting = " ".join(f"{k}={row[k]:g}" for k in SETTING_KNOBS if row.get(k) is not None)
        on_front = "*" if any(row is r for r in frontier["fronts"].get(row["method"], [])) else ""
        lines.append(f"{row['method']:<13}{setting:<40}{row['forget']:>8.3f}±{row['forget_std']:<5.3f}"
                     f"{row['retain']:>8.3f}±{row['retain_std']:<5.3f}{row['n']:>6}  {on_front}")
    lines.append("area between front and ideal corner (lower is better): " + ", ".join(
        f"{m} {a['mean']:.3f}±{a['std']:.3f} (n={a['n']})" for m, a in frontier["areas"].items()))
    if frontier["target"]:
        for method, pick in frontier["auto_p"].items():
            lines.append(f"auto-p {method} ({frontier['target']}): " + (
                "no setting meets the target" if pick is None else
                f"p={pick['p']:g}" + "".join(f" {k}={pick[k]:g}" for k in ("sigma2", "lr", "steps")
                                              if pick.get(k) is not None)
                + f" -> forget {pick['forget']:.3f}, retain {pick['retain']:.3f}"))
    lines.append(f"{len(report['points'])} of {report['total']} points finished ({report['skipped']} found in the "
                 f"file)" + (" - stopped" if report["stopped"] else ""))
    return "\n".join(lines)


def _fmt(value) -> str:
    return num(value, ".3f")


def num(value, fmt: str) -> str:
    """A number formatted with `fmt`; "-" where there is none (a metric a report lacks)."""
    return "-" if value is None else format(value, fmt)


def format_tofu(report: dict) -> str:
    """The terminal table: one row per model."""
    lines = [f"{'model':<12}{'forget Q':>11}{'FQ pm':>10}{'utility':>9}{'privleak':>10}{'AUC minK':>10}"
             f"{'AUC loss':>10}{'forget RL':>11}{'retain RL':>11}{'forget FL':>11}{'retain FL':>11}"]
    for name, row in report["rows"].items():
        flag = "  over-unlearned" if row["over_unlearned"] else ""
        lines.append(f"{name:<12}{num(row.get('forget_quality'), '11.3g')}{num(row.get('forget_quality_prob_mean'), '10.3g')}"
                     f"{num(row['model_utility'], '9.3f')}{num(row.get('privleak'), '10.1f')}{row['auc_min_k']:>10.3f}"
                     f"{row['auc_loss']:>10.3f}{row['splits']['forget']['rougeL_recall']:>11.3f}"
                     f"{row['splits']['retain']['rougeL_recall']:>11.3f}"
                     f"{num(row['splits']['forget'].get('fluency'), '11.3f')}"  # .get: reports made before fluency
                     f"{num(row['splits']['retain'].get('fluency'), '11.3f')}{flag}")
    s = report["sanity"]
    lines.append(f"sanity: forget ROUGE-L recall target {s['target_forget_rougeL_recall']:.3f}, "
                 f"retain model {s['retain_forget_rougeL_recall']:.3f} (the target must know the forget authors, "
                 f"the retain model must not)")
    return "\n".join(lines)


def format_tofu_grid(report: dict) -> str:
    """Every finished point of a TOFU grid, then (with --tune) the table of each method at its chosen setting."""
    lines = [f"{report['finished']} of {report['points']} points",
             f"{'row':<12}{'setting':<34}{'forget Q':>11}{'utility':>9}{'privleak':>10}{'seconds':>9}"]
    for p in report["grid"]:
        lines.append(f"{p['row']:<12}{p['setting']:<34}{num(p.get('forget_quality'), '11.3g')}"
                     f"{p['model_utility']:>9.3f}{num(p.get('privleak'), '10.1f')}{p['seconds']:>9.0f}")
    if "chosen" in report:
        lines += ["", f"chosen by the rule: {report['rule']}"]
        lines += [f"  {row}: {c['setting']} ({c['of']})" + ("" if c["keeps_utility"] else "  -- no point keeps "
                                                                  "the utility: its highest-utility point")
                  for row, c in report["chosen"].items()]
        lines.append(format_tofu(report))
    if report.get("chosen_fluent"):
        lines += ["", f"beside it, {report['fluent_rule']}:"]
        for row, c in report["chosen_fluent"].items():
            if c is None:
                lines.append(f"  {row}: no fluent point")
                continue
            scores = c["scores"]
            lines.append(f"  {row}: {c['setting']} ({c['of']}): forget quality "
                         f"{num(scores.get('forget_quality'), '.3g')}, utility {scores['model_utility']:.3f}, "
                         f"forget fluency {scores['splits']['forget']['fluency']:.3f}"
                         + ("" if c["keeps_utility"] else "  -- keeps less than 0.9 x the utility"))
    return "\n".join(lines)


def format_memory(report: dict) -> str:
    """One line per device: 'memory on cuda:0 (NVIDIA H100 80GB HBM3): peak 43.10 GiB = 3.00x the weights (...)'."""
    return "\n".join(
        f"memory on {device} ({r['name']}): peak {r['peak_bytes'] / 2**30:.2f} GiB"
        + (f" = {r['peak_over_weights']:.2f}x the weights ({r['weights_bytes'] / 2**30:.2f} GiB)"
           if r["peak_over_weights"] is not None else "") + f" [{r['measured']}]"
        for device, r in report.items())
