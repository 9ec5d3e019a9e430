"""Tests for grin_engine.cli.outputs: output paths checked before work, results written all or nothing."""

from __future__ import annotations

import os

import pytest

from grin_engine.config import GrinError
from grin_engine.cli.outputs import Outputs, check_file, check_folder


@pytest.mark.parametrize("path, message", [
    ("", "give a file name"), ("   ", "give a file name"), ("/tmp", "is a folder"),
    ("/proc/r.json", "cannot write in folder"), ("/dev/null", "not a regular file"),
    ("/no/such/folder/r.json", "does not exist"), ("x" * 5000, "not a usable path"),
])
def test_bad_output_files_are_refused(path, message):
    with pytest.raises(GrinError, match=message):
        check_file(path, "--out")


def test_bad_output_folders_are_refused(tmp_path):
    (tmp_path / "file").write_text("x")
    for path, message in ((str(tmp_path / "file"), "not a folder"), ("/proc/m", "cannot write in folder")):
        with pytest.raises(GrinError, match=message):
            check_folder(path, "--save-model")


def test_a_good_path_passes_and_leaves_nothing(tmp_path):
    assert check_file(str(tmp_path / "r.json"), "--out") == tmp_path / "r.json"
    assert list(tmp_path.iterdir()) == []


def test_outputs_appear_together_or_not_at_all(tmp_path):
    report, folder = tmp_path / "report.json", tmp_path / "model"
    staged = Outputs()
    staged.text(report, "{}")
    (staged.folder(folder) / "weights").write_text("w")
    assert not report.exists() and not folder.exists()  # nothing visible before commit
    staged.commit()
    assert report.read_text() == "{}" and (folder / "weights").read_text() == "w"

    staged = Outputs()  # a failure while writing: the earlier outputs stay as they were, no temporary is left
    staged.text(report, '{"new": 1}')
    staged.folder(folder)
    staged.discard()
    assert report.read_text() == "{}" and (folder / "weights").exists()
    assert sorted(os.listdir(tmp_path)) == ["model", "report.json"]


def test_an_existing_folder_is_replaced_whole(tmp_path):
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "old").write_text("o")
    staged = Outputs()
    (staged.folder(folder) / "new").write_text("n")
    staged.commit()
    assert sorted(os.listdir(folder)) == ["new"]
    assert sorted(os.listdir(tmp_path)) == ["model"]
