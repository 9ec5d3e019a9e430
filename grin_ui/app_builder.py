"""build_app(): the header, the visitor's session, every tab laid out in order, then every tab's events wired
(a tab's events may write to a later tab: Unlearn's run fills Compare's tables), and the Show me demo."""

from __future__ import annotations

import gradio as gr

from . import show_me
from .forms import Page
from .public import caps, describe
from .slots import FairBlocks
from .state import delete_session
from .tabs import TABS

THEME = gr.themes.Soft(primary_hue="blue", secondary_hue="orange")
CSS = (".gradio-container {max-width: 1400px !important}\n"
       "#p_slider input[type=number] {display: none}\n"  # the log slider's index means nothing; p (%) shows p
       "#p_slider .min_value, #p_slider .max_value {display: none}\n"  # its ends are indices 0 and 17, not %; the
                                                                       # label gives the range: 0.01% ... 10%
       ".download .empty.large {min-height: 80px !important; height: 80px}")  # empty download boxes: not 250 px


def launch_kwargs() -> dict:
    """What launch() needs besides the port (Gradio 6: theme and css go to launch, not Blocks); in public mode the
    upload cap, enforced by Gradio before a byte is stored."""
    limits = caps()
    return {"theme": THEME, "css": CSS, **({"max_file_size": limits.upload_bytes} if limits.public else {})}


def build_app() -> gr.Blocks:
    # delete_cache: uploads and Gradio's copies of downloads older than an hour go, checked every 10 minutes
    with FairBlocks(title="GRIN Studio", delete_cache=(600, 3600)) as demo:
        page = Page()
        # A visitor's Session (CPU data only). Gradio drops it an hour after the tab closes or reloads; the time to
        # live also frees sessions of tabs left open (6 h locally, 30 min on a public server). Its download folder
        # goes with it (delete_session).
        page["session"] = gr.State(None, time_to_live=caps().session_ttl_s, delete_callback=delete_session)
        gr.Markdown("# GRIN Studio\nFind the weights that hold what a language model should forget, unlearn only "
                    "those, and see what it costs. Work left to right: **Setup → Influence → Unlearn → Compare**; "
                    "**Learn** explains each step." + ("\n\n" + describe(caps()) if caps().public else ""))
        with gr.Tabs():
            for tab in TABS:
                tab.layout(page)
        for tab in TABS:
            tab.wire(page)
        show_me.wire(page)
    return demo
