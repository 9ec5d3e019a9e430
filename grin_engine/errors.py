"""The engine's one exception for user mistakes, in a module of its own that imports nothing, so that every module
(config, data, losses ...) can raise it without importing another engine module (no import circles)."""


class GrinError(ValueError):
    """A mistake in what the user asked for. The message is shown to them as it is."""
