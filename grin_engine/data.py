"""Question-answer data: the item contract, loaders, and tokenisation for training and evaluation.

A QA item (DESIGN.md §3) is {"question", "answer", "keywords"?, "paraphrased_answer"?, "perturbed_answers"?}.
Sources, all through `load_items(source)`:
- a built-in set name ("harry_potter", "general_knowledge", ...): assets/datasets/<name>.jsonl
- a file: JSONL, a JSON list, or CSV with columns question,answer[,keywords] (keywords separated by ";")
- "tofu:<config>" (e.g. "tofu:forget01_perturbed"): TOFU from the Hugging Face Hub (needs network)

Tokenisation puts the question in the model's chat template (or "Question: ... Answer:" for a model without one)
and labels only the answer tokens, so every loss and metric is about the answer given the question.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from . import limits
from .errors import GrinError

DATASETS_DIR = Path(__file__).resolve().parent.parent / "assets" / "datasets"
TOFU_HUB_ID = "locuslab/TOFU"
IGNORE_INDEX = -100  # label value that the loss skips (prompt and padding positions)


@dataclass
class QAItem:
    question: str
    answer: str
    keywords: list[str] = field(default_factory=list)
    paraphrased_answer: str | None = None
    perturbed_answers: list[str] = field(default_factory=list)
    paraphrased_questions: list[str] = field(default_factory=list)  # the same question reworded (attacks.py)

    def to_dict(self) -> dict:
        return asdict(self)


def require_items(forget: list[QAItem], retain: list[QAItem]) -> None:
    """Both sets need items: gradients, losses and metrics over an empty set mean nothing."""
    for which, items in (("forget", forget), ("retain", retain)):
        if not items:
            raise GrinError(f"data: the {which} set has no items")


# ---------------------------------------------------------------------------------------------------------------------
# Loading


def builtin_names() -> list[str]:
    """Names of the built-in sets (files assets/datasets/<name>.jsonl)."""
    return sorted(p.stem for p in DATASETS_DIR.glob("*.jsonl"))


def load_items(source: str, max_items: int | None = None) -> list[QAItem]:
    """Load QA items from a built-in name, a file path or "tofu:<config>"; raise GrinError on anything wrong."""
    source = str(source).strip()
    if len(source) > 4096 or "\0" in source:  # longer than any path the system accepts
        raise GrinError(f"data: {source[:60]!r}... is not a set name or a file path")
    if source.startswith("tofu:"):
        items = load_tofu_from_hub(source[len("tofu:"):])
    elif source in builtin_names():
        items = read_items_file(DATASETS_DIR / f"{source}.jsonl")
    elif limits.user_path(source).is_file():
        items = read_items_file(limits.user_path(source))
    elif "/" in source or "\\" in source or "." in source:
        raise GrinError(f"data: file {source!r} not found")
    else:
        raise GrinError(f"data: unknown built-in set {source!r}; built-in sets are: {', '.join(builtin_names())}")
    return items[:max_items] if max_items else items


def read_items_file(path: Path, max_bytes: int = limits.MAX_FILE_BYTES) -> list[QAItem]:
    """Read a JSONL, JSON-list or CSV file of QA items (the format is found from the content, not only the name)."""
    name = Path(path).name
    size = Path(path).stat().st_size
    if size > max_bytes:
        raise GrinError(f"data: {name} is {size / 1e6:.1f} MB; files of at most {max_bytes / 1e6:.1f} MB are read")
    raw = Path(path).read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise GrinError(f"data: {name} is not UTF-8 text (bad byte at position {exc.start}); save it as UTF-8") from exc
    if not text.strip():
        raise GrinError(f"data: {name} is empty")
    records = _parse_records(text, name)
    return items_from_records(records, name)


def _parse_records(text: str, name: str) -> list[dict]:
    stripped = text.lstrip()
    if name.lower().endswith(".csv") or not stripped.startswith(("{", "[")):
        reader = csv.DictReader(io.StringIO(text))
        try:
            columns = [c.strip().lower() for c in (reader.fieldnames or [])]
        except csv.Error as exc:
            raise GrinError(f"data: {name}'s first line is not a valid CSV header ({exc})") from None
        missing = [c for c in ("question", "answer") if c not in columns]
        if missing:
            raise GrinError(f"data: {name} lacks the column(s) {', '.join(missing)} (found: {', '.join(columns) or 'none'})")
        rows = []
        try:
            for row in reader:
                rows.append({(k or "").strip().lower(): v for k, v in row.items()})  # keywords: split by _texts
        except csv.Error as exc:
            raise GrinError(f"data: {name} line {reader.line_num} is not valid CSV ({exc})") from None
        return rows
    if stripped.startswith("["):
        try:
            records = json.loads(text)
        except json.JSONDecodeError as exc:
            raise GrinError(f"data: {name} is not valid JSON (line {exc.lineno}: {exc.msg})") from exc
        except RecursionError:
            raise GrinError(f"data: {name} is nested too deeply to be a list of items") from None
        return records
    records = []  # JSON Lines (TOFU's *.json files are JSON Lines too)
    for lineno, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise GrinError(f"data: {name} line {lineno} is not valid JSON ({exc.msg})") from exc
            except RecursionError:
                raise GrinError(f"data: {name} line {lineno} is nested too deeply to be an item") from None
    return records


def items_from_records(records: list, name: str = "data") -> list[QAItem]:
    """Validate plain records (dicts) into QAItems, by the one item schema (DESIGN.md §3):

    question (text, 1 to MAX_QUESTION_CHARS characters), answer (text, 1 to MAX_ANSWER_CHARS), keywords (a list of
    texts or numbers, or one text separated by ";"; at most MAX_KEYWORDS), paraphrased_answer (text or absent),
    perturbed_answers (a list of texts or one text; TOFU's spelling `perturbed_answer` is accepted; at most
    MAX_PERTURBED), paraphrased_questions (the question reworded, for the paraphrase attack: a list of texts or one
    text separated by ";"; at most MAX_PERTURBED). Any other field is ignored (TOFU rows carry more). A wrong type or length is a GrinError naming
    the item and the field.
    """
    if not isinstance(records, list) or not records:
        raise GrinError(f"data: {name} holds no items")
    if len(records) > limits.MAX_FILE_ITEMS:
        raise GrinError(f"data: {name} holds {len(records):,} items; at most {limits.MAX_FILE_ITEMS:,} are read")
    return [_item(rec, f"data: {name} item {i}") for i, rec in enumerate(records, start=1)]


def _item(rec, where: str) -> QAItem:
    if not isinstance(rec, dict):
        raise GrinError(f"{where} is not an object with question and answer")
    question = _text(rec.get("question"), f"{where}: 'question'", limits.MAX_QUESTION_CHARS)
    answer = _text(rec.get("answer"), f"{where}: 'answer'", limits.MAX_ANSWER_CHARS)
    keywords = _texts(rec.get("keywords"), f"{where}: 'keywords'", limits.MAX_KEYWORDS, limits.MAX_KEYWORD_CHARS,
                      split=";")
    perturbed = _texts(rec.get("perturbed_answers", rec.get("perturbed_answer")), f"{where}: 'perturbed_answers'",
                       limits.MAX_PERTURBED, limits.MAX_ANSWER_CHARS)
    paraphrased = rec.get("paraphrased_answer")
    if paraphrased is not None and paraphrased != "":
        paraphrased = _text(paraphrased, f"{where}: 'paraphrased_answer'", limits.MAX_ANSWER_CHARS)
    paraphrased_questions = _texts(rec.get("paraphrased_questions"), f"{where}: 'paraphrased_questions'",
                                   limits.MAX_PERTURBED, limits.MAX_QUESTION_CHARS, split=";")
    return QAItem(question=question, answer=answer, keywords=keywords, paraphrased_answer=paraphrased or None,
                  perturbed_answers=perturbed, paraphrased_questions=paraphrased_questions)


def _text(value, what: str, max_chars: int) -> str:
    """A required, non-empty text field of at most max_chars characters (stripped)."""
    if value is None or (isinstance(value, str) and not value.strip()):
        raise GrinError(f"{what} is missing or empty")
    if not isinstance(value, str):
        raise GrinError(f"{what} must be text, got {type(value).__name__}")
    if len(value) > max_chars:
        raise GrinError(f"{what} is {len(value):,} characters long; at most {max_chars:,}")
    return value.strip()


def _texts(value, what: str, max_count: int, max_chars: int, split: str | None = None) -> list[str]:
    """An optional list of short texts (numbers are written as text); one text is one entry, or several separated
    by `split`."""
    if value is None or value == "":
        return []
    if isinstance(value, str):
        value = [v for v in value.split(split)] if split else [value]
    if not isinstance(value, list):
        raise GrinError(f"{what} must be a list of texts, got {type(value).__name__}")
    if len(value) > max_count:
        raise GrinError(f"{what} has {len(value)} entries; at most {max_count}")
    out = []
    for v in value:
        if isinstance(v, bool) or not isinstance(v, (str, int, float)):
            raise GrinError(f"{what} must hold texts, found {type(v).__name__}")
        v = str(v).strip()
        if len(v) > max_chars:
            raise GrinError(f"{what}: an entry is {len(v):,} characters long; at most {max_chars:,}")
        if v:
            out.append(v)
    return out


def load_tofu_from_hub(config: str) -> list[QAItem]:
    """TOFU from the Hub with `datasets` (configs forget01/05/10, retain90/95/99, *_perturbed ...)."""
    if not config:
        raise GrinError("data: give a TOFU config, e.g. tofu:forget01_perturbed")
    try:
        from datasets import load_dataset

        rows = load_dataset(TOFU_HUB_ID, config, split="train")
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        raise GrinError(f"data: could not load TOFU config {config!r} from the Hub: {first}") from exc
    return items_from_records([dict(r) for r in rows], f"tofu:{config}")


# ---------------------------------------------------------------------------------------------------------------------
# Tokenisation


def format_prompt(tokenizer, question: str) -> str:
    """The text the model sees before its answer: the chat template with a generation prompt, or a plain format.

    The question is cut to its first MAX_QUESTION_TOKENS tokens (limits.py), everywhere: training, scoring and
    generation, so a long question costs what a short one does."""
    question = limits.truncate_tokens(tokenizer, question, limits.MAX_QUESTION_TOKENS)
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(
            [{"role": "user", "content": question}], add_generation_prompt=True, tokenize=False
        )
    return f"Question: {question}\nAnswer:"


# Which tokens of an example carry a label (DESIGN.md §4, "Answer labels"):
# - "answer_eos" (ours, the default): the answer's tokens and the tokenizer's EOS, i.e. exactly what the model
#   generates before it stops (with SmolLM2's template: "... <|im_end|>").
# - "chat_turn" (open-unlearning's preprocess_chat_instance): everything the chat template writes after the
#   generation prompt for an assistant turn, plus an EOS when that does not already end with one (SmolLM2:
#   "... <|im_end|> \n <|im_end|>", two tokens more: a newline and an EOS the model never generates).
LABEL_LAYOUTS = ("answer_eos", "chat_turn")


def encode_pair(tokenizer, question: str, answer: str, max_length: int,
                layout: str = "answer_eos") -> tuple[list[int], list[int]]:
    """(input_ids, labels) for one question/answer; labels are IGNORE_INDEX on the prompt.

    The answer ends with the EOS token so the model also learns (or unlearns) where the answer stops; `layout`
    says which tokens after the prompt are labelled (LABEL_LAYOUTS). The question is cut to MAX_QUESTION_TOKENS
    tokens (format_prompt), the answer to MAX_ANSWER_TOKENS, and what is still longer than max_length is cut from
    the end of the answer.
    """
    if layout not in LABEL_LAYOUTS:
        raise GrinError(f"label layout: unknown {layout!r}; choose one of {', '.join(LABEL_LAYOUTS)}")
    prompt_ids = tokenizer(format_prompt(tokenizer, question), add_special_tokens=False)["input_ids"]
    if layout == "chat_turn" and getattr(tokenizer, "chat_template", None):
        chat = tokenizer.apply_chat_template([{"role": "user", "content": question},
                                              {"role": "assistant", "content": answer[: 64 * limits.MAX_ANSWER_TOKENS]}],
                                             tokenize=False)
        chat_ids = tokenizer(chat, add_special_tokens=False)["input_ids"]
        if chat_ids[-1] != tokenizer.eos_token_id:
            chat_ids = chat_ids + [tokenizer.eos_token_id]
        answer_ids = chat_ids[len(prompt_ids):]
    else:
        answer_text = answer if getattr(tokenizer, "chat_template", None) else " " + answer
        answer_ids = tokenizer(answer_text[: 64 * limits.MAX_ANSWER_TOKENS], add_special_tokens=False)["input_ids"]
        answer_ids = answer_ids[: limits.MAX_ANSWER_TOKENS] + [tokenizer.eos_token_id]
    answer_ids = answer_ids[: max(1, max_length - len(prompt_ids))]
    return prompt_ids + answer_ids, [IGNORE_INDEX] * len(prompt_ids) + answer_ids


def collate(examples: list[tuple[list[int], list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad a list of (input_ids, labels) into a batch with attention_mask."""
    width = max(len(ids) for ids, _ in examples)
    input_ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((len(examples), width), dtype=torch.long)
    for row, (ids, labs) in enumerate(examples):
        input_ids[row, : len(ids)] = torch.tensor(ids)
        labels[row, : len(labs)] = torch.tensor(labs)
        attention_mask[row, : len(ids)] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def make_batches(tokenizer, pairs: list[tuple[str, str]], batch_size: int, max_length: int,
                 layout: str = "answer_eos") -> list[dict]:
    """Tokenise (question, answer) pairs and group them, in order, into padded batches."""
    encoded = [encode_pair(tokenizer, q, a, max_length, layout) for q, a in pairs]
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return [collate(encoded[i: i + batch_size], pad_id) for i in range(0, len(encoded), batch_size)]


def qa_batches(tokenizer, items: list[QAItem], batch_size: int, max_length: int,
               layout: str = "answer_eos") -> list[dict]:
    """Batches of the items' own question/answer pairs."""
    return make_batches(tokenizer, [(it.question, it.answer) for it in items], batch_size, max_length, layout)


# Refusals for the idk / dpo losses: the answer the model should give instead of the forgotten fact.
IDK_ANSWERS = [
    "I don't know.",
    "I'm not sure about that.",
    "I have no idea.",
    "I don't have that information.",
    "Sorry, I can't answer that.",
    "That's something I don't know.",
    "I'm afraid I don't know the answer.",
    "I can't recall that.",
]


def forget_batches(tokenizer, items: list[QAItem], batch_size: int, max_length: int, seed: int,
                   layout: str = "answer_eos") -> list[dict]:
    """Batches of the forget items, each with an "idk" sub-batch: the same questions answered with a refusal
    (chosen per item by a generator seeded with `seed`)."""
    generator = torch.Generator().manual_seed(seed)
    picks = torch.randint(len(IDK_ANSWERS), (len(items),), generator=generator).tolist()
    batches = qa_batches(tokenizer, items, batch_size, max_length, layout)
    refusals = make_batches(tokenizer, [(it.question, IDK_ANSWERS[j]) for it, j in zip(items, picks)], batch_size,
                            max_length, layout)
    for batch, refusal in zip(batches, refusals):
        batch["idk"] = refusal
    return batches
