"""Attack: is the forgotten knowledge really gone? Layout, wiring, handlers and figures of the tab.

It attacks the unlearned model of the last Unlearn run, or of each method of the last comparison, with the engine's
attacks (grin_engine/attacks/: relearning, quantisation, a forced answer start, paraphrases, a one-shot context,
sampling) through gpu.attack_work, and shows the forget metric before / unlearned / attacked per method with the
recovery written on the bars, and the attacked answers beside the unlearned ones. No tensors here.
"""

from __future__ import annotations

import json

import gradio as gr
import pandas as pd
import plotly.graph_objects as go

from grin_engine.attacks import ATTACKS, AttackConfig, Unlearned, attacks_report, recovery_table
from grin_engine.config import GrinConfig
from grin_engine.errors import GrinError

from .. import downloads, gpu, inputs, public
from ..forms import Form, Page, job_buttons
from ..jobs import STOPPED, run_job, stop
from ..slots import MODEL_JOB, STOP_JOB
from ..state import session_of

TARGETS = ["last run (Unlearn)", "each method of the last comparison"]
DEFAULT_ATTACKS = ["relearn", "quant4", "gguf_q4_1", "prefix"]
METRICS = {"keyword accuracy": "keyword_accuracy", "ROUGE-L recall": "rougeL_recall",
           "answer probability": "probability", "fluency": "fluency"}
BAR_COLOURS = {"before": "#a0aec0", "unlearned": "#2b6cb0", "attacked": "#c53030"}
ANSWER_WIDTHS = ["30%", "35%", "35%"]  # question, unlearned answer, attacked answer
NOT_FORGOTTEN = "n/a: nothing forgotten"  # recovery is undefined when unlearning did not change the metric


# ---------------------------------------------------------------------------------------------------------------------
# Layout


def layout(page: Page) -> None:
    c = {}
    defaults = AttackConfig()
    with gr.Tab("Attack", id="attack"):
        gr.Markdown("**Is it really gone?** Attack the unlearned model and see how much of the forgotten knowledge "
                    "comes back: *recovery* = (attacked − unlearned) / (before − unlearned), 0 = nothing, 1 = all. "
                    "Every attack works on its own copy; the base model and your run stay as they were. Each attack "
                    "costs about one evaluation (relearning: plus its training steps); on a CPU keep *max items* in "
                    "Setup small. **Learn** explains each attack and its source.")
        with gr.Row():
            c["target"] = gr.Radio(TARGETS, value=TARGETS[0], label="attack",
                                   info="the comparison's full-model baseline is not kept (it is the whole model): "
                                        "attack it as an Unlearn run with the mask off")
            c["metric"] = gr.Dropdown(list(METRICS), value="keyword accuracy", label="forget metric in the bars")
        c["attacks"] = gr.CheckboxGroup([(f"{name} — {text}", name) for name, (_, text) in ATTACKS.items()],
                                        value=DEFAULT_ATTACKS, label="attacks")
        with gr.Accordion("attack settings", open=False):
            with gr.Row():
                c["relearn_steps"] = inputs.Number(defaults.relearn_steps, label="relearning steps", minimum=1,
                                               precision=0, info="fine-tuning steps on half A of the forget set")
                c["relearn_lr"] = inputs.Number(defaults.relearn_lr, label="relearning learning rate", minimum=0,
                                            info="all weights, AdamW")
                c["samples"] = inputs.Number(defaults.samples, label="samples per question", minimum=1, precision=0,
                                         info="sampling leak: answers drawn at temperature 1")
        c["attack_btn"], c["attack_stop_btn"] = job_buttons("Attack")
        c["attack_status"] = gr.Markdown(elem_id="attack_status")
        c["attack_bars"] = gr.Plot(recovery_bars(None, "keyword_accuracy"), label="before / unlearned / attacked",
                                   elem_id="attack_bars")
        c["attack_table"] = gr.Dataframe(recovery_frame(None), label="recovery per method and attack",
                                         interactive=False, elem_id="attack_table")
        c["answers_of"] = gr.Dropdown([], label="answers under the attack", allow_custom_value=False)
        c["attack_answers"] = gr.Dataframe(answers_frame(None, None), interactive=False, wrap=True, max_height=480,
                                           elem_id="attack_answers", label="unlearned vs attacked answers",
                                           column_widths=ANSWER_WIDTHS)
        with gr.Row():
            c["attack_report_btn"] = gr.Button("Prepare attacks JSON")
            c["attack_report"] = gr.File(label="attacks JSON", interactive=False, elem_classes="download")
        c["attack_state"] = gr.State(None, time_to_live=6 * 3600)  # this visitor's attack results (plain data)
    page.add("attack", c)


def wire(page: Page) -> None:
    """The tab's events; every one named for gradio_client."""
    names = ["attack.target", "attack.attacks", "attack.relearn_steps", "attack.relearn_lr", "attack.samples",
             "attack.metric", "session"]
    page["attack.attack_btn"].click(**page.event(
        attack, names, ["attack.attack_status", "attack.attack_state", "attack.attack_bars", "attack.attack_table",
                        "attack.answers_of", "attack.attack_answers"], api_name="attack", **MODEL_JOB))
    page["attack.attack_stop_btn"].click(stop, None, page["attack.attack_status"], api_name="stop_attack",
                                         **STOP_JOB)
    page["attack.metric"].change(**page.event(bars, ["attack.metric", "attack.attack_state"], ["attack.attack_bars"],
                                              api_name="attack_bars", queue=False))
    page["attack.answers_of"].change(**page.event(answers, ["attack.answers_of", "attack.attack_state"],
                                                  ["attack.attack_answers"], api_name="attack_answers",
                                                  queue=False))
    page["attack.attack_report_btn"].click(**page.event(download_attacks, ["attack.attack_state", "session"],
                                                        ["attack.attack_report"], api_name="attack_report"))


# ---------------------------------------------------------------------------------------------------------------------
# Callbacks


def _unlearned(choice: str, session) -> list[Unlearned]:
    """The unlearned models to attack: the last run's, or each finished method's of the last comparison."""
    if choice == TARGETS[1]:
        comparison = session.comparison
        if comparison is None:
            raise GrinError("no comparison yet: run Compare methods first (or attack the last Unlearn run)")
        unlearned = [Unlearned.of(name, r) for name, r in comparison.results.items()
                     if r.patch is not None and not r.stopped]
        if not unlearned:
            raise GrinError("the last comparison kept no unlearned model to attack (stopped, or only the "
                            "full-model baseline, whose patch is not kept)")
        return unlearned
    if session.run is None or session.run.patch is None:
        raise GrinError("no unlearned model yet: run Unlearn to the end first")
    return [Unlearned.of("grin" if session.run.config.get("use_mask", True) else "full", session.run)]


def attack(form: Form, request, progress):
    """Run the chosen attacks on the last run or on each method of the last comparison; stream progress."""
    session = session_of(form["session"])
    session.require_loaded()
    names = form.names("attack.attacks", "attacks")
    if not names:
        raise GrinError("choose at least one attack")
    target = form["attack.target"]
    unlearned = _unlearned(target, session)
    acfg = AttackConfig(relearn_steps=form.number("attack.relearn_steps", "relearn steps", integer=True),
                        relearn_lr=form.number("attack.relearn_lr", "relearn lr", integer=False),
                        samples=form.number("attack.samples", "samples", integer=True))
    public.check_attack(acfg.relearn_steps, acfg.samples, public.caps())
    source = session.comparison if target == TARGETS[1] else session.run
    cfg = GrinConfig.from_dict(source.config)
    n_forget, n_retain = len(unlearned[0].answers("forget")), len(unlearned[0].answers("retain"))
    forget, retain = session.forget[:n_forget], session.retain[:n_retain]  # the items the run was evaluated on
    nothing = (gr.skip(),) * 5

    def show(event, losses, stop):
        stage, done, total = event[:3]
        text = f"{stage.replace('/', ': ')} {done} of {total}" + (" — stopping ..." if stop.is_set() else "")
        progress((done, total), desc=text)
        return (f"Attacking: {text}",) + nothing

    results = yield from run_job(
        request, lambda stop: gpu.attack_work(session.model_name, forget, retain, cfg, unlearned, list(names), acfg,
                                              stop), show,
        queued=("**Stopped** while waiting in the queue: nothing attacked.",) + nothing,
        stopped=("**Stopped**: no attack result kept (the base model and the run are unchanged).",) + nothing)
    if results is STOPPED:
        return
    state = {"results": [r.to_dict() for r in results], "table": recovery_table(results),
             "report": attacks_report(results)}
    keys = [f"{r.method} · {r.attack}" for r in results if not r.skipped]
    seconds = sum(r.seconds for r in results)
    skipped = [f"{r.method} · {r.attack}: {r.skipped}" for r in results if r.skipped]
    status = (f"**Done**: {len(results)} attack(s) on {', '.join(u.method for u in unlearned)} in {seconds:.0f} s, "
              f"{len(forget)} forget and {len(retain)} retain items."
              + ("\n\nSkipped: " + "; ".join(skipped) if skipped else ""))
    yield (status, state, recovery_bars(state["table"], METRICS.get(form["attack.metric"], "keyword_accuracy"),
                                        state["results"]),
           recovery_frame(state["table"]), gr.Dropdown(keys, value=keys[0] if keys else None),
           answers_table(state, keys[0] if keys else None))


def bars(form: Form):
    state = form["attack.attack_state"]
    if not state:
        return recovery_bars(None, "keyword_accuracy")
    return recovery_bars(state["table"], METRICS.get(form["attack.metric"], "keyword_accuracy"), state["results"])


def answers(form: Form):
    return answers_table(form["attack.attack_state"], form["attack.answers_of"])


def answers_table(state: dict | None, key: str | None):
    return gr.Dataframe(answers_frame(state, key), column_widths=ANSWER_WIDTHS)


def download_attacks(form: Form, request, progress):
    """The attack results as JSON: the same `attacks` / `attack_table` sections as the CLI's report."""
    state = form["attack.attack_state"]
    if not state:
        raise GrinError("no attack yet: press Attack first")
    return downloads.write_text(session_of(form["session"]), request, "grin_attacks.json",
                                json.dumps({"attacks": state["report"], "attack_table": state["table"]}, indent=2))


# ---------------------------------------------------------------------------------------------------------------------
# Figures and tables (plain data in, plotly / pandas out)


def _headline(result: dict) -> str:
    return "forget_B" if "forget_B" in result["metrics"] else "forget"


def recovery_bars(rows: list[dict] | None, metric: str, results: list[dict] | None = None) -> go.Figure:
    """Per method and attack three bars: the forget metric before unlearning, after it, and after the attack; the
    attacked bar carries the recovery. Relearning shows half B (the half it did not train on)."""
    fig = go.Figure()
    if not rows or not results:
        fig.update_layout(title="Forget metric before / unlearned / attacked", height=320,
                          xaxis={"visible": False}, yaxis={"visible": False},
                          annotations=[{"text": "run an attack first", "showarrow": False, "font": {"size": 14}}])
        return fig
    labels, values = [], {"before": [], "unlearned": [], "attacked": []}
    texts = []
    for r in results:
        if r["skipped"]:
            continue
        group = _headline(r)
        base = r["baseline"].get(group, {})
        attacked = r["metrics"].get(group, {}).get(metric)
        if attacked is None:  # e.g. sampling measures keyword accuracy only
            continue
        labels.append(f"{r['method']} · {r['attack']}" + (" (half B)" if group == "forget_B" else ""))
        values["before"].append(base.get("before", {}).get(metric))
        values["unlearned"].append(base.get("unlearned", {}).get(metric))
        values["attacked"].append(attacked)
        rec = r["recovery"].get(group, {}).get(metric)
        texts.append(f"recovery {NOT_FORGOTTEN}" if rec is None else f"recovery {rec:.2f}")
    for when in ("before", "unlearned", "attacked"):
        fig.add_trace(go.Bar(x=labels, y=values[when], name=when, marker_color=BAR_COLOURS[when],
                             text=texts if when == "attacked" else None, textposition="outside",
                             hovertemplate=f"{when}: %{{y:.3f}}<extra>%{{x}}</extra>"))
    name = {v: k for k, v in METRICS.items()}.get(metric, metric)
    fig.update_layout(barmode="group", title=f"Forget {name}: before, after unlearning, after the attack",
                      yaxis={"title": name, "range": [0, 1.15] if metric != "probability" else None},
                      height=440, legend={"orientation": "h", "y": -0.25})
    return fig


def recovery_frame(rows: list[dict] | None) -> pd.DataFrame:
    columns = ["method", "attack", "items", "before", "unlearned", "attacked", "recovery", "retain (unlearned)",
               "retain (attacked)", "time (s)"]
    fmt = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
    out = []
    for r in rows or []:
        if r["skipped"]:
            out.append({"method": r["method"], "attack": r["attack"], "items": f"skipped: {r['skipped']}",
                        **{k: "-" for k in columns[3:]}})
            continue
        out.append({"method": r["method"], "attack": r["attack"],
                    "items": "forget half B" if r["group"] == "forget_B" else "forget",
                    "before": fmt(r["before"]), "unlearned": fmt(r["unlearned"]), "attacked": fmt(r["attacked"]),
                    "recovery": NOT_FORGOTTEN if r["recovery"] is None else fmt(r["recovery"]),
                    "retain (unlearned)": fmt(r["retain_unlearned"]),
                    "retain (attacked)": fmt(r["retain_attacked"]), "time (s)": f"{r['seconds']:.0f}"})
    return pd.DataFrame(out, columns=columns)


def answers_frame(state: dict | None, key: str | None) -> pd.DataFrame:
    columns = ["question", "unlearned answer", "attacked answer"]
    if not state or not key:
        return pd.DataFrame([], columns=columns)
    for r in state["results"]:
        if f"{r['method']} · {r['attack']}" == key:
            return pd.DataFrame([{"question": a["question"], "unlearned answer": a["unlearned"],
                                  "attacked answer": a["attacked"]} for a in r["answers"]], columns=columns)
    return pd.DataFrame([], columns=columns)
