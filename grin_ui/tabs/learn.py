"""Learn: what each step does and why, in plain words, with the formulas."""

import gradio as gr

from grin_engine.runs.methods import METHODS

from ..forms import Page

LATEX = [{"left": "$$", "right": "$$", "display": True}, {"left": "$", "right": "$", "display": False}]

LEARN_MD = r"""
# How GRIN unlearning works

GRIN removes what a language model knows about a **forget set** (questions and answers, e.g. about Harry Potter)
while keeping what it knows about a **retain set** (general knowledge). Instead of changing every weight, it first
finds the few weights that carry the forget set, shakes them a little, and then trains only those.

## 1. Influence score: which weights hold the forget set?

For the whole forget set and the whole retain set we take the gradient of the answer loss
(the mean negative log-likelihood of the answer tokens, $\mathrm{NLL}$):

$$G_f = \nabla_\theta \mathrm{NLL}_{\text{forget}}(\theta), \qquad G_r = \nabla_\theta \mathrm{NLL}_{\text{retain}}(\theta)$$

Each weight $i$ gets a score

$$S_i = \frac{|G_f[i]|}{|G_r[i]| + \varepsilon}$$

High $S_i$: moving this weight changes the forget answers a lot and the retain answers little. These are the
weights to change. The candidates are the 2-D weight matrices of the transformer blocks (attention and
feed-forward); norms and biases are never touched.

## 2. Top-p selection

One threshold $\tau$ for the whole model keeps the fraction $p$ of candidate weights with the highest scores:

$$\text{mask}_i = [\,S_i \ge \tau\,], \qquad \#\{i : S_i \ge \tau\} \approx p \cdot N$$

Because the threshold is global, the heatmap shows *where* the forget set lives: in which layers, and whether in
attention (blue) or feed-forward (orange) weights. The histogram shows all scores on a log scale, with the cut.
Moving the p slider re-selects instantly from a compact summary of the scores (no new gradients).

## 3. Noise on the selected weights

$$w_i \leftarrow w_i + \mathcal{N}(0, \sigma^2) \quad \text{for selected } i$$

A small shake moves the model away from the sharp minimum that memorised the facts, so the unlearning loss has less
to undo. $\sigma^2 = 0$ switches it off; $10^{-4}$ is a strong shake for a small model.

## 4. Masked fine-tuning

Only the selected weights are trained (AdamW, learning rate, steps); every other weight stays bit-identical.
Untick **mask** for the plain baseline: all candidate weights train and no noise is added.

## 5. The unlearning losses

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

## 6. The metrics

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
LEARN_MD = LEARN_MD.replace("{baselines}", BASELINES) + ATTACKS_MD  # the table follows the registry


def layout(page: Page) -> None:
    with gr.Tab("Learn", id="learn"):
        page.add("learn", {"text": gr.Markdown(LEARN_MD, latex_delimiters=LATEX)})


def wire(page: Page) -> None:
    """Nothing to wire: the tab is text."""
