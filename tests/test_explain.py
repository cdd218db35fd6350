"""Explanation traces: what they record, the JSON round trip, and the HTML / terminal / notebook views."""

from __future__ import annotations

import ast
import html
import json
import math
import re
from pathlib import Path

import pytest
import torch
from conftest import tiny_model

from gptlab.errors import UserError
from gptlab.explain import Trace, render_html, render_terminal, use_color
from gptlab.explain.style import display_token
from gptlab.infer.generate import GenerationWarning

EXPLAIN_DIR = Path(__file__).resolve().parents[1] / "gptlab" / "explain"
PROMPT = "wine review : germany"


@pytest.fixture(scope="module")
def lm():
    return tiny_model()


@pytest.fixture(scope="module")
def trace(lm):
    return lm.explain(PROMPT, steps=4, top=5, seed=1)


def test_model_attention_is_causal_and_normalised(lm):
    x = torch.tensor([lm.encode(PROMPT + " : mosel : riesling")])
    with torch.inference_mode():
        attn = lm.model(x, return_attn=True).attn
    for a in attn:  # (1, H, T, T)
        torch.testing.assert_close(a.sum(-1), torch.ones_like(a.sum(-1)))
        assert torch.all(a.triu(diagonal=1) == 0)


def test_trace_records_every_step(lm, trace):
    n_prompt = len(lm.encode(PROMPT))
    cfg = lm.model.cfg
    assert len(trace.steps) == 4 and trace.top == 5
    assert trace.model["n_layer"] == cfg.n_layer and trace.model["n_head"] == cfg.n_head and trace.model["kind"] == "gpt"
    assert trace.sampling["seed"] == 1 and trace.sampling["max_new_tokens"] == 4
    for i, step in enumerate(trace.steps):
        assert len(step.tokens) == n_prompt + i and step.start == 0
        assert step.tokens[:n_prompt] == ["wine", "review", ":", "germany"]
        assert len(step.attention) == cfg.n_layer and all(len(h) == cfg.n_head for h in step.attention)
        for heads in step.attention:
            for row in heads:
                assert len(row) == len(step.tokens) and math.isclose(sum(row), 1.0, abs_tol=1e-4)
                assert min(row) >= 0
        ps = [c.p for c in step.candidates]
        assert len(step.candidates) >= 20 and ps == sorted(ps, reverse=True)
        assert all(math.isclose(c.p, math.exp(c.logit - step.logsumexp), rel_tol=1e-4) for c in step.candidates)
        assert step.entropy > 0 and math.isclose(step.entropy_sample, step.entropy, rel_tol=1e-4)  # T=1, no filter
        if i:
            assert step.token_ids[-1] == trace.steps[i - 1].chosen.id
    assert trace.steps[-1].finish == "length" and trace.finish_reason == "length"


def test_explain_samples_what_generate_samples(lm, trace):
    gen = lm.generate(PROMPT, max_new_tokens=4, seed=1)[0]
    assert [s.chosen.id for s in trace.steps] == gen.token_ids and trace.completion == gen.text


def test_probabilities_after_temperature_and_top_k(lm):
    t = lm.explain(PROMPT, steps=2, temperature=0.5, top_k=3, seed=0)
    for step in t.steps:
        assert sum(c.p_sample > 0 for c in step.candidates) == 3
        assert math.isclose(sum(c.p_sample for c in step.candidates[:3]), 1.0, abs_tol=1e-4)
        assert step.candidates[0].p_sample > step.candidates[0].p  # T < 1 sharpens
        assert step.entropy_sample < step.entropy
        assert math.isclose(step.reweight(1.0)[0], step.candidates[0].p, rel_tol=1e-4)


@pytest.mark.parametrize("settings", [
    dict(temperature=1.0), dict(temperature=3.0), dict(temperature=0.5, top_k=2), dict(temperature=1.3, top_p=0.6),
    dict(temperature=0.8, min_p=0.2), dict(temperature=2.0, top_k=5, top_p=0.9, min_p=0.05),
    dict(temperature=1.5, repetition_penalty=1.7), dict(temperature=0),
])
def test_stored_distribution_is_the_one_the_sampler_drew_from(lm, settings):
    """The step's `dist`, run through the Python port of the sampler's pipeline, gives back the
    probabilities torch drew with, for every token of the vocabulary that the candidates name."""
    from gptlab.explain.distribution import distribution
    t = lm.explain(PROMPT, steps=6, seed=3, **settings)
    s = t.sampling
    for step in t.steps:
        assert len(step.dist["logits"]) == lm.tokenizer.vocab_size  # a small vocabulary: every logit
        groups = {g.id: g for g in distribution(step.dist, s["temperature"], s["top_k"], s["top_p"], s["min_p"])}
        assert math.isclose(sum(g.p for g in groups.values()), 1.0, abs_tol=1e-9)
        for c in step.candidates + [step.chosen]:
            assert math.isclose(groups[c.id].p, c.p_sample, rel_tol=2e-3, abs_tol=1e-6), (settings, c)
            assert (groups[c.id].kept == 0) == (c.p_sample == 0)
        assert groups[step.chosen.id].kept == 1


def test_a_large_vocabulary_keeps_the_top_and_a_histogram_of_the_rest(lm):
    """Above the full-vocabulary limit the step keeps the top logits and binned counts of the others:
    the probabilities at any temperature still match torch's whole-vocabulary softmax closely."""
    from gptlab.explain.capture import N_DIST_TOP, explain
    from gptlab.explain.distribution import distribution
    from gptlab.infer.sampling import SamplingConfig
    V = lm.tokenizer.vocab_size
    t = explain(lm.model, lm.tokenizer, PROMPT, SamplingConfig(temperature=3.0, max_new_tokens=3, seed=0),
                full_vocab_max=V - 1)
    for step in t.steps:
        d = step.dist
        assert len(d["ids"]) == N_DIST_TOP and sum(d["tail"]["counts"]) == V - N_DIST_TOP
        groups = distribution(d, 3.0)
        assert math.isclose(sum(g.p * g.count for g in groups), 1.0, abs_tol=1e-9)
        by_id = {g.id: g.p for g in groups if g.id is not None}
        for c in step.candidates:
            assert math.isclose(by_id[c.id], c.p_sample, rel_tol=5e-3), c
    # The "all other words" mass at T = 3 against torch's softmax over the whole vocabulary.
    probs_V = (lm.next_token_logits(PROMPT) / 3.0).softmax(-1)
    true_tail = 1 - float(probs_V[t.steps[0].dist["ids"]].sum())
    tail_mass = sum(g.p * g.count for g in distribution(t.steps[0].dist, 3.0) if g.id is None)
    assert tail_mass > 0.1 and math.isclose(tail_mass, true_tail, rel_tol=1e-3)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_histograms_made_together_are_each_row_counted_alone(dtype):
    """distributions_data bins N rows in one call; each row must read as a bincount of its own tail
    (the logits outside its top), ending at its own highest bin, with non-finite logits left out.
    float32 is what explanations pass (bins in float64 either way); row 5 sits on bin edges."""
    from gptlab.explain.capture import TAIL_BIN, distributions_data
    g = torch.Generator().manual_seed(0)
    z_NxV = torch.randn(6, 300, generator=g, dtype=torch.float64) * torch.tensor([[0.5], [3.0], [8.0], [1.0], [2.0], [4.0]])
    z_NxV[3, 7] = -math.inf  # a banned token
    z_NxV[4, :] = 1.25       # one value everywhere: a one-bin histogram
    z_NxV[5] = torch.round(z_NxV[5] / TAIL_BIN) * TAIL_BIN
    z_NxV = z_NxV.to(dtype)
    rows = distributions_data(z_NxV, full_vocab_max=100, n_top=10)
    for z_V, d in zip(z_NxV, rows):
        top = z_V.topk(10)
        assert d["ids"] == top.indices.tolist()
        rest = torch.ones_like(z_V, dtype=torch.bool)
        rest[top.indices] = False
        tail = z_V[rest & torch.isfinite(z_V)].double()
        lo = math.floor(float(tail.min()) / TAIL_BIN) * TAIL_BIN
        assert d["tail"]["lo"] == round(lo, 6)
        assert d["tail"]["counts"] == torch.bincount(((tail - lo) / TAIL_BIN).floor().long()).tolist()
    assert sum(rows[3]["tail"]["counts"]) == 300 - 10 - 1 and rows[4]["tail"]["counts"] == [290]


def test_steps_captured_together_are_the_steps_captured_one_by_one(lm):
    """explain() turns all its steps into TraceSteps at the end (a few calls over (N, V) and one
    output-layer call for every lens row); that must give each step what capturing it alone gives."""
    from gptlab.explain.capture import capture_step, logit_lens, token_labels
    from gptlab.infer.generate import TextTracker, encode_prompts, text_steps
    from gptlab.infer.sampling import SamplingConfig, make_generator
    cfg = SamplingConfig(temperature=1.3, top_k=5, max_new_tokens=6, seed=4)
    batched = lm.explain(PROMPT, steps=6, temperature=1.3, top_k=5, seed=4, top=5)
    ids = encode_prompts(lm.tokenizer, [PROMPT])
    label = token_labels(lm.tokenizer)
    alone = []
    for step in text_steps(lm.model, lm.tokenizer, ids, [TextTracker(lm.tokenizer, ids[0], [])], cfg,
                           make_generator(4, "cpu"), capture=True):
        start = len(ids[0]) + step.index - len(step.context[0])
        streams = [r[0] for r in step.streams]
        lens = logit_lens(lm.model, streams, int(step.tokens_B[0]), label, final_logits_V=step.logits_BxV[0])
        alone.append(capture_step(step, 0, label, start, 20, lens=lens))
    assert len(alone) == len(batched.steps) == 6
    for a, b in zip(alone, batched.steps):
        assert (a.tokens, a.start, a.attention, a.chosen, a.candidates, a.dist) == (b.tokens, b.start, b.attention, b.chosen, b.candidates, b.dist)
        assert (a.entropy, a.entropy_sample, a.logsumexp, a.finish) == (b.entropy, b.entropy_sample, b.logsumexp, b.finish)
        for la, lb in zip(a.lens, b.lens):
            assert [w["id"] for w in la["top"]] == [w["id"] for w in lb["top"]]
            assert all(math.isclose(x["p"], y["p"], rel_tol=1e-3) for x, y in zip(la["top"], lb["top"]))


def test_logit_lens_ends_with_the_model_own_prediction(lm, trace):
    """One entry per residual stream (the embeddings, then each layer); the last is the output layer's."""
    for step in trace.steps:
        assert len(step.lens) == lm.model.cfg.n_layer + 1
        for entry in step.lens:
            ps = [w["p"] for w in entry["top"]]
            assert ps == sorted(ps, reverse=True) and 0 <= entry["p_chosen"] <= 1
        last = step.lens[-1]
        assert [w["id"] for w in last["top"]] == [c.id for c in step.candidates[:len(last["top"])]]
        assert math.isclose(last["top"][0]["p"], step.candidates[0].p, rel_tol=1e-3)
        assert math.isclose(last["p_chosen"], step.chosen.p, rel_tol=1e-3)
        assert step.lens[0]["top"][0]["id"] != last["top"][0]["id"] or step.lens[0]["top"][0]["p"] != last["top"][0]["p"]


def test_the_lens_of_the_last_stream_is_what_the_output_layer_makes_of_it(lm):
    """explain() lets the model's own logits stand for the last residual stream's lens (one output
    layer row fewer); that is only right if the model's last stream really gives those logits."""
    from gptlab.explain.capture import logit_lens
    ids_1xT = torch.tensor([lm.tokenizer.encode(PROMPT)])
    with torch.inference_mode():
        out = lm.model(ids_1xT, last_only=True, return_streams=True)
    logits_V, residuals = out.logits[0, -1], [r[0] for r in out.streams]
    assert len(residuals) == lm.model.cfg.n_layer + 1
    computed = logit_lens(lm.model, residuals, 3, str)
    given = logit_lens(lm.model, residuals, 3, str, final_logits_V=logits_V)
    assert computed[:-1] == given[:-1]
    a, b = computed[-1], given[-1]
    assert [w["id"] for w in a["top"]] == [w["id"] for w in b["top"]]
    assert all(math.isclose(x["p"], y["p"], rel_tol=1e-3) for x, y in zip(a["top"], b["top"]))
    assert math.isclose(a["p_chosen"], b["p_chosen"], rel_tol=1e-3)


def test_window_slides_in_a_long_explanation(lm):
    C = lm.model.cfg.context_length
    t = lm.explain(PROMPT, steps=C, seed=2, temperature=0)
    last = t.steps[-1]
    assert len(last.tokens) == C and last.start > 0
    assert all(math.isclose(sum(r), 1.0, abs_tol=1e-4) for heads in last.attention for r in heads)


def test_json_round_trip(trace, tmp_path):
    assert Trace.from_dict(json.loads(trace.to_json())) == trace
    d = trace.to_dict()
    assert d["format"] == "gptlab-trace" and d["version"] == 3 and d["kind"] == "gpt"
    path = tmp_path / "trace.json"
    trace.save(path)
    again = Trace.load(path)
    assert again == trace and again.to_dict() == d
    assert render_html(again).count('class="step"') == 4


@pytest.mark.parametrize("mutate, match", [
    (lambda d: d.update(format="other"), "not a gptlab trace"),
    (lambda d: d.update(version=99), "newer"),
    (lambda d: d.pop("steps"), "incomplete"),
    (lambda d: d["steps"][0].pop("attention"), "incomplete"),
])
def test_bad_traces_are_user_errors(trace, mutate, match):
    d = json.loads(trace.to_json())
    mutate(d)
    with pytest.raises(UserError, match=match):
        Trace.from_dict(d)


def test_bad_trace_files(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        Trace.load(tmp_path / "nope.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(UserError, match="not valid JSON"):
        Trace.load(tmp_path / "bad.json")


def test_html_is_standalone_highlighted_and_escaped(lm, trace):
    page = render_html(trace)
    assert page.startswith("<!DOCTYPE html>") and "</html>" in page
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", page, re.IGNORECASE)
    assert "http://" not in page and "https://" not in page and "@import" not in page
    for word in ["wine", "review", "germany"]:
        assert re.search(r'<span class="t"[^>]*rgba\(135,206,250,[0-9.]+\)[^>]*>' + word + "</span>", page)
    for c in trace.steps[0].candidates[:5]:
        assert f'<td class="w">{html.escape(display_token(c.token))}</td>' in page
    assert page.count('class="step"') == 4 and page.count('class="tv-mount"') == 1
    assert "GptlabTraceView" in page and page.count("all other words") >= 4
    with pytest.warns(GenerationWarning, match="vocabulary"):
        nasty = lm.explain("wine <script>alert(1)</script> review", steps=1, seed=0)
    nasty_page = render_html(nasty)
    assert "<script>alert(1)" not in nasty_page and "&lt;script&gt;" in nasty_page
    fragment = trace._repr_html_()
    assert "<html" not in fragment and 'class="gptlab-trace"' in fragment


def test_html_layer_and_head_choice(trace):
    """The static steps are drawn with the chosen layer and head; the interactive view starts there."""
    head0 = render_html(trace, layer=0, head=0)
    assert '{head: "0:0"}' in head0 and "(layer 1, head 1)" in head0
    row = trace.steps[0].attention_row(0, 0)
    m = max(row)
    assert f"rgba(135,206,250,{row[0] / m:.3f})" in head0
    assert '{head: "mean"}' in render_html(trace, layer="mean") and '{head: "1"}' in render_html(trace, layer=-1)


def test_html_greys_out_what_the_filters_removed(lm):
    """With top-k 2 the third candidate and below are drawn with 0: greyed out below a cut line."""
    t = lm.explain(PROMPT, steps=2, top=5, top_k=2, seed=0)
    page = render_html(t)
    static = page.split('<script type="application/json"')[0]
    assert static.count('<tr class="cut">') == 2 and "cut by top-k 2" in static
    assert static.count('class="removed"') + static.count('class="chosen removed"') >= 2 * 3


def test_terminal_names_the_positions_attended_to(trace):
    """Two ':' in the prompt: each word attended to carries its position, so they can be told apart."""
    text = render_terminal(trace, color=False)
    lines = [ln for ln in text.splitlines() if "attends most to:" in ln]
    assert len(lines) == 4
    for step, line in zip(trace.steps, lines):
        for word, pos, _ in re.findall(r"(\S+) \(#(\d+)\) ([\d.]+)", line):
            assert display_token(step.tokens[int(pos) - step.start], int(pos)).strip() == word
    assert re.search(r": \(#2\) [\d.]+", text) and "logit lens: emb" in text


def test_terminal_view(trace, monkeypatch):
    plain = render_terminal(trace, color=False)
    assert "\x1b[" not in plain and "step 4" in plain and trace.steps[0].chosen.token in plain
    assert re.search("[\u2588-\u258f]", plain)  # unicode bars
    coloured = render_terminal(trace, color=True)
    assert "\x1b[38;2;0;0;0;48;2;" in coloured
    monkeypatch.setenv("NO_COLOR", "1")

    class Tty:
        def isatty(self):
            return True
    assert not use_color(Tty())
    monkeypatch.delenv("NO_COLOR")
    with open(__file__) as not_a_tty:
        assert use_color(Tty()) and not use_color(not_a_tty)


def test_show_prints_the_terminal_view_outside_jupyter(trace, capsys):
    trace.show()
    assert "step 1" in capsys.readouterr().out


def test_renderers_never_import_torch():
    for name in ["render_html.py", "render_term.py", "trace.py", "__init__.py", "style.py", "heatmap.py"]:
        tree = ast.parse((EXPLAIN_DIR / name).read_text())
        top_level = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
        mods = [a.name for n in top_level if isinstance(n, ast.Import) for a in n.names]
        mods += [n.module or "" for n in top_level if isinstance(n, ast.ImportFrom)]
        assert not any(m == "torch" or m.startswith("torch.") or m.endswith("capture") for m in mods), (name, mods)
        every = [n for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))]
        assert not any("torch" in (getattr(n, "module", None) or "") or any("torch" in a.name for a in n.names)
                       for n in every), name


def test_an_unseeded_trace_records_the_seed_that_reproduces_it(lm):
    t = lm.explain(PROMPT, steps=3)
    again = lm.explain(PROMPT, steps=3, seed=t.sampling["seed"])
    assert [s.chosen.id for s in again.steps] == [s.chosen.id for s in t.steps]


def test_captured_rows_of_a_ragged_batch_ignore_the_padding(lm):
    from gptlab.infer.generate import generate_steps
    from gptlab.infer.sampling import SamplingConfig
    prompts = [lm.encode("wine review"), lm.encode("wine review : us : california : pinot noir")]
    for step in generate_steps(lm.model, prompts, SamplingConfig(temperature=0, max_new_tokens=3), capture=True):
        short = len(step.context[0])
        assert short == len(prompts[0]) + step.index
        for a in step.attn:  # (B, H, S): row 0 has S - short padding keys in front
            torch.testing.assert_close(a[0, :, -short:].sum(-1), torch.ones(a.shape[1]))
            assert torch.all(a[0, :, :-short] == 0)


def test_an_int8_output_layer_still_explains():
    """The logit lens reads the output layer as it is: an Int8Linear (no .weight) included."""
    from gptlab.api import with_dtype
    lm = tiny_model()
    with_dtype(lm.model, "int8")
    t = lm.explain(PROMPT, steps=2, seed=0)
    assert t.steps[0].lens[-1]["top"][0]["id"] == t.steps[0].candidates[0].id
