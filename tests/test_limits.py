"""Tests for grin_engine.limits: prompts and answers are cut to their token caps everywhere, fast."""

from __future__ import annotations

import time

from grin_engine import limits
from grin_engine.data import encode_pair, format_prompt
from grin_engine.evaluation.evaluate import generate_answers


def test_a_short_text_is_unchanged(tokenizer):
    assert limits.truncate_tokens(tokenizer, "Who is Harry's enemy?", 128) == "Who is Harry's enemy?"
    assert limits.truncate_tokens(tokenizer, "Hi", 2) == "Hi"  # no more characters than the cap: never tokenised


def test_a_long_question_is_cut_to_the_cap(tokenizer):
    question = "Who is the headmaster of Hogwarts? " * 3000  # 105,000 characters
    start = time.perf_counter()
    cut = limits.truncate_tokens(tokenizer, question, limits.MAX_QUESTION_TOKENS)
    seconds = time.perf_counter() - start
    assert len(tokenizer(cut, add_special_tokens=False)["input_ids"]) <= limits.MAX_QUESTION_TOKENS
    assert question.startswith(cut[:50])
    assert seconds < 1.0, seconds  # a bound on cost, not a benchmark: the whole text is never tokenised


def test_every_prompt_and_example_respects_the_caps(tokenizer):
    question, answer = "Which house is Harry in? " * 2000, "Harry is in Gryffindor. " * 2000
    prompt = format_prompt(tokenizer, question)
    template = len(tokenizer(format_prompt(tokenizer, "x"), add_special_tokens=False)["input_ids"])
    assert len(tokenizer(prompt, add_special_tokens=False)["input_ids"]) <= limits.MAX_QUESTION_TOKENS + template + 2
    ids, labels = encode_pair(tokenizer, question, answer, max_length=100_000)
    answer_tokens = sum(1 for x in labels if x != -100)
    assert answer_tokens <= limits.MAX_ANSWER_TOKENS + 1  # + EOS
    assert len(ids) <= limits.MAX_QUESTION_TOKENS + limits.MAX_ANSWER_TOKENS + template + 3


def test_generation_on_a_100k_character_question_costs_what_a_short_one_does(tiny):
    long_question = "Who is the headmaster of Hogwarts? " * 3000
    start = time.perf_counter()
    answer = generate_answers(tiny.model, tiny.tokenizer, [long_question], max_new_tokens=4)[0]
    assert isinstance(answer, str)
    assert time.perf_counter() - start < 5.0  # uncut, 30k tokens through attention would take minutes


def test_user_path_survives_an_unknown_user():
    assert str(limits.user_path("~no_such_user_xyz/model")) == "~no_such_user_xyz/model"
