"""Take docs/img/page.png, the README's picture of the page: `gptlab serve` on runs/demo (trained by
examples/wine_gpt.ipynb or `gptlab train --out runs/demo`), a prompt written and stepped through,
in headless Chromium through Playwright.

    .venv/bin/python tests/browser/screenshot.py [MODEL_FOLDER]
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from playwright.sync_api import expect, sync_playwright
from serve_harness import REPO, live_server

LAUNCH_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
               "--disable-component-update", "--disable-sync"]
OUT = REPO / "docs" / "img" / "page.png"
PROMPT = "wine review : germany :"


def main(model: Path) -> None:
    if not (model / "config.json").is_file():
        raise SystemExit(f"no model in {model}: run examples/wine_gpt.ipynb or `gptlab train --out {model}` first")
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    with live_server(model.resolve()) as server, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=LAUNCH_ARGS)
        page = browser.new_page(viewport={"width": 1200, "height": 900}, device_scale_factor=1)
        page.set_default_timeout(60_000)
        page.goto(server.url + "/")
        expect(page.locator("#model option")).to_have_count(1)
        page.locator("#prompt").fill(PROMPT)
        page.locator("#temperature").fill("0.8")
        page.locator("#top-k").fill("5")
        page.locator("#max-tokens").fill("24")
        page.locator("#seed").fill("2")
        page.locator("#generate").click()
        expect(page.locator("#output-meta")).to_contain_text("pieces")
        page.locator("#explain").click()
        expect(page.locator("#trace-view .tv-step-label")).to_contain_text("step 1 of")
        page.locator("#trace-view .tv-cell[data-head='1:0']").click()
        page.evaluate("window.scrollTo(0, 0)")
        OUT.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(OUT), full_page=True)
        browser.close()
    print(f"wrote {OUT.relative_to(REPO)}")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else REPO / "runs" / "demo")
