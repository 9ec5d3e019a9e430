""""Show me": one button on Setup runs a small, fast demo end to end, with a sentence at each step saying what to
look at, and leaves the tabs filled for exploration.

The steps are the tabs' own handlers, in the order a person clicks them (Setup's load, Influence, Unlearn), on
SHOW_ME_ITEMS items per set, so every tab shows what it would after those clicks: Setup's model facts and items,
Influence's heatmap at p = 1%, Unlearn's loss curve, Compare's answers before and after. Unlearning stops once the
forget set meets SHOW_ME_UNTIL (checked every 2 steps), so the demo takes the fewest steps that forget, and the
Unlearn tab shows that target in its "stop once" box. No tensors here.
"""

from __future__ import annotations

import gradio as gr

from grin_engine.config import GrinConfig

from .forms import SIGMA2_CHOICES, Form, Page
from .slots import MODEL_JOB
from .state import session_of
from .tabs import influence, setup, unlearn

SHOW_ME_ITEMS = 4
SHOW_ME_P = 1.0
SHOW_ME_STEPS = 10  # the most; the until-target usually ends it sooner
SHOW_ME_UNTIL = "forget_keyword_accuracy<=0.25"
SAY = {
    "load": "**1 of 4 — Setup.** Loading the default model and the two built-in sets: Harry Potter facts to "
            "forget, general-knowledge facts to keep. Look at the *items* table below: questions, gold answers and "
            "the keywords the metrics look for.",
    "influence": "**2 of 4 — Influence.** Scoring every weight: how much it matters for the Harry Potter answers "
                 "compared with the general-knowledge ones. Open the **Influence** tab: the heatmap shows where the "
                 "top 1% sit (which layers, attention or feed-forward).",
    "unlearn": "**3 of 4 — Unlearn.** Shaking and fine-tuning only those 1% of the weights, until the forget answers "
               f"lose their keywords ({SHOW_ME_UNTIL}). On the **Unlearn** tab the loss curve grows step by step.",
    "compare": "**4 of 4 — Compare.** Done. Open the **Compare** tab: forget answers before and after (the facts "
               "should be gone, the sentences still fluent), retain answers (they should stay), and the metrics. "
               "Then try another p, loss or step count, or **Compare methods**.",
}


OUTPUTS = {"status": "setup.show_me_status", "max_items": "setup.max_items", "facts": "setup.facts",
           "preview": "setup.preview", "load_status": "setup.load_status",
           "influence_status": "influence.influence_status", "selection": "influence.selection_md",
           "heatmap": "influence.heatmap", "bars": "influence.layer_bars", "hist": "influence.score_hist",
           "p": "influence.p_percent", "u_p": "unlearn.p_percent", "steps": "unlearn.steps", "until": "unlearn.until",
           "run_status": "unlearn.run_status", "loss": "unlearn.loss_plot", "forget_gen": "compare.forget_gen",
           "retain_gen": "compare.retain_gen", "metrics": "compare.metrics", "session": "session"}


def wire(page: Page) -> None:
    page["setup.show_me_btn"].click(**page.event(show_me, ["session"], list(OUTPUTS.values()), api_name="show_me",
                                                 show_progress_on=page["setup.show_me_status"], **MODEL_JOB))


def show_me(form: Form, request, progress):
    """Load, influence at 1%, unlearn until forgotten, answers before / after: each step with its sentence."""
    d = GrinConfig()
    sigma2 = next((c for c in SIGMA2_CHOICES if float(c) == d.sigma2), SIGMA2_CHOICES[2])
    out = {"status": "", "session": session_of(form["session"])}
    keys = list(OUTPUTS)

    def emit(**values):
        """One frame: every output's latest value. Gradio sends a generator's frames as diffs against the frame
        before, so a value sent again unchanged costs nothing, while a value sent once and then skipped is diffed
        against the skip and shows empty on the page (the Influence figures did, under the later steps' frames)."""
        out.update({k: v for k, v in values.items() if not _skipped(v)})
        return tuple(out.get(k, gr.skip()) for k in keys)

    yield emit(status=SAY["load"], max_items=SHOW_ME_ITEMS, p=SHOW_ME_P, u_p=SHOW_ME_P, steps=SHOW_ME_STEPS,
               until=SHOW_ME_UNTIL)
    load = ("default", "", "harry_potter", "", None, "general_knowledge", "", None, out["session"])
    facts, preview, load_status, out["session"] = setup.load(Form(setup.LOAD_INPUTS, load), request, progress)
    yield emit(facts=facts, preview=preview, load_status=load_status, status=SAY["influence"])

    scores = Form(["setup.max_items", "influence.p_percent", "session"], (SHOW_ME_ITEMS, SHOW_ME_P, out["session"]))
    for status, out["session"], *figures in influence.influence(scores, request, progress):
        yield emit(influence_status=status, **dict(zip(("selection", "heatmap", "bars", "hist"), figures)))
    if out["session"].hist is None:
        yield emit(status="Stopped during the influence step; press **Show me** again to start over.")
        return
    yield emit(status=SAY["unlearn"])

    run = (d.loss, SHOW_ME_P, sigma2, d.lr, SHOW_ME_STEPS, d.alpha, None, d.seed, True, SHOW_ME_ITEMS,
           out["session"], SHOW_ME_UNTIL)
    previous = out["session"].run
    for status, loss, out["session"], *tables in unlearn.unlearn(Form(unlearn.RUN_INPUTS, run), request, progress):
        yield emit(run_status=status, loss=loss, **dict(zip(("forget_gen", "retain_gen", "metrics"), tables)))
    finished = out["session"].run is not previous
    yield emit(status=SAY["compare"] if finished else
               "Stopped during unlearning; press **Show me** again to start over.")


def _skipped(value) -> bool:
    """A handler's "no change" for an output (gr.skip())."""
    return isinstance(value, dict) and value.get("__type__") == "update" and len(value) == 1
