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
import subprocess
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
    return [float(x) for x in page.locator("#trace-view .tv-bar:not(.other)").evaluate_all(
        "rows => rows.map(r => r.dataset.prob)")]


def chip_texts(page):
    return page.locator("#trace-view .tv-tok:not(.tv-nexttok)").evaluate_all("cs => cs.map(c => c.textContent)")


def words(chips):
    return [c for c in chips if c not in ("\u27e8start\u27e9",)]  # a leading <|endoftext|> shows as a chip of its own


@pytest.fixture(scope="module")
def browser():
    assert CHROMIUM, "chromium is required under CI: apt-get install -y chromium"
    assert sync_playwright is not None, "playwright is required under CI: pip install playwright"
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=LAUNCH_ARGS)
        try:
            yield b
        finally:
            b.close()


def open_page(browser, url, width=1200, problems=None):
    page = browser.new_page(viewport={"width": width, "height": 1000})
    page.set_default_timeout(30_000)
    expect.set_options(timeout=30_000)
    if problems is not None:
        page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
        page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
        page.on("request", lambda r: problems.append(f"off-site request {r.url}")
                if not r.url.startswith(url) and not r.url.startswith("data:") else None)
    page.goto(url + "/")
    expect(page.locator("#health")).to_have_class(re.compile(r"\bok\b"))
    return page


def step_through(page, prompt, *, max_tokens=MAX_TOKENS, seed=0, temperature=1.0, top_k=None):
    page.locator("#prompt").fill(prompt)
    page.locator("#temperature").fill(str(temperature))
    page.locator("#max-tokens").fill(str(max_tokens))
    page.locator("#seed").fill(str(seed))
    if top_k is not None:
        page.locator("#top-k").fill(str(top_k))
    page.locator("#explain").click()
    expect(page.locator("#step-view")).to_be_visible()
    expect(page.locator("#trace-view .tv-step-label")).to_have_text(re.compile(r"step 1 of \d+"))


def test_generate_stream_and_step_view(server, browser):
    seed, expected = pick_seed(server.url)
    problems = []
    page = open_page(browser, server.url, problems=problems)
    try:
        expect(page.locator("#model option")).to_have_count(1)
        expect(page.locator("#model")).to_have_value("wine")

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
        expect(page.locator("#trace-view .tv-step-label")).to_have_text(re.compile(r"step 1 of \d+"))
        chips = page.locator("#trace-view .tv-tok:not(.tv-nexttok)")
        assert words(chip_texts(page)) == PROMPT.split()
        weights = [float(w) for w in chips.evaluate_all("cs => cs.map(c => c.dataset.weight)")]
        assert abs(sum(weights) - 1) < 1e-2 and max(weights) > 0
        colors = chips.evaluate_all("cs => cs.map(c => getComputedStyle(c).backgroundColor)")
        assert all(c.startswith("rgba(122, 31, 61") for c in colors), colors
        first_word = expected.split()[0]
        expect(page.locator("#trace-view .tv-nexttok")).to_have_text(first_word)
        assert page.locator("#trace-view .tv-bar:not(.other)").count() >= 10
        expect(page.locator("#trace-view .tv-bar.chosen .tv-word")).to_contain_text(first_word)
        assert page.locator("#trace-view .tv-bar.other").count() == 1  # the rest of the vocabulary, as one bar
        shown = bar_probs(page) + [float(page.locator("#trace-view .tv-bar.other").get_attribute("data-prob"))]
        assert abs(sum(shown) - 1) < 1e-4  # the bars are the whole distribution: they add up to 1

        # One head instead of the mean: the highlighting changes; the grid shows every layer x head,
        # and clicking a cell picks that head.
        cells = page.locator("#trace-view .tv-cell")
        expect(cells).to_have_count(2 * 2)  # tiny(): 2 layers x 2 heads
        page.locator("#trace-view .tv-head").select_option("1:1")
        head_weights = [float(w) for w in chips.evaluate_all("cs => cs.map(c => c.dataset.weight)")]
        assert head_weights != weights
        page.locator("#trace-view .tv-cell[data-head='0:1']").click()
        expect(page.locator("#trace-view .tv-head")).to_have_value("0:1")
        expect(page.locator("#trace-view .tv-cell.selected")).to_have_attribute("data-head", "0:1")

        # The logit lens: one row for the embeddings and one per layer.
        expect(page.locator("#trace-view .tv-lens-row")).to_have_count(3)

        # The step view's temperature re-weights the stored logits: sharper at 0.5, flatter at 1.5 and 3.
        page.locator("#trace-view .tv-temperature input").fill("1")
        at1 = bar_probs(page)
        page.locator("#trace-view .tv-ticks button[data-t='0.5']").click()
        expect(page.locator("#trace-view .tv-temperature output")).to_have_text("0.50")
        at05 = bar_probs(page)
        page.locator("#trace-view .tv-ticks button[data-t='1.5']").click()
        at15 = bar_probs(page)
        page.locator("#trace-view .tv-temperature input").fill("3")
        expect(page.locator("#trace-view .tv-temperature output")).to_have_text("3.00")
        at3 = bar_probs(page)
        assert at05[0] > at1[0] > at15[0] > at3[0]
        assert at05[-1] < at3[-1]
        assert "3.00" in page.locator("#trace-view .tv-meta").text_content()

        # Step forward: the new position sees one more word, the one chosen before.
        page.locator("#trace-view .tv-head").select_option("mean")
        page.locator("#trace-view .tv-next").click()
        expect(page.locator("#trace-view .tv-step-label")).to_have_text(re.compile(r"step 2 of \d+"))
        expect(chips).to_have_count(len(chip_texts(page)))
        assert words(chip_texts(page)) == PROMPT.split() + [first_word]
        expect(page.locator("#trace-view .tv-nexttok")).to_have_text(expected.split()[1])

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
        page.close()


def test_bars_are_the_distribution_gptlab_temperature_prints(server, browser):
    """At T = 3 the step view's top bar is the probability `gptlab temperature` gives (whole
    vocabulary), not the top words renormalised among themselves."""
    prompt = "wine review : germany :"
    out = subprocess.run([sys.executable, "-m", "gptlab", "temperature", str(server.models / "wine"), prompt,
                          "-T", "3", "--json"], cwd=REPO, capture_output=True, text=True, timeout=120, check=True)
    table = json.loads(out.stdout)
    page = open_page(browser, server.url)
    try:
        step_through(page, prompt, temperature=1.0)
        page.locator("#trace-view .tv-temperature input").fill("3")
        expect(page.locator("#trace-view .tv-temperature output")).to_have_text("3.00")
        top = page.locator("#trace-view .tv-bar[data-rank='0']")
        assert int(top.get_attribute("data-id")) == table["token_ids"][0]
        assert abs(100 * float(top.get_attribute("data-prob")) - 100 * table["probs"][0][0]) <= 0.5
        assert top.locator(".tv-pct").text_content() == f"{100 * table['probs'][0][0]:.2f}%"
    finally:
        page.close()


def test_top_k_2_greys_out_every_word_from_the_third(server, browser):
    page = open_page(browser, server.url)
    try:
        step_through(page, PROMPT, top_k=2)
        expect(page.locator("#trace-view .tv-top-k input")).to_have_value("2")
        for _ in range(3):  # a few steps: each is cut after its second word
            rows = page.locator("#trace-view .tv-bar").evaluate_all(
                "rs => rs.map(r => [r.dataset.rank === undefined ? 99 : Number(r.dataset.rank), r.classList.contains('removed')])")
            assert len(rows) >= 5
            assert all(removed == (rank >= 2) for rank, removed in rows), rows
            assert page.locator("#trace-view .tv-cut").count() == 1
            assert "top-k 2" in page.locator("#trace-view .tv-cut").text_content()
            assert abs(sum(bar_probs(page)) - 1) < 1e-4
            page.locator("#trace-view .tv-next").click()
    finally:
        page.close()


def test_step_slider_reaches_the_last_generated_token(server, browser):
    seed, expected = pick_seed(server.url)
    d = post(server.url + "/v1/completions", {"model": "wine", "prompt": PROMPT, "max_tokens": MAX_TOKENS,
                                              "temperature": TEMPERATURE, "seed": seed})
    n = d["usage"]["completion_tokens"]
    page = open_page(browser, server.url)
    try:
        step_through(page, PROMPT, seed=seed, temperature=TEMPERATURE)
        slider = page.locator("#trace-view .tv-step")
        assert slider.get_attribute("max") == str(n - 1)
        slider.fill(str(n - 1))
        expect(page.locator("#trace-view .tv-step-label")).to_have_text(f"step {n} of {n}")
        last = page.locator("#trace-view .tv-nexttok").text_content()
        assert expected.rstrip().endswith(last) or last in ("\u27e8end\u27e9",), (last, expected)
        expect(page.locator("#trace-view .tv-next")).to_be_disabled()
    finally:
        page.close()


def overflow(page):
    return page.evaluate("[document.documentElement.scrollWidth, document.documentElement.clientWidth]")


def test_page_and_trace_html_fit_a_phone(tmp_path_factory, browser):
    """No horizontal scrolling at 390 px: the page with a long model name, its step view, and the HTML trace."""
    root = tmp_path_factory.mktemp("phone")
    make_model(root / "wine-reviews-word-model-with-a-rather-long-folder-name")
    with live_server(root) as s:
        page = open_page(browser, s.url, width=390)
        try:
            scroll, client = overflow(page)
            assert scroll <= client, f"the page is {scroll} px wide on a {client} px screen"
            step_through(page, PROMPT, top_k=3)
            scroll, client = overflow(page)
            assert scroll <= client, f"the step view is {scroll} px wide on a {client} px screen"
        finally:
            page.close()
        trace = tmp_path_factory.mktemp("trace") / "trace.html"
        subprocess.run([sys.executable, "-m", "gptlab", "explain", str(next(root.iterdir())), PROMPT, "--steps", "12",
                        "--top-k", "3", "--seed", "1", "--out", str(trace)], cwd=REPO, check=True, timeout=120,
                       capture_output=True)
    page = browser.new_page(viewport={"width": 390, "height": 900})
    try:
        problems = []
        page.on("pageerror", lambda e: problems.append(str(e)))
        page.goto(trace.as_uri())
        expect(page.locator(".tv-step-label")).to_have_text("step 1 of 12")
        assert page.locator(".static-steps").is_hidden()  # the interactive view replaced the static steps
        scroll, client = overflow(page)
        assert scroll <= client, f"the trace HTML is {scroll} px wide on a {client} px screen"
        # The same live temperature slider as the page.
        page.locator(".tv-temperature input").fill("3")
        expect(page.locator(".tv-temperature output")).to_have_text("3.00")
        page.locator(".tv-step").fill("11")
        expect(page.locator(".tv-step-label")).to_have_text("step 12 of 12")
        assert not problems, problems
    finally:
        page.close()


def test_the_page_serves_the_explain_view_itself(tmp_path):
    """The page's trace_view.js/.css are the explanation stack's files, served from their own folder."""
    from fastapi.testclient import TestClient

    from gptlab.serve import create_app
    from gptlab.serve.settings import ServeSettings
    with TestClient(create_app(tmp_path, ServeSettings(allowed_hosts=["testserver"]))) as client:
        for name in ("trace_view.js", "trace_view.css"):
            r = client.get(f"/static/{name}")
            assert r.status_code == 200 and r.content == (REPO / "gptlab/explain/static" / name).read_bytes()
        assert client.get("/static/app.js").status_code == 200


SETTINGS = [(1.0, 0, 1.0, 0.0), (3.0, 0, 1.0, 0.0), (0.5, 2, 1.0, 0.0), (1.3, 0, 0.6, 0.0), (0.8, 0, 1.0, 0.2),
            (2.0, 5, 0.9, 0.05), (0.0, 0, 1.0, 0.0), (2.5, 70, 0.97, 0.0), (1.0, 0, 0.999, 0.0)]


@pytest.mark.parametrize("full_vocab_max", [4096, 8])
def test_the_browser_redoes_the_python_distribution(browser, tmp_path, full_vocab_max):
    """trace_view.js's distribution equals gptlab.explain.distribution's at every setting, for a
    step that keeps every logit and for one that keeps the top and a histogram (small limit here)."""
    sys.path.insert(0, str(REPO / "tests"))
    from conftest import tiny_model

    from gptlab.explain import render_html
    from gptlab.explain.capture import explain
    from gptlab.explain.distribution import distribution
    from gptlab.infer.sampling import SamplingConfig
    lm = tiny_model()
    trace = explain(lm.model, lm.tokenizer, PROMPT, SamplingConfig(max_new_tokens=2, seed=0),
                    full_vocab_max=full_vocab_max)
    path = tmp_path / "trace.html"
    path.write_text(render_html(trace), encoding="utf-8")
    page = browser.new_page()
    try:
        page.goto(path.as_uri())
        expect(page.locator(".tv-step-label")).to_have_text("step 1 of 2")
        for step in trace.steps:
            for T, k, p, mp in SETTINGS:
                js = page.evaluate("([step, T, k, p, mp]) => GptlabTraceView.distribution("
                                   "GptlabTraceView.groupsOf(step), T, k, p, mp).map(g => [g.id, g.kept, g.p, g.pT])",
                                   [{"dist": step.dist}, T, k, p, mp])
                py = [[g.id, g.kept, g.p, g.p_t] for g in distribution(step.dist, T, k, p, mp)]
                assert [r[:2] for r in js] == [r[:2] for r in py], (T, k, p, mp)
                assert all(abs(a[2] - b[2]) < 1e-12 and abs(a[3] - b[3]) < 1e-12 for a, b in zip(js, py))
    finally:
        page.close()
