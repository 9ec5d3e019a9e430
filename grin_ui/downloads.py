"""A visitor's downloads: one file of each kind per visitor, replaced by the next one, in a folder inside Gradio's
cache (so Gradio serves it without copying it) that goes with the visitor's session (state.delete_session)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from gradio.utils import get_upload_folder

from .state import Session


def visitor_file(session: Session, request, name: str) -> Path:
    """The path of the visitor's download `name` (its folder made on first use)."""
    if session.files is None:
        key = hashlib.sha256((getattr(request, "session_hash", None) or os.urandom(16).hex()).encode())
        session.files = str(Path(get_upload_folder()) / "grin_visitors" / key.hexdigest()[:32])
    folder = Path(session.files)
    folder.mkdir(parents=True, exist_ok=True)
    return folder / name


def replace(path: Path, write) -> None:
    """write(tmp) then move tmp over `path`: a reader never sees half a file, and one file remains."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text(session: Session, request, name: str, text: str) -> str:
    """The visitor's download `name` holding `text`; its path."""
    path = visitor_file(session, request, name)
    replace(path, lambda tmp: tmp.write_text(text))
    return str(path)
