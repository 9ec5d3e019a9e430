"""The classroom checks in a real headless browser, on the tiny random model (fast; the full flow on the real
model is tests/test_browser.py): the progress text during every phase, one progress bar per action, the Compare
methods table within 1440 px, the time the status reports equal to the time the visitor waited, answers that end at
a boundary or are marked as cut, and "Show me". Screenshots go to screenshots/classroom_*.png.

Each progress event of the model work is slowed by PAUSE seconds (jobs.Job), so that every phase of the tiny model's
work lasts long enough for the page to show it, as the real model's phases do.
"""

from __future__ import annotations

import re
import time

import pytest
import torch

from conftest import build_tokenizer, tiny_llama
from test_browser import SECOND, SHOTS, _number, _tab, browser_page, expect, pytestmark, served_app  # noqa: F401
WIDTH = 1440
PAUSE = 0.35

# Every 150 ms: the status text of each action, the visible progress bars and their texts (Gradio's status tracker)
SAMPLER = """() => { window.__samples = []; setInterval(() => {
  const visible = [...document.querySelectorAll('.progress-level')].filter(e => e.offsetParent !== null);
  window.__samples.push({t: performance.now(), bars: visible.length,
    texts: visible.map(e => e.innerText.replace(/\\s+/g, ' ').trim()),
    status: Object.fromEntries(['run_status', 'compare_status', 'influence_status', 'load_status', 'show_me_status']
      .map(id => [id, (document.getElementById(id) || {}).innerText || ''])) }); }, 150); }"""


@pytest.fixture(scope="module")
def url():
    from grin_engine.models import LoadedModel
    from grin_ui import jobs
    from grin_ui.state import STORE

    patch = pytest.MonkeyPatch()
    real_main = jobs.Job._main

    def slow_main(self, work):  # each progress event takes PAUSE s longer: the phases become visible
        def slowed(report):
            def report_slowly(*event):
                time.sleep(PAUSE)
                return report(*event)
            return work(report_slowly)
        return real_main(self, slowed)

    patch.setattr(jobs.Job, "_main", slow_main)
    saved = STORE._current
    tokenizer = build_tokenizer()
    STORE._current = LoadedModel(model=tiny_llama(len(tokenizer)), tokenizer=tokenizer, name="default",
                                 source="local", device=torch.device("cpu"), dtype=torch.float32)
    try:
        with served_app() as address:
            yield address
    finally:
        STORE._current = saved
        patch.undo()


@pytest.fixture(scope="module")
def page(url):
    with browser_page(url, WIDTH) as opened:
        expect(opened.get_by_role("heading", name="GRIN Studio")).to_be_visible(timeout=60 * SECOND)
        opened.evaluate(SAMPLER)
        yield opened


def _shot(page, name: str) -> None:
    SHOTS.mkdir(exist_ok=True)
    page.wait_for_timeout(600)
    page.screenshot(path=str(SHOTS / f"classroom_{name}.png"), full_page=True)


# The header words of a table drawn across two lines: a Range over one word has one client box per line it is on.
BROKEN_WORDS = """e => {
  const broken = [];
  for (const th of e.querySelectorAll('thead th, [role=columnheader]')) {
    const walker = document.createTreeWalker(th, NodeFilter.SHOW_TEXT);
    for (let node = walker.nextNode(); node; node = walker.nextNode()) {
      for (const m of node.textContent.matchAll(/\\S+/g)) {
        const range = document.createRange();
        range.setStart(node, m.index);
        range.setEnd(node, m.index + m[0].length);
        const lines = new Set([...range.getClientRects()].map(r => Math.round(r.top)));
        if (lines.size > 1) broken.push(m[0]);
      }
    }
  }
  return broken;
}"""


def _samples(page, since: float) -> list[dict]:
    page.wait_for_timeout(500)  # the sampler's next tick has seen what the last expect saw
    return [s for s in page.evaluate("window.__samples") if s["t"] >= since]


def _now(page) -> float:
    return page.evaluate("performance.now()")


def _ends_at_a_boundary_or_marked(answer: str) -> bool:
    from grin_engine.evaluation.evaluate import CUT_MARK

    return answer == "" or answer.endswith(CUT_MARK) or bool(re.search(r"[.!?…\"')\]]$", answer))


def test_show_me_then_every_phase_speaks_and_times_are_true(page):
    # Show me: one click, a sentence per step, the tabs filled
    since = _now(page)
    page.get_by_role("button", name=re.compile("^Show me")).click()
    show = page.locator("#show_me_status")
    expect(show).to_contain_text("4 of 4 — Compare", timeout=300 * SECOND)
    said = " ".join(s["status"]["show_me_status"] for s in _samples(page, since))
    # (step 1's sentence lasts as long as the load: no time at all with the tiny model; test_app sees it)
    for step in ("2 of 4 — Influence", "3 of 4 — Unlearn", "4 of 4 — Compare"):
        assert step in said, step
    _shot(page, "1_show_me")
    # every tab Show me names is drawn, though the visitor opens it only now: Influence's three figures
    _tab(page, "Influence")
    expect(page.locator("#selection")).to_contain_text("p = 1%:")
    for figure in ("#heatmap", "#layer_bars", "#score_hist"):
        expect(page.locator(f"{figure} .js-plotly-plot")).to_have_count(1)
    expect(page.locator("#heatmap .js-plotly-plot g.hm image").first).to_be_attached()  # the heatmap itself
    _shot(page, "1a_influence_after_show_me")
    _tab(page, "Unlearn")
    expect(page.locator("#run_status")).to_contain_text("Done")
    expect(page.locator("#loss_plot .js-plotly-plot g.scatterlayer .trace")).to_have_count(1)  # the loss curve
    expect(page.locator("#until textarea")).to_have_value("forget_keyword_accuracy<=0.25")
    _shot(page, "1b_unlearn_after_show_me")
    _tab(page, "Compare")
    expect(page.locator("#forget_gen").get_by_role("grid")).to_have_attribute("aria-rowcount", "5")  # header + 4
    expect(page.locator("#retain_gen").get_by_role("grid")).to_have_attribute("aria-rowcount", "5")
    expect(page.locator("#metrics").get_by_role("grid")).not_to_have_attribute("aria-rowcount", "1")
    _shot(page, "2_compare_after_show_me")

    # answers end at a sentence / word boundary or say they were cut
    cells = page.locator("#forget_gen [role=gridcell]").all_inner_texts()
    answers = [cells[i] for i in range(len(cells)) if i % 4 in (2, 3)]  # before, after
    assert answers and all(_ends_at_a_boundary_or_marked(a.strip()) for a in answers), answers

    # Unlearn again with other settings: every phase has words on the one bar; the shared work is re-used
    _tab(page, "Unlearn")
    page.locator("#until textarea").fill("")
    _number(page, "number input for steps", 3)
    # before Run, the page says what the run will take and what it re-uses
    expected = page.locator("#run_expected")
    expect(expected).to_contain_text("and 3 steps")
    expect(expected).to_contain_text("it re-uses the base model's answers and the influence scores")
    since = _now(page)
    page.get_by_role("button", name="Run", exact=True).click()
    status = page.locator("#run_status")
    expect(status).to_contain_text("Done: 3 steps", timeout=300 * SECOND)
    expect(status).to_contain_text("Re-used")
    samples = _samples(page, since)
    texts = " | ".join(s["status"]["run_status"] for s in samples)
    for phase in ("selecting the top 1% of the weights", "unlearning, step", "answering with the unlearned model"):
        assert phase in texts, (phase, texts[:2000])
    assert max(s["bars"] for s in samples) <= 1, "more than one progress bar at once"
    assert any("left" in t for s in samples for t in s["texts"] + [s["status"]["run_status"]])
    _shot(page, "3_unlearn_again")

    # Compare methods: one bar, every method's phases named, the reported time = the time waited, table fits
    _tab(page, "Compare methods")
    since = _now(page)
    clicked = time.monotonic()
    page.get_by_role("button", name="Compare", exact=True).click()
    compare_status = page.locator("#compare_status")
    expect(compare_status).to_contain_text("Done: grin, grun, full", timeout=300 * SECOND)
    waited = time.monotonic() - clicked
    reported = float(re.search(r"in (\d+) s", compare_status.inner_text()).group(1))
    # the status counts from the handler's start to its last frame; the queue hand-over before and the page's drawing
    # after are not in it: 3-4 s on a 2-core CPU at load 10 with the browser and the server at nice 10
    assert abs(reported - waited) <= 5.0, (reported, waited)
    samples = _samples(page, since)
    assert max(s["bars"] for s in samples) <= 1, "more than one progress bar at once"
    texts = " | ".join(s["status"]["compare_status"] for s in samples)
    for phase in ("GRIN: unlearning", "GRUN: training the gated edits", "Full: unlearning"):
        assert phase in texts, (phase, texts[:2000])
    table = page.locator("#methods_table")
    fits = table.evaluate("e => { const t = e.querySelector('table') || e; "
                          "return [t.scrollWidth, e.clientWidth, e.getBoundingClientRect().right]; }")
    assert fits[0] <= fits[1] + 1 and fits[2] <= WIDTH, fits  # nothing cut off on the right, no side scrolling
    # no column header breaks inside a word ("second / s"): a word drawn on two lines has two boxes
    broken = table.evaluate(BROKEN_WORDS)
    assert not broken, broken
    _shot(page, "4_compare_methods")


def test_learn_experiments_run_from_their_buttons_and_draw(page):
    """Each section of Learn: its Try it button runs the experiment and its figures and tables are drawn."""
    from grin_ui.tabs import learn

    _tab(page, "Learn")
    for e in learn.EXPERIMENTS:
        page.locator(f"#try_{e.key}").click()
        expect(page.locator(f"#try_{e.key}_status")).to_contain_text("Done", timeout=300 * SECOND)
        for name in e.outputs:
            element = page.locator(f"#learn_{name}")
            if name.endswith("answers"):  # a table: the header and one row per item
                expect(element.get_by_role("grid")).to_have_attribute("aria-rowcount",
                                                                      str(learn.EXPERIMENT_ITEMS + 1))
            else:
                expect(element.locator(".js-plotly-plot")).to_have_count(1)
                expect(element.locator(".js-plotly-plot g.trace, .js-plotly-plot g.hm").first).to_be_attached()
        row = page.locator(f"#learn_{e.outputs[0]}").locator("xpath=..")  # the row of the experiment's outputs
        page.wait_for_timeout(600)  # plotly's layout settles
        row.screenshot(path=str(SHOTS / f"classroom_learn_{e.key}.png"))
