"""The Compare and Image tabs of `gptlab serve`'s page in headless Chromium (as tests/test_serve_browser.py
drives the Write tab): pick base, SFT and aligned models and compare them; draw an image and hover a
prompt word to lay its cross-attention map over the picture. Screenshots go to test-artifacts/.
Skipped only when Chromium or Playwright is missing outside CI."""

import re
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent / "browser"))
from model_fixtures import make_compare_models, make_image_model  # noqa: E402
from serve_harness import live_server  # noqa: E402

# The Write tab's tests own the browser set-up (and skip this module too where Chromium or Playwright is missing).
from test_serve_browser import ARTIFACTS, expect, open_page, post  # noqa: E402
from test_serve_browser import browser as chromium  # noqa: E402, F401 (a fixture, under the name it is imported as)

pytest.importorskip("diffusers")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = make_compare_models(tmp_path_factory.mktemp("models"))
    make_image_model(root / "shapes")
    # One torch thread: these models take microseconds a layer, and more threads only wait on each other.
    with live_server(root, "--threads", "1") as s:
        yield s


@pytest.fixture(scope="module")
def page(server, request):
    problems: list[str] = []
    pg = open_page(request.getfixturevalue("chromium"), server.url, problems=problems)
    pg.set_default_timeout(60_000)
    expect.set_options(timeout=60_000)  # the first image loads diffusers: seconds on a busy machine
    yield pg
    pg.close()
    # The last test's bad request is refused on purpose; Chromium logs every refused fetch.
    assert [m for m in problems if "status of 400" not in m] == [], problems


def test_compare_tab_samples_side_by_side_and_the_steps_of_aligned_against_sft(server, page):
    expect(page.locator("#model option")).to_have_count(4)  # the Write tab offers text models only
    page.locator("#tab-compare").click()
    expect(page.locator("#panel-compare")).to_be_visible()
    expect(page.locator("#panel-write")).to_be_hidden()
    # Roles guessed from the names.
    expect(page.locator("#cmp-base")).to_have_value("base")
    expect(page.locator("#cmp-sft")).to_have_value("sft")
    expect(page.locator("#cmp-aligned")).to_have_value("dpo")
    prompt = "wine review : germany : mosel"
    page.locator("#cmp-prompt").fill(prompt)
    page.locator("#cmp-tokens").fill("6")
    page.locator("#cmp-seed").fill("3")
    page.locator("#cmp-run").click()
    expect(page.locator("#cmp-steps")).to_be_visible()
    expect(page.locator("#cmp-view .cv-row")).to_have_count(6)
    # Each column is that model's own completion with the same settings and seed.
    for role, model in (("base", "base"), ("sft", "sft"), ("aligned", "dpo")):
        want = post(server.url + "/v1/completions", {"model": model, "prompt": prompt, "max_tokens": 6,
                                                     "temperature": 1.0, "seed": 3})["choices"][0]["text"]
        expect(page.locator(f"#cmp-samples .sample[data-role='{role}'] .sample-text")).to_have_text(want)
    # The table is the API's comparison: the same tokens and KLs, step by step.
    d = post(server.url + "/v1/compare", {"model": "dpo", "reference": "sft", "prompt": prompt, "steps": 6,
                                          "temperature": 1.0, "seed": 3, "top": 5})
    shown = page.locator("#cmp-view .cv-kl .cv-num").all_text_contents()
    assert shown == [f"{s['kl']:.3f}" for s in d["steps"]]
    expect(page.locator("#cmp-view .cv-total")).to_have_text(f"{d['total_kl']:.3f} nats")
    chips = page.locator("#cmp-view .cv-tok")
    chips.nth(2).hover()
    expect(page.locator("#cmp-view .cv-row").nth(2)).to_have_class(re.compile(r"\bcv-on\b"))
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "page-compare.png"), full_page=True)
    # `gptlab explain --compare --out`'s page draws the same data with the same view, offline.
    from gptlab.explain.render_html import render_compare_html
    standalone = page.context.browser.new_page()
    standalone.set_content(render_compare_html(d, "the terminal view"))
    expect(standalone.locator(".cv-row")).to_have_count(6)
    assert standalone.locator(".cv-kl .cv-num").all_text_contents() == shown
    expect(standalone.locator("pre.static-steps")).to_be_hidden()  # the script ran and replaced it
    standalone.close()


def canvas_sum(page) -> float:
    return page.evaluate("""() => { const c = document.getElementById("img-canvas");
        const d = c.getContext("2d").getImageData(0, 0, c.width, c.height).data;
        let s = 0; for (let i = 0; i < d.length; i += 4) s += d[i] - d[i + 1]; return s; }""")


def test_image_tab_draws_and_hovering_a_word_lays_its_map_over_the_picture(page):
    page.locator("#tab-image").click()
    expect(page.locator("#panel-image")).to_be_visible()
    expect(page.locator("#model-picker")).to_be_hidden()
    expect(page.locator("#img-model option")).to_have_count(1)
    page.locator("#img-prompt").fill("a red circle above a blue square")
    page.locator("#img-steps").fill("4")
    page.locator("#img-guidance").fill("2")
    expect(page.locator("#img-guidance-value")).to_have_text("2.0")
    page.locator("#img-generate").click()
    expect(page.locator("#img-result")).to_be_visible()
    words = page.locator("#img-words .img-word")
    expect(words.first).to_have_text("a")
    assert words.all_text_contents()[:3] == ["a", "red", "circle"]
    expect(page.locator("#img-meta")).to_contain_text("4 steps · guidance 2")
    plain = canvas_sum(page)
    words.nth(2).hover()
    expect(page.locator("#img-canvas")).to_have_attribute("data-word", "2")
    assert canvas_sum(page) > plain  # red laid over the patches that attended to "circle"
    page.screenshot(path=str(ARTIFACTS / "page-image.png"), full_page=True)
    page.locator("#img-prompt").hover()
    expect(page.locator("#img-canvas")).to_have_attribute("data-word", "")
    page.evaluate("document.getElementById('img-guidance').min = '-5'")  # past the slider: the server's error shows
    page.locator("#img-guidance").fill("-1")
    page.locator("#img-generate").click()
    expect(page.locator("#img-error")).to_contain_text("guidance")
