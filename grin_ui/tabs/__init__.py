"""The page's tabs, in their order. Each module lays out its controls (`layout(page)`) and wires its events
(`wire(page)`), with its handlers beside them; a new tab is one module here and its name in TABS."""

from . import attack, compare, influence, learn, methods, setup, sweep, tofu, unlearn

TABS = [setup, influence, unlearn, compare, methods, attack, sweep, tofu, learn]
