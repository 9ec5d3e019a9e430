"""The Attack tab in a real headless browser, on its own short flow (2 items, a 2-step run): Setup → Unlearn →
Attack, with a screenshot (screenshots/attack.png). test_browser.py's full flow also ends with the Attack tab; this
one is short enough to run alone while working on the view."""

from __future__ import annotations

import re

from test_browser import (SECOND, _number, _shot, _tab, expect, fast_attacks_and_bars, page,  # noqa: F401
                          pytestmark, url)


def test_attack_the_last_run_in_a_browser(page):  # noqa: F811
    expect(page.get_by_role("heading", name="GRIN Studio")).to_be_visible(timeout=60 * SECOND)
    _number(page, "number input for max items per set", 2)
    page.get_by_role("button", name="Load", exact=True).click()
    expect(page.get_by_text(re.compile(r"^Loaded default in [\d.]+ s"))).to_be_visible(timeout=300 * SECOND)

    _tab(page, "Attack")
    page.get_by_role("button", name="Attack", exact=True).click()  # nothing to attack yet: a clear message
    expect(page.get_by_text("no unlearned model yet: run Unlearn to the end first").first).to_be_visible(
        timeout=60 * SECOND)

    _tab(page, "Unlearn")
    _number(page, "number input for steps", 2)
    page.get_by_role("button", name="Run", exact=True).click()
    expect(page.locator("#run_status")).to_contain_text("Done: 2 steps", timeout=900 * SECOND)

    _tab(page, "Attack")
    for name in ("relearn", "quant4", "gguf_q4_1", "prefix"):  # the default choice
        expect(page.get_by_role("checkbox", name=re.compile(f"^{name} — "))).to_be_checked()
    bars = fast_attacks_and_bars(page, "Done: 2 attack(s) on grin", 1800)
    table = page.locator("#attack_table")
    for name in ("quant4", "prefix"):
        expect(table.get_by_role("gridcell", name=name, exact=True)).to_be_visible()
    answers = page.locator("#attack_answers")
    for column in ("question", "unlearned answer", "attacked answer"):
        expect(answers.get_by_role("columnheader", name=column, exact=True)).to_be_visible()
    expect(answers.get_by_role("grid")).to_have_attribute("aria-rowcount", "3")  # the header and 2 questions
    _shot(page, "attack")

    page.get_by_label("forget metric in the bars").click()  # another metric: the bars are redrawn
    page.get_by_role("option", name="ROUGE-L recall").click()
    expect(bars).to_contain_text("Forget ROUGE-L recall", timeout=60 * SECOND)
