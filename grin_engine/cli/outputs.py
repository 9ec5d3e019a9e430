"""Where results are written: checked before any work, written all or nothing.

The CLI checks every output path with `check_file` / `check_folder` before it loads a model, so a typo fails in a
second, not after a 5-minute run. The results are then written to temporary names next to their targets and moved
into place only when every one of them is written (`Outputs.commit`): a failure leaves no partial output.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from ..errors import GrinError
from ..limits import user_path


def _checked(path: str | None, flag: str) -> Path:
    if path is None or not str(path).strip():
        raise GrinError(f"{flag}: give a file name")
    if len(str(path)) > 4096 or "\0" in str(path):
        raise GrinError(f"{flag}: {str(path)[:60]!r}... is not a usable path")
    return user_path(str(path).strip())


def _check_parent(out: Path, flag: str) -> None:
    parent = out.parent if str(out.parent) else Path(".")
    if not parent.is_dir():
        raise GrinError(f"{flag}: folder {str(parent)!r} does not exist")
    try:  # the only sure test of "can I write here" (permissions, read-only or virtual file systems like /proc)
        with tempfile.NamedTemporaryFile(dir=parent, prefix=".grin-check-"):
            pass
    except OSError as exc:
        raise GrinError(f"{flag}: cannot write in folder {str(parent)!r} ({exc.strerror or exc})") from None


def check_file(path: str | None, flag: str) -> Path:
    """A path a result file can be written to: not a folder, not a device, in a folder we can write in."""
    out = _checked(path, flag)
    if out.is_dir():
        raise GrinError(f"{flag}: {str(out)!r} is a folder; give a file name inside it")
    if out.exists() and not out.is_file():
        raise GrinError(f"{flag}: {str(out)!r} exists and is not a regular file")
    _check_parent(out, flag)
    return out


def check_folder(path: str | None, flag: str) -> Path:
    """A folder path results can be written to (created, or replaced when it exists)."""
    out = _checked(path, flag)
    if out.exists() and not out.is_dir():
        raise GrinError(f"{flag}: {str(out)!r} exists and is not a folder")
    _check_parent(out, flag)
    return out


class Outputs:
    """Results staged under temporary names next to their targets; `commit()` moves them all into place.

        outputs = Outputs()
        outputs.text(out, json.dumps(report))          # staged
        save_model_folder(model, outputs.folder(dest))  # writes into a staged folder
        outputs.commit()                                # every target appears now, or (on an error) none
    """

    def __init__(self):
        self._staged: list[tuple[Path, Path]] = []  # (temporary path, target)

    def file(self, target: Path) -> Path:
        fd, tmp = tempfile.mkstemp(dir=target.parent if str(target.parent) else ".", prefix=f".{target.name}.")
        os.close(fd)
        self._staged.append((Path(tmp), target))
        return Path(tmp)

    def text(self, target: Path, text: str) -> None:
        self.file(target).write_text(text)

    def folder(self, target: Path) -> Path:
        tmp = Path(tempfile.mkdtemp(dir=target.parent if str(target.parent) else ".", prefix=f".{target.name}."))
        self._staged.append((tmp, target))
        return tmp

    def commit(self) -> None:
        for tmp, target in self._staged:
            if tmp.is_dir() and target.is_dir():  # a folder cannot be renamed over a folder: swap, then delete
                old = target.with_name(f".{target.name}.old")
                shutil.rmtree(old, ignore_errors=True)
                target.rename(old)
                tmp.rename(target)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(tmp, target)
        self._staged = []

    def discard(self) -> None:
        for tmp, _ in self._staged:
            shutil.rmtree(tmp, ignore_errors=True) if tmp.is_dir() else tmp.unlink(missing_ok=True)
        self._staged = []
