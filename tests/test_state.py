"""Tests for grin_ui.state: the shared model survives a failing load; a session's files go with it."""

from __future__ import annotations

import pytest

from grin_engine.config import GrinError
from grin_ui import state


def test_a_failing_model_name_leaves_the_shared_model_in_place(tiny, monkeypatch):
    store = state.ModelStore()
    store._current = tiny

    def failing(spec, on_stage=None):
        raise GrinError(f"model: could not load {spec.name!r}")

    monkeypatch.setattr(state, "load_model", failing)
    with pytest.raises(GrinError, match="could not load"):
        store.get("no-such-org/xyz")
    assert store.get("tiny") is tiny  # still there: nobody else pays for one visitor's typo


def test_deleting_a_session_deletes_its_download_folder(tmp_path):
    folder = tmp_path / "visitor"
    folder.mkdir()
    (folder / "grin_unlearned.safetensors").write_bytes(b"x")
    state.delete_session(state.Session(files=str(folder)))
    assert not folder.exists()
    state.delete_session(None)  # a session never used: nothing to do


@pytest.mark.parametrize("name, message", [("x" * 5000, "5,000 characters"), ("/etc", "local folders are disabled"),
                                           ("~nobody_xyz/m", "local folders are disabled"), (5, "must be text")])
def test_check_model_name(name, message):
    with pytest.raises(GrinError, match=message):
        state.check_model_name(name)


def test_max_items_must_be_a_number():
    with pytest.raises(GrinError, match="must be a number"):
        state.Session().items("many")


def test_shared_results_bound_by_bytes_and_per_visitor():
    from grin_ui.state import SharedResults

    store = SharedResults(max_bytes=300, per_owner=1, size=lambda value: value)
    store.put("a", 100, owner="v1")
    store.put("b", 100, owner="v2")
    assert store.get("a") == 100 and store.get("b") == 100
    store.put("c", 100, owner="v1")  # v1 pins one entry: its older "a" goes (nobody else pins it)
    assert store.get("a") is None and store.get("c") == 100
    store.put("b", 100, owner="v3")  # shared: v2 and v3 pin "b"
    store.put("d", 100, owner="v2")  # v2 moves on; v3 still pins "b"
    assert store.get("b") == 100 and store.nbytes() <= 300
    store.put("e", 100, owner="v4")  # over 300 bytes: the least recently used goes first
    assert store.nbytes() <= 300 and store.get("e") == 100 and len(store) == 3
    store.put("huge", 1000, owner="v5")  # larger than the whole store: not kept
    assert store.get("huge") is None and store.nbytes() <= 300
