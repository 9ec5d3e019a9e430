"""README's and Learn's pictures, from the app on the default model in a headless Chromium, as a person gets them:

    python docs/make_screenshots.py [--learn-only]        # about 8 minutes on a 2-core CPU

Show me (the 4-item demo) -> docs/influence.png (the Influence heatmap) and docs/compare.png (the forget answers
before and after); then each Learn experiment from its Try it button -> docs/learn_<key>.png. Prints how long each
took (the Learn experiments are meant to take under 2 minutes each on a 2-core CPU). Needs what the browser tests
need (requirements-dev.txt, Chromium at /usr/lib/chromium/chromium).
"""

from __future__ import annotations

import re
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from test_browser import SECOND, _tab, browser_page, expect, served_app  # noqa: E402

from grin_ui.tabs import learn  # noqa: E402

DOCS = ROOT / "docs"


def main() -> None:
    with served_app() as url, browser_page(url, 1440) as page:
        expect(page.get_by_role("heading", name="GRIN Studio")).to_be_visible(timeout=60 * SECOND)
        if "--learn-only" not in sys.argv:
            start = time.monotonic()
            page.get_by_role("button", name=re.compile("^Show me")).click()
            expect(page.locator("#show_me_status")).to_contain_text("4 of 4", timeout=600 * SECOND)
            print(f"Show me: {time.monotonic() - start:.0f} s", flush=True)
            _tab(page, "Influence")
            page.wait_for_timeout(1500)  # plotly lays the figure out once its tab shows
            page.locator("#heatmap").screenshot(path=str(DOCS / "influence.png"))
            _tab(page, "Compare")
            page.wait_for_timeout(1500)
            page.locator("#forget_gen").screenshot(path=str(DOCS / "compare.png"))
        _tab(page, "Learn")
        for e in learn.EXPERIMENTS:
            start = time.monotonic()
            page.locator(f"#try_{e.key}").click()
            status = page.locator(f"#try_{e.key}_status")
            expect(status).to_contain_text("Done", timeout=600 * SECOND)
            print(f"{e.question}: {time.monotonic() - start:.0f} s; {status.inner_text()}", flush=True)
            page.wait_for_timeout(1500)
            page.locator(f"#learn_{e.outputs[0]}").locator("xpath=..").screenshot(
                path=str(DOCS / f"learn_{e.key}.png"))


if __name__ == "__main__":
    main()
