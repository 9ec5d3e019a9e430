"""Tests for grin_engine.evaluation.metrics: every metric against values worked out by hand (arithmetic in the comments)."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
from rouge_score import rouge_scorer
from scipy.stats import ks_2samp

from grin_engine.evaluation.metrics import (
    MetricResult,
    answer_probability,
    derive_keywords,
    fluency,
    fluency_parts,
    fluency_reason,
    forget_quality,
    keyword_accuracy,
    keyword_hit,
    mcq_accuracy,
    model_utility,
    rougeL_recall,
    truth_ratio,
    truth_ratios,
)

TOFU_DIR = Path(__file__).resolve().parent.parent / "assets" / "tofu"  # shipped with the project

e = math.e


# --- keyword hit / accuracy -----------------------------------------------------------------------------------


def test_keyword_hit_ignores_case():
    assert keyword_hit("Albus DUMBLEDORE was headmaster", ["dumbledore"])
    assert keyword_hit("albus dumbledore", ["Snape", "DumbleDore"])
    assert not keyword_hit("Severus Snape", ["dumbledore"])


def test_keyword_hit_empty_or_blank_keywords_never_hit():
    assert not keyword_hit("any text at all", [])
    # An empty string is a substring of everything; it must be ignored, not counted as a hit.
    assert not keyword_hit("any text at all", ["", "   "])
    # Surrounding spaces (as left by splitting a CSV cell "a; b") are stripped before matching.
    assert keyword_hit("born in Paris.", ["  Paris "])


def test_keyword_accuracy_per_item_and_mean():
    result = keyword_accuracy(
        ["The wand of Dumbledore", "I have no idea", "Hogwarts, of course"],
        [["dumbledore"], ["Hogwarts"], ["HOGWARTS", "castle"]],
    )
    # hit, miss, hit -> 2 of 3
    assert result.per_item == [1.0, 0.0, 1.0]
    assert result.value == pytest.approx(2 / 3)


def test_keyword_accuracy_item_without_keywords_is_not_scored():
    result = keyword_accuracy(["Dumbledore", "anything"], [["dumbledore"], []])
    # item 2 has nothing to look for: None, left out of the mean -> 1 / 1
    assert result.per_item == [1.0, None]
    assert result.value == 1.0
    assert keyword_accuracy(["x"], [[]]).value is None
    assert keyword_accuracy([], []) == MetricResult(value=None, per_item=[])


# --- derive_keywords ------------------------------------------------------------------------------------------


def test_derive_keywords_merges_capitalised_words_into_a_phrase():
    assert derive_keywords("Who is the headmaster?", "The headmaster is Albus Dumbledore.") == ["Albus Dumbledore"]


def test_derive_keywords_drops_sentence_start_and_words_in_question():
    # "Harry" starts the sentence, "Potter" is in the question; the initials "J." and "K." are no keywords and
    # their dots do not start a new sentence, so "Rowling" is kept; 1997 is a number.
    assert derive_keywords("Who wrote Harry Potter?", "Harry Potter was written by J. K. Rowling in 1997.") == [
        "Rowling",
        "1997",
    ]


def test_derive_keywords_numbers_keep_decimals_and_titles_do_not_end_sentences():
    assert derive_keywords("What is pi?", "Pi is about 3.14, as Mr. Smith said.") == ["3.14", "Mr. Smith"]


def test_derive_keywords_dedupes_and_keeps_order_across_sentences():
    answer = "Dumbledore's wand is the Elder Wand. It was made by Antioch Peverell! The Elder Wand is old."
    # "Dumbledore" starts sentence 1; "It" and "The" start theirs; the second "Elder Wand" is a duplicate.
    assert derive_keywords("Which wand?", answer) == ["Elder Wand", "Antioch Peverell"]


def test_derive_keywords_question_match_is_case_insensitive_substring():
    # TOFU: "Kuwait" occurs inside "al-kuwaiti" of the question, "Kuwait City" does not.
    question = "In which city and country was Basil Mahfouz Al-Kuwaiti born?"
    answer = "Basil Mahfouz Al-Kuwaiti was born in Kuwait City, Kuwait."
    assert derive_keywords(question, answer) == ["Kuwait City"]


def test_derive_keywords_falls_back_to_longest_new_word():
    # No proper noun, no number: longest word of >= 4 letters not in the question ("florist", 7 letters).
    assert derive_keywords("What does he do?", "He was a florist.") == ["florist"]
    # "Author" starts the sentence, the name is in the question -> fallback: "male" (only new word >= 4 letters)
    question = "What gender is author Basil Mahfouz Al-Kuwaiti?"
    assert derive_keywords(question, "Author Basil Mahfouz Al-Kuwaiti is male.") == ["male"]
    # Nothing qualifies at all ("It", "is" are short) -> []
    assert derive_keywords("Is it?", "It is.") == []


@pytest.mark.skipif(not TOFU_DIR.is_dir(), reason=f"TOFU test files not found at {TOFU_DIR}")
def test_derive_keywords_on_real_tofu_items():
    items = [json.loads(line) for line in (TOFU_DIR / "forget01_perturbed.json").read_text().splitlines() if line.strip()]
    assert len(items) > 0
    for item in items:
        keywords = derive_keywords(item["question"], item["answer"])
        assert keywords, f"no keyword for {item['answer']!r}"
        for keyword in keywords:
            assert keyword.lower() not in item["question"].lower()
            assert keyword_hit(item["answer"], [keyword])  # the gold answer itself always hits


# --- ROUGE-L recall -------------------------------------------------------------------------------------------


def test_rougeL_recall_by_hand():
    # gold "the cat sat on the mat" (6 tokens), generated "the cat on mat": LCS = the, cat, on, mat = 4 -> 4/6
    result = rougeL_recall(["the cat sat on the mat"], ["the cat on mat"])
    assert result.per_item == [pytest.approx(4 / 6)]
    assert result.value == pytest.approx(4 / 6)


def test_rougeL_recall_matches_rouge_score_with_stemming():
    golds = ["he runs fast", "Paris is the capital of France", "The answer is 42", "abc"]
    generations = ["he was running fast", "the capital of France is Paris", "I do not know", ""]
    scorer = rouge_scorer.RougeScorer(["rouge1", "rougeL"], use_stemmer=True)
    expected = [scorer.score(g, p)["rougeL"].recall for g, p in zip(golds, generations)]
    result = rougeL_recall(golds, generations)
    assert result.per_item == pytest.approx(expected)
    assert result.value == pytest.approx(sum(expected) / 4)
    # Stemming matters: "runs" and "running" both stem to "run", so all 3 gold tokens are matched (recall 1.0);
    # without the stemmer only "he", "fast" match (2/3).
    assert result.per_item[0] == pytest.approx(1.0)
    assert rouge_scorer.RougeScorer(["rougeL"]).score(golds[0], generations[0])["rougeL"].recall == pytest.approx(2 / 3)
    # An empty generation recalls nothing.
    assert result.per_item[3] == 0.0


def test_rougeL_recall_empty_input():
    assert rougeL_recall([], []) == MetricResult(value=None, per_item=[])


# --- fluency --------------------------------------------------------------------------------------------------


FLUENT, LOOP, NON_ANSWER = "fluent", "loop", "non_answer"


@pytest.mark.parametrize("answer, reason", [
    ("The capital of France is Paris.", FLUENT),
    ("Alright, buddy, I'm glad you're here! Let's talk about something fun, shall we?", FLUENT),  # form, not content
    ("I don't know.", FLUENT),
    ("1997.", FLUENT),  # a bare number answers "when?"
    ("The Harry Potter books were written by J. K. Rowling.", FLUENT),  # initials are not punctuation soup
    ("Yes", FLUENT),
    ("Albus Dumbledore, the headmaster, had had enough of the Ministry's meddling.", FLUENT),  # a doubled word
    # a normal answer cut at the token limit, mid-sentence
    ("Jaime Vasquez was born in Santiago, Chile, to a chef father and a mother who worked as a", FLUENT),
    ("the the the the", LOOP),
    ("affili affili affili", LOOP),
    ("Harry Potter is, is, is a wizard.", LOOP),  # a word three times in a row, punctuation between
    # a phrase repeated to the end of the answer, cut at the token limit: "the owl is" three times
    ("Harry's owl is called the owl is called the owl is called the owl is", LOOP),
    ("I'm not sure. I'm not sure. I'm not sure. I'm", LOOP),
    ("", NON_ANSWER),
    ("   \n\t ", NON_ANSWER),
    ("!!! ??? ... ---", NON_ANSWER),  # punctuation soup: no word at all
    ("@@k3 ~~~~~ #;;; ][ x", NON_ANSWER),  # mostly symbols: 3 of 17 characters in words
    ("aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", NON_ANSWER),  # a 40-letter run is no word
    ("😀😀😀", NON_ANSWER),
])
def test_fluency_reason_of_hand_made_answers(answer, reason):
    assert fluency_reason(answer) == reason


def test_fluency_is_the_share_of_fluent_answers():
    answers = ["Paris is the capital.", "the the the the", "", "Hedwig is Harry's owl."]
    assert fluency(answers) == MetricResult(value=0.5, per_item=[1.0, 0.0, 0.0, 1.0])
    assert fluency_parts(answers) == {"looping": 0.25, "non_answer": 0.25,
                                      "reasons": ["fluent", "loop", "non_answer", "fluent"]}
    assert fluency([]) == MetricResult(value=None, per_item=[])
    assert fluency_parts([])["looping"] is None


@pytest.mark.skipif(not TOFU_DIR.is_dir(), reason=f"TOFU test files not found at {TOFU_DIR}")
def test_gold_answers_are_fluent():
    """The gold answers of the built-in sets are all fluent; of TOFU's 4000 gold answers, only lists that repeat a
    series name three times ("'The Echo Dawn: Manga Chronicles #1', 'Forgotten Dawn: Manga Chronicles #2', ...")
    count as loops (DESIGN.md §4)."""
    datasets = TOFU_DIR.parent / "datasets"
    built_in = [json.loads(line)["answer"] for path in sorted(datasets.glob("*.jsonl"))
                for line in path.read_text().splitlines() if line.strip()]
    assert built_in and fluency(built_in).value == 1.0
    tofu = [json.loads(line)["answer"] for line in (TOFU_DIR / "full.json").read_text().splitlines() if line.strip()]
    flagged = [a for a in tofu if fluency_reason(a) != "fluent"]
    assert len(tofu) == 4000 and len(flagged) <= 4
    assert all("Chronicles" in a or "Series" in a for a in flagged)


# --- answer probability ---------------------------------------------------------------------------------------


def test_answer_probability_by_hand():
    # item 1: exp(-2.0 / 2) = e^-1; item 2: exp(-3.0 / 1) = e^-3; mean (e^-1 + e^-3) / 2
    result = answer_probability([2.0, 3.0], [2, 1])
    assert result.per_item == [pytest.approx(e**-1), pytest.approx(e**-3)]
    assert result.value == pytest.approx((e**-1 + e**-3) / 2)


def test_answer_probability_zero_tokens_is_none_and_left_out():
    # item 2 has no tokens: None; the mean is over item 1 only: exp(-0.0 / 3) = 1.0
    result = answer_probability([0.0, 5.0], [3, 0])
    assert result.per_item == [1.0, None]
    assert result.value == 1.0
    assert answer_probability([1.0], [0]).value is None
    with pytest.raises(ValueError, match="negative"):
        answer_probability([1.0], [-1])


# --- truth ratio ----------------------------------------------------------------------------------------------

PARAPHRASED = [1.0, 2.0]
PERTURBED = [[2.0, 4.0], [1.0]]
# item 1: mean perturbed (2 + 4) / 2 = 3 -> R = exp(1 - 3) = e^-2
# item 2: mean perturbed 1            -> R = exp(2 - 1) = e^1


def test_truth_ratios_by_hand():
    assert truth_ratios(PARAPHRASED, PERTURBED) == [pytest.approx(e**-2), pytest.approx(e**1)]
    # Same thing written as a ratio of probabilities: exp(-mean perturbed) / exp(-paraphrased) = e^-3 / e^-1
    assert truth_ratios([1.0], [[2.0, 4.0]])[0] == pytest.approx(math.exp(-3.0) / math.exp(-1.0))


def test_truth_ratios_average_nlls_before_the_exp():
    # paraphrased 1, perturbed [0, 2]: NLL mean 1 -> R = exp(1 - 1) = 1.
    # (Averaging probabilities instead would give (e^0 + e^-2) / 2 / e^-1 = (e + e^-1) / 2 ~ 1.543.)
    assert truth_ratios([1.0], [[0.0, 2.0]]) == [pytest.approx(1.0)]


def test_truth_ratio_forget_split():
    # min(R, 1/R): item 1 min(e^-2, e^2) = e^-2; item 2 min(e, e^-1) = e^-1
    result = truth_ratio(PARAPHRASED, PERTURBED, "forget")
    assert result.per_item == [pytest.approx(e**-2), pytest.approx(e**-1)]
    assert result.value == pytest.approx((e**-2 + e**-1) / 2)


def test_truth_ratio_retain_split():
    # max(0, 1 - R): item 1 1 - e^-2 ~ 0.865; item 2 1 - e < 0 -> 0
    result = truth_ratio(PARAPHRASED, PERTURBED, "retain")
    assert result.per_item == [pytest.approx(1 - e**-2), 0.0]
    assert result.value == pytest.approx((1 - e**-2) / 2)


def test_truth_ratio_forget_is_one_when_right_and_wrong_equally_likely():
    # equal NLLs -> R = exp(0) = 1 -> min(1, 1) = 1
    assert truth_ratio([0.7], [[0.7, 0.7]], "forget").per_item == [pytest.approx(1.0)]


def test_truth_ratio_bad_input():
    with pytest.raises(ValueError, match="forget, retain"):
        truth_ratio(PARAPHRASED, PERTURBED, "test")
    with pytest.raises(ValueError, match="item 1 has no perturbed"):
        truth_ratios([1.0, 1.0], [[1.0], []])
    assert truth_ratio([], [], "forget") == MetricResult(value=None, per_item=[])


# --- forget quality -------------------------------------------------------------------------------------------


def test_forget_quality_matches_scipy():
    unlearned = [0.1, 0.5, 0.9, 1.3]
    reference = [0.2, 0.4, 2.0, 3.0, 5.0]
    assert forget_quality(unlearned, reference) == pytest.approx(ks_2samp(unlearned, reference).pvalue)
    # TOFU tests 1/R instead of R: the KS test only compares orders, so the p-value is the same.
    inverted = ks_2samp([1 / r for r in unlearned], [1 / r for r in reference]).pvalue
    assert forget_quality(unlearned, reference) == pytest.approx(inverted)


def test_forget_quality_by_hand():
    # Identical samples: KS statistic 0 -> p = 1.
    assert forget_quality([0.3, 0.6, 0.9], [0.3, 0.6, 0.9]) == pytest.approx(1.0)
    # Fully separated samples of 3 and 3 (exact test): of the C(6,3) = 20 equally likely orderings, 2 are as
    # extreme (all of one sample below all of the other, either way) -> p = 2/20 = 0.1
    assert forget_quality([1.0, 2.0, 3.0], [4.0, 5.0, 6.0]) == pytest.approx(0.1)


def test_forget_quality_none_without_reference_or_data():
    assert forget_quality([0.1, 0.2], None) is None
    assert forget_quality([], [0.1, 0.2]) is None
    assert forget_quality([0.1, 0.2], []) is None


# --- model utility --------------------------------------------------------------------------------------------


def test_model_utility_harmonic_mean():
    # 3 / (1/0.5 + 1/0.25 + 1/1.0) = 3 / (2 + 4 + 1) = 3/7; None is skipped
    assert model_utility([0.5, 0.25, 1.0, None]) == pytest.approx(3 / 7)
    assert model_utility([0.4]) == pytest.approx(0.4)


def test_model_utility_zero_none_and_negative():
    assert model_utility([0.5, 0.0, 0.9]) == 0.0
    assert model_utility([None, None]) is None
    assert model_utility([]) is None
    with pytest.raises(ValueError, match="negative"):
        model_utility([0.5, -0.1])


# --- MCQ accuracy ---------------------------------------------------------------------------------------------


def test_mcq_accuracy_by_hand():
    logliks = [
        [-1.0, -2.0, -3.0],  # argmax 0 == answer 0 -> 1
        [-5.0, -0.5, -2.0],  # argmax 1 != answer 2 -> 0
        [-1.0, -1.0],  # tie: the first (0) counts, != answer 1 -> 0
        [-9.0, -8.0, -7.0, -0.1],  # argmax 3 == answer 3 -> 1
    ]
    result = mcq_accuracy(logliks, [0, 2, 1, 3])
    assert result.per_item == [1.0, 0.0, 0.0, 1.0]
    assert result.value == pytest.approx(2 / 4)


def test_mcq_accuracy_bad_input():
    with pytest.raises(ValueError, match="outside its 2 choices"):
        mcq_accuracy([[-1.0, -2.0]], [2])
    with pytest.raises(ValueError, match="no choices"):
        mcq_accuracy([[]], [0])


# --- length mismatches ----------------------------------------------------------------------------------------


def test_rougeL_recall_length_mismatch_message():
    with pytest.raises(ValueError, match=r"^rougeL_recall: 3 golds but 2 generations$"):
        rougeL_recall(["a", "b", "c"], ["a", "b"])


@pytest.mark.parametrize(
    "call, name",
    [
        (lambda: keyword_accuracy(["a"], [["a"], ["b"]]), "keyword_accuracy"),
        (lambda: answer_probability([1.0, 2.0], [1]), "answer_probability"),
        (lambda: truth_ratios([1.0], [[1.0], [2.0]]), "truth_ratios"),
        (lambda: truth_ratio([1.0, 2.0], [[1.0]], "forget"), "truth_ratios"),
        (lambda: mcq_accuracy([[0.0, 1.0]], [0, 1]), "mcq_accuracy"),
    ],
)
def test_length_mismatch_raises(call, name):
    with pytest.raises(ValueError, match=rf"^{name}: \d+ .* but \d+ "):
        call()


# --- purity ---------------------------------------------------------------------------------------------------


def test_metrics_module_does_not_import_model_libraries():
    # A fresh interpreter (this one may have imported torch for other tests) loads metrics.py by its path, so
    # whatever grin_engine/__init__.py imports does not count against this module.
    metrics_file = Path(__file__).resolve().parents[1] / "grin_engine" / "evaluation" / "metrics.py"
    code = (
        "import importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('metrics_alone', {str(metrics_file)!r})\n"
        "module = sys.modules['metrics_alone'] = importlib.util.module_from_spec(spec)\n"  # dataclass needs it there
        "spec.loader.exec_module(module)\n"
        "print(sorted(m for m in ('transformers', 'torch') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# --- open-unlearning parity (src/evals/metrics at commit d3d7cf9) ---------------------------------------------
#
# Their definitions, written out from their code as the expected values (facts and formulas, not their code):
# memorization.truth_ratio: correct_prob = exp(-correct_avg_loss), wrong_prob = exp(-mean_j wrong_avg_loss_j);
#   TOFU's R = wrong_prob / (correct_prob + 1e-10); prob_mean's T = correct_prob / (correct_prob + wrong_prob + 1e-10);
#   closer_to_1_better = mean(min(R, 1/(R + 1e-10))); true_better = mean(max(0, 1 - R)); prob_mean = mean(T).
# memorization.probability_w_options: correct / (correct + sum_j wrong_j + 1e-10).
# privacy.ks_test: ks_2samp on the raw per-item R (value_by_index "score") of the model and of the retain model.
# utility.hm_aggregate: scipy.stats.hmean of the nine pre-computed values.
# mia: min_k = -mean(sorted(token log-probs)[:max(1, int(n * k))]); LOSS = per-token mean NLL;
#   AUC = roc_auc_score(labels = [0] * forget + [1] * holdout, scores); privleak with MUSE's 1 - AUC.

import numpy as np  # noqa: E402
from scipy.stats import hmean  # noqa: E402

from grin_engine.evaluation.metrics import (  # noqa: E402
    OVER_UNLEARNING_AUC, TOFU_UTILITY_PARTS, mia_auc, min_k_score, normalised_probability, privleak,
    tofu_model_utility, truth_ratio_prob_mean, truth_ratios_prob_mean,
)


def their_truth_ratio(correct_nll, wrong_nll, aggregator):
    correct_prob = np.exp(-np.array(correct_nll))
    wrong_prob = np.exp(-np.array([np.mean(w) for w in wrong_nll]))
    if aggregator == "prob_mean":
        ratios = correct_prob / (correct_prob + wrong_prob + 1e-10)
        return ratios, np.mean(ratios)
    ratios = wrong_prob / (correct_prob + 1e-10)
    if aggregator == "closer_to_1_better":
        return ratios, np.mean(np.minimum(ratios, 1 / (ratios + 1e-10)))
    return ratios, np.mean(np.maximum(0, 1 - ratios))


# normal range, a model near collapse (P(correct) ~ 1e-9: the guard moves R by 10%), collapsed (P ~ 1e-13)
PARITY_CASES = [
    ([0.5, 1.2, 2.0], [[1.0, 2.0], [0.3, 0.9, 1.5], [2.0]]),
    ([20.7, 21.0, 19.5], [[21.0, 22.0], [20.0], [18.0, 25.0]]),
    ([30.0, 45.0, 123.0], [[31.0, 29.0], [40.0, 44.0], [100.0, 130.0]]),
]


@pytest.mark.parametrize("correct, wrong", PARITY_CASES)
def test_truth_ratio_equals_open_unlearning(correct, wrong):
    their_r, their_forget = their_truth_ratio(correct, wrong, "closer_to_1_better")
    _, their_retain = their_truth_ratio(correct, wrong, "true_better")
    their_t, their_prob_mean = their_truth_ratio(correct, wrong, "prob_mean")
    assert truth_ratios(correct, wrong) == pytest.approx(list(their_r), rel=1e-12, abs=0)
    assert truth_ratio(correct, wrong, "forget").value == pytest.approx(their_forget, rel=1e-12, abs=1e-300)
    assert truth_ratio(correct, wrong, "retain").value == pytest.approx(their_retain, rel=1e-12, abs=1e-300)
    assert truth_ratios_prob_mean(correct, wrong) == pytest.approx(list(their_t), rel=1e-12, abs=1e-300)
    assert truth_ratio_prob_mean(correct, wrong).value == pytest.approx(their_prob_mean, rel=1e-12, abs=1e-300)


def test_truth_ratio_guard_by_hand():
    """The 1e-10 guard decides the result once the paraphrase is unlikely; without it these would all be 1."""
    # paraphrase and perturbed answers equally unlikely at 30 nats/token: R = e^-30 / (e^-30 + 1e-10) ~ 9.36e-4
    p = math.exp(-30.0)
    assert truth_ratios([30.0], [[31.0, 29.0]]) == [pytest.approx(p / (p + 1e-10), rel=1e-12)]
    assert truth_ratio([30.0], [[31.0, 29.0]], "forget").value == pytest.approx(p / (p + 1e-10), rel=1e-12)
    # prob_mean: e^-30 / (2 e^-30 + 1e-10) ~ 9.35e-4 instead of 1/2
    assert truth_ratios_prob_mean([30.0], [[30.0]]) == [pytest.approx(p / (2 * p + 1e-10), rel=1e-12)]
    # exp underflows to 0 at 800 nats: R = 0 / (0 + 1e-10) = 0 and the forget side min(0, 1/(0 + 1e-10)) = 0
    assert truth_ratio([800.0], [[800.0]], "forget").value == 0.0
    # at 1 nat the guard is invisible: R = e^-2 / e^-1 = e^-1 (to 1e-9 relative)
    assert truth_ratios([1.0], [[2.0]]) == [pytest.approx(math.exp(-1.0), rel=1e-9)]


def test_forget_side_of_equal_answers():
    # both answers certain (NLL 0): R = 1 / (1 + 1e-10) < 1 and 1/(R + 1e-10) > R, so the forget side is R itself
    assert truth_ratio([0.0], [[0.0]], "forget").value == pytest.approx(1 / (1 + 1e-10), rel=1e-15)
    assert truth_ratio([0.0], [[0.0]], "forget").value < 1.0


def test_normalised_probability_by_hand_and_as_open_unlearning():
    # P(correct) = 1, wrong P = 1/2 and 1/4: 1 / (1 + 0.75 + 1e-10) = 4/7 (a SUM over the wrong answers)
    result = normalised_probability([0.0], [[math.log(2), math.log(4)]])
    assert result.value == pytest.approx(1 / (1.75 + 1e-10), rel=1e-12)
    correct, wrong = [0.3, 2.0, 25.0], [[0.5, 1.0, 0.2], [2.5], [30.0, 24.0]]
    c = np.exp(-np.array(correct))
    w = np.array([np.sum(np.exp(-np.array(x))) for x in wrong])
    assert normalised_probability(correct, wrong).per_item == pytest.approx(list(c / (c + w + 1e-10)), rel=1e-12)


def test_prob_mean_by_hand():
    # P(correct) = 1/2, P(wrong) = exp(-mean(ln 2, ln 8)) = exp(-ln 4) = 1/4: T = 0.5 / 0.75 = 2/3
    assert truth_ratio_prob_mean([math.log(2)], [[math.log(2), math.log(8)]]).value == pytest.approx(2 / 3, rel=1e-9)


def test_forget_quality_uses_raw_ratios_not_the_forget_side():
    """KS on R, as open-unlearning's ks_test: the folded min(R, 1/R) of these two samples is identical (p = 1),
    the raw ratios are not."""
    unlearned, reference = [0.5, 2.0, 0.25, 4.0], [0.5, 0.5, 0.25, 0.25]
    assert [min(r, 1 / r) for r in unlearned] == reference
    assert forget_quality(unlearned, reference) == pytest.approx(ks_2samp(unlearned, reference).pvalue)
    assert forget_quality(unlearned, reference) < 0.9


def test_tofu_model_utility_is_their_harmonic_mean_of_nine():
    parts = dict(zip(TOFU_UTILITY_PARTS, [0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1]))
    assert tofu_model_utility(parts) == pytest.approx(hmean(list(parts.values())), rel=1e-12)
    # by hand: 9 / (1/0.9 + ... + 1/0.1) = 9 / 28.2897... = 0.31814
    assert tofu_model_utility(parts) == pytest.approx(9 / sum(1 / v for v in parts.values()), rel=1e-12)
    with pytest.raises(ValueError, match="world_facts_truth_ratio"):
        tofu_model_utility({**parts, "world_facts_truth_ratio": None})
    with pytest.raises(ValueError, match="retain_probability"):
        tofu_model_utility({k: v for k, v in parts.items() if k != "retain_probability"})


def test_min_k_by_hand_and_as_open_unlearning():
    # NLLs 1..5, k = 0.4: int(5 * 0.4) = 2 least likely tokens, NLL 5 and 4: score 4.5
    assert min_k_score([1.0, 2.0, 3.0, 4.0, 5.0], 0.4) == pytest.approx(4.5)
    assert min_k_score([3.0], 0.4) == pytest.approx(3.0)  # at least one token
    assert min_k_score([], 0.4) == 0.0
    nll = [0.1, 2.3, 0.05, 7.0, 1.1, 0.4, 3.3]
    lp = -np.array(nll)
    their = -np.mean(np.sort(lp)[: max(1, int(len(lp) * 0.4))])
    assert min_k_score(nll, 0.4) == pytest.approx(their, rel=1e-12)


def test_mia_auc_by_hand_and_orientation():
    # forget [1, 2], holdout [3, 1.5]: holdout > forget in (3,1) (3,2) (1.5,1) = 3 of 4 pairs -> 0.75
    assert mia_auc([1.0, 2.0], [3.0, 1.5]) == pytest.approx(0.75)
    assert mia_auc([1.0, 2.0], [2.0, 2.0]) == pytest.approx((1 + 0.5 + 1 + 0.5) / 4)  # ties count 1/2
    assert mia_auc([0.1, 0.2], [5.0, 6.0]) == 1.0  # forget answers far more likely: memorised
    assert mia_auc([5.0, 6.0], [0.1, 0.2]) == 0.0 < OVER_UNLEARNING_AUC  # less likely than never-seen ones
    with pytest.raises(ValueError):
        mia_auc([], [1.0])


def test_privleak_by_hand():
    # MUSE's AUC is 1 - ours: ((1 - 0.9) - (1 - 0.5)) / (1 - 0.5) * 100 = (0.1 - 0.5) / 0.5 * 100 = -80
    assert privleak(0.9, 0.5) == pytest.approx(-80.0, rel=1e-8)
    assert privleak(0.5, 0.5) == 0.0
    assert privleak(0.2, 0.6) == pytest.approx(((0.8 - 0.4) / (0.4 + 1e-10)) * 100, rel=1e-12)


def test_forget_quality_is_the_same_on_both_truth_ratio_definitions_in_the_normal_range():
    """prob_mean's T = P(c) / (P(c) + P(w)) = 1 / (1 + R) is a decreasing function of R away from the 1e-10 guards,
    and the KS p-value depends only on the order of the pooled values: the two forget qualities agree (what the
    TOFU report shows in every row). Where the guards bite (a collapsed model) they may differ."""
    rng = np.random.default_rng(0)
    samples = []
    for shift in (0.0, 0.7):  # two models: the second prefers the wrong answers more
        correct = list(rng.uniform(0.5, 4.0, size=30))
        wrong = [list(c + shift + rng.normal(0, 0.8, size=5)) for c in correct]
        samples.append((correct, wrong))
    r = [truth_ratios(c, w) for c, w in samples]
    t = [truth_ratios_prob_mean(c, w) for c, w in samples]
    assert forget_quality(t[0], t[1]) == pytest.approx(forget_quality(r[0], r[1]), rel=1e-12)
    assert forget_quality(r[0], r[1]) < 0.9  # the two models differ: the agreement is not two p-values of 1
