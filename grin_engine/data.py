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


# ---------------------------------------------------------------------------------------------------------------------
# Loading


def builtin_names() -> list[str]:
    """Names of the built-in sets (files assets/datasets/<name>.jsonl)."""
    return sorted(p.stem for p in DATASETS_DIR.glob("*.jsonl"))


def load_items(source: str, max_items: int | None = None) -> list[QAItem]:
    """Load QA items from a built-in name, a file path or "tofu:<config>"; raise GrinError on anything wrong."""
    source = str(source).strip()
    if source.startswith("tofu:"):
        items = load_tofu_from_hub(source[len("tofu:"):])
    elif source in builtin_names():
        items = read_items_file(DATASETS_DIR / f"{source}.jsonl")
    elif Path(source).expanduser().is_file():
        items = read_items_file(Path(source).expanduser())
    elif "/" in source or "\\" in source or "." in source:
        raise GrinError(f"data: file {source!r} not found")
    else:
        raise GrinError(f"data: unknown built-in set {source!r}; built-in sets are: {', '.join(builtin_names())}")
    return items[:max_items] if max_items else items


def read_items_file(path: Path) -> list[QAItem]:
    """Read a JSONL, JSON-list or CSV file of QA items (the format is found from the content, not only the name)."""
    name = Path(path).name
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
        columns = [c.strip().lower() for c in (reader.fieldnames or [])]
        missing = [c for c in ("question", "answer") if c not in columns]
        if missing:
            raise GrinError(f"data: {name} lacks the column(s) {', '.join(missing)} (found: {', '.join(columns) or 'none'})")
        rows = []
        for row in reader:
            row = {(k or "").strip().lower(): v for k, v in row.items()}
            if isinstance(row.get("keywords"), str):
                row["keywords"] = [k.strip() for k in row["keywords"].split(";") if k.strip()]
            rows.append(row)
        return rows
    if stripped.startswith("["):
        try:
            records = json.loads(text)
        except json.JSONDecodeError as exc:
            raise GrinError(f"data: {name} is not valid JSON (line {exc.lineno}: {exc.msg})") from exc
        return records
    records = []  # JSON Lines (TOFU's *.json files are JSON Lines too)
    for lineno, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise GrinError(f"data: {name} line {lineno} is not valid JSON ({exc.msg})") from exc
    return records


def items_from_records(records: list, name: str = "data") -> list[QAItem]:
    """Validate plain records (dicts) into QAItems. TOFU's `perturbed_answer` spelling is accepted."""
    if not isinstance(records, list) or not records:
        raise GrinError(f"data: {name} holds no items")
    items = []
    for i, rec in enumerate(records, start=1):
        if not isinstance(rec, dict):
            raise GrinError(f"data: {name} item {i} is not an object with question and answer")
        question, answer = rec.get("question"), rec.get("answer")
        if not isinstance(question, str) or not question.strip():
            raise GrinError(f"data: {name} item {i} has no 'question' text")
        if not isinstance(answer, str) or not answer.strip():
            raise GrinError(f"data: {name} item {i} has no 'answer' text")
        keywords = rec.get("keywords") or []
        if isinstance(keywords, str):
            keywords = [k.strip() for k in keywords.split(";") if k.strip()]
        perturbed = rec.get("perturbed_answers", rec.get("perturbed_answer")) or []
        if isinstance(perturbed, str):
            perturbed = [perturbed]
        paraphrases = rec.get("paraphrased_questions") or []
        if isinstance(paraphrases, str):
            paraphrases = [q.strip() for q in paraphrases.split(";") if q.strip()]
        items.append(QAItem(
            question=question.strip(), answer=answer.strip(), keywords=[str(k) for k in keywords],
            paraphrased_answer=rec.get("paraphrased_answer") or None, perturbed_answers=[str(p) for p in perturbed],
            paraphrased_questions=[str(q).strip() for q in paraphrases if str(q).strip()],
        ))
    return items


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
    """The text the model sees before its answer: the chat template with a generation prompt, or a plain format."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(
            [{"role": "user", "content": question}], add_generation_prompt=True, tokenize=False
        )
    return f"Question: {question}\nAnswer:"


def encode_pair(tokenizer, question: str, answer: str, max_length: int) -> tuple[list[int], list[int]]:
    """(input_ids, labels) for one question/answer; labels are IGNORE_INDEX on the prompt.

    The answer ends with the EOS token so the model also learns (or unlearns) where the answer stops.
    Long examples are cut from the end of the answer; the prompt is kept whole.
    """
    prompt_ids = tokenizer(format_prompt(tokenizer, question), add_special_tokens=False)["input_ids"]
    answer_text = answer if getattr(tokenizer, "chat_template", None) else " " + answer
    answer_ids = tokenizer(answer_text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
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


def make_batches(tokenizer, pairs: list[tuple[str, str]], batch_size: int, max_length: int) -> list[dict]:
    """Tokenise (question, answer) pairs and group them, in order, into padded batches."""
    encoded = [encode_pair(tokenizer, q, a, max_length) for q, a in pairs]
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return [collate(encoded[i: i + batch_size], pad_id) for i in range(0, len(encoded), batch_size)]


def qa_batches(tokenizer, items: list[QAItem], batch_size: int, max_length: int) -> list[dict]:
    """Batches of the items' own question/answer pairs."""
    return make_batches(tokenizer, [(it.question, it.answer) for it in items], batch_size, max_length)


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


def forget_batches(tokenizer, items: list[QAItem], batch_size: int, max_length: int, seed: int) -> list[dict]:
    """Batches of the forget items, each with an "idk" sub-batch: the same questions answered with a refusal
    (chosen per item by a generator seeded with `seed`)."""
    generator = torch.Generator().manual_seed(seed)
    picks = torch.randint(len(IDK_ANSWERS), (len(items),), generator=generator).tolist()
    batches = qa_batches(tokenizer, items, batch_size, max_length)
    refusals = make_batches(tokenizer, [(it.question, IDK_ANSWERS[j]) for it, j in zip(items, picks)], batch_size,
                            max_length)
    for batch, refusal in zip(batches, refusals):
        batch["idk"] = refusal
    return batches
