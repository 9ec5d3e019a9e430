"""Tests for grin_engine.evaluation.evaluate: generation, per-item NLLs and MCQ scoring come from the model's real outputs."""

from __future__ import annotations

import math

import torch

from grin_engine.evaluation import evaluate
from grin_engine.data import make_batches
from grin_engine.method.losses import answer_nll


def test_generate_answers_one_per_question_and_restores_padding_side(tiny):
    tiny.tokenizer.padding_side = "right"
    questions = ["What colour is the sky?", "Who is Harry's enemy?", "What is frozen water called?"]
    seen = []
    answers = evaluate.generate_answers(tiny.model, tiny.tokenizer, questions, max_new_tokens=5, batch_size=2,
                                        on_batch=lambda done, total: seen.append((done, total)))
    assert len(answers) == 3 and all(isinstance(a, str) for a in answers)
    assert seen == [(2, 3), (3, 3)]
    assert tiny.tokenizer.padding_side == "right"
    # greedy: the same call gives the same answers, and batching does not change them (left padding is masked)
    assert evaluate.generate_answers(tiny.model, tiny.tokenizer, questions, max_new_tokens=5, batch_size=1) == answers


def test_pair_nlls_match_one_batch_per_item(tiny):
    pairs = [("What colour is the sky?", "The sky is blue."), ("Which house is Harry in?", "Gryffindor, of course.")]
    sums, counts = evaluate.pair_nlls(tiny.model, tiny.tokenizer, pairs, batch_size=2)
    for (q, a), s, c in zip(pairs, sums, counts):
        batch = make_batches(tiny.tokenizer, [(q, a)], 1, 256)[0]
        with torch.no_grad():
            one_sum, one_count = answer_nll(tiny.model, batch)
        assert math.isclose(s, one_sum.item(), rel_tol=1e-4) and c == one_count.item()


def test_mcq_accuracy_is_argmax_of_choice_loglikelihoods(tiny):
    question, choices = "What colour is the sky?", ["The sky is blue.", "Paris", "eight legs"]
    logliks = evaluate.choice_logliks(tiny.model, tiny.tokenizer, question, choices)
    sums, _ = evaluate.pair_nlls(tiny.model, tiny.tokenizer, [(question, c) for c in choices])
    assert logliks == [-s for s in sums]
    best = max(range(3), key=lambda i: logliks[i])
    result = evaluate.mcq_accuracy(tiny.model, tiny.tokenizer, [question, question], [choices, choices],
                                   [best, (best + 1) % 3])
    assert result.per_item == [1.0, 0.0] and result.value == 0.5


# ---------------------------------------------------------------------------------------------------------------------
# Batching: sorted by length, sized by a token budget; the same answers and NLLs as one item at a time


def test_length_batches_sorted_within_budget_every_index_once():
    lengths = [5, 40, 7, 7, 3, 90, 12, 40, 1]
    for by_length in (True, False):
        for budget, max_rows in ((50, None), (100, 2), (1, None), (10_000, 3)):
            batches = evaluate.length_batches(lengths, budget, max_rows, by_length=by_length)
            order = [i for b in batches for i in b]
            assert sorted(order) == list(range(len(lengths)))
            flat = [lengths[i] for i in order]
            assert flat == sorted(flat) if by_length else order == list(range(len(lengths)))
            for b in batches:
                assert len(b) == 1 or len(b) * max(lengths[i] for i in b) <= budget
                assert max_rows is None or len(b) <= max_rows
    assert evaluate.length_batches([], 100) == []


def _questions():
    from conftest import FORGET, RETAIN

    extra = ["Tell me, in a few words, which house Harry is in and who the headmaster of Hogwarts is?", "Owl?"]
    return [it.question for it in FORGET + RETAIN] + extra


def _sharp_tiny(tokenizer, seed=1):
    """A tiny random Llama whose weights (norms aside) are scaled up: its greedy answers are long and differ between
    questions (the plain tiny model answers only newlines, which would make the comparison below empty)."""
    from conftest import tiny_llama

    model = tiny_llama(len(tokenizer), seed=seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" not in name:
                param.mul_(10)
    return model


def test_batched_generation_equals_one_question_at_a_time(tokenizer, monkeypatch):
    model, questions = _sharp_tiny(tokenizer), _questions()
    one_by_one = [evaluate.generate_answers(model, tokenizer, [q], max_new_tokens=12)[0] for q in questions]
    assert len(set(one_by_one)) == len(questions) and all(one_by_one)
    for budget in (60, 200, 100_000):  # a few rows per batch ... everything in one batch
        monkeypatch.setattr(evaluate, "CPU_GENERATION_TOKENS", budget)
        seen = []
        answers = evaluate.generate_answers(model, tokenizer, questions, max_new_tokens=12,
                                            on_batch=lambda done, total: seen.append((done, total)))
        assert answers == one_by_one, budget
        assert seen[-1] == (len(questions), len(questions)) and len(seen) >= 1
    assert len(seen) == 1
    # the accelerator's way (sorted by prompt length, memory budget): a pretend GPU with little free memory
    monkeypatch.setattr(evaluate, "_free_accelerator_bytes", lambda model: 3_000_000)
    assert evaluate.token_budget(model, evaluate.generation_token_bytes(model), 0)[1] == evaluate.MAX_ROWS
    assert evaluate.generate_answers(model, tokenizer, questions, max_new_tokens=12) == one_by_one


def test_batched_nlls_equal_one_pair_at_a_time(tokenizer, monkeypatch):
    from conftest import FORGET, RETAIN

    model = _sharp_tiny(tokenizer)
    pairs = [(it.question, it.answer) for it in FORGET + RETAIN] + [("Owl?", "Hedwig, a snowy owl, " * 5)]
    singles = [evaluate.pair_nlls(model, tokenizer, [pair]) for pair in pairs]
    for budget in (50, 400, 100_000):
        monkeypatch.setattr(evaluate, "CPU_SCORING_TOKENS", budget)
        sums, counts = evaluate.pair_nlls(model, tokenizer, pairs)
        for (one_sums, one_counts), s, c in zip(singles, sums, counts):
            assert c == one_counts[0]
            assert math.isclose(s, one_sums[0], rel_tol=1e-5, abs_tol=1e-5), budget


def test_answers_at_the_token_limit_are_flagged_and_shown_marked(tiny):
    """An answer that hit max_new_tokens without EOS is flagged cut (the tiny random model never says EOS in 3
    tokens: its EOS logit is one of ~1,000); one that ended is not; the shown text ends at a boundary or the mark."""
    questions = ["Who wrote Hamlet?", "What is the capital of France?"]
    answers, cut = evaluate.generate_answers(tiny.model, tiny.tokenizer, questions, 3, return_cut=True)
    assert answers == evaluate.generate_answers(tiny.model, tiny.tokenizer, questions, 3)  # same answers
    eos = tiny.tokenizer.eos_token_id
    prompt = tiny.tokenizer([evaluate.format_prompt(tiny.tokenizer, questions[0])], add_special_tokens=False,
                            return_tensors="pt")
    generated = tiny.model.generate(**prompt, max_new_tokens=3, do_sample=False, pad_token_id=eos,
                                    eos_token_id=eos)[0, prompt["input_ids"].shape[1]:]
    assert cut[0] == (eos not in generated.tolist())
    # by hand: a row that reached the limit without EOS is cut; one with EOS (padded after it) or a shorter one is not
    rows = torch.tensor([[5, 6, 7], [5, eos, eos], [eos, eos, eos]])
    assert evaluate.cut_rows(rows, tiny.tokenizer, 3) == [True, False, False]
    assert evaluate.cut_rows(rows[:, :2], tiny.tokenizer, 3) == [False, False, False]

    shown = evaluate.shown_answer
    assert shown("Harry's friend is Ron Weasley.", False) == "Harry's friend is Ron Weasley."
    assert shown("He was born in 1980 in a small town. His uncle was Ver", True) == \
        "He was born in 1980 in a small town." + evaluate.CUT_MARK  # the last sentence end keeps most of it
    assert shown("He was born. His uncle was named Vernon Dursley of Pri", True) == \
        "He was born. His uncle was named Vernon Dursley of" + evaluate.CUT_MARK  # it would not: the last word
    assert shown("His uncle was named Zaf", True) == "His uncle was named" + evaluate.CUT_MARK
    assert shown("Supercalifragilistic", True) == "Supercalifragilistic" + evaluate.CUT_MARK


def test_evaluate_split_scores_fluency_of_its_answers(tiny, forget_items):
    """Fluency is measured on the split's own answers, by the same code the until-check uses (answer_metrics)."""
    result = evaluate.evaluate_split(tiny.model, tiny.tokenizer, forget_items, "forget", max_new_tokens=6)
    from_answers = evaluate.answer_metrics(forget_items, result["generations"])
    assert {"rougeL_recall", "keyword_accuracy", "probability", "fluency"} <= set(result["metrics"])
    for name in ("rougeL_recall", "keyword_accuracy", "fluency"):
        assert result["metrics"][name] == from_answers[name]
    assert list(result["metrics"])[-1] == "fluency"  # shown last in the tables that list every metric


def test_evaluation_scores_the_tokens_of_the_run_label_layout(tiny, forget_items, retain_items):
    """--label-layout applies to evaluation too: the probability covers the same tokens the run trained on."""
    from grin_engine.config import GrinConfig
    from grin_engine.evaluation import metrics

    pairs = [(it.question, it.answer) for it in forget_items]
    expected = {layout: metrics.answer_probability(*evaluate.pair_nlls(tiny.model, tiny.tokenizer, pairs, max_length=64,
                                                                        layout=layout)).value
                for layout in ("answer_eos", "chat_turn")}
    assert expected["answer_eos"] != expected["chat_turn"]  # chat_turn labels two tokens more per answer
    for layout, value in expected.items():
        cfg = GrinConfig(max_new_tokens=2, max_length=64, label_layout=layout)
        both = evaluate.evaluate_both(tiny.model, tiny.tokenizer, forget_items, retain_items, cfg)
        assert both["forget"]["metrics"]["probability"].value == value
