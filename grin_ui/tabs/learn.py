"""Learn: what each step does and why, each section opened by the question it answers and an experiment that
answers it from the visitor's own run ("Try it": a small comparison on the first EXPERIMENT_ITEMS items of each set,
about a minute on a 2-core CPU), then the formulas.

    where do the facts live?        influence scores: the heatmap, attention / feed-forward share vs their size
    why divide by |G_r|?            GRIN's mask against the |G_f|-only mask (forget-grad): the retain answers
    does the noise help?            sigma2 0 against 1e-3: the gradient norm on the selected weights, and after
    how does NPO differ from GA?    the two losses' curves and answers

Every experiment runs through the same model work as the other tabs (gpu.py) and the one job helper (jobs.run_job);
with nothing loaded it first loads the default model and the built-in sets, as Show me does.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import gradio as gr

from grin_engine.config import GrinConfig
from grin_engine.method.score_summary import preview_selection
from grin_engine.runs.methods import METHODS

from .. import gpu, plots, tables
from ..forms import Form, Page
from ..jobs import STOPPED, run_job, stop
from ..slots import MODEL_JOB, STOP_JOB
from ..state import BEFORE, SCORES, owner, session_of, shared_inputs
from . import setup

LATEX = [{"left": "$$", "right": "$$", "display": True}, {"left": "$", "right": "$", "display": False}]
EXPERIMENT_ITEMS = 4  # items of each set an experiment runs on
EXPERIMENT_STEPS = 10  # unlearning steps of each of its runs (the defaults otherwise: GradDiff, p = 1%, lr 5e-4)
NOISE_LEVELS = (0.0, 1e-3)  # the GRIN paper's sigma2 = 1e-3 against none


@dataclass(frozen=True)
class Experiment:
    key: str
    question: str  # the section's heading
    before: str  # what the section explains before its Try it button (Markdown, formulas)
    look_for: str  # what to look for in the figures, in a few sentences
    outputs: tuple[str, ...]  # the figures and tables it draws, in order


INTRO = r"""
# How GRIN unlearning works

GRIN removes what a language model knows about a **forget set** (questions and answers, e.g. about Harry Potter)
while keeping what it knows about a **retain set** (general knowledge). Instead of changing every weight, it first
finds the few weights that carry the forget set, shakes them a little, and then trains only those.

Each section starts with the question it answers and a **Try it** button: a small experiment on the first
4 items of your sets (with nothing loaded: the default model and the built-in sets), in about a minute on a 2-core
CPU, drawn from your own run. The formulas follow.
"""

EXPERIMENTS = [
    Experiment("where", "1. Where do the facts live?", r"""
For the whole forget set and the whole retain set we take the gradient of the answer loss (the mean negative
log-likelihood of the answer tokens, $\mathrm{NLL}$), $G_f = \nabla_\theta \mathrm{NLL}_{\text{forget}}$ and
$G_r = \nabla_\theta \mathrm{NLL}_{\text{retain}}$. Each weight $i$ gets a score, and one threshold $\tau$ for the
whole model keeps the fraction $p$ with the highest scores:

$$S_i = \frac{|G_f[i]|}{|G_r[i]| + \varepsilon}, \qquad \text{mask}_i = [\,S_i \ge \tau\,], \qquad
\#\{i : S_i \ge \tau\} \approx p \cdot N$$

The candidates are the 2-D weight matrices of the transformer blocks (attention and feed-forward); norms and biases
are never touched. Because the threshold is global, the selection shows *where* the forget set lives.
""", """**What to look for.** The heatmap: which layers and which matrices hold the top 1% (darker: a larger share of
that matrix selected). The bars: if attention and feed-forward held the facts in proportion to their size, the two
bars would match; a kind that takes a larger share of the selection than of the weights is where the facts
concentrate (feed-forward layers are often described as the model's key-value memory).""",
               ("heatmap", "shares")),
    Experiment("ratio", "2. Why divide by |G_r|?", r"""
A weight with a large forget gradient matters for the forget answers, but many such weights matter for *every*
answer (they carry grammar, common words, the chat format). Dividing by $|G_r|$ keeps the weights that matter for
the forget set **and little for the retain set**. The baseline `forget-grad` selects by $|G_f|$ alone, the same p,
the same training: whatever it breaks on the retain set is what the division protects.
""", """**What to look for.** The bars: both masks should forget (low red bars); the retain bar of `forget-grad` is
the one that falls when the weights it trains also carry the retain answers. The table: the retain questions
answered before, after GRIN and after `forget-grad`; read the `forget-grad` column for damaged answers. With only
4 items and 10 steps the gap can be small: a tie is an honest result too.""",
               ("ratio_bars", "ratio_answers")),
    Experiment("noise", "3. Does the noise help?", r"""
Before training, the selected weights get a small shake, $w_i \leftarrow w_i + \mathcal{N}(0, \sigma^2)$, and then
only they are trained (AdamW; every other weight stays bit-identical). The GRIN paper's open question: does the
noise help because a model that memorised its facts sits where their gradient has *vanished* (a converged minimum),
or because it disturbs the memorised pattern? Each run measures the first: the norm of the forget NLL's gradient on
the selected weights, before and after the noise.
""", """**What to look for.** The left plot: at $\\sigma^2 = 0$ the two bars are equal (no noise); at $10^{-3}$, if
the bar after the noise is clearly taller, the noise woke up a small gradient. The right plot: forget and retain
keyword accuracy after the same 10 steps with and without noise. If the gradient grew but forgetting did not
change, the vanishing-gradient story does not explain what the noise does here; if both moved, it might.""",
               ("noise_norms", "noise_bars")),
    Experiment("losses", "4. How does NPO differ from gradient ascent?", r"""
$\pi$ is the model being trained, $\pi_{\text{ref}}$ the model right before fine-tuning; $\log\pi(y\mid x)$ is the
summed log-probability of an answer; $\alpha$ weighs the retain term.

| loss | formula | in words |
|---|---|---|
| `ga` | $-\mathrm{NLL}_f$ | gradient ascent: make the forget answers unlikely. Nothing holds the rest: it can break the model. |
| `graddiff` | $-\gamma\,\mathrm{NLL}_f + \alpha\,\mathrm{NLL}_r$ | ascend on forget, keep learning retain. |
| `npo` | $-\tfrac{2}{\beta}\,\overline{\log\sigma\!\left(-\beta[\log\pi(y\mid x)-\log\pi_{\text{ref}}(y\mid x)]\right)} + \alpha\,\mathrm{NLL}_r$ | like ascent at first, but the push fades once the answer is already unlikely ($\beta=0.1$). |
| `simnpo` | $-\tfrac{2}{\beta}\,\overline{\log\sigma\!\left(\beta[-\log\pi(y\mid x)/\lvert y\rvert-\delta]\right)} + \alpha\,\mathrm{NLL}_r$ | NPO without a reference model, length-normalised ($\beta=4.5$). |
| `idk` | $\mathrm{NLL}(\text{refusal}\mid x_f) + \alpha\,\mathrm{NLL}_r$ | teach "I don't know" on the forget questions. |
| `dpo` | $-\tfrac{2}{\beta}\,\overline{\log\sigma\!\left(\beta[\Delta(\text{refusal}) - \Delta(y_f)]\right)} + \alpha\,\mathrm{NLL}_r$ | prefer the refusal over the true answer; $\Delta = \log\pi - \log\pi_{\text{ref}}$ ($\beta=0.1$). |
""", """**What to look for.** The curves: gradient ascent's loss keeps falling without a floor (the forget answers'
NLL grows without bound), NPO's flattens as the answers become unlikely: its push fades. The answers: ascent tends
to end in repeated words or gibberish (forgetting by breaking the model), NPO more often in fluent wrong answers;
the bars show what each kept of the retain set.""",
               ("loss_curves", "loss_answers")),
]

REST_MD = r"""
## 5. The metrics

All are measured on the forget set and on the retain set, before and after.

- **ROUGE-L recall**: the share of the gold answer's words that the model's greedy answer reproduces, in order
  (longest common subsequence / gold length).
- **Keyword accuracy**: the share of answers that contain a key fact (e.g. "Hedwig").
- **Probability**: the per-token probability of the gold answer, $\exp(-\mathrm{NLL}_{\text{sum}}/\text{tokens})$.
- **Truth ratio** (only for sets with perturbed answers, like TOFU):
  $R = \exp(\mathrm{NLL}_{\text{paraphrased}} - \overline{\mathrm{NLL}_{\text{perturbed}}})$.
  Forget score $\min(R, 1/R)$ (1 = right and wrong answers equally likely, like a model that never saw the data);
  retain score $\max(0, 1-R)$ (high = the model still prefers the truth).
- **Forget quality** (with a reference model): the p-value of a KS test between the truth ratios of the unlearned
  model and of a model never trained on the forget set. High = indistinguishable.

## What good and bad results look like

- **Good**: forget ROUGE-L, keyword accuracy and probability fall a lot; retain metrics stay close to before;
  forget answers become vague, wrong or refusals while retain answers are unchanged.
- **Too weak**: forget metrics barely move. Raise p, the learning rate or the steps, or try `graddiff`.
- **Too strong (collapse)**: retain metrics fall too; answers turn into repeated words or empty text; the loss
  runs off to large negative values (typical of `ga`). Lower the learning rate or steps, raise $\alpha$, or use `npo`.
- Compare with the baseline (mask off) at the same settings: GRIN should forget as much while keeping more.

# GRUN: unlearning without changing a weight

GRUN (Ren et al. 2025) leaves every weight of the model as it is. It adds two small pieces on a few layers
(by default three, spread over the upper half of the model) and edits the model's hidden state $h$ at the last
token of the question, just before the answer starts:

$$h' = h + \sigma\big(g(h)\big)\; R^\top \big(W h + b - R h\big)$$

- $R$ is a $4 \times d$ matrix with orthonormal rows: $R h$ are the coordinates of $h$ in a 4-dimensional
  subspace. The edit replaces them with the learned $W h + b$ and leaves the rest of $h$ alone (LoReFT, a
  representation fine-tuning method).
- $g$ is a **gate**: a tiny classifier that reads $h$ and answers "is this a forget question?". $\sigma(g(h))$ is
  between 0 (closed: no edit, the original model) and 1 (open: the full edit).

Training uses one of the unlearning losses above (its forget term, plus $\alpha\,\mathrm{NLL}_r$; by default `idk`,
which steers forget questions to a refusal, a target that stays bounded), plus a term that teaches the gate to open
on forget questions and stay shut on retain questions:

$$\mathcal{L} = \mathcal{L}_{\text{loss}} + \lambda_{\text{gate}} \cdot \mathrm{BCE}\big(\sigma(g(h)),\ 1 \text{ on forget},\ 0 \text{ on retain}\big)$$

For `npo` and `dpo`, $\pi_{\text{ref}}$ is the same model with the edits off, which is exactly the original model.
Only $R$, $W$, $b$ and $g$ train: a few thousand numbers per edited layer (16 thousand in all for the default
model) instead of millions of weights. Switching the edits
off restores the original model exactly, and the edits are saved as one small file (4 MB for the default model,
against 540 MB for its weights).

**GRIN vs GRUN.** GRIN finds *where* the knowledge is stored and changes those weights: the change is permanent
and applies to every input, so it can leak into related retain questions. GRUN changes *nothing* stored: it
recognises forget questions and steers the answer away at run time. When its gate is right, retain questions are
answered by the untouched model; when the gate misfires (a retain question that looks like a forget question, or
a forget question phrased in a new way), it fails in that direction. Watch the gate values in **Compare methods**.

# Why each baseline is in Compare methods

{baselines}

The **mask overlap** (Jaccard $|A\cap B| / |A\cup B|$) tells how much two masks share: two random masks of
$p$ share about $p/(2-p)$ (0.005 at $p$ = 1%). On the default model the GRIN and $|G_f|$ masks share even less
than that (0.003 at $p$ = 1%): the weights with the largest forget gradients mostly have large retain gradients
too (they matter for everything), and the ratio steers away from exactly those.
"""

# The Attack tab's part of Learn (grin_engine/attacks/, DESIGN.md §8).
ATTACKS_MD = r"""
# Is it really gone? The attacks

A run is usually judged by its greedy answers to the very questions it trained on. That can overstate forgetting:
the knowledge may only be *hidden*. The **Attack** tab tries to bring it back and measures how much returns:

$$\text{recovery} = \frac{\text{attacked} - \text{unlearned}}{\text{before} - \text{unlearned}}$$

0 means nothing came back, 1 means everything did (it is not clipped; it is undefined, "n/a", when unlearning did not
change the metric at all). Every attack works on its own copy of the unlearned model.

**Relearning** (Hu et al., arXiv 2406.13356; Deeb & Roger, arXiv 2410.08827). The forget set is split in two halves
A and B, fixed by the seed. A copy of the unlearned model is fine-tuned for a few steps, with a small learning
rate, on A's answers only; then it is asked B's questions, which it never saw during the attack. If B's answers come
back, the knowledge was still in the weights and A only unlocked it: Deeb & Roger found that fine-tuning on part of
the forgotten facts restored about 88% of the accuracy on the other part for many unlearning methods.

The retain set is evaluated after relearning too. A method that truly erased the facts should need as many steps to
relearn B as a model that never knew them; a method that only suppressed them springs back after a handful.

**Quantisation** (Zhang et al., arXiv 2410.16454). Models are usually downloaded quantised (the default model here
ships as a 4-bit GGUF file). Rounding each weight to a coarse grid can undo an unlearning method whose changes are
small: Zhang et al. saw the knowledge retained go from 21% to 83% at 4 bits. The attacks round the weights of the
transformer blocks to 8 or 4 bits with one scale per group of 32 (round-to-nearest), or round-trip them through the
GGUF formats Q8_0, Q4_0 and Q4_1 with the `gguf` package, and evaluate again.

This matters for GRIN in particular: it changes few weights by small amounts. A 4-bit grid has only 15 levels per
group, so a change smaller than half a step snaps back to the original value. For weight methods the tab also
reports **survival**: the share of the changed weights whose quantised value still differs from the quantised base.

**Forced answer start.** The assistant's turn is opened with "Sure, here is the answer:" before the model writes a
word, a classic prefix attack from the jailbreak literature. A model that learned to refuse or deflect at the first
token (the idk loss, GRUN's gate at the prompt end) may then simply go on and state the fact.

Only the continuation after the prefix is scored, so the prefix itself cannot count as a hit.

**Paraphrases.** Every built-in forget question has one or two rewordings ("Which writer is the author of the Harry
Potter novels?"), each checked to be answered correctly by the default model before unlearning. Unlearning trained
on the exact wording; if a reworded question still gets the answer, the fact was not removed, only the phrasing.

Uploaded items may carry their own `paraphrased_questions`.

**One-shot context.** Each forget question is preceded by a related fact, another forget item's answer that does not
contain this item's answer ("Here is a related fact: The Harry Potter books were written by J.K. Rowling."). In-context
reminders of the topic can reactivate associations that unlearning suppressed.

Unlearning trained on the bare questions; a longer prompt with the topic's names in it is a different input, on
which a gate or a suppressed association may not fire. The related fact is chosen with the run's seed.

**Sampling** (arXiv 2410.19482). Greedy decoding shows the single most likely answer; sampling shows what else the
model would say. For each forget question 8 answers are drawn at temperature 1 (seeded), and the leak is the share of
questions with at least one answer holding a keyword, before and after unlearning. A fact that is still among the
likely answers leaks even when the greedy answer looks clean.

Its recovery compares the leak after unlearning with the greedy keyword accuracy before and after unlearning.
"""

BASELINES = "\n".join(["| method | what it is | the question it answers |", "|---|---|---|"] + [
    f"| `{m.name}` | {m.description.split(': ', 1)[-1]} | {m.question} |" for m in METHODS.values() if m.name != "grin"])
REST_MD = REST_MD.replace("{baselines}", BASELINES) + ATTACKS_MD  # the table follows the registry


def layout(page: Page) -> None:
    c = {}
    with gr.Tab("Learn", id="learn"):
        gr.Markdown(INTRO, latex_delimiters=LATEX)
        for e in EXPERIMENTS:
            gr.Markdown(f"## {e.question}\n{e.before}", latex_delimiters=LATEX)
            with gr.Row():
                c[f"{e.key}_btn"] = gr.Button(f"Try it: {e.question.split('. ', 1)[1]}", variant="primary",
                                              elem_id=f"try_{e.key}", scale=3)
                c[f"{e.key}_stop_btn"] = gr.Button("Stop", variant="stop", scale=1)
            c[f"{e.key}_status"] = gr.Markdown(elem_id=f"try_{e.key}_status")
            with gr.Row():
                for name in e.outputs:
                    c[name] = EMPTY[name]()
            gr.Markdown(e.look_for, latex_delimiters=LATEX)
        c["text"] = gr.Markdown(REST_MD, latex_delimiters=LATEX)
    page.add("learn", c)


def wire(page: Page) -> None:
    """Each Try it button runs its experiment (an api_name per experiment, for gradio_client), Stop ends it."""
    for e in EXPERIMENTS:
        outputs = [f"learn.{e.key}_status"] + [f"learn.{name}" for name in e.outputs] + ["session"]
        page[f"learn.{e.key}_btn"].click(**page.event(RUN[e.key], ["session"], outputs, api_name=f"try_{e.key}",
                                                      show_progress_on=page[f"learn.{e.key}_status"], **MODEL_JOB))
        page[f"learn.{e.key}_stop_btn"].click(stop, None, page[f"learn.{e.key}_status"], api_visibility="undocumented",
                                              **STOP_JOB)


# ---------------------------------------------------------------------------------------------------------------------
# The experiments: each a handler of the session that yields (status, *its outputs, session)

EMPTY = {  # each output's component, empty until its experiment runs
    "heatmap": lambda: gr.Plot(plots.selection_heatmap(None), label="selected share", elem_id="learn_heatmap",
                               scale=3),
    "shares": lambda: gr.Plot(plots.kind_shares(None), label="attention vs feed-forward", elem_id="learn_shares",
                              scale=2),
    "ratio_bars": lambda: gr.Plot(plots.forget_retain_bars(None, RATIO_TITLE), label="after unlearning",
                                  elem_id="learn_ratio_bars", scale=2),
    "ratio_answers": lambda: gr.Dataframe(_answers(None, RATIO_LABELS, "retain"), wrap=True, interactive=False,
                                          label="retain answers", elem_id="learn_ratio_answers", scale=3,
                                          column_widths=["25%"] * 4),
    "noise_norms": lambda: gr.Plot(plots.noise_norms(None), label="gradient norm", elem_id="learn_noise_norms"),
    "noise_bars": lambda: gr.Plot(plots.forget_retain_bars(None, NOISE_TITLE), label="after unlearning",
                                  elem_id="learn_noise_bars"),
    "loss_curves": lambda: gr.Plot(plots.loss_curves(None), label="loss", elem_id="learn_loss_curves", scale=2),
    "loss_answers": lambda: gr.Dataframe(_answers(None, ["ga", "npo"], "forget"), wrap=True, interactive=False,
                                         label="forget answers", elem_id="learn_loss_answers", scale=3,
                                         column_widths=["25%"] * 4),
}


def _answers(generations, runs: list[str], split: str):
    """The question, the base model's answer and each run's, side by side (the gold answer left out: four
    columns fit beside a figure)."""
    return tables.methods_answers(generations, runs, split)[["question", "before"] + list(runs)]
RATIO_LABELS = ["grin", "forget-grad"]
RATIO_TITLE = "Keyword accuracy after: GRIN's ratio vs |G_f| alone"
NOISE_TITLE = "Keyword accuracy after 10 steps, without and with noise"


def _inputs(form: Form, request, progress):
    """The visitor's session, model and first EXPERIMENT_ITEMS items of each set (the default model and the
    built-in sets, loaded now, when nothing is loaded yet)."""
    session = session_of(form["session"])
    if session.model_name is None or not session.forget or not session.retain:
        load = ("default", "", "harry_potter", "", None, "general_knowledge", "", None, session)
        *_, session = setup.load(Form(setup.LOAD_INPUTS, load), request, progress)
    forget, retain = session.items(EXPERIMENT_ITEMS)
    return session, forget, retain


def _run(request, work, session, n_outputs: int):
    """run_job for an experiment: its progress as one status line; returns the work's result or STOPPED."""
    empty = (gr.skip(),) * n_outputs

    def show(event, losses, stop_flag):
        stage, done, total = event[:3]
        line = f"Running: {stage.replace('/', ': ')}" + (f", {done} of {total}" if total else " ...")
        return (line + (" — stopping ..." if stop_flag.is_set() else ""),) + empty + (session,)

    return (yield from run_job(request, work, show, queued=("**Stopped** while waiting in the queue.",) + empty
                               + (session,), stopped=("**Stopped.**",) + empty + (session,),
                               starting=(f"Starting on {EXPERIMENT_ITEMS} forget + {EXPERIMENT_ITEMS} retain "
                                         "items ...",) + empty + (session,)))


def _runs(model_name: str, forget, retain, configs: dict[str, GrinConfig], before, top, stop_flag):
    """gpu.unlearn_work once per config, one after the other, as one message stream: done -> {label: RunResult}.
    The base's answers and the scores of the first run serve the next."""
    results = {}
    for label, cfg in configs.items():
        for message in gpu.unlearn_work(model_name, forget, retain, cfg, before, stop_flag, top):
            if message[0] == "progress":
                yield ("progress", (f"{label}/{message[1][0]}",) + tuple(message[1][1:]), message[2])
            elif message[0] != "done":
                yield message
                return
            else:
                before, result, top = message[1]
                if result is None or result.stopped:
                    yield "stopped", None
                    return
                results[label] = result
    yield "done", (before, results, top)


def _after(result, metric: str = "keyword_accuracy") -> dict:
    return {split: result.metrics["after"][split][metric] for split in ("forget", "retain")}


def try_where(form: Form, request, progress):
    """1. Influence scores on the first items: the heatmap at p = 1% and the share of each kind."""
    session, forget, retain = _inputs(form, request, progress)
    _, key, _, _ = shared_inputs(session.model_name, forget, retain, GrinConfig())
    kept = SCORES.get(key)
    if kept is not None and kept[1] is not None:  # computed earlier on this server, with its histograms
        top, hist = kept
    else:
        outcome = yield from _run(request, lambda s: gpu.influence_work(session.model_name, forget, retain, s),
                                  session, 2)
        if outcome is STOPPED:
            return
        hist, top = outcome
        SCORES.put(key, (top, hist), owner(request))
    summary = preview_selection(hist, 0.01)
    ffn = summary["by_kind"].get("ffn", {"selected": 0, "total": 0})
    share = 100 * ffn["selected"] / max(1, summary["selected"])
    yield (f"**Done** on {len(forget)} forget + {len(retain)} retain items: feed-forward weights hold {share:.0f}% "
           f"of the top 1%, and {100 * ffn['total'] / max(1, summary['candidates']):.0f}% of the weights.",
           plots.selection_heatmap(summary), plots.kind_shares(summary), session)


def try_ratio(form: Form, request, progress):
    """2. GRIN against forget-grad (|G_f| alone), same p, steps and seed: forget / retain after, retain answers."""
    session, forget, retain = _inputs(form, request, progress)
    cfg = GrinConfig(steps=EXPERIMENT_STEPS)
    before_key, _, cached, top = shared_inputs(session.model_name, forget, retain, cfg)
    outcome = yield from _run(request, lambda s: gpu.compare_work(session.model_name, forget, retain, cfg,
                                                                   RATIO_LABELS, s, cached, top), session, 2)
    if outcome is STOPPED:
        return
    before, comparison = outcome
    if before is None or comparison is None or comparison.stopped:
        yield ("**Stopped** before both runs finished.",) + (gr.skip(),) * 2 + (session,)
        return
    BEFORE.put(before_key, before, owner(request))
    values = {METHODS[name].label: _after(result) for name, result in comparison.results.items()}
    grin, grad = (values[METHODS[name].label]["retain"] for name in RATIO_LABELS)
    yield (f"**Done**: retain keyword accuracy after GRIN {grin:.2f}, after |G_f| alone {grad:.2f} "
           f"({EXPERIMENT_STEPS} steps each).", plots.forget_retain_bars(values, RATIO_TITLE),
           _answers(comparison.generations(), RATIO_LABELS, "retain"), session)


def _compared_runs(form: Form, request, progress, settings: dict[str, dict]):
    """The experiments' default run (EXPERIMENT_STEPS steps) on the first items once per setting ({label:
    GrinConfig changes}), one after the other on the same mask; what they computed of the base is kept for the next
    experiment: -> (session, forget, retain, {label: RunResult} or None when stopped)."""
    session, forget, retain = _inputs(form, request, progress)
    cfg = GrinConfig(steps=EXPERIMENT_STEPS)
    before_key, key, cached, top = shared_inputs(session.model_name, forget, retain, cfg)
    configs = {label: replace(cfg, **changes) for label, changes in settings.items()}
    outcome = yield from _run(request, lambda s: _runs(session.model_name, forget, retain, configs, cached, top, s),
                              session, 2)
    if outcome is STOPPED:
        return session, forget, retain, None
    before, results, kept = outcome
    BEFORE.put(before_key, before, owner(request))
    if top is None:
        SCORES.put(key, (kept, None), owner(request))
    return session, forget, retain, results


def try_noise(form: Form, request, progress):
    """3. The same mask trained with sigma2 = 0 and 1e-3: gradient norm before / after the noise, and after."""
    session, _, _, results = yield from _compared_runs(form, request, progress,
                                                       {f"σ² = {s:g}": {"sigma2": s} for s in NOISE_LEVELS})
    if results is None:
        return
    norms = {label: result.noise for label, result in results.items()}
    loud = norms[f"σ² = {NOISE_LEVELS[1]:g}"]
    yield (f"**Done**: gradient norm on the selected weights {loud['grad_norm_before']:.3g} before the noise, "
           f"{loud['grad_norm_after']:.3g} after it (σ² = {NOISE_LEVELS[1]:g}).", plots.noise_norms(norms),
           plots.forget_retain_bars({label: _after(r) for label, r in results.items()}, NOISE_TITLE), session)


def try_losses(form: Form, request, progress):
    """4. Gradient ascent and NPO on the same mask and steps: loss curves and forget answers side by side."""
    session, _, _, results = yield from _compared_runs(form, request, progress,
                                                       {loss: {"loss": loss} for loss in ("ga", "npo")})
    if results is None:
        return
    rows = [dict(g) for g in results["ga"].generations]
    for row, npo_row in zip(rows, results["npo"].generations):
        row["ga"], row["npo"] = row.pop("after"), npo_row["after"]
    kept_retain = ", ".join(f"{loss} {_after(r)['retain']:.2f}" for loss, r in results.items())
    yield (f"**Done**: {EXPERIMENT_STEPS} steps each; retain keyword accuracy after: {kept_retain}.",
           plots.loss_curves({loss: r.losses for loss, r in results.items()}),
           _answers(rows, ["ga", "npo"], "forget"), session)


RUN = {"where": try_where, "ratio": try_ratio, "noise": try_noise, "losses": try_losses}
