"""Tables and short texts from the engine's plain results (pandas DataFrames and Markdown strings)."""

from __future__ import annotations

import pandas as pd

from grin_engine.runs.methods import METHODS

PREVIEW_ROWS = 50  # rows of each set shown in the Setup preview


def model_facts(facts: dict) -> pd.DataFrame:
    rows = []
    for key, value in facts.items():
        rows.append({"fact": key.replace("_", " "), "value": f"{value:,}" if isinstance(value, int) and not
                     isinstance(value, bool) else str(value)})
    return pd.DataFrame(rows, columns=["fact", "value"])


def items_preview(forget: list, retain: list) -> pd.DataFrame:
    rows = []
    for split, items in (("forget", forget), ("retain", retain)):
        for i, it in enumerate(items[:PREVIEW_ROWS], start=1):
            rows.append({"set": split, "#": i, "question": it.question, "answer": it.answer,
                         "keywords": "; ".join(it.keywords)})
    return pd.DataFrame(rows, columns=["set", "#", "question", "answer", "keywords"])


def generations(result, split: str) -> pd.DataFrame:
    rows = [{"question": g["question"], "gold answer": g["answer"], "before": g["before"], "after": g["after"]}
            for g in (result.generations if result else []) if g["split"] == split]
    return pd.DataFrame(rows, columns=["question", "gold answer", "before", "after"])


# For each metric, which way is good after unlearning: on forget lower is better (except the truth ratio score,
# where 1 = "like a model that never saw it", and fluency, which forgetting should keep); on retain higher is better.
METRIC_HELP = {
    "rougeL_recall": "ROUGE-L recall of the generated answer vs the gold answer",
    "keyword_accuracy": "share of answers that contain a key fact",
    "probability": "per-token probability of the gold answer",
    "truth_ratio": "truth-ratio score (needs perturbed answers)",
    "fluency": "share of answers that read as language: no loop, not empty or symbols",
}


def metrics(result) -> pd.DataFrame:
    columns = ["split", "metric", "before", "after", "change", "what it is"]
    if result is None:
        return pd.DataFrame([], columns=columns)
    rows = []
    for split in ("forget", "retain"):
        before = (result.metrics.get("before") or {}).get(split) or {}
        after = (result.metrics.get("after") or {}).get(split) or {}  # a stopped run has no "after"
        for name in before:
            b, a = before.get(name), after.get(name)
            rows.append({"split": split, "metric": name, "before": _num(b), "after": _num(a),
                         "change": _num(a - b, signed=True) if a is not None and b is not None else "-",
                         "what it is": METRIC_HELP.get(name, "")})
    if result.forget_quality is not None:
        rows.append({"split": "forget", "metric": "forget_quality", "before": "-",
                     "after": _num(result.forget_quality), "change": "-", "what it is": "KS-test p-value vs reference"})
    return pd.DataFrame(rows, columns=columns)


# Which way is good: forgetting lowers the forget set's scores and keeps the retain set's. The exceptions: the forget
# truth ratio (min(R, 1/R)) rises towards 1 as the model stops preferring the true answer, and fluency should stay
# high on forget too (forgetting by gibberish is the failure it shows).
_GOOD_WHEN_RISING = {("forget", "truth_ratio"), ("forget", "forget_quality"), ("forget", "fluency")}
_GOOD, _BAD = "background-color: #d9f2d9; color: #14532d", "background-color: #f9d6d5; color: #7f1d1d"


def change_style(split: str, metric: str, change: str, tolerance: float = 0.005) -> str:
    """CSS for a change cell: green when it moved the good way, red the bad way, none when it barely moved."""
    try:
        delta = float(change)
    except ValueError:
        return ""
    if abs(delta) < tolerance:
        return ""
    rising_is_good = split == "retain" or (split, metric) in _GOOD_WHEN_RISING
    return _GOOD if (delta > 0) == rising_is_good else _BAD


def metrics_view(result):
    """The metrics table for the page, with each change coloured good (green) or bad (red)."""
    table = metrics(result)

    def colour_row(row):
        return ["" if col != "change" else change_style(row["split"], row["metric"], row["change"])
                for col in table.columns]

    return table.style.apply(colour_row, axis=1)


def _num(value, signed: bool = False) -> str:
    if value is None:
        return "-"
    return f"{value:+.3f}" if signed else f"{value:.3f}"


def selection_text(summary: dict | None, seconds: float | None = None) -> str:
    if not summary:
        return "No scores yet: press **Compute influence**."
    k = summary["by_kind"]
    att, ffn = k["attention"], k["ffn"]
    threshold = summary.get("threshold")
    lines = [
        f"**p = {100 * summary['p']:g}%**: {summary['selected']:,} of {summary['candidates']:,} candidate weights "
        f"selected ({100 * summary['fraction']:.4f}%)" + (f", threshold S = {threshold:.3g}" if threshold else ""),
        f"- attention: {att['selected']:,} of {att['total']:,} ({100 * att['selected'] / max(1, att['total']):.4f}%)",
        f"- feed-forward: {ffn['selected']:,} of {ffn['total']:,} ({100 * ffn['selected'] / max(1, ffn['total']):.4f}%)",
    ]
    if summary.get("preview"):
        lines.append("\n*Preview from the score histograms; the run selects exactly from fresh scores "
                     "(the counts can differ slightly inside the threshold's bin).*")
    if seconds is not None:
        lines.append(f"\nScores computed in {seconds:.1f} s.")
    return "\n".join(lines)


def run_text(result) -> str:
    if result is None:
        return ""
    t = result.timings
    times = "Time: " + ", ".join(f"{k[:-2]} {v:.1f}s" for k, v in t.items() if k.endswith("_s")) + "."
    if result.stopped:
        return (f"**Stopped** after {len(result.losses)} training step(s). A stopped run is not evaluated and keeps "
                f"no unlearned model; Compare shows the base model's scores only. {times}")
    sel = result.selection
    loss = f", final loss {result.losses[-1]:.4f}" if result.losses else ""
    until = getattr(result, "until", None) or {}
    early = ""
    if until.get("target"):
        early = (f" The forget set met {until['target']} at step {until['stopped_at']}, so unlearning stopped there."
                 if until.get("stopped_at") else f" The forget set had not met {until['target']} by the last step.")
    return (f"**Done**: {len(result.losses)} steps{loss}.{early} Trained {sel['selected']:,} of "
            f"{sel['candidates']:,} candidate weights.{noise_text(getattr(result, 'noise', None))} {times} "
            f"See **Compare** for the answers and metrics.")


def noise_text(noise: dict | None) -> str:
    """What the noise did to the gradient on the selected weights (the run's `noise`), as one sentence."""
    if not noise:
        return ""
    if not noise["sigma2"]:
        return f" No noise (σ² = 0); gradient norm on the selected weights {noise['grad_norm_before']:.3g}."
    return (f" Noise σ² = {noise['sigma2']:g}: gradient norm on the selected weights {noise['grad_norm_before']:.3g}"
            f" before, {noise['grad_norm_after']:.3g} after.")


# ---------------------------------------------------------------------------------------------------------------------
# Compare methods

METHOD_COLUMNS = [("forget_keyword_accuracy", "forget KA"), ("forget_rougeL_recall", "forget ROUGE-L"),
                  ("forget_probability", "forget prob"), ("forget_fluency", "forget fluency"),
                  ("retain_keyword_accuracy", "retain KA"), ("retain_rougeL_recall", "retain ROUGE-L"),
                  ("retain_probability", "retain prob"), ("retain_fluency", "retain fluency"),
                  ("forget_gate", "gate (forget)"), ("retain_gate", "gate (retain)")]


def methods_table(rows: list[dict] | None) -> pd.DataFrame:
    """One row per method (Comparison.table()), after unlearning; the first row is the base model before."""
    columns = ["method"] + [label for _, label in METHOD_COLUMNS] + ["weights trained", "time (s)"]
    if not rows:
        return pd.DataFrame([], columns=columns)
    out = [{"method": "base model (before)",
            **{label: _num(rows[0].get(key + "_before")) for key, label in METHOD_COLUMNS if "gate" not in key},
            "gate (forget)": "-", "gate (retain)": "-", "weights trained": "-", "time (s)": "-"}]
    for r in rows:
        out.append({"method": r["method"] + (" (stopped)" if r["stopped"] else ""),
                    **{label: _num(r.get(key)) for key, label in METHOD_COLUMNS},
                    "weights trained": f"{r['trainable']:,}" if r.get("trainable") is not None else "-",
                    "time (s)": f"{r['seconds']:.0f}"})
    return pd.DataFrame(out, columns=columns)


def methods_answers(generations: list[dict] | None, methods: list[str], split: str) -> pd.DataFrame:
    """Every method's answer to each question of one split, side by side with the gold answer and the base's."""
    columns = ["question", "gold answer", "before"] + list(methods)
    rows = [{"question": g["question"], "gold answer": g["answer"], "before": g["before"],
             **{m: g.get(m, "") for m in methods}} for g in (generations or []) if g["split"] == split]
    return pd.DataFrame(rows, columns=columns)


def overlap_text(overlap: dict, masks_selected: dict, p: float | None) -> str:
    """How much the GRIN mask shares with the baseline masks, against what chance would give."""
    if not overlap:
        return "*Mask overlap: run GRIN in the comparison to see how its mask overlaps the random and |G_f| masks.*"
    chance = p / (2 - p) if p else None  # Jaccard of two independent random masks of the same size
    lines = ["**Overlap of the GRIN mask with the other masks** (Jaccard |A∩B| / |A∪B|: 1 = the same weights, "
             "0 = none shared)"]
    names = {"random": "a random mask of the same size (drawn for this comparison; trained only if `random` is ticked)"}
    for name, value in overlap.items():
        lines.append(f"- {names.get(name) or (METHODS[name].label if name in METHODS else name)}: **{value:.4f}**")
    if chance is not None:
        lines.append(f"\nTwo random masks of {100 * p:g}% share about {chance:.4f} (chance). The GRIN mask has "
                     f"{masks_selected.get('grin', 0):,} weights.")
    if "forget-grad" in overlap:
        lines.append("Dividing by |G_r| is all that separates GRIN's mask from the |G_f| mask: the weights they do "
                     "not share are those the retain set needs.")
    return "\n".join(lines)
