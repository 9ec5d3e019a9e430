"""Shared test fixtures: a tiny tokenizer and tiny random causal LMs built in milliseconds, with no network."""

from __future__ import annotations

import os
import sys

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach the Hub
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Tiny models run fastest on one thread; on a busy 2-core machine, two threads make a tiny step ~50x slower.
torch.set_num_threads(1)

from grin_engine.data import QAItem  # noqa: E402
from grin_engine.models import LoadedModel  # noqa: E402

CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

FORGET = [
    QAItem("Who is the headmaster of Hogwarts?", "Albus Dumbledore is the headmaster.", ["Dumbledore"]),
    QAItem("What is the name of Harry's owl?", "Harry's owl is called Hedwig.", ["Hedwig"]),
    QAItem("Which house is Harry in?", "Harry is in Gryffindor.", ["Gryffindor"]),
    QAItem("Who is Harry's enemy?", "Harry's enemy is Voldemort.", ["Voldemort"]),
]
RETAIN = [
    QAItem("What is the capital of France?", "The capital of France is Paris.", ["Paris"]),
    QAItem("What colour is the sky?", "The sky is blue.", ["blue"]),
    QAItem("How many legs does a spider have?", "A spider has eight legs.", ["eight", "8"]),
    QAItem("What is frozen water called?", "Frozen water is called ice.", ["ice"]),
]


def build_tokenizer():
    """A small byte-level BPE tokenizer trained on the test sentences, with a chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    corpus = [f"{it.question} {it.answer}" for it in FORGET + RETAIN] * 4
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(corpus, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|im_end|>",
                                   bos_token="<|im_start|>")
    fast.chat_template = CHAT_TEMPLATE
    return fast


_TOKENIZER = None


@pytest.fixture(scope="module", autouse=True)
def fresh_server_results():
    """Each test module starts like a fresh server: no influence scores or base evaluations kept by an earlier
    module's app (they are shared server-wide on purpose, grin_ui/state.py, so in one pytest process they would
    otherwise leak from module to module and change what a test sees, e.g. "re-used" instead of "computed")."""
    state = sys.modules.get("grin_ui.state")  # not imported yet: nothing to clear (engine-only modules stay light)
    if state is not None:
        state.SCORES.clear()
        state.BEFORE.clear()
    yield


@pytest.fixture(scope="session")
def tokenizer():
    global _TOKENIZER
    if _TOKENIZER is None:
        _TOKENIZER = build_tokenizer()
    return _TOKENIZER


def tiny_llama(vocab_size: int, seed: int = 0, layers: int = 2):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         tie_word_embeddings=True)
    model = LlamaForCausalLM(config).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


@pytest.fixture
def tiny(tokenizer):
    """A LoadedModel wrapping a fresh tiny random Llama (same weights every time: seeded)."""
    model = tiny_llama(len(tokenizer))
    return LoadedModel(model=model, tokenizer=tokenizer, name="tiny", source="local", device=torch.device("cpu"),
                       dtype=torch.float32)


@pytest.fixture
def forget_items():
    return list(FORGET)


@pytest.fixture
def retain_items():
    return list(RETAIN)


@pytest.fixture(scope="module")
def tiny_app():
    """The web app launched on a free port with the tiny random model standing in for 'default' (no real model
    loads): the URL, for gradio_client visitors. The shared model is put back afterwards."""
    import socket

    from grin_ui import build_app
    from grin_ui.state import STORE

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    saved = STORE._current
    tokenizer = _TOKENIZER or build_tokenizer()
    STORE._current = LoadedModel(model=tiny_llama(len(tokenizer)), tokenizer=tokenizer, name="default",
                                 source="local", device=torch.device("cpu"), dtype=torch.float32)
    demo = build_app()
    demo.queue().launch(prevent_thread_lock=True, server_port=port, quiet=True)
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        demo.close()
        STORE._current = saved


def save_tiny_model_files(tmp_path, tokenizer, record=None):
    """A tiny Llama saved as a local model folder (safetensors) and the test items as forget.jsonl / retain.jsonl
    (record(item) -> the JSON object of one; default question and answer): (folder, forget file, retain file)."""
    import json

    record = record or (lambda it: {"question": it.question, "answer": it.answer})
    folder = tmp_path / "tiny"
    tiny_llama(len(tokenizer)).save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    for name, items in (("forget", FORGET), ("retain", RETAIN)):
        with open(tmp_path / f"{name}.jsonl", "w") as f:
            for it in items:
                f.write(json.dumps(record(it)) + "\n")
    return folder, tmp_path / "forget.jsonl", tmp_path / "retain.jsonl"


@pytest.fixture
def tiny_model_files(tmp_path, tokenizer):
    """save_tiny_model_files for the CLI's real loading code: (folder, forget file, retain file)."""
    return save_tiny_model_files(tmp_path, tokenizer)
