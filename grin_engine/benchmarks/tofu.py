"""TOFU the way the papers report it (DESIGN.md §7): learn fictitious authors, forget some, score the result.

    python -m grin_engine tofu --forget forget01 --methods grin,graddiff,npo

1. *Target model*: the base model fine-tuned on the forget authors plus some retain authors (answers only);
   *retain model*: the same recipe on the retain authors alone, a model that never saw the forget authors.
   Both are cached as safetensors folders keyed by model, data and recipe, so a second run reuses them.
2. *Unlearn* the forget authors from the target model with each method (same steps and seed): a comparison method
   (runs/methods.METHODS) with cfg.loss, or a loss name alone, shorthand for that loss on all weights (`full`).
3. *Evaluate* target model, retain model and every unlearned model on the forget split, retain authors, real authors and
   world facts (probability, ROUGE-L recall, truth ratio), and on holdout authors that no model saw (membership
   inference): forget quality (KS test against the retain model's truth ratios), model utility (harmonic mean of
   nine numbers) and privacy leakage, all with open-unlearning's formulas (metrics.py).

TOFU's full set is 200 authors x 20 QA in author order; forget01 is the last 2 authors, forget05 the last 10.
The data ships in assets/tofu (MIT, see its README).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch

from ..config import GrinConfig, ModelSpec
from ..data import QAItem, make_batches, read_items_file
from ..errors import GrinError
from ..evaluation import metrics
from ..evaluation.evaluate import generate_answers, pair_token_nlls, shared_prompt_token_nlls
from ..events import Progress, Stopped, as_progress
from ..method.grun import grun_for, train_grun
from ..method.losses import LOSSES, mean_nll
from ..method.unlearn import train_slices, trainable_slices
from ..models import LoadedModel, copy_model, load_model, save_model_folder
from ..runs.masks import given_mask, kept_scores, method_selection
from ..runs.methods import METHODS, ComparisonMethod
from ..runs.pipeline import train

TOFU_DIR = Path(__file__).resolve().parents[2] / "assets" / "tofu"
ITEMS_PER_AUTHOR = 20
N_AUTHORS = 200
FORGET_AUTHORS = {"forget01": 2, "forget05": 10}  # the last authors of `full`
RETAIN_PERTURBED_AUTHORS = 20  # retain_perturbed.json holds authors 0-19 with paraphrased and perturbed answers
DEFAULT_CACHE = Path(os.environ.get("GRIN_CACHE", Path.home() / ".cache" / "grin_studio")) / "tofu"


@dataclass
class TofuRecipe:
    """How the target and the retain model are made (same recipe for both) and what is evaluated.

    The defaults fit a 2-core CPU with the 135M default model (DESIGN.md §7): a small slice of TOFU, learned hard.
    """
    forget: str = "forget01"
    retain_authors: int = 1  # authors 0..n-1 (the first of retain_perturbed): learned by both models
    holdout_authors: int = 3  # authors just below the forget ones, seen by neither model (membership inference);
    # 60 items rather than one author's 20 for the AUC that privleak is relative to (DESIGN.md §7)
    epochs: int = 3
    lr: float = 1e-4  # 4e-4 wiped the real-author answers of both models: DESIGN.md §7
    batch_size: int = 8
    max_length: int = 128  # tokens per training example (prompt + answer)
    seed: int = 0
    eval_items: int | None = 20  # items of retain authors, real authors, world facts evaluated (None: all); forget: all
    label_layout: str = "answer_eos"
    max_new_tokens: int = 200  # the answers' length: open-unlearning's, so ROUGE on long TOFU answers is not cut

    def __post_init__(self):
        if self.forget not in FORGET_AUTHORS:
            raise GrinError(f"tofu: forget split must be one of {', '.join(FORGET_AUTHORS)}, got {self.forget!r}")
        if not 1 <= self.retain_authors <= RETAIN_PERTURBED_AUTHORS:
            raise GrinError(f"tofu: retain authors must be 1..{RETAIN_PERTURBED_AUTHORS} (those of retain_perturbed), "
                            f"got {self.retain_authors}")
        free = N_AUTHORS - FORGET_AUTHORS[self.forget] - RETAIN_PERTURBED_AUTHORS
        if not 1 <= self.holdout_authors <= free:
            raise GrinError(f"tofu: holdout authors must be 1..{free}, got {self.holdout_authors}")
        for name in ("epochs", "batch_size", "max_length", "max_new_tokens"):
            if int(getattr(self, name)) < 1:
                raise GrinError(f"tofu: {name} must be at least 1, got {getattr(self, name)}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise GrinError(f"tofu: learning rate must be > 0, got {self.lr}")
        if self.eval_items is not None and self.eval_items < 1:
            raise GrinError(f"tofu: eval items must be at least 1, got {self.eval_items}")

    def training(self) -> dict:
        """The fields that decide the fine-tuned models (the cache key); evaluation choices are not among them."""
        return {k: getattr(self, k) for k in ("forget", "retain_authors", "epochs", "lr", "batch_size", "max_length",
                                              "seed", "label_layout")}


@dataclass
class TofuData:
    forget: list[QAItem]  # the forget split, with paraphrased and perturbed answers
    retain_train: list[QAItem]  # what both models learn besides the forget split
    retain_eval: list[QAItem]  # the same authors from retain_perturbed
    real_authors: list[QAItem]
    world_facts: list[QAItem]
    holdout: list[QAItem]  # authors no model saw
    facts: dict = field(default_factory=dict)


def _read(name: str) -> list[QAItem]:
    path = TOFU_DIR / name
    if not path.is_file():
        raise GrinError(f"tofu: {path} is missing; the TOFU files ship in assets/tofu")
    return read_items_file(path)


def load_tofu(recipe: TofuRecipe) -> TofuData:
    """The slices of TOFU the recipe names (authors are blocks of 20 items in full.json)."""
    full = _read("full.json")
    n_forget = FORGET_AUTHORS[recipe.forget]
    first_forget = N_AUTHORS - n_forget
    forget = _read(f"{recipe.forget}_perturbed.json")
    if [it.question for it in forget] != [it.question for it in full[first_forget * ITEMS_PER_AUTHOR:]]:
        raise GrinError(f"tofu: {recipe.forget}_perturbed.json is not the last {n_forget} authors of full.json")
    n_retain = recipe.retain_authors * ITEMS_PER_AUTHOR
    retain_train = full[:n_retain]
    retain_eval = _read("retain_perturbed.json")[:n_retain][:recipe.eval_items]
    holdout_first = first_forget - recipe.holdout_authors
    holdout = full[holdout_first * ITEMS_PER_AUTHOR: first_forget * ITEMS_PER_AUTHOR]
    cap = recipe.eval_items
    real_authors = _read("real_authors_perturbed.json")[:cap]
    world_facts = _read("world_facts_perturbed.json")[:cap]
    facts = {"forget_authors": list(range(first_forget, N_AUTHORS)), "retain_authors": list(range(recipe.retain_authors)),
             "holdout_authors": list(range(holdout_first, first_forget)),
             "items": {"forget": len(forget), "retain": len(retain_train), "holdout": len(holdout),
                       "real_authors": len(real_authors), "world_facts": len(world_facts)}}
    return TofuData(forget, retain_train, retain_eval, real_authors, world_facts, holdout, facts)


# ---------------------------------------------------------------------------------------------------------------------
# Target and retain model: fine-tuned once, cached


def cache_key(base: LoadedModel, items: list[QAItem], recipe: TofuRecipe, kind: str) -> str:
    """A short hash of what decides a fine-tuned model: the base model, the training items and the recipe."""
    data = hashlib.sha256("\n".join(f"{it.question}\t{it.answer}" for it in items).encode()).hexdigest()
    facts = base.facts()
    blob = json.dumps({"kind": kind, "model": base.name, "source": base.source, "parameters": facts["parameters"],
                       "dtype": facts["dtype"], "data": data, "recipe": recipe.training()}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def finetune(base: LoadedModel, items: list[QAItem], recipe: TofuRecipe, progress: Progress | None = None,
             stage: str = "finetune") -> LoadedModel:
    """A copy of `base` fine-tuned on the items' answers: AdamW (weight decay 0.01), constant lr, gradient norm
    clipped at 1, `epochs` passes over the items in an order shuffled per epoch by a generator seeded with `seed`.
    Every weight trains whole, a bf16/fp16 one through float32 master values (method/unlearn.TrainableSlice), so
    small updates are not lost to bf16 rounding. A Stop raises Stopped (nothing is kept)."""
    work = copy_model(base)
    model = work.model
    params = dict(model.named_parameters())
    generator = torch.Generator().manual_seed(recipe.seed)
    pairs = [(it.question, it.answer) for it in items]
    batches = []
    for _ in range(recipe.epochs):
        order = torch.randperm(len(pairs), generator=generator).tolist()
        batches += make_batches(work.tokenizer, [pairs[i] for i in order], recipe.batch_size, recipe.max_length,
                                recipe.label_layout)
    slices = trainable_slices(params, list(params), None)
    optimizer = torch.optim.AdamW([s.values for s in slices], lr=recipe.lr, weight_decay=0.01)

    def step_loss(step):
        return mean_nll(model, {k: v.to(work.device) for k, v in batches[step].items()})

    try:
        trained = train_slices(slices, step_loss, optimizer, len(batches), 1.0, progress, stage=stage,
                               what="tofu fine-tuning", hint="a smaller --tofu-lr")
    finally:
        for p in params.values():
            p.requires_grad_(False)
            p.grad = None
    if trained.stopped:
        raise Stopped
    model.eval()
    return work


def cached_finetune(base: LoadedModel, items: list[QAItem], recipe: TofuRecipe, kind: str, cache_dir: Path,
                    progress: Progress | None = None) -> tuple[LoadedModel, str, bool]:
    """(model, folder, reused): the cached fine-tuned model when there is one, else train it and cache it.

    The folder is written under a temporary name and renamed when complete, so a stopped or failed run never
    leaves a half-written model that a later run would take for a finished one. Its steps are reported as
    "<kind>/finetune".
    """
    folder = Path(cache_dir) / f"{kind}-{cache_key(base, items, recipe, kind)}"
    if (folder / "model.safetensors").is_file():
        loaded = load_model(ModelSpec(str(folder), str(base.device), str(base.dtype).replace("torch.", "")))
        loaded.name = base.name  # keeps facts() about the same model family
        return loaded, str(folder), True
    trained = finetune(base, items, recipe, progress, f"{kind}/finetune")
    tmp = folder.with_name(folder.name + f".tmp{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    save_model_folder(trained, str(tmp))
    (tmp / "grin_recipe.json").write_text(json.dumps({"kind": kind, "base": base.name, "items": len(items),
                                                      "recipe": recipe.training()}, indent=2))
    tmp.rename(folder)
    return trained, str(folder), False


# ---------------------------------------------------------------------------------------------------------------------
# Evaluation: the model's raw numbers per split, then the scores (pure, from those numbers)

EVAL_SPLITS = ("forget", "retain", "real_authors", "world_facts")


def _eval_sets(data: TofuData) -> dict[str, list[QAItem]]:
    return {"forget": data.forget, "retain": data.retain_eval, "real_authors": data.real_authors,
            "world_facts": data.world_facts}


def evaluate_model(model, tokenizer, data: TofuData, max_new_tokens: int = TofuRecipe.max_new_tokens,
                   max_length: int = 256, layout: str = "answer_eos", batch_size: int = 16,
                   progress: Progress | None = None) -> dict:
    """Everything TOFU's scores need from one model, as plain lists (JSON-ready).

    Per split of EVAL_SPLITS: greedy `generations`; `answer_nll` (token NLLs of the gold answer); `correct_nll`
    (per-token mean NLL of the paraphrased answer where the item has one, else of the answer: open-unlearning's
    "correct" for the truth ratio); `wrong_nll` (per-token mean NLL of each perturbed answer). For "holdout": only
    `answer_nll`. Progress stages: "<split>/answers" and "<split>/nll".
    """
    progress = as_progress(progress)
    model.eval()
    raw = {}
    for split, items in _eval_sets(data).items():
        generations = generate_answers(model, tokenizer, [it.question for it in items], max_new_tokens, batch_size,
                                       on_batch=progress.stage(f"{split}/answers"))
        answer_nll, correct_nll, wrong_nll = [], [], []
        for i, it in enumerate(items):
            # one question, all its answers: the gold one, the paraphrase (if any), the perturbed ones
            answers = [it.answer] + ([it.paraphrased_answer] if it.paraphrased_answer else []) + it.perturbed_answers
            token_nlls = shared_prompt_token_nlls(model, tokenizer, it.question, answers, max_length, layout)
            mean = [sum(t) / max(1, len(t)) for t in token_nlls]
            answer_nll.append(token_nlls[0])
            correct_nll.append(mean[1] if it.paraphrased_answer else mean[0])
            wrong_nll.append(mean[len(answers) - len(it.perturbed_answers):])
            progress(f"{split}/nll", i + 1, len(items))
        raw[split] = {"generations": generations, "answer_nll": answer_nll, "correct_nll": correct_nll,
                      "wrong_nll": wrong_nll}
    raw["holdout"] = {"answer_nll": pair_token_nlls(model, tokenizer, [(it.question, it.answer) for it in data.holdout],
                                                    batch_size, max_length, layout,
                                                    on_batch=progress.stage("holdout/nll"))}
    return raw


def split_scores(raw_split: dict, items: list[QAItem], split: str) -> dict:
    """Probability, ROUGE-L recall, both truth ratios and fluency of one split, from evaluate_model's raw numbers.

    forget uses TOFU's "closer_to_1_better" truth-ratio side, the others "true_better" (open-unlearning's
    tofu_metrics); real authors and world facts also get the probability normalised over the right and wrong answers.
    """
    nlls = raw_split["answer_nll"]
    scores = {
        "probability": metrics.answer_probability([sum(t) for t in nlls], [len(t) for t in nlls]).value,
        "rougeL_recall": metrics.rougeL_recall([it.answer for it in items], raw_split["generations"]).value,
        "truth_ratio": metrics.truth_ratio(raw_split["correct_nll"], raw_split["wrong_nll"],
                                           "forget" if split == "forget" else "retain").value,
        "truth_ratio_prob_mean": metrics.truth_ratio_prob_mean(raw_split["correct_nll"], raw_split["wrong_nll"]).value,
        "fluency": metrics.fluency(raw_split["generations"]).value,
    }
    if split in ("real_authors", "world_facts"):
        scores["probability_normalised"] = metrics.normalised_probability(
            [sum(t) / max(1, len(t)) for t in nlls], raw_split["wrong_nll"]).value
    return scores


def mia_scores(raw: dict, k: float = 0.4) -> dict:
    """Membership-inference AUCs, forget split against holdout authors (metrics.mia_auc's convention: 1 = memorised).

    Min-K% (k = 0.4) on the answer's token NLLs without the last labelled token (the EOS, as open-unlearning drops
    it); LOSS: the answer's per-token mean NLL (all labelled tokens, as open-unlearning's evaluate_probability).
    """
    def min_k(split):
        return [metrics.min_k_score(t[:-1], k) for t in raw[split]["answer_nll"]]

    def loss(split):
        return [sum(t) / max(1, len(t)) for t in raw[split]["answer_nll"]]

    return {"auc_min_k": metrics.mia_auc(min_k("forget"), min_k("holdout")),
            "auc_loss": metrics.mia_auc(loss("forget"), loss("holdout"))}


def score_model(raw: dict, data: TofuData, reference_raw: dict | None, reference_mia: dict | None) -> dict:
    """One row of the TOFU table from a model's raw numbers and the retain model's (the reference).

    forget_quality: KS p-value between this model's and the reference's raw truth ratios R on the forget split
    (TOFU's definition; forget_quality_prob_mean the same on open-unlearning's prob_mean ratios).
    model_utility: metrics.tofu_model_utility of the nine retain-side numbers.
    privleak: metrics.privleak of the Min-K AUC against the reference's (privleak_loss: the same with LOSS).
    """
    sets = _eval_sets(data)
    per_split = {split: split_scores(raw[split], sets[split], split) for split in EVAL_SPLITS}
    parts = {"retain_probability": per_split["retain"]["probability"],
             "retain_rougeL_recall": per_split["retain"]["rougeL_recall"],
             "retain_truth_ratio": per_split["retain"]["truth_ratio"]}
    for split in ("real_authors", "world_facts"):
        parts[f"{split}_probability_normalised"] = per_split[split]["probability_normalised"]
        parts[f"{split}_rougeL_recall"] = per_split[split]["rougeL_recall"]
        parts[f"{split}_truth_ratio"] = per_split[split]["truth_ratio"]
    mia = mia_scores(raw)
    row = {"model_utility": metrics.tofu_model_utility(parts), "utility_parts": parts, "splits": per_split, **mia}
    if reference_raw is not None:
        f, ref = raw["forget"], reference_raw["forget"]
        row["forget_quality"] = metrics.forget_quality(metrics.truth_ratios(f["correct_nll"], f["wrong_nll"]),
                                                       metrics.truth_ratios(ref["correct_nll"], ref["wrong_nll"]))
        row["forget_quality_prob_mean"] = metrics.forget_quality(
            metrics.truth_ratios_prob_mean(f["correct_nll"], f["wrong_nll"]),
            metrics.truth_ratios_prob_mean(ref["correct_nll"], ref["wrong_nll"]))
    if reference_mia is not None:
        row["privleak"] = metrics.privleak(mia["auc_min_k"], reference_mia["auc_min_k"])
        row["privleak_loss"] = metrics.privleak(mia["auc_loss"], reference_mia["auc_loss"])
    row["over_unlearned"] = mia["auc_min_k"] < metrics.OVER_UNLEARNING_AUC
    return row


# ---------------------------------------------------------------------------------------------------------------------
# The protocol

# open-unlearning's published reproduction (docs/repro.md at d3d7cf9): Llama-3.2-1B-Instruct fine-tuned 5 epochs and
# unlearned 10 epochs, both at lr 1e-5, as
# (forget quality, model utility). Another model and another recipe: for orientation, not for comparison.
PUBLISHED = {
    "source": "open-unlearning docs/repro.md (commit d3d7cf9): Llama-3.2-1B-Instruct fine-tuned 5 epochs, unlearned "
              "10 epochs, lr 1e-5; "
              "another model and recipe than ours",
    "forget10": {"finetuned": (1.7e-21, 0.60), "retain": (1.0, 0.59), "GradDiff": (1e-239, 0.49),
                 "NPO": (0.02, 0.46), "SimNPO": (2.5e-203, 0.54), "RMU": (3e-15, 0.59)},
    "forget01": {"GradDiff": (0.77, 0.43), "NPO": (0.92, 0.56), "SimNPO": (0.58, 0.46), "RMU": (0.16, 0.55)},
}


def parse_methods(text: str) -> list[str]:
    """Comma-separated rows to unlearn: comparison methods (runs/methods.METHODS, with cfg.loss: grin, grun, full,
    random ...) or loss names, each shorthand for that loss on all weights (`full`: the usual baseline)."""
    methods = [m.strip() for m in str(text).split(",") if m.strip()]
    valid = [*METHODS, *LOSSES]
    unknown = [m for m in methods if m not in valid]
    if unknown or not methods:
        raise GrinError(f"tofu: unknown method(s) {', '.join(unknown) or '(none)'}; choose from {', '.join(valid)}")
    return list(dict.fromkeys(methods))


def method_and_config(name: str, cfg: GrinConfig) -> tuple[ComparisonMethod, GrinConfig]:
    """A row's comparison method and its run's config (a loss name: `full` with that loss)."""
    if name in METHODS:
        return METHODS[name], METHODS[name].configure(cfg)
    return METHODS["full"], METHODS["full"].configure(replace(cfg, loss=name))


def unlearn_method(target: LoadedModel, name: str, data: TofuData, cfg: GrinConfig,
                   progress: Progress | None = None, pause_at: tuple[int, ...] = (), on_pause=None):
    """A copy of the target model unlearned as row `name` says; returns (loaded copy, detach function, facts).

    pause_at: steps before the last (cfg.steps; GRUN: cfg.grun_steps) after which on_pause(loaded copy, facts) sees
    the model as it stands, then training goes on. The learning rate is constant and step t's batches depend on t
    only, so a pause gives the numbers of a separate run of that many steps, and a grid over steps trains once to its
    largest value (benchmarks/tofu_grid.py). Masked and all-weight unlearning pause between pieces of
    runs/pipeline.train; GRUN inside its training loop (its until-check, which never ends training here)."""
    progress = as_progress(progress)
    method, run_cfg = method_and_config(name, cfg)
    pause_at = sorted(set(pause_at))
    last = run_cfg.grun_steps if method.mask == "grun" else run_cfg.steps
    if pause_at and (cfg.until or pause_at[0] < 1 or pause_at[-1] >= last):
        raise GrinError(f"tofu: pauses are for fixed-step unlearning, at steps below {last}; got {name} at {pause_at}")
    work = copy_model(target)
    forget, retain = data.forget, data.retain_train
    if method.mask == "grun":
        grun = grun_for(work.model, cfg).attach(work.model, work.tokenizer)
        facts = {"kind": "grun", "layers": list(grun.spec.layers)}

        def pause(step):
            if step in pause_at:
                grun.eval()  # as after training
                on_pause(work, {**facts, "steps": step, "stopped": False})
                grun.train()
            return False

        result = train_grun(work.model, work.tokenizer, grun, forget, retain, cfg, progress,
                            until=pause if pause_at else None)
        return work, grun.detach, {**facts, "steps": result.steps_done, "stopped": result.stopped}
    tops = kept_scores(work, forget, retain, run_cfg, [method], run_cfg.p, progress, stage="influence")
    mask = given_mask(work.model, run_cfg, method_selection(method, tops, work, run_cfg))
    facts = {"kind": method.name if mask.selection is not None else "all weights", "loss": run_cfg.loss}
    if mask.selection is not None:
        facts.update(selected=mask.summary["selected"], fraction=mask.summary["fraction"])
    state = None
    for last_step in (*pause_at, None):
        result = train(work, forget, retain, run_cfg, mask, progress, resume=state, last_step=last_step)
        state = result.state
        facts.update(steps=result.steps_done, stopped=result.stopped)
        if result.noise:  # the selected weights' gradient norm before and after the noise (method/unlearn.py)
            facts["noise"] = result.noise
        if result.stopped:
            break
        if last_step is not None:
            on_pause(work, dict(facts))
    return work, (lambda: None), facts


def reference_models(base: LoadedModel, recipe: TofuRecipe, data: TofuData, cache_dir: str | Path,
                     target_folder: str | None, retain_folder: str | None, progress: Progress,
                     timings: dict) -> tuple[dict, dict, dict]:
    """({"target", "retain"}: model, their folders, whether each was reused): given folders, else the cache, else
    fine-tuned now (and cached). Each one's time goes to timings["<kind>_model_s"]."""
    models, folders, reused = {}, {}, {}
    for kind, items, given in (("target", data.forget + data.retain_train, target_folder),
                               ("retain", data.retain_train, retain_folder)):
        start = time.perf_counter()
        if given:
            models[kind] = load_model(ModelSpec(given, str(base.device), str(base.dtype).replace("torch.", "")))
            folders[kind], reused[kind] = str(given), True
        else:
            models[kind], folders[kind], reused[kind] = cached_finetune(base, items, recipe, kind, cache_dir, progress)
        timings[f"{kind}_model_s"] = time.perf_counter() - start
    return models, folders, reused


def timed_evaluation(name: str, loaded: LoadedModel, data: TofuData, recipe: TofuRecipe, progress: Progress,
                     timings: dict) -> dict:
    """evaluate_model with the recipe's answer length and layout, its time in timings["<name>_eval_s"]."""
    start = time.perf_counter()
    raw = evaluate_model(loaded.model, loaded.tokenizer, data, recipe.max_new_tokens, recipe.max_length,
                         recipe.label_layout, progress=progress.within(name))
    timings[f"{name}_eval_s"] = time.perf_counter() - start
    return raw


def run_tofu(base: LoadedModel, recipe: TofuRecipe, methods: list[str], cfg: GrinConfig,
             cache_dir: str | Path = DEFAULT_CACHE, target_folder: str | None = None,
             retain_folder: str | None = None, progress: Progress | None = None, on_report=None) -> dict:
    """The whole protocol; returns the report (JSON-ready). See the module docstring.

    Progress stages: "target/finetune", "retain/finetune", "<model>/<split>/answers", "<model>/<split>/nll",
    "<method>/influence", "<method>/unlearn" (with the loss). A Stop raises Stopped; the cached models stay (only
    complete models are ever cached). on_report(report) receives the report so far after each evaluated model (the
    CLI writes it, so a long run that is stopped still leaves the rows it finished).
    The answers are recipe.max_new_tokens long (200, as the CLI's `tofu`), at evaluation and in an until-check while
    unlearning: cfg's max_new_tokens (GrinConfig's 48 is the lab's quick view) is replaced.
    """
    cfg = replace(cfg, max_new_tokens=recipe.max_new_tokens)
    progress = as_progress(progress)
    data = load_tofu(recipe)
    timings = {}
    models, folders, reused = reference_models(base, recipe, data, cache_dir, target_folder, retain_folder, progress,
                                               timings)

    def evaluate(name, loaded):
        return timed_evaluation(name, loaded, data, recipe, progress, timings)

    raws, rows, unlearning = {}, {}, {}
    raws["retain"] = evaluate("retain", models["retain"])
    reference_mia = mia_scores(raws["retain"])
    del models["retain"]
    for name in ["target", *methods]:
        if name == "target":
            loaded, detach = models["target"], (lambda: None)
        else:
            start = time.perf_counter()
            loaded, detach, unlearning[name] = unlearn_method(models["target"], name, data, cfg,
                                                              progress.within(name))
            timings[f"{name}_unlearn_s"] = time.perf_counter() - start
            progress.check()
        raws[name] = evaluate(name, loaded)
        detach()
        del loaded
        rows = {n: score_model(raws[n], data, raws["retain"], reference_mia) for n in ["target", "retain", *methods]
                if n in raws}
        report = _report(base, recipe, cfg, methods, data, folders, reused, rows, raws, unlearning, timings)
        if on_report is not None:
            on_report(report)
    return report


def _report(base, recipe, cfg, methods, data, folders, reused, rows, raws, unlearning, timings) -> dict:
    return {
        "protocol": "TOFU (DESIGN.md §7)", "model": base.facts(), "recipe": asdict(recipe),
        "unlearning_config": cfg.to_dict(), "methods": methods, "data": data.facts,
        "models": {"folders": folders, "reused": reused},
        "sanity": {"target_forget_rougeL_recall": rows["target"]["splits"]["forget"]["rougeL_recall"],
                   "retain_forget_rougeL_recall": rows["retain"]["splits"]["forget"]["rougeL_recall"],
                   "target_forget_probability": rows["target"]["splits"]["forget"]["probability"],
                   "retain_forget_probability": rows["retain"]["splits"]["forget"]["probability"]},
        "table": [{"model": name, **{k: v for k, v in row.items() if k not in ("splits", "utility_parts")}}
                  for name, row in rows.items()],
        "rows": rows, "unlearning": unlearning, "timings": dict(timings),
        "complete": all(m in rows for m in methods),
        "generations": {name: {split: raw[split]["generations"] for split in EVAL_SPLITS}
                        for name, raw in raws.items()},
        "published": PUBLISHED,
        "headline": "forget_quality and model_utility use TOFU's truth ratio R = P(perturbed) / (P(paraphrased) "
                    "+ 1e-10); forget_quality_prob_mean uses open-unlearning's prob_mean variant",
    }


