"""Caps that hold everywhere (CLI, local app, public Space): what one input may cost at most (DESIGN.md §3.1).

They exist so that no input, however long or odd, can make one call take minutes or gigabytes:
- text: an item's fields are bounded in characters when it is read (`data.items_from_records` refuses longer ones),
  and every prompt the model sees is cut to `MAX_QUESTION_TOKENS` question tokens and every answer it is trained
  or scored on to `MAX_ANSWER_TOKENS` (`truncate_tokens`), so a long question costs what a short one does;
- files: at most `MAX_FILE_BYTES` bytes and `MAX_FILE_ITEMS` items; a JSON nested too deeply for the parser is refused;
- model names: at most `MAX_MODEL_NAME_CHARS` characters, no control characters.
The public Space has tighter caps on top of these (grin_ui/public.py); the numbers of a run (steps, lr, seed ...)
are checked in config.py.
"""

from __future__ import annotations

from pathlib import Path

MAX_QUESTION_TOKENS = 128  # question tokens a prompt keeps (TOFU's longest question: ~60 tokens)
MAX_ANSWER_TOKENS = 192  # answer tokens an example keeps (TOFU's longest answer: ~120); max_length cuts further
MAX_QUESTION_CHARS = 2_000  # an item's question, in characters (refused above: a file that long is a mistake)
MAX_ANSWER_CHARS = 4_000  # an item's answer, paraphrased answer and each perturbed answer
MAX_KEYWORDS = 32  # keywords per item
MAX_KEYWORD_CHARS = 200
MAX_PERTURBED = 16  # perturbed answers per item (TOFU has 5)
MAX_FILE_BYTES = 64 * 1024 * 1024  # a data file (the public Space allows far less, grin_ui/public.py)
MAX_FILE_ITEMS = 100_000
MAX_MODEL_NAME_CHARS = 200  # a Hub id is at most 96 characters; a local path rarely passes 200


def truncate_tokens(tokenizer, text: str, max_tokens: int) -> str:
    """`text` cut to its first `max_tokens` tokens (unchanged when shorter).

    The characters are cut first (no token is longer than 64 characters in any tokenizer we load), so a 100,000-
    character question costs a few milliseconds to tokenise, not a second.
    """
    if len(text) <= max_tokens:  # a token is at least one character: nothing to cut
        return text
    text = text[: 64 * max_tokens]
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if len(ids) <= max_tokens:
        return text
    return tokenizer.decode(ids[:max_tokens], skip_special_tokens=False)



def user_path(text: str) -> Path:
    """Path(text) with ~ expanded; a ~name of no known user stays as written (expanduser would raise)."""
    try:
        return Path(text).expanduser()
    except RuntimeError:
        return Path(text)
