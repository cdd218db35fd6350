"""The page of `gptlab serve` in a real browser: Playwright driving Debian's Chromium, headless.

A person's path through it: type a prompt, set the temperature, generate and watch the text stream
in, open the step view, see the prompt words highlighted by attention and the bars of the next
token, move the step view's temperature and see the bars sharpen and flatten. A screenshot is saved
to test-artifacts/. Skipped only when Chromium or Playwright is missing outside CI; under CI
(CI=true) their absence fails the test.
"""

import json
import os
import re
import shutil
import sys
import urllib.request
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent / "browser"))
from serve_harness import REPO, live_server, make_model  # noqa: E402

CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
LAUNCH_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
               "--disable-component-update", "--disable-sync"]
ARTIFACTS = REPO / "test-artifacts"
PROMPT = "wine review : germany : mosel"
TEMPERATURE = 0.7
MAX_TOKENS = 30

try:
    from playwright.sync_api import expect, sync_playwright
except ImportError:  # pragma: no cover - depends on the machine
    sync_playwright = None

if not CI:
    if CHROMIUM is None:
        pytest.skip("chromium is not installed (apt-get install -y chromium); CI runs this test", allow_module_level=True)
    if sync_playwright is None:
        pytest.skip("the playwright package is not installed (pip install playwright); CI runs this test",
                    allow_module_level=True)
pytest.importorskip("fastapi")


def post(url, body):
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.load(r)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    make_model(root / "wine")
    with live_server(root) as s:
        yield s


def pick_seed(url):
    """A seed whose completion runs long: the random model may end its text at once on others."""
    for seed in range(100):
        d = post(url + "/v1/completions", {"model": "wine", "prompt": PROMPT, "max_tokens": MAX_TOKENS,
                                           "temperature": TEMPERATURE, "seed": seed})
        if d["usage"]["completion_tokens"] >= 12 and len(d["choices"][0]["text"].split()) >= 8:
            return seed, d["choices"][0]["text"]
    raise AssertionError("no seed among 100 gave a long completion")


def bar_probs(page):
    return [float(x) for x in page.locator("#bars .bar").evaluate_all("rows => rows.map(r => r.dataset.prob)")]


def test_generate_stream_and_step_view(server):
    assert CHROMIUM, "chromium is required under CI: apt-get install -y chromium"
    assert sync_playwright is not None, "playwright is required under CI: pip install playwright"
    seed, expected = pick_seed(server.url)
    problems = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=LAUNCH_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 1000})
            page.set_default_timeout(30_000)
            expect.set_options(timeout=30_000)
            page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
            page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
            page.on("request", lambda r: problems.append(f"off-site request {r.url}")
                    if not r.url.startswith(server.url) and not r.url.startswith("data:") else None)
            page.goto(server.url + "/")

            expect(page.locator("#model option")).to_have_count(1)
            expect(page.locator("#model")).to_have_value("wine")
            expect(page.locator("#health")).to_have_class(re.compile(r"\bok\b"))

            # Write: prompt, temperature, max tokens, seed; generate; text streams in.
            page.locator("#prompt").fill(PROMPT)
            page.locator("#temperature").fill(str(TEMPERATURE))
            expect(page.locator("#temperature-value")).to_have_text("0.70")
            page.locator("#max-tokens").fill(str(MAX_TOKENS))
            expect(page.locator("#max-tokens-value")).to_have_text(str(MAX_TOKENS))
            page.locator("#seed").fill(str(seed))
            page.locator("#generate").click()
            expect(page.locator("#generated")).not_to_be_empty()
            expect(page.locator("#output-meta")).to_contain_text("pieces")
            expect(page.locator("#generate")).to_be_enabled()
            assert page.locator("#generated").text_content() == expected
            pieces = int(page.locator("#output-meta").text_content().split()[0])
            assert pieces > 1, "the text arrived in one piece, not streamed"
            assert page.locator("#output .prompt-text").text_content() == PROMPT

            # Step view: attention over the words, bars of the next token.
            page.locator("#explain").click()
            expect(page.locator("#step-view")).to_be_visible()
            expect(page.locator("#step-label")).to_have_text(re.compile(r"step 1 of \d+"))
            chips = page.locator("#tokens .tok:not(.next)")
            expect(chips).to_have_count(len(PROMPT.split()))
            weights = [float(w) for w in chips.evaluate_all("cs => cs.map(c => c.dataset.weight)")]
            assert abs(sum(weights) - 1) < 1e-2 and max(weights) > 0
            colors = chips.evaluate_all("cs => cs.map(c => getComputedStyle(c).backgroundColor)")
            assert all(c.startswith("rgba(122, 31, 61") for c in colors), colors
            first_word = expected.split()[0]
            expect(page.locator("#tokens .tok.next")).to_have_text(first_word)
            assert page.locator("#bars .bar").count() >= 6
            expect(page.locator("#bars .bar.chosen .word")).to_contain_text(first_word)

            # One head instead of the mean: the highlighting changes.
            page.locator("#head-select").select_option("1:1")
            head_weights = [float(w) for w in chips.evaluate_all("cs => cs.map(c => c.dataset.weight)")]
            assert head_weights != weights

            # The step view's temperature re-weights the stored logits: sharper at 0.5, flatter at 1.5 and 3.
            page.locator("#reweight-temperature").fill("1")
            at1 = bar_probs(page)
            page.locator(".ticks button[data-t='0.5']").click()
            expect(page.locator("#reweight-value")).to_have_text("0.50")
            at05 = bar_probs(page)
            page.locator(".ticks button[data-t='1.5']").click()
            at15 = bar_probs(page)
            page.locator("#reweight-temperature").fill("3")
            expect(page.locator("#reweight-value")).to_have_text("3.00")
            at3 = bar_probs(page)
            assert at05[0] > at1[0] > at15[0] > at3[0]
            assert at05[-1] < at3[-1]
            assert "3.00" in page.locator("#step-meta").text_content()

            # Step forward: the new position sees one more word, the one chosen before.
            page.locator("#reweight-temperature").fill(str(TEMPERATURE))
            page.locator("#head-select").select_option("mean")
            page.locator("#step-next").click()
            expect(page.locator("#step-label")).to_have_text(re.compile(r"step 2 of \d+"))
            expect(chips).to_have_count(len(PROMPT.split()) + 1)
            expect(chips.last).to_have_text(first_word)
            expect(page.locator("#tokens .tok.next")).to_have_text(expected.split()[1])

            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "serve_page.png"), full_page=True)

            assert not problems, problems

            # A bad request shows the server's message on the page (the browser logs the 400 itself).
            page.locator("#top-p").fill("0.05")
            page.locator("#seed").fill("")
            page.locator("#prompt").fill("x" * 5000)
            page.locator("#generate").click()
            expect(page.locator("#error")).to_contain_text("characters")
        finally:
            browser.close()
