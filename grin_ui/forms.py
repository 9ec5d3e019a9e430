"""Controls by name: the page's components (`Page`), an event's values (`Form`) and the configs they make.

Each tab lays out its controls into the one `Page` under "<tab>.<control>" names, and wires its events with those
names (`page.inputs(...)`), so a handler reads what it needs by name, whichever tab a control sits on:

    page["unlearn.run"].click(**page.event(unlearn, ["unlearn.loss", "unlearn.lr", ..., "session"], outputs))

    def unlearn(form, request, progress):       # form: the event's values by name
        cfg = unlearn_config(form)               # every number read one way (config.as_number)

`page.event` keeps the inputs in the listed order: that order is the published client API (docs/API.md).
"""

from __future__ import annotations

import inspect
import math

import gradio as gr

from grin_engine.config import GrinConfig, as_number
from grin_engine.errors import GrinError
from grin_engine.runs.methods import METHODS

from .jobs import user_errors

SIGMA2_CHOICES = ["0", "1e-7", "1e-6", "1e-5", "1e-4"]
UNLEARN_CONTROLS = ["unlearn.loss", "unlearn.p_percent", "unlearn.sigma2", "unlearn.lr", "unlearn.steps",
                    "unlearn.alpha", "unlearn.beta", "unlearn.seed", "unlearn.use_mask"]


class Page(dict):
    """Every component of the page under "<tab>.<name>" ("session" is the visitor's state)."""

    def add(self, tab: str, components: dict) -> dict:
        self.update({f"{tab}.{name}": component for name, component in components.items()})
        return components

    def inputs(self, names: list[str]) -> list:
        return [self[name] for name in names]

    def event(self, handler, names: list[str], outputs: list[str], **options) -> dict:
        """The keyword arguments of a Gradio event whose handler reads its inputs by name: handler(form, request,
        progress), or handler(form) when it takes one argument."""
        return {"fn": by_name(handler, names), "inputs": self.inputs(names), "outputs": self.inputs(outputs),
                **options}


class Form:
    """The values of one event's inputs, by name; each kind of value is read one way."""

    def __init__(self, names: list[str], values: tuple):
        self._values = dict(zip(names, values))

    def __getitem__(self, name: str):
        return self._values[name]

    def get(self, name: str, default=None):
        return self._values.get(name, default)

    def number(self, name: str, field: str | None = None, optional: bool = False, integer: bool | None = None):
        """A number field's value, checked for type, finiteness and range by the engine's own check (the same
        message as the CLI's), under the config field `field` (default: the control's name). optional: empty (or
        0, for beta) is None."""
        value, field = self._values[name], field or name.split(".")[-1]
        if optional and value in (None, ""):
            return None
        return as_number(value, field, integer)

    def text(self, name: str, what: str) -> str:
        """A text box's value: text (None is empty); anything else a script sent is refused with our message."""
        value = self._values[name]
        if value is None:
            return ""
        if not isinstance(value, str):
            raise GrinError(f"{what}: give text, got {type(value).__name__}")
        if len(value) > 4096:
            raise GrinError(f"{what}: {len(value):,} characters is not a name")
        return value

    def flag(self, name: str, what: str) -> bool:
        value = self._values[name]
        if not isinstance(value, bool):
            raise GrinError(f"{what} must be true or false, got {value!r}")
        return value

    def names(self, name: str, what: str) -> list[str]:
        """A checkbox group's chosen names."""
        value = self._values[name] or []
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise GrinError(f"{what}: give a list of names")
        return value


def by_name(handler, names: list[str]):
    """`handler(form, request, progress)` (or `handler(form)`) as a Gradio function of the listed inputs, in their
    order, its errors turned into gr.Error (jobs.user_errors). Gradio hands the request and the progress bar to the
    leading parameters typed for them, and the inputs' values to *values."""
    takes_request = len(inspect.signature(handler).parameters) > 1

    def call(values, request, progress):
        form = Form(names, values)
        return handler(form, request, progress) if takes_request else handler(form)

    if inspect.isgeneratorfunction(handler):
        def event(request: gr.Request, progress=gr.Progress(), *values):
            yield from call(values, request, progress)
    else:
        def event(request: gr.Request, progress=gr.Progress(), *values):
            return call(values, request, progress)
    event.__name__, event.__doc__ = handler.__name__, handler.__doc__  # not functools.wraps: Gradio reads the
    return user_errors(event)                                           # signature, which must stay event's


def job_buttons(run_label: str, stop_id: str | None = None) -> tuple[gr.Button, gr.Button]:
    """A job's two buttons side by side: the one that starts it, and Stop (jobs.stop)."""
    with gr.Row():
        return gr.Button(run_label, variant="primary"), gr.Button("Stop", variant="stop", elem_id=stop_id)


def method_choices() -> list[tuple[str, str]]:
    """The comparison methods as checkbox choices (label, name), in the registry's order."""
    return [(f"{m.name} — {m.description}", m.name) for m in METHODS.values()]


def fraction(p_percent) -> float:
    """A p given in percent as a fraction in (0, 1]."""
    p = as_number(p_percent, "p (%)", integer=False) / 100
    if not (math.isfinite(p) and 0 < p <= 1):
        raise GrinError(f"p must be between 0 and 100 percent (exclusive of 0), got {p_percent!r}%")
    return p


def sigma2_value(value) -> float:
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise GrinError(f"sigma2 must be one of {', '.join(SIGMA2_CHOICES)}, got {value!r}")
    return as_number(value, "sigma2")


def unlearn_config(form: Form, until: str | None = None, **overrides) -> GrinConfig:
    """The Unlearn tab's controls (UNLEARN_CONTROLS) as a checked GrinConfig; `until`: the stop-once target."""
    loss = form["unlearn.loss"]
    if not isinstance(loss, str):
        raise GrinError(f"loss: give a loss name, got {type(loss).__name__}")
    return GrinConfig(loss=loss, p=fraction(form["unlearn.p_percent"]), sigma2=sigma2_value(form["unlearn.sigma2"]),
                      lr=form.number("unlearn.lr"), steps=form.number("unlearn.steps"),
                      alpha=form.number("unlearn.alpha"), beta=form.number("unlearn.beta", optional=True) or None,
                      seed=form.number("unlearn.seed"), use_mask=form.flag("unlearn.use_mask", "mask"),
                      until=(until or "").strip() or None, **overrides)
