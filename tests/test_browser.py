"""The web app in a real headless browser (Playwright driving Debian's Chromium), the flow a person clicks through:
Setup → Influence → Unlearn → Compare, with a full-page screenshot of every tab in screenshots/ (git-ignored).

Needs the `playwright` package (requirements-dev.txt) and Debian's Chromium (`apt-get install chromium`; `playwright
install` is not used). Loads the real default model, like test_app.py's full flow.
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
from pathlib import Path

import pytest

CHROMIUM = "/usr/lib/chromium/chromium"  # the real binary; /usr/bin/chromium is a shell wrapper
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
SHOTS = Path(__file__).resolve().parent.parent / "screenshots"
WIDTH = 1400

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not os.access(CHROMIUM, os.X_OK),
                       reason=f"no Chromium at {CHROMIUM} (Debian: apt-get install chromium)"),
]
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (requirements-dev.txt)")
expect = sync_api.expect

SECOND = 1000  # Playwright timeouts are in milliseconds


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def served_app():
    """The app (as app.py serves it: one job at a time, theme and css) on a free port: its URL."""
    from grin_ui import build_app, launch_kwargs

    demo = build_app()
    port = _free_port()
    demo.queue(default_concurrency_limit=1).launch(prevent_thread_lock=True, server_port=port, quiet=True,
                                                   **launch_kwargs())
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        demo.close()


@contextlib.contextmanager
def browser_page(url: str, width: int = WIDTH):
    """A headless Chromium page `width` px wide, opened at `url`."""
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": width, "height": 1000})
            page.goto(url)
            yield page
        finally:
            browser.close()


@pytest.fixture(scope="module")
def url():
    with served_app() as address:
        yield address


@pytest.fixture(scope="module")
def page(url):
    with browser_page(url) as opened:
        yield opened


def _tab(page, name: str) -> None:
    page.get_by_role("tab", name=name, exact=True).click()
    expect(page.get_by_role("tab", name=name, exact=True)).to_have_attribute("aria-selected", "true")


def _shot(page, name: str) -> None:
    SHOTS.mkdir(exist_ok=True)
    page.wait_for_timeout(800)  # let plotly finish laying out the figures of a freshly shown tab
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def _number(page, label: str, value) -> None:
    """Type into a number box (a Slider's or a Number's) and leave it, as a person does."""
    box = page.get_by_label(label, exact=True)
    box.fill(str(value))
    box.press("Tab")
    expect(box).to_have_value(str(value))


def _selected(text: str) -> int:
    return int(re.search(r"%: ([\d,]+) of", text).group(1).replace(",", ""))


def test_full_flow_in_a_browser(page):
    expect(page.get_by_role("heading", name="GRIN Studio")).to_be_visible(timeout=60 * SECOND)
    assert [t.inner_text().strip() for t in page.get_by_role("tab").all()] == \
        ["Setup", "Influence", "Unlearn", "Compare", "Compare methods", "Attack", "Sweep", "TOFU benchmark", "Learn"]

    # Setup: few items, Load, the model's facts appear
    _number(page, "number input for max items per set", 4)
    page.get_by_role("button", name="Load", exact=True).click()
    expect(page.get_by_text(re.compile(r"^Loaded default in [\d.]+ s"))).to_be_visible(timeout=300 * SECOND)
    facts = page.locator("#facts")
    expect(facts).to_contain_text("layers", timeout=30 * SECOND)
    expect(facts).to_contain_text("30")
    expect(page.locator("#preview")).to_contain_text("Hogwarts")
    _shot(page, "1_setup")

    # Influence: compute, the heatmap appears, the p% box re-selects
    _tab(page, "Influence")
    selection = page.locator("#selection")
    expect(selection).to_contain_text("No scores yet")
    page.get_by_role("button", name="Compute influence", exact=True).click()
    expect(page.get_by_text(re.compile(r"^Influence computed on 4 forget and 4 retain items"))).to_be_visible(
        timeout=900 * SECOND)
    heatmap = page.locator("#heatmap .js-plotly-plot")
    expect(heatmap).to_contain_text("Selected share per layer and module at p = 1%", timeout=30 * SECOND)
    expect(heatmap.locator("g.hm image").first).to_be_attached()  # plotly draws a heatmap as an image
    expect(selection).to_contain_text("p = 1%:")
    at_1 = _selected(selection.inner_text())
    page.wait_for_timeout(800)  # plotly's layout settles
    page.locator("#heatmap").screenshot(path=str(SHOTS / "influence_heatmap.png"))  # README's picture (docs/)

    _number(page, "p (%)", 5)
    page.get_by_label("p (%)", exact=True).press("Enter")  # and Enter, as a person who wants it now (submit)
    expect(selection).to_contain_text("p = 5%:", timeout=120 * SECOND)
    expect(heatmap).to_contain_text("at p = 5%")
    slider = page.locator("#p_slider input[type=range]")
    expect(slider).to_have_value("15")  # the log slider follows the box: its 5% step
    at_5 = _selected(selection.inner_text())
    assert 0 < at_1 < at_5

    box = slider.bounding_box()  # a click on the slider's track near its left end: a small p
    slider.click(position={"x": 0.1 * box["width"], "y": box["height"] / 2})
    expect(selection).not_to_contain_text("p = 5%:", timeout=60 * SECOND)
    p_box = page.get_by_label("p (%)", exact=True)
    expect(p_box).to_have_value(re.compile(r"^0(\.\d+)?$"), timeout=60 * SECOND)  # the box follows: below 1%
    small = float(p_box.input_value())
    expect(selection).to_contain_text(f"p = {small:g}%:", timeout=60 * SECOND)
    assert _selected(selection.inner_text()) < at_1

    _number(page, "p (%)", 5)  # back to 5% for the run
    expect(selection).to_contain_text("p = 5%:", timeout=60 * SECOND)
    _shot(page, "2_influence")

    # Unlearn: p followed the selection; 2 steps; Run to the end
    _tab(page, "Unlearn")
    expect(page.get_by_label("p (%) of weights to train", exact=True)).to_have_value("5")
    _number(page, "number input for steps", 2)
    page.get_by_role("button", name="Run", exact=True).click()
    status = page.locator("#run_status")
    expect(status).to_contain_text("Done: 2 steps", timeout=900 * SECOND)
    expect(page.locator("#loss_plot .js-plotly-plot g.scatterlayer .trace")).to_have_count(1)
    _shot(page, "3_unlearn")

    # Compare: before / after answers of both sets, the metrics, and one question asked of both models
    _tab(page, "Compare")
    for table in ("#forget_gen", "#retain_gen"):
        for column in ("question", "gold answer", "before", "after"):
            expect(page.locator(table).get_by_role("columnheader", name=column, exact=True)).to_be_visible()
    for table in ("#forget_gen", "#retain_gen"):  # the header and the first 4 items of the set
        expect(page.locator(table).get_by_role("grid")).to_have_attribute("aria-rowcount", "5")
    expect(page.locator("#forget_gen")).to_contain_text("Hogwarts")
    expect(page.locator("#metrics")).to_contain_text("rougeL_recall")
    page.get_by_label("question", exact=True).fill("Who is Harry Potter's best friend?")
    page.get_by_role("button", name="Ask both models", exact=True).click()
    before, after = page.get_by_label("base model", exact=True), page.get_by_label("unlearned model", exact=True)
    expect(before).not_to_have_value("", timeout=300 * SECOND)
    expect(after).not_to_have_value("", timeout=300 * SECOND)
    assert not after.input_value().startswith("(no unlearned model")
    _shot(page, "4_compare")

    # Compare methods: GRIN, GRUN and full (the default choice) with the Unlearn tab's settings (2 steps)
    _tab(page, "Compare methods")
    for name in ("grin", "grun", "full"):
        expect(page.get_by_role("checkbox", name=re.compile(f"^{re.escape(name)} — "))).to_be_checked()
    page.get_by_role("button", name="Compare", exact=True).click()
    expect(page.locator("#compare_status")).to_contain_text("Done: grin, grun, full", timeout=900 * SECOND)
    table = page.locator("#methods_table")
    for name in ("base model (before)", "grin", "grun", "full"):
        expect(table.get_by_role("gridcell", name=name, exact=True)).to_be_visible()
    scatter = page.locator("#methods_scatter .js-plotly-plot")
    expect(scatter).to_contain_text("Forget vs retain")
    expect(scatter.locator("g.scatterlayer .trace")).to_have_count(5)  # ideal, base, and the three methods
    expect(page.locator("#overlap")).to_contain_text("random mask")
    answers = page.locator("#methods_answers")
    for column in ("question", "before", "grin", "grun", "full"):
        expect(answers.get_by_role("columnheader", name=column, exact=True)).to_be_visible()
    expect(answers).to_contain_text("Hogwarts")
    _shot(page, "5_compare_methods")

    # Attack: each method of the comparison (grin and grun; the full baseline's patch is not kept), two attacks
    _tab(page, "Attack")
    page.get_by_role("radio", name="each method of the last comparison").check()
    fast_attacks_and_bars(page, "Done: 4 attack(s) on grin, grun", 900)
    attack_table = page.locator("#attack_table")
    for name in ("grin", "grun", "quant4", "prefix"):
        expect(attack_table.get_by_role("gridcell", name=name, exact=True).first).to_be_visible()
    attacked = page.locator("#attack_answers")
    for column in ("question", "unlearned answer", "attacked answer"):
        expect(attacked.get_by_role("columnheader", name=column, exact=True)).to_be_visible()
    # the answers are the models' own (after unlearning they need not name Hogwarts); the questions are fixed
    expect(attacked).to_contain_text("Who wrote the Harry Potter books?")
    _shot(page, "6_attack")
    # Sweep: grin and random at two p, one seed (4 points, 2 steps each); Stop after the first point keeps it,
    # Run again continues; a point's answers beside the base model's
    _tab(page, "Sweep")
    sweep_figure_and_answers(page)

    # Learn: the explanations, each section opened by its question and its experiment's button
    _tab(page, "Learn")
    expect(page.get_by_role("heading", name="How GRIN unlearning works")).to_be_visible()
    for question in ("1. Where do the facts live?", "2. Why divide by |G_r|?", "3. Does the noise help?",
                     "4. How does NPO differ from gradient ascent?"):  # each section: its question and Try it
        expect(page.get_by_role("heading", name=question, exact=True)).to_be_visible()
    expect(page.get_by_role("button", name=re.compile("^Try it: "))).to_have_count(4)
    expect(page.get_by_role("heading", name=re.compile("GRUN: unlearning without changing a weight"))).to_be_visible()
    expect(page.get_by_role("heading", name="Is it really gone? The attacks")).to_be_visible()
    _shot(page, "8_learn")


def fast_attacks_and_bars(page, done: str, timeout_s: float):
    """On the Attack tab: untick the two slowest default attacks (relearn, gguf_q4_1: relearning is tested through
    the API in test_attack_view), press Attack, wait for `done`; the bars show before / unlearned / attacked with the
    recovery written on them. Returns the bars' locator."""
    for name in ("relearn", "gguf_q4_1"):
        page.get_by_role("checkbox", name=re.compile(f"^{name} — ")).uncheck()
    page.get_by_role("button", name="Attack", exact=True).click()
    expect(page.locator("#attack_status")).to_contain_text(done, timeout=timeout_s * SECOND)
    bars = page.locator("#attack_bars .js-plotly-plot")
    expect(bars).to_contain_text("before, after unlearning, after the attack")
    expect(bars).to_contain_text("recovery")
    expect(bars.locator("g.barlayer .trace")).to_have_count(3)  # before, unlearned, attacked
    return bars


def sweep_figure_and_answers(page) -> None:
    """The Sweep tab as a person uses it (items and the Unlearn tab's 2 steps already set)."""
    page.locator("#sweep_p textarea").fill("1, 5")
    page.locator("#sweep_seeds textarea").fill("0")
    page.get_by_role("button", name="Run sweep", exact=True).click()
    status = page.locator("#sweep_status")
    expect(status).to_contain_text("1 of 4 points finished", timeout=900 * SECOND)
    expect(status).to_contain_text("min for the remaining 3")  # the estimate from the first point
    page.locator("#sweep_stop").click()
    expect(status).to_contain_text("Stopped", timeout=600 * SECOND)
    expect(status).to_contain_text("points kept")
    page.get_by_role("button", name="Run sweep", exact=True).click()
    expect(status).to_contain_text("Done: 4 points", timeout=900 * SECOND)
    plot = page.locator("#sweep_plot .js-plotly-plot")
    expect(plot).to_contain_text("Forget vs retain after unlearning")
    expect(plot).to_contain_text("ideal")
    expect(page.locator("#sweep_areas")).to_contain_text("auto-p")
    expect(page.locator("#sweep_answers")).to_contain_text("Hogwarts", timeout=60 * SECOND)
    _shot(page, "7_sweep")
