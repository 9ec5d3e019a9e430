"""The TOFU view (grin_ui/tabs/tofu.py): its tables and plot from a real report (a tiny model's run), its API through
gradio_client against a launched app, and the tab in headless Chromium with a screenshot (screenshots/tofu.png)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from grin_engine.benchmarks import tofu
from grin_engine.config import GrinConfig

gradio_client = pytest.importorskip("gradio_client")


@pytest.fixture(scope="module")
def report_path(tmp_path_factory):
    import torch

    from conftest import build_tokenizer, tiny_llama
    from grin_engine.models import LoadedModel

    tok = build_tokenizer()
    tiny = LoadedModel(tiny_llama(len(tok)), tok, "tiny", "local", torch.device("cpu"), torch.float32)
    folder = tmp_path_factory.mktemp("tofu")
    recipe = tofu.TofuRecipe(epochs=1, batch_size=16, max_length=64, eval_items=2, max_new_tokens=3)
    report = tofu.run_tofu(tiny, recipe, ["grin", "graddiff"], GrinConfig(steps=1, max_new_tokens=3, max_length=64),
                           cache_dir=folder / "cache")
    path = folder / "tofu.json"
    path.write_text(json.dumps(report))
    return path


def test_table_scatter_and_published_numbers(report_path):
    from grin_ui.tabs import tofu as tofu_view

    report = json.loads(report_path.read_text())
    table = tofu_view.report_table(report)
    assert list(table["model"]) == ["target", "retain", "grin", "graddiff"]
    assert table.loc[1, "forget quality"] == "1"  # the retain model against itself
    assert table.loc[1, "note"].startswith("reference")
    assert len(tofu_view.TABLE_WIDTHS) == len(table.columns)
    for column, split in (("forget fluency", "forget"), ("retain fluency", "retain")):
        assert list(table[column]) == [f"{row['splits'][split]['fluency']:.3f}" for row in report["rows"].values()]
    fig = tofu_view.scatter(report)
    assert fig.layout.xaxis.type == "log"
    ours = [t for t in fig.data if "(ours)" in t.hovertemplate]
    assert [t.text[0] for t in ours] == ["target", "retain", "grin", "graddiff"]
    published = [t for t in fig.data if "open-unlearning" in t.hovertemplate]
    assert len(published) == len(tofu.PUBLISHED["forget01"])
    pub = tofu_view.published_table()
    assert {"forget01", "forget10"} == set(pub["split"]) and "NPO" in set(pub["method"])
    assert "must be high" in tofu_view.sanity_text(report)


def test_tuned_table_shows_the_fluent_pick_where_it_differs():
    from test_tofu_grid import fluent_rule_report

    from grin_ui.tabs import tofu as tofu_view

    report = fluent_rule_report()
    table = tofu_view.report_table(report)
    assert list(table["model"]) == ["target", "retain", "npo", "npo, fluent pick", "grin"]
    notes = dict(zip(table["model"], table["note"]))
    assert notes["npo"] == "tuned: lr=5e-05, picked among 3 of 3 points"
    assert notes["npo, fluent pick"] == "the rule among its 2 fluent of 3 points: lr=1e-05"
    assert notes["grin"].endswith("; none of its points answers fluently")
    assert table.loc[3, "forget quality"] == "0.01" and table.loc[3, "forget fluency"] == "1.000"


@pytest.fixture(scope="module")
def url():
    from grin_ui import build_app, launch_kwargs

    demo = build_app()
    _, local_url, _ = demo.queue().launch(prevent_thread_lock=True, quiet=True, **launch_kwargs())  # a free port
    try:
        yield local_url
    finally:
        demo.close()


def test_api_open_report_and_errors(url, report_path, tmp_path):
    client = gradio_client.Client(url, verbose=False)
    names = set(client.view_api(return_format="dict", print_info=False)["named_endpoints"])
    assert {"/tofu_open", "/tofu_run", "/tofu_stop"} <= names
    status, table, _scatter, sanity = client.predict(gradio_client.handle_file(str(report_path)), api_name="/tofu_open")
    assert status == "Opened a report with 4 models."
    value = table["value"] if "value" in table else table
    assert [row[0] for row in value["data"]] == ["target", "retain", "grin", "graddiff"]
    assert "Sanity" in sanity
    bad = tmp_path / "other.json"
    bad.write_text('{"config": {}}')
    with pytest.raises(Exception, match="not a TOFU report"):
        client.predict(gradio_client.handle_file(str(bad)), api_name="/tofu_open")
    with pytest.raises(Exception, match="load a model in Setup first"):
        client.predict("forget01", ["grin"], 5, api_name="/tofu_run")


CHROMIUM = "/usr/lib/chromium/chromium"


@pytest.mark.slow
@pytest.mark.skipif(not os.access(CHROMIUM, os.X_OK), reason=f"no Chromium at {CHROMIUM}")
def test_tofu_tab_in_the_browser(url, report_path):
    sync_api = pytest.importorskip("playwright.sync_api")
    shots = Path(__file__).resolve().parent.parent / "screenshots"
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox", "--disable-gpu"])
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(url)
            page.get_by_role("tab", name="TOFU benchmark", exact=True).click()
            page.locator("#tofu_status").scroll_into_view_if_needed()
            page.locator("#tofu_report_file input[type=file]").set_input_files(str(report_path))
            sync_api.expect(page.locator("#tofu_status")).to_contain_text("Opened a report with 4 models",
                                                                           timeout=60_000)
            sync_api.expect(page.locator("#tofu_table")).to_contain_text("graddiff")
            sync_api.expect(page.locator("#tofu_published")).to_contain_text("NPO")
            table = page.locator("#tofu_table")  # every column, the note included, fits the page: no side scrolling
            fits = table.evaluate("e => { const t = e.querySelector('table') || e; "
                                  "return [t.scrollWidth, e.clientWidth, e.getBoundingClientRect().right]; }")
            assert fits[0] <= fits[1] + 1 and fits[2] <= 1400, fits
            page.wait_for_timeout(1000)
            shots.mkdir(exist_ok=True)
            page.screenshot(path=str(shots / "tofu.png"), full_page=True)
        finally:
            browser.close()


def test_api_opens_the_tuned_report_with_each_chosen_setting(url, tmp_path, monkeypatch):
    import torch

    from conftest import build_tokenizer, tiny_llama
    from grin_engine.benchmarks import tofu_grid
    from grin_engine.models import LoadedModel
    from grin_ui.tabs import tofu as tofu_view

    client = gradio_client.Client(url, verbose=False)
    monkeypatch.setattr(tofu_view, "TUNED_REPORT", tmp_path / "missing.json")
    with pytest.raises(Exception, match="no tuned report ships"):
        client.predict(api_name="/tofu_tuned")
    tok = build_tokenizer()
    tiny = LoadedModel(tiny_llama(len(tok)), tok, "tiny", "local", torch.device("cpu"), torch.float32)
    monkeypatch.setitem(tofu_grid.TUNE_GRIDS, "grin", {"p": [0.05], "lr": [1e-4, 1e-3]})
    recipe = tofu.TofuRecipe(epochs=1, batch_size=16, max_length=64, eval_items=2, max_new_tokens=3)
    report = tofu_grid.run_grid(tiny, recipe, ["grin"], GrinConfig(steps=1, max_new_tokens=3, max_length=64),
                                tmp_path / "tune.jsonl", None, cache_dir=tmp_path / "cache")
    (tmp_path / "tune.json").write_text(json.dumps(report))
    monkeypatch.setattr(tofu_view, "TUNED_REPORT", tmp_path / "tune.json")
    status, table, _scatter, _sanity = client.predict(api_name="/tofu_tuned")
    assert "chosen by the rule" in status and "2 of 2 grid points" in status
    value = table["value"] if "value" in table else table
    rows = {row[0]: row[-1] for row in value["data"]}
    assert list(rows)[:3] == ["target", "retain", "grin"] and rows["grin"].startswith("tuned: p=0.05 lr=")
    assert "picked among 2 of 2 points" in rows["grin"]
    # the tiny model's answers decide whether the fluent rule picks another point: then it is the next row
    assert list(rows)[3:] == ([] if rows["grin"].endswith(("also the fluent pick", "answers fluently"))
                              else ["grin, fluent pick"])
    assert "fluent pick" in status
