"""Tests for grin_engine.data: file formats, the TOFU files, one clear GrinError per bad input, tokenisation with
labels on answer tokens only, padding, and the refusal sub-batch of the forget batches."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from grin_engine.config import GrinError
from grin_engine.data import (IDK_ANSWERS, IGNORE_INDEX, QAItem, builtin_names, collate, encode_pair, forget_batches,
                              format_prompt, load_items, make_batches, qa_batches)
from grin_engine.benchmarks.tofu import TOFU_DIR  # the TOFU files ship with the project (assets/tofu)

RECORDS = [
    {"question": "Who is the headmaster of Hogwarts?", "answer": "Albus Dumbledore.", "keywords": ["Dumbledore", "Albus"]},
    {"question": "What is Harry's owl called?", "answer": "Hedwig, a snowy owl.", "keywords": ["Hedwig"]},
    {"question": "Which house is Harry in, \"really\"?", "answer": "Gryffindor, of course.", "keywords": []},
]
EXPECTED = [QAItem(r["question"], r["answer"], r["keywords"]) for r in RECORDS]


# ---------------------------------------------------------------------------------------------------------------------
# Formats


def test_jsonl_json_list_and_csv_give_the_same_items(tmp_path):
    jsonl = tmp_path / "set.jsonl"
    jsonl.write_text("\n".join(json.dumps(r) for r in RECORDS) + "\n\n", encoding="utf-8")
    as_list = tmp_path / "set.json"
    as_list.write_text(json.dumps(RECORDS, indent=2), encoding="utf-8")
    csv_file = tmp_path / "set.csv"
    csv_file.write_text(
        "question,answer,keywords\n"
        "Who is the headmaster of Hogwarts?,Albus Dumbledore.,Dumbledore; Albus\n"
        "What is Harry's owl called?,\"Hedwig, a snowy owl.\",Hedwig\n"
        "\"Which house is Harry in, \"\"really\"\"?\",\"Gryffindor, of course.\",\n",
        encoding="utf-8",
    )
    for path in (jsonl, as_list, csv_file):
        assert load_items(str(path)) == EXPECTED, path.name


def test_csv_keywords_split_on_semicolons_and_header_case(tmp_path):
    path = tmp_path / "upload.csv"
    path.write_text("Question,Answer,Keywords\nWhat is the capital of France?,Paris.,a;b\n", encoding="utf-8")
    assert load_items(str(path)) == [QAItem("What is the capital of France?", "Paris.", ["a", "b"])]


def test_csv_without_keywords_column_and_utf8_bom(tmp_path):
    path = tmp_path / "upload.csv"
    path.write_bytes("\ufeffquestion,answer\nWhere is Zürich?,In Switzerland.\n".encode("utf-8"))
    assert load_items(str(path)) == [QAItem("Where is Zürich?", "In Switzerland.", [])]


def test_optional_fields_and_tofu_spelling(tmp_path):
    path = tmp_path / "set.jsonl"
    rows = [
        {"question": "Q1?", "answer": "A1.", "paraphrased_answer": "P1.", "perturbed_answer": ["X1.", "Y1."]},
        {"question": "Q2?", "answer": "A2.", "perturbed_answers": ["Z2."], "keywords": "k1; k2"},
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows), encoding="utf-8")
    items = load_items(str(path))
    assert items[0] == QAItem("Q1?", "A1.", [], "P1.", ["X1.", "Y1."])
    assert items[1] == QAItem("Q2?", "A2.", ["k1", "k2"], None, ["Z2."])


def test_max_items(tmp_path):
    path = tmp_path / "set.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in RECORDS), encoding="utf-8")
    assert load_items(str(path), max_items=2) == EXPECTED[:2]
    assert load_items(str(path), max_items=10) == EXPECTED


@pytest.mark.parametrize("name", ["harry_potter", "general_knowledge"])
def test_builtin_sets_load_with_keywords(name):
    assert name in builtin_names()
    items = load_items(name)
    assert items, name
    for item in items:
        assert item.question.strip() and item.answer.strip()
        assert item.keywords, f"{name}: {item.question!r} has no keywords"


# ---------------------------------------------------------------------------------------------------------------------
# TOFU files (real data, shipped in assets/tofu: a missing file fails here, as it would fail the tofu command)


@pytest.mark.parametrize("name, count, first", [
    ("forget01_perturbed", 40, "What is the full name of the author born in Kuwait City"),
    ("retain_perturbed", 400, "Who is this celebrated LGBTQ+ author from Santiago, Chile"),
])
def test_tofu_files_load(name, count, first):
    path = TOFU_DIR / f"{name}.json"
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    items = load_items(str(path))
    assert len(items) == len(rows) == count
    for item, row in zip(items, rows):
        assert item.question == row["question"].strip()
        assert item.answer == row["answer"].strip()
        assert item.paraphrased_answer == row["paraphrased_answer"]
        assert item.perturbed_answers == row["perturbed_answer"]
        assert len(item.perturbed_answers) == 5
    assert items[0].question.startswith(first)


# ---------------------------------------------------------------------------------------------------------------------
# Bad inputs: one GrinError each, one line, naming the problem


def _one_error(source: str, *fragments: str) -> str:
    with pytest.raises(GrinError) as info:
        load_items(source)
    message = str(info.value)
    assert type(info.value) is GrinError
    assert "\n" not in message, message
    for fragment in fragments:
        assert fragment.lower() in message.lower(), (fragment, message)
    return message


BAD_FILES = {
    "empty file": ("empty.jsonl", b"", ["empty.jsonl", "empty"]),
    "whitespace only": ("blank.csv", b"  \n\n\t \n", ["blank.csv", "empty"]),
    "csv without an answer column": ("noanswer.csv", b"question,reply\nWhat?,That.\n", ["noanswer.csv", "answer"]),
    "csv with a header only": ("header.csv", b"question,answer\n", ["header.csv", "no items"]),
    "json item without a question": (
        "list.json", json.dumps([RECORDS[0], {"answer": "An answer without a question."}]).encode(),
        ["list.json", "item 2", "question"]),
    "jsonl item with an empty answer": (
        "set.jsonl", (json.dumps({"question": "Q?", "answer": "   "}) + "\n").encode(), ["item 1", "answer"]),
    "invalid json line": ("broken.jsonl", (json.dumps(RECORDS[0]) + "\n{not json}\n").encode(),
                          ["broken.jsonl", "line 2"]),
    "invalid json list": ("broken.json", b'[{"question": "Q?", "answer": "A."},', ["broken.json", "json"]),
    "json list of non-objects": ("strings.json", b'["just a string"]', ["strings.json", "item 1"]),
    "non-UTF-8 bytes": ("latin.jsonl", b"\xff\xfe\x00bad", ["latin.jsonl", "utf-8"]),
}


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_bad_file_raises_one_clear_error(tmp_path, case):
    name, content, fragments = BAD_FILES[case]
    path = tmp_path / name
    path.write_bytes(content)
    _one_error(str(path), *fragments)


def test_unknown_builtin_name_lists_builtin_names():
    message = _one_error("no_such_set", "no_such_set")
    names = builtin_names()
    assert names, "no built-in sets found"
    for name in names:
        assert name in message


def test_missing_file_path():
    _one_error("/tmp/does/not/exist.jsonl", "/tmp/does/not/exist.jsonl", "not found")


def test_missing_relative_file():
    _one_error("my_upload.csv", "my_upload.csv", "not found")


def test_tofu_hub_without_network_is_a_grin_error():
    # HF_HUB_OFFLINE=1 (conftest): the Hub cannot be reached, which must surface as one GrinError
    _one_error("tofu:forget01_perturbed_no_such_config", "tofu")
    _one_error("tofu:", "tofu config")


# ---------------------------------------------------------------------------------------------------------------------
# Tokenisation


def _prompt_ids(tokenizer, question):
    return tokenizer(format_prompt(tokenizer, question), add_special_tokens=False)["input_ids"]


def test_format_prompt_uses_the_chat_template(tokenizer):
    assert format_prompt(tokenizer, "Why?") == "<|im_start|>user\nWhy?<|im_end|>\n<|im_start|>assistant\n"


def test_encode_pair_labels_only_the_answer(tokenizer):
    question, answer = "Who is Harry's enemy?", "Harry's enemy is Voldemort."
    ids, labels = encode_pair(tokenizer, question, answer, 256)
    n_prompt = len(_prompt_ids(tokenizer, question))
    assert len(ids) == len(labels)
    assert ids[:n_prompt] == _prompt_ids(tokenizer, question)
    assert labels[:n_prompt] == [IGNORE_INDEX] * n_prompt
    assert IGNORE_INDEX not in labels[n_prompt:]
    assert labels[n_prompt:] == ids[n_prompt:]
    assert labels[-1] == tokenizer.eos_token_id
    assert tokenizer.decode(labels[n_prompt:]) == answer + tokenizer.eos_token


def test_encode_pair_without_chat_template(tokenizer):
    plain = copy.deepcopy(tokenizer)
    plain.chat_template = None
    question, answer = "What colour is the sky?", "The sky is blue."
    assert format_prompt(plain, question) == f"Question: {question}\nAnswer:"
    ids, labels = encode_pair(plain, question, answer, 256)
    n_prompt = len(_prompt_ids(plain, question))
    assert labels[:n_prompt] == [IGNORE_INDEX] * n_prompt
    assert tokenizer.decode(labels[n_prompt:]) == " " + answer + tokenizer.eos_token


def test_encode_pair_truncates_the_answer_not_the_prompt(tokenizer):
    question, answer = "Which house is Harry in?", "Harry is in Gryffindor. " * 20
    n_prompt = len(_prompt_ids(tokenizer, question))
    ids, labels = encode_pair(tokenizer, question, answer, n_prompt + 5)
    assert len(ids) == n_prompt + 5
    assert labels[:n_prompt] == [IGNORE_INDEX] * n_prompt
    assert IGNORE_INDEX not in labels[n_prompt:]
    # a max_length shorter than the prompt still keeps the prompt whole and one answer token
    ids, labels = encode_pair(tokenizer, question, answer, 3)
    assert len(ids) == n_prompt + 1 and labels[-1] != IGNORE_INDEX


def test_collate_pads_right(tokenizer):
    examples = [([5, 6, 7], [IGNORE_INDEX, 6, 7]), ([8], [8]), ([1, 2], [IGNORE_INDEX, IGNORE_INDEX])]
    batch = collate(examples, pad_id=99)
    assert set(batch) == {"input_ids", "attention_mask", "labels"}
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 99, 99], [1, 2, 99]]
    assert batch["labels"].tolist() == [[IGNORE_INDEX, 6, 7], [8, IGNORE_INDEX, IGNORE_INDEX],
                                        [IGNORE_INDEX, IGNORE_INDEX, IGNORE_INDEX]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0], [1, 1, 0]]
    assert all(t.dtype == torch.long for t in batch.values())


def test_make_batches_groups_in_order(tokenizer, forget_items):
    pairs = [(it.question, it.answer) for it in forget_items]
    batches = make_batches(tokenizer, pairs, 3, 256)
    assert [b["input_ids"].shape[0] for b in batches] == [3, 1]
    row = 0
    for batch in batches:
        for r in range(batch["input_ids"].shape[0]):
            ids, labels = encode_pair(tokenizer, *pairs[row], 256)
            n = len(ids)
            assert batch["input_ids"][r, :n].tolist() == ids
            assert batch["labels"][r, :n].tolist() == labels
            assert (batch["input_ids"][r, n:] == tokenizer.pad_token_id).all()
            assert (batch["labels"][r, n:] == IGNORE_INDEX).all()
            assert int(batch["attention_mask"][r].sum()) == n
            row += 1


def _rows(batch):
    """Per row: (prompt token ids, answer token ids)."""
    rows = []
    for r in range(batch["input_ids"].shape[0]):
        length = int(batch["attention_mask"][r].sum())
        ids, labels = batch["input_ids"][r, :length].tolist(), batch["labels"][r, :length].tolist()
        start = next(i for i, label in enumerate(labels) if label != IGNORE_INDEX)
        rows.append((ids[:start], ids[start:]))
    return rows


def test_forget_batches_carry_an_idk_sub_batch(tokenizer, forget_items):
    batches = forget_batches(tokenizer, forget_items, 3, 256, seed=0)
    plain = qa_batches(tokenizer, forget_items, 3, 256)
    assert len(batches) == len(plain) == 2
    refusals = {answer + tokenizer.eos_token for answer in IDK_ANSWERS}
    for batch, reference in zip(batches, plain):
        for key in ("input_ids", "attention_mask", "labels"):
            assert torch.equal(batch[key], reference[key])
        idk = batch["idk"]
        assert set(idk) >= {"input_ids", "attention_mask", "labels"}
        assert idk["input_ids"].shape[0] == batch["input_ids"].shape[0]
        for (prompt, _), (idk_prompt, idk_answer) in zip(_rows(batch), _rows(idk)):
            assert idk_prompt == prompt  # the same question
            assert tokenizer.decode(idk_answer) in refusals
    # the refusals are chosen by the seed
    again = forget_batches(tokenizer, forget_items, 3, 256, seed=0)
    assert all(torch.equal(a["idk"]["input_ids"], b["idk"]["input_ids"]) for a, b in zip(batches, again))


# --- answer labels: ours and open-unlearning's layout under SmolLM2's chat template ----------------------------

# SmolLM2-135M-Instruct's chat template, as its tokenizer ships it (a default system prompt when none is given)
SMOLLM2_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\\n"
    "You are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\\n' }}{% endif %}{{'<|im_start|>'"
    " + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt"
    " %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


@pytest.fixture
def smollm2_tokenizer(tokenizer):
    tok = copy.deepcopy(tokenizer)
    tok.chat_template = SMOLLM2_TEMPLATE
    return tok


def _labelled(tok, layout):
    ids, labels = encode_pair(tok, "Who wrote it?", "Jane wrote it.", 256, layout)
    return tok.decode([t for t in labels if t != IGNORE_INDEX]), ids, labels


def test_answer_eos_layout_labels_what_the_model_generates(smollm2_tokenizer):
    text, ids, labels = _labelled(smollm2_tokenizer, "answer_eos")
    assert text == "Jane wrote it.<|im_end|>"
    prompt = smollm2_tokenizer.decode([t for t, lab in zip(ids, labels) if lab == IGNORE_INDEX])
    assert prompt.startswith("<|im_start|>system\nYou are a helpful AI assistant named SmolLM")
    assert prompt.endswith("<|im_start|>user\nWho wrote it?<|im_end|>\n<|im_start|>assistant\n")


def test_chat_turn_layout_is_open_unlearnings(smollm2_tokenizer):
    """open-unlearning's preprocess_chat_instance: labels = template(user, assistant)[len(template(user, gen prompt)):]
    plus an EOS when the last token is not one: '<|im_end|>' '\\n' '<|im_end|>', two tokens more than ours."""
    text, ids, labels = _labelled(smollm2_tokenizer, "chat_turn")
    assert text == "Jane wrote it.<|im_end|>\n<|im_end|>"
    ours = _labelled(smollm2_tokenizer, "answer_eos")
    assert len([t for t in labels if t != IGNORE_INDEX]) == len([t for t in ours[2] if t != IGNORE_INDEX]) + 2
    # their layout written out: the whole conversation, tokenised, with an EOS appended
    chat = smollm2_tokenizer.apply_chat_template([{"role": "user", "content": "Who wrote it?"},
                                                  {"role": "assistant", "content": "Jane wrote it."}], tokenize=False)
    theirs = smollm2_tokenizer(chat, add_special_tokens=False)["input_ids"] + [smollm2_tokenizer.eos_token_id]
    assert ids == theirs
    assert ids[: len(ours[1])] == ours[1]  # same prompt and answer, only the tail differs


def test_label_layout_switch_reaches_the_batches(smollm2_tokenizer):
    items = [QAItem("Who wrote it?", "Jane wrote it.")]
    ours = qa_batches(smollm2_tokenizer, items, 1, 256)[0]
    theirs = qa_batches(smollm2_tokenizer, items, 1, 256, layout="chat_turn")[0]
    assert int((theirs["labels"] != IGNORE_INDEX).sum()) == int((ours["labels"] != IGNORE_INDEX).sum()) + 2
    with pytest.raises(GrinError, match="label layout"):
        encode_pair(smollm2_tokenizer, "q", "a", 64, "both")


# ---------------------------------------------------------------------------------------------------------------------
# The item schema: every wrong type, length or shape is a GrinError naming the item and field

from grin_engine.data import items_from_records, read_items_file  # noqa: E402


@pytest.mark.parametrize("record, message", [
    ({"question": "Q?", "answer": "A.", "keywords": 5}, "item 1: 'keywords' must be a list of texts, got int"),
    ({"question": "Q?", "answer": "A.", "paraphrased_answer": ["a", "b"]}, "'paraphrased_answer' must be text"),
    ({"question": "Q?", "answer": "A.", "perturbed_answers": {"a": 1}}, "'perturbed_answers' must be a list"),
    ({"question": "Q?", "answer": "A.", "keywords": [["nested"]]}, "'keywords' must hold texts, found list"),
    ({"question": 5, "answer": "A."}, "'question' must be text, got int"),
    ({"question": "Q?", "answer": None}, "'answer' is missing or empty"),
    ({"question": "Q" * 5000, "answer": "A."}, "'question' is 5,000 characters long; at most 2,000"),
    ({"question": "Q?", "answer": "A" * 5000}, "'answer' is 5,000 characters long"),
    ({"question": "Q?", "answer": "A.", "keywords": ["k"] * 100}, "'keywords' has 100 entries; at most 32"),
    ({"question": "Q?", "answer": "A.", "perturbed_answers": ["p"] * 50}, "at most 16"),
])
def test_item_schema_refuses_wrong_types_and_lengths(record, message):
    with pytest.raises(GrinError) as info:
        items_from_records([record], "upload.json")
    assert message in str(info.value), str(info.value)


def test_item_schema_keeps_known_fields_and_ignores_others():
    item = items_from_records([{"question": " Q? ", "answer": "A.", "keywords": ["k", 8], "perturbed_answer": "p",
                                "author": "x", "id": 3}])[0]
    assert (item.question, item.keywords, item.perturbed_answers) == ("Q?", ["k", "8"], ["p"])


@pytest.mark.parametrize("name, content, message", [
    ("deep.json", "[" * 100_000 + "]" * 100_000, "nested too deeply"),
    ("deep.jsonl", '{"question": ' + "[" * 100_000, "line 1"),
    ("huge_field.csv", "question,answer\n\"" + "x" * 200_000 + "\",a\n", "not valid CSV"),
])
def test_malformed_files_are_clear_errors(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(GrinError, match=message):
        read_items_file(path)


def test_a_file_over_the_size_cap_is_refused_before_reading(tmp_path):
    path = tmp_path / "big.jsonl"
    path.write_text('{"question": "Q?", "answer": "A."}\n' * 1000)
    with pytest.raises(GrinError, match="MB; files of at most"):
        read_items_file(path, max_bytes=1000)


def test_an_absurd_source_name_is_a_clear_error():
    with pytest.raises(GrinError, match="not a set name or a file path"):
        load_items("x" * 5000)
