"""Attacks on an unlearned model (grin_engine/attacks/): pure pieces on hand values, the rest on tiny models."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from grin_engine import attacks
from grin_engine.attacks import AttackConfig, Unlearned, attack_unlearned, parse_attacks
from grin_engine.attacks.base import recovery, split_halves
from grin_engine.attacks.prompting import one_shot_items, paraphrase_items, prefixed_tokenizer
from grin_engine.attacks.quantisation import gguf_round_trip, quantise_model, rtn_round_trip
from grin_engine.attacks.sampling import leak_share, sample_answers
from grin_engine.events import Progress, Stopped
from grin_engine.config import GrinConfig, GrinError
from grin_engine.data import QAItem, format_prompt
from grin_engine.evaluation.evaluate import CUT_MARK
from grin_engine.runs.pipeline import run


def checksum(model) -> str:
    import hashlib

    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


# --- recovery ---------------------------------------------------------------------------------------------------------


def test_recovery_on_hand_values():
    assert recovery(1.0, 0.2, 0.6) == pytest.approx(0.5)  # half of what was removed came back
    assert recovery(1.0, 0.2, 0.2) == 0.0
    assert recovery(1.0, 0.2, 1.0) == pytest.approx(1.0)
    assert recovery(0.8, 0.4, 0.3) == pytest.approx(-0.25)  # the attack removed even more
    assert recovery(0.5, 0.1, 0.9) == pytest.approx(2.0)  # overshoot: not clipped
    # a metric that goes up with forgetting (truth ratio on forget): the same formula, signs cancel
    assert recovery(0.2, 0.9, 0.55) == pytest.approx(0.5)


def test_recovery_undefined_when_nothing_was_forgotten_or_missing():
    assert recovery(0.7, 0.7, 0.9) is None
    assert recovery(0.7, 0.7 + 1e-13, 0.9) is None
    assert recovery(None, 0.1, 0.2) is None
    assert recovery(0.5, 0.1, None) is None


# --- the split --------------------------------------------------------------------------------------------------------


def test_split_is_deterministic_disjoint_and_complete():
    a, b = split_halves(11, seed=3)
    assert (a, b) == split_halves(11, seed=3)
    assert not set(a) & set(b)
    assert sorted(a + b) == list(range(11))
    assert len(a) == 5 and len(b) == 6
    assert split_halves(11, seed=4) != (a, b)


def test_split_needs_two_items():
    with pytest.raises(GrinError, match="at least 2"):
        split_halves(1, 0)


# --- quantisation -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("bits", [8, 4])
def test_rtn_error_within_half_a_step(bits):
    torch.manual_seed(0)
    w = torch.randn(64, 96) * torch.rand(64, 1) * 0.1  # rows of different scale
    w[3, :32] = 0.0  # an all-zero group stays zero
    out = rtn_round_trip(w, bits, group_size=32)
    qmax = 2 ** (bits - 1) - 1
    scale = (w.reshape(64, 3, 32).abs().amax(-1, keepdim=True) / qmax).to(torch.bfloat16).float()
    bound = (scale / 2).expand(64, 3, 32).reshape(64, 96)
    assert torch.all((out - w).abs() <= bound * (1 + 1e-6))
    assert torch.all(out[3, :32] == 0)
    levels = (out.reshape(64, 3, 32) / torch.where(scale > 0, scale, 1)).round()
    assert levels.abs().max() <= qmax


@pytest.mark.parametrize("bits", [8, 4])
def test_rtn_twice_is_unchanged(bits):
    torch.manual_seed(1)
    w = torch.randn(16, 70) * 0.05  # 70: the last group is padded
    once = rtn_round_trip(w, bits, 32)
    assert torch.equal(rtn_round_trip(once, bits, 32), once)
    assert not torch.equal(once, w)


@pytest.mark.parametrize("qtype,levels", [("Q8_0", 127), ("Q4_0", 8), ("Q4_1", 15)])
def test_gguf_round_trip_error_within_the_format_bound(qtype, levels):
    torch.manual_seed(2)
    w = torch.randn(8, 64) * 0.05
    out = gguf_round_trip(w, qtype)
    groups = w.reshape(8, 2, 32)
    if qtype == "Q4_1":  # d = (max - min) / 15, w = d * q + min
        step = (groups.amax(-1) - groups.amin(-1)) / levels
    else:  # Q8_0: d = absmax / 127; Q4_0: d = (signed absmax) / -8
        step = groups.abs().amax(-1) / levels
    # half a step, except Q4_0: its levels -8..7 reach -8 d on the side of the signed absmax but only 7 d on the
    # other, so a weight near -absmax on that side is off by up to one step
    step = step if qtype == "Q4_0" else step / 2
    bound = step.unsqueeze(-1).expand(8, 2, 32).reshape(8, 64)
    # the scale is stored as float16: allow its rounding (relative 2^-11 of the largest weight of the group)
    slack = groups.abs().amax(-1, keepdim=True).expand(8, 2, 32).reshape(8, 64) * 2 ** -10
    assert torch.all((out - w).abs() <= bound + slack)
    assert gguf_round_trip(torch.randn(4, 33), qtype) is None  # a row that is no whole number of blocks


def test_quantise_model_twice_unchanged_and_counts_surviving_changes(tiny, forget_items, retain_items):
    cfg = GrinConfig(p=0.05, steps=2, max_new_tokens=4, sigma2=1e-4)
    result = run(tiny, forget_items, retain_items, cfg)
    work = __import__("grin_engine.method.patch", fromlist=["x"]).unlearned_copy(tiny, result.patch)
    quantise = lambda w: rtn_round_trip(w, 4, 32)  # noqa: E731
    first = quantise_model(work.model, quantise, tiny.model, result.patch)
    assert first["quantised"] > 0 and first["changed"] > 0
    assert 0 <= first["survived"] <= first["changed"]
    snapshot = {k: v.clone() for k, v in work.model.state_dict().items()}
    quantise_model(work.model, quantise)
    assert all(torch.equal(snapshot[k], v) for k, v in work.model.state_dict().items())


# --- prompting tricks -------------------------------------------------------------------------------------------------


def test_forced_prefix_sits_in_the_assistant_turn(tokenizer):
    forced = prefixed_tokenizer(tokenizer, "Sure, here is the answer:")
    prompt = format_prompt(forced, "Who is Harry's enemy?")
    plain = format_prompt(tokenizer, "Who is Harry's enemy?")
    assert prompt == plain + "Sure, here is the answer:"
    # the same text as a conversation whose assistant message starts with the prefix: the prompt is its beginning
    turn = tokenizer.apply_chat_template([{"role": "user", "content": "Who is Harry's enemy?"},
                                          {"role": "assistant", "content": "Sure, here is the answer: Voldemort"}],
                                         tokenize=False)
    assert turn.startswith(prompt)
    assert prompt.rindex("<|im_start|>assistant\n") < prompt.index("Sure, here")
    assert format_prompt(tokenizer, "x") == plain.replace("Who is Harry's enemy?", "x")  # the original is unchanged


def test_prefix_needs_a_chat_template(tokenizer):
    bare = __import__("copy").copy(tokenizer)
    bare.chat_template = None
    with pytest.raises(GrinError, match="chat template"):
        prefixed_tokenizer(bare)


def test_paraphrase_and_one_shot_items():
    items = [QAItem("Who is the headmaster?", "Albus Dumbledore.", ["Dumbledore"], paraphrased_questions=["Who runs the school?", "Name the head."]),
             QAItem("Harry's owl?", "Hedwig.", ["Hedwig"]),
             QAItem("Harry's house?", "Gryffindor, like Dumbledore.", ["Gryffindor"], paraphrased_questions=["Which house?"])]
    para, origin = paraphrase_items(items)
    assert [p.question for p in para] == ["Who runs the school?", "Name the head.", "Which house?"]
    assert origin == [0, 0, 2] and para[0].answer == items[0].answer and para[2].keywords == ["Gryffindor"]
    shots, origin, context = one_shot_items(items, seed=0)
    assert (shots, origin, context) == one_shot_items(items, seed=0)
    for new, i, j in zip(shots, origin, context):
        assert i != j and new.question.endswith(items[i].question)
        assert items[j].answer in new.question
        assert not any(k.lower() in items[j].answer.lower() for k in items[i].keywords)  # no answer given away
    assert 0 not in origin or context[origin.index(0)] != 2  # item 2's answer holds "Dumbledore"


def test_parse_attacks():
    assert parse_attacks("relearn, quant4,prefix") == ["relearn", "quant4", "prefix"]
    assert parse_attacks("all") == list(attacks.ATTACKS)
    assert parse_attacks("gguf-q4_1") == ["gguf_q4_1"]
    with pytest.raises(GrinError, match="unknown nope"):
        parse_attacks("relearn,nope")


# --- sampling ---------------------------------------------------------------------------------------------------------


def test_sampling_is_seeded_and_leaves_the_global_random_state(tiny):
    questions = ["Who is Harry's enemy?", "Which house is Harry in?"]
    torch.manual_seed(123)
    state = torch.get_rng_state()
    one = sample_answers(tiny.model, tiny.tokenizer, questions, n=3, max_new_tokens=6, seed=5)
    assert torch.equal(torch.get_rng_state(), state)
    two = sample_answers(tiny.model, tiny.tokenizer, questions, n=3, max_new_tokens=6, seed=5)
    other = sample_answers(tiny.model, tiny.tokenizer, questions, n=3, max_new_tokens=6, seed=6)
    assert one == two and len(one) == 2 and all(len(a) == 3 for a in one)
    assert one != other
    answers, cut = sample_answers(tiny.model, tiny.tokenizer, questions, n=3, max_new_tokens=6, seed=5,
                                  return_cut=True)  # the same answers, with where each ran to the token limit
    assert answers == one and [len(c) for c in cut] == [3, 3] and any(any(c) for c in cut)


def test_leak_share_on_hand_values():
    share, per_item = leak_share([["no", "it is Voldemort"], ["nothing", "none"], ["x"]],
                                 [["Voldemort"], ["Hedwig"], []])
    assert per_item == [1.0, 0.0, None] and share == 0.5


# --- the attacks end to end on a tiny model ---------------------------------------------------------------------------


@pytest.fixture
def tiny_run(tiny, forget_items, retain_items):
    items = [dataclasses.replace(it, paraphrased_questions=[f"Tell me: {it.question}"]) for it in forget_items]
    cfg = GrinConfig(p=0.05, steps=2, max_new_tokens=4, sigma2=1e-4, batch_size=2)
    return items, cfg, run(tiny, items, retain_items, cfg)


def test_every_attack_leaves_the_base_and_the_run_unchanged(tiny, retain_items, tiny_run):
    items, cfg, result = tiny_run
    base_sum = checksum(tiny.model)
    patch_before = {k: (None if i is None else i.clone(), v.clone()) for k, (i, v) in result.patch.entries.items()}
    acfg = AttackConfig(relearn_steps=2, samples=2, relearn_lr=1e-3)
    stages = []
    results = attack_unlearned(tiny, [Unlearned.of("grin", result)], items, retain_items, cfg, ["all"], acfg,
                               Progress(lambda stage, done, total, *extra: stages.append(stage)))
    assert checksum(tiny.model) == base_sum
    for name, (index, values) in result.patch.entries.items():
        assert torch.equal(values, patch_before[name][1])
    assert [r.attack for r in results] == list(attacks.ATTACKS)
    assert {s.split("/")[1] for s in stages} == set(attacks.ATTACKS)
    by_name = {r.attack: r for r in results}
    relearn = by_name["relearn"]
    assert set(relearn.metrics) == {"forget_A", "forget_B", "retain"}
    assert "fluency" in relearn.metrics["forget_B"] and "fluency" in by_name["quant4"].metrics["forget"]
    assert sorted(relearn.details["A"] + relearn.details["B"]) == list(range(len(items)))
    assert len(relearn.answers) == len(relearn.details["B"])
    for r in results:
        assert r.skipped is None, (r.attack, r.skipped)
        for group, values in r.metrics.items():
            for metric, value in values.items():
                expected = recovery(r.baseline[group]["before"][metric], r.baseline[group]["unlearned"][metric], value)
                assert r.recovery[group][metric] == expected
    assert 0 <= by_name["quant4"].details["survival"] <= 1
    assert by_name["paraphrase"].details["paraphrases"] == len(items)
    assert by_name["paraphrase"].answers[0]["question"].startswith("Tell me:")
    for r in results:  # answers that hit the 4-token limit (greedy or sampled) are shown marked as cut, as in Compare
        assert any(a["attacked"].endswith(CUT_MARK) for a in r.answers), (r.attack, r.answers)
    report = attacks.attacks_report(results)
    assert set(report["grin"]) == set(attacks.ATTACKS)
    rows = attacks.recovery_table(results)
    assert rows[0]["group"] == "forget_B"


def test_relearning_changes_only_its_copy(tiny, retain_items, tiny_run):
    items, cfg, result = tiny_run
    base_sum = checksum(tiny.model)
    unlearned = Unlearned.of("grin", result)
    results = attack_unlearned(tiny, [unlearned], items, retain_items, cfg, ["relearn"],
                             AttackConfig(relearn_steps=3, relearn_lr=1e-2))
    assert checksum(tiny.model) == base_sum
    losses = results[0].details["losses"]
    assert len(losses) == 3 and losses[-1] < losses[0]  # it did train (on its own copy)
    # the unlearned model rebuilt from the run's patch answers as the run did
    again = attack_unlearned(tiny, [unlearned], items, retain_items, cfg, ["prefix"])[0]
    assert again.baseline["forget"]["unlearned"] == {
        m: v for m, v in result.metrics["after"]["forget"].items()}


def test_relearning_and_its_evaluation_use_the_run_label_layout(tiny, retain_items, tiny_run, monkeypatch):
    """--label-layout applies to the relearning attack's training batches and to every attack's evaluation."""
    from grin_engine.attacks import base, relearn

    items, cfg, result = tiny_run
    layouts = []
    real_batches, real_evaluate = relearn.qa_batches, base.evaluate_split
    monkeypatch.setattr(relearn, "qa_batches", lambda *a, **k: layouts.append(("train", a[4])) or real_batches(*a, **k))
    monkeypatch.setattr(base, "evaluate_split",
                        lambda *a, **k: layouts.append(("evaluate", k["layout"])) or real_evaluate(*a, **k))
    attack_unlearned(tiny, [Unlearned.of("grin", result)], items, retain_items,
                     dataclasses.replace(cfg, label_layout="chat_turn"), ["relearn"], AttackConfig(relearn_steps=1))
    assert layouts[0] == ("train", "chat_turn") and {layout for _, layout in layouts} == {"chat_turn"}
    assert ("evaluate", "chat_turn") in layouts


def test_a_stop_ends_the_attacks(tiny, retain_items, tiny_run):
    items, cfg, result = tiny_run
    for name in ("quant8", "relearn"):
        with pytest.raises(Stopped):
            attack_unlearned(tiny, [Unlearned.of("grin", result)], items, retain_items, cfg, [name],
                             progress=Progress(should_stop=lambda: True))


def test_attack_config_checks():
    with pytest.raises(GrinError, match="relearn steps"):
        AttackConfig(relearn_steps=0)
    with pytest.raises(GrinError, match="relearn lr"):
        AttackConfig(relearn_lr=-1.0)
    with pytest.raises(GrinError, match="samples"):
        AttackConfig(samples=1.5)
    with pytest.raises(GrinError, match="from 1 to 64"):
        AttackConfig(samples=65)
    with pytest.raises(GrinError, match="from 1 to 500"):
        AttackConfig(relearn_steps=10_000)


def test_a_run_without_patch_cannot_be_attacked(tiny_run):
    _, _, result = tiny_run
    with pytest.raises(GrinError, match="no unlearned model"):
        Unlearned.of("grin", dataclasses.replace(result, patch=None))
