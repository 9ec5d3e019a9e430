"""What a long job says while it works, and how the user stops it: one `Progress` and one `Stopped` for the engine.

Every slow function (a run, a comparison, a sweep, TOFU, the attacks) takes `progress`, a `Progress`:

    progress = Progress(callback=lambda stage, done, total, *extra: ..., should_stop=lambda: flag.is_set())
    progress("influence", 3, 8)          # tells the callback, then raises Stopped if the user asked to stop
    progress.update("unlearn", 5, 20, loss)  # tells the callback only (the training loop checks the stop itself)
    on_batch = progress.stage("before")  # an on_batch(done, total) counter for a low-level loop, stage "before"
    progress.within("grin")              # the same Progress, its stages named "grin/<stage>" (one method of several)

Stage names are the contract with the CLI's progress bars and the app's progress plan: "before", "influence",
"select", "unlearn", "after", "gradients" (a comparison's shared gradients), "<method>/<stage>" inside a comparison,
"<model>/<split>/answers" in TOFU, "<method>/<attack>" for the attacks. A `Stopped` raised anywhere ends the work at
that point; each caller keeps what it had finished (a run's losses so far, a sweep's finished points ...).
"""

from __future__ import annotations


class Stopped(Exception):
    """The user asked to stop; raised at the next progress update or step, caught where finished work is kept."""


class Progress:
    """Where a long job tells how far it is (a callback), and the user's Stop. Progress() tells nobody and never
    stops."""

    def __init__(self, callback=None, should_stop=None, prefix: str = ""):
        self._callback, self._should_stop, self.prefix = callback, should_stop, prefix

    def update(self, stage: str, done: int, total: int, *extra) -> None:
        """Tell the callback how far `stage` is (done of total), with its extra values (a training step's loss)."""
        if self._callback is not None:
            self._callback(self.prefix + stage, done, total, *extra)

    def stop_requested(self) -> bool:
        return self._should_stop is not None and bool(self._should_stop())

    def check(self) -> None:
        """Raise Stopped if the user asked to stop."""
        if self.stop_requested():
            raise Stopped

    def __call__(self, stage: str, done: int, total: int, *extra) -> None:
        self.update(stage, done, total, *extra)
        self.check()

    def stage(self, stage: str):
        """An on_batch(done, total) counter for a low-level loop: updates `stage`, then checks the stop."""
        return lambda done, total: self(stage, done, total)

    def within(self, name: str) -> "Progress":
        """The same callback and stop, its stages named '<name>/<stage>'."""
        return Progress(self._callback, self._should_stop, f"{self.prefix}{name}/")


def as_progress(progress: Progress | None) -> Progress:
    """`progress`, or a silent Progress where none was given."""
    return progress if progress is not None else Progress()
