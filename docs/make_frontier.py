"""docs/RESULTS.md's frontier picture and table from a sweep's sweep.json (the app's own figure, rendered by Chromium).

    python docs/make_frontier.py sweep.json docs/frontier.png

Draws grin_ui.tabs.sweep.sweep_figure (the Sweep tab's scatter) from the points in sweep.json, saves it as a PNG
with headless Chromium (Playwright, requirements-dev.txt; no kaleido needed) and prints the markdown table of
setting means and the areas, for docs/RESULTS.md.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from anywhere without installing the package

CHROMIUM = "/usr/lib/chromium/chromium"


def markdown_table(report: dict) -> str:
    frontier = report["frontier"]
    rows = ["| method | setting | forget (mean ± std) | retain (mean ± std) | seeds | on front |",
            "| --- | --- | --- | --- | --- | --- |"]
    for row in frontier["settings"]:
        setting = ", ".join(f"{k} {row[k]:g}" for k in ("p", "sigma2", "lr", "steps", "grun_lr", "grun_steps")
                            if row.get(k) is not None)
        front = any(row == r for r in frontier["fronts"].get(row["method"], []))
        rows.append(f"| {row['method']} | {setting} | {row['forget']:.3f} ± {row['forget_std']:.3f} | "
                    f"{row['retain']:.3f} ± {row['retain_std']:.3f} | {row['n']} | {'yes' if front else ''} |")
    rows += ["", "| method | area to the ideal corner (mean ± std over seeds) |", "| --- | --- |"]
    rows += [f"| {m} | {a['mean']:.3f} ± {a['std']:.3f} (n = {a['n']}) |" for m, a in frontier["areas"].items()]
    return "\n".join(rows)


def main(source: str, png: str) -> None:
    from playwright.sync_api import sync_playwright

    from grin_ui.tabs.sweep import sweep_figure

    report = json.loads(Path(source).read_text())
    frontier = report["frontier"]
    figure = sweep_figure(report["points"], report["before"], frontier["forget_metric"], frontier["retain_metric"],
                          frontier.get("target"))
    figure.update_layout(width=900, height=620)
    html = Path(tempfile.mkdtemp()) / "frontier.html"
    figure.write_html(str(html), include_plotlyjs=True, full_html=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 920, "height": 640})
        page.goto(html.as_uri())
        page.wait_for_selector(".js-plotly-plot")
        page.locator(".js-plotly-plot").screenshot(path=png)
        browser.close()
    print(markdown_table(report))
    print(f"\nfigure written to {png}")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: python docs/make_frontier.py sweep.json out.png")
    main(sys.argv[1], sys.argv[2])
