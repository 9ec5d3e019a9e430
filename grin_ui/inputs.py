"""Number and Slider inputs whose bad values get our own message.

Gradio's Number and Slider compare the value with their bounds and round it before our handler sees it; a script
that sends text, NaN or a list there got Gradio's "The upstream Gradio app has raised an exception but has not
enabled verbose error reporting", which tells the caller nothing. These subclasses check first and raise gr.Error
naming the field; the handler then checks range and meaning with the engine's shared checks (config.as_number).
"""

from __future__ import annotations

import math

import gradio as gr


def _checked(component, payload):
    if payload is None or payload == "":
        return None
    label = component.label or "value"
    if isinstance(payload, str):
        try:
            payload = float(payload.strip()) if len(payload) <= 64 else None
        except ValueError:
            payload = None
        if payload is None:
            raise gr.Error(f"{label}: give a number", print_exception=False)
    if isinstance(payload, bool) or not isinstance(payload, (int, float)):
        raise gr.Error(f"{label}: give a number, not {type(payload).__name__}", print_exception=False)
    if not math.isfinite(payload):
        raise gr.Error(f"{label}: give a finite number, not {payload}", print_exception=False)
    return payload


class Number(gr.Number):
    def preprocess(self, payload):
        return super().preprocess(_checked(self, payload))


class Slider(gr.Slider):
    def preprocess(self, payload):
        payload = _checked(self, payload)
        if payload is None:
            raise gr.Error(f"{self.label or 'value'}: give a number", print_exception=False)
        return super().preprocess(payload)
