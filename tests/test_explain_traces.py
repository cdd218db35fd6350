"""One explanation stack for every family: the same loader (`load_trace`) and the same renderers
(`render_html`, `render_terminal`) take a GPT, an encoder, a classifier and a seq2seq trace;
version-1 files of each kind still load; anything else is a one-line UserError; captured
attention is normalised and never looks at padding. Tiny random models: the file runs in seconds."""

from __future__ import annotations

import html
import json
import math

import pytest
import torch

from gptlab.data.pairs import train_tokenizer as pairs_tokenizer
from gptlab.data.texts import train_tokenizer as texts_tokenizer
from gptlab.data.tokenizer import Tokenizer
from gptlab.errors import UserError
from gptlab.explain import EncoderTrace, GPTTrace, Seq2SeqTrace, Trace, load_trace, render_html, render_terminal
from gptlab.explain.capture import capture_attention, explain, explain_encoder, explain_translation
from gptlab.infer.sampling import SamplingConfig
from gptlab.model import GPT, ModelConfig
from gptlab.model.encoder import Classifier, Encoder, bert_tiny
from gptlab.model.seq2seq import Seq2Seq, seq2seq_tiny

torch.set_num_threads(1)  # tiny models: threads cost more than they give
# (torch.allclose, not torch.testing.assert_close, below: the latter's first call costs ~1.5 s of imports.)

LINES = ["wine review : germany : mosel : riesling : bright and juicy",
         "wine review : france : alsace : riesling : crisp apple and lime",
         "wine review : italy : tuscany : sangiovese : firm tannins and sour cherry"]
PAIRS = [("one two", "uno dos"), ("two three", "dos tres"), ("four five", "cuatro cinco"), ("six", "seis")]
KINDS = ["gpt", "encoder", "classifier", "seq2seq"]


# -- tiny random models and their traces ------------------------------------------------------------
@pytest.fixture(scope="module")
def models() -> dict:
    torch.manual_seed(0)
    gpt_tok = Tokenizer.train(LINES, vocab_size=100)
    gpt = GPT(ModelConfig(vocab_size=gpt_tok.vocab_size, context_length=16, d_model=16, n_layer=2, n_head=2,
                          d_ff=32, dropout=0.0)).eval()
    enc_tok = texts_tokenizer(LINES, vocab_size=100)
    encoder = Encoder(bert_tiny(enc_tok.vocab_size)).eval()
    classifier = Classifier(bert_tiny(enc_tok.vocab_size), n_classes=3).eval()
    s2s_tok = pairs_tokenizer(PAIRS, vocab_size=60)
    cfg = seq2seq_tiny(s2s_tok.vocab_size)
    cfg.context_length = 8  # a random decoder rarely ends: keep its output short
    seq2seq = Seq2Seq(cfg).eval()
    return {"gpt": (gpt, gpt_tok), "encoder": (encoder, enc_tok), "classifier": (classifier, enc_tok),
            "seq2seq": (seq2seq, s2s_tok)}


@pytest.fixture(scope="module")
def traces(models) -> dict[str, Trace]:
    gpt, gpt_tok = models["gpt"]
    return {
        "gpt": explain(gpt, gpt_tok, "wine review : germany", SamplingConfig(max_new_tokens=3, seed=0), top=3),
        "encoder": explain_encoder(*models["encoder"], "crisp [MASK] and lime", focus="lime"),
        "classifier": explain_encoder(*models["classifier"], "firm tannins and sour cherry",
                                      labels=["red", "white", "rose"]),
        "seq2seq": explain_translation(*models["seq2seq"], "two three"),
    }


def shown_tokens(trace: Trace) -> list[str]:
    """The tokens every view of the trace must show."""
    if isinstance(trace, GPTTrace):
        return trace.prompt_tokens
    if isinstance(trace, EncoderTrace):
        return trace.tokens
    return trace.source_tokens + trace.target_tokens


# -- one loader, one set of renderers -----------------------------------------------------------------
@pytest.mark.parametrize("kind", KINDS)
def test_one_loader_and_the_same_renderers_for_every_kind(traces, kind, tmp_path):
    trace = traces[kind]
    path = tmp_path / f"{kind}.json"
    trace.save_json(path)
    saved = json.loads(path.read_text())
    assert (saved["format"], saved["version"], saved["kind"]) == ("gptlab-trace", 3, kind)
    assert saved["model"]["n_layer"] == 2 and saved["model"]["n_head"] == 2
    loaded = load_trace(path)
    assert type(loaded) is type(trace) and loaded.kind == kind
    assert loaded == trace and loaded.to_dict() == trace.to_dict()
    assert Trace.from_dict(saved) == trace
    page, fragment = render_html(loaded), render_html(loaded, full_page=False)
    text = render_terminal(loaded, color=False)
    assert page.startswith("<!DOCTYPE html>") and "http" not in page and f'data-kind="{kind}"' in page
    notebook = loaded._repr_html_()
    assert "<html" not in fragment and "<html" not in notebook and f'data-kind="{kind}"' in notebook
    assert "\x1b[" not in text
    for token in shown_tokens(loaded):
        assert html.escape(token) in page and html.escape(token) in fragment and token in text, token
    assert "\x1b[" in render_terminal(loaded, color=True)


def test_each_kind_is_drawn_its_own_way(traces):
    gpt, enc, cls, s2s = (traces[k] for k in KINDS)
    assert render_html(gpt).count('class="step"') == 3 and "step 3" in render_terminal(gpt, color=False)
    assert "<table" in render_html(s2s) and "rows: generated words" in render_terminal(s2s, color=False)
    assert 'class="gptlab-highlight"' in render_html(enc) and "[MASK]@2" in render_terminal(enc, color=False)
    assert render_terminal(cls, color=False).startswith("predicted: ")
    assert "*lime(" in render_terminal(enc, color=False)  # the focus token is marked


def test_family_objects_keep_the_api_the_cli_calls(traces, tmp_path):
    from gptlab.explain.trace import EncoderTrace, Seq2SeqTrace
    s2s, enc = traces["seq2seq"], traces["encoder"]
    assert isinstance(s2s, Seq2SeqTrace) and isinstance(enc, EncoderTrace)
    assert "<table" in s2s._repr_html_() and "<span" in enc._repr_html_()
    with_values = s2s.terminal(color=False, values=True)
    assert with_values != s2s.terminal(color=False) and s2s.source_tokens[0] in with_values
    assert enc.terminal(color=False, matrix=True).count("\n") > enc.terminal(color=False).count("\n")
    assert math.isclose(sum(enc.weights()), 1.0, abs_tol=1e-2) and enc.tokens[enc.focus] == "lime"
    for t in (s2s, enc):
        t.save_html(tmp_path / "t.html")
        assert (tmp_path / "t.html").read_text().startswith("<!DOCTYPE html>")


def test_layer_and_head_choice_is_one_rule_for_every_kind(traces):
    s2s, enc, gpt = traces["seq2seq"], traces["encoder"], traces["gpt"]
    assert s2s.matrix(1, 0) == s2s.heads[1][0] and s2s.matrix(-1) == s2s.layers[1]
    mean = s2s.matrix("mean")
    assert math.isclose(mean[0][0], (s2s.layers[0][0][0] + s2s.layers[1][0][0]) / 2)
    assert enc.weights(0, head=1) == enc.heads[0][1][enc.focus]
    assert gpt.steps[0].attention_row(0, 1) == gpt.steps[0].attention[0][1]
    assert render_terminal(s2s, color=False, layer=0, head=1) != render_terminal(s2s, color=False, layer=0)
    for bad in ({"layer": 2}, {"layer": "x"}, {"head": 5}):
        with pytest.raises(UserError, match="does not exist") as e:
            render_html(s2s, **bad)
        assert "\n" not in str(e.value)


# -- the data the captures record -----------------------------------------------------------------------
def rows_of(trace: Trace) -> list[list[float]]:
    if isinstance(trace, GPTTrace):
        return [row for s in trace.steps for heads in s.attention for row in heads]
    maps = list(trace.layers) + [m for heads in trace.heads for m in heads]
    return [row for m in maps for row in m]


@pytest.mark.parametrize("kind", KINDS)
def test_attention_rows_sum_to_one(traces, kind):
    rows = rows_of(traces[kind])
    assert rows and all(min(r) >= 0 and math.isclose(sum(r), 1.0, abs_tol=1e-3) for r in rows)


def test_top_k_and_entropy_are_recorded_where_a_model_predicts(traces):
    cls, enc, s2s = traces["classifier"], traces["encoder"], traces["seq2seq"]
    ps = [x["p"] for x in cls.prediction["labels"]]
    assert len(ps) == 3 and ps == sorted(ps, reverse=True) and math.isclose(sum(ps), 1, abs_tol=1e-3)
    assert 0 <= cls.prediction["entropy"] <= math.log2(3) + 1e-6
    assert [m["position"] for m in enc.prediction["masks"]] == [2] and len(enc.prediction["masks"][0]["top"]) == 3
    assert len(s2s.next_tokens) == len(s2s.target_tokens)
    for word, n in zip(s2s.target_tokens, s2s.next_tokens):  # greedy: the word written is the most likely
        assert n["top"][0]["token"] == word and math.isclose(n["p"], n["top"][0]["p"]) and n["entropy"] >= 0


def test_cross_attention_never_weighs_padded_source_positions(models):
    model, tok = models["seq2seq"]
    short, long = tok.encode("six"), tok.encode("one two three four five")
    bos = tok.token_to_id("<s>")
    tgt = [[bos, 5, 6], [bos, 7]]
    cap = capture_attention(model, [short, long], tgt, tok.pad_id)
    for a_BxHxTxS in cap.cross_attn:
        assert a_BxHxTxS.shape[-1] == len(long)
        assert torch.all(a_BxHxTxS[0, :, :, len(short):] == 0), "the short source's padding got weight"
        assert torch.allclose(a_BxHxTxS.sum(-1), torch.ones(()), atol=1e-5)
    alone = capture_attention(model, [short], [tgt[0]], tok.pad_id)
    for padded, single in zip(cap.cross_rows(0), alone.cross_rows(0)):
        assert padded.shape == single.shape == (2, 3, len(short))
        assert torch.allclose(padded, single, rtol=1e-5, atol=1e-6)


def test_encoder_self_attention_never_weighs_padding(models):
    model, tok = models["classifier"]
    short, long = tok.encode("crisp apple"), tok.encode("firm tannins and sour cherry")
    cap = capture_attention(model, [short, long], pad_id=tok.pad_id)
    for a_BxHxTxT in cap.self_attn:
        assert torch.all(a_BxHxTxT[0, :, :len(short), len(short):] == 0)
    alone = capture_attention(model, [short], pad_id=tok.pad_id)
    for padded, single in zip(cap.self_rows(0), alone.self_rows(0)):
        assert torch.allclose(padded, single, rtol=1e-5, atol=1e-6)


# -- version 1 files, and files that are not traces ----------------------------------------------------
V1 = {
    "gpt": {"format": "gptlab-trace", "version": 1, "prompt": "wine review", "prompt_tokens": ["wine", "review"],
            "completion": " germany", "finish_reason": "length",
            "model": {"kind": "gpt", "n_layer": 1, "n_head": 2, "d_model": 8, "vocab_size": 20, "context_length": 8,
                      "tokenizer": "word", "path": None},
            "sampling": {"temperature": 1.0, "max_new_tokens": 1, "seed": 3}, "top": 2,
            "steps": [{"tokens": ["wine", "review"], "token_ids": [5, 6], "start": 0,
                       "attention": [[[0.25, 0.75], [0.5, 0.5]]],
                       "candidates": [{"token": "germany", "id": 7, "logit": 2.0, "p": 0.6, "p_sample": 0.6},
                                      {"token": "france", "id": 8, "logit": 1.0, "p": 0.2, "p_sample": 0.2}],
                       "chosen": {"token": "germany", "id": 7, "logit": 2.0, "p": 0.6, "p_sample": 0.6},
                       "entropy": 1.5, "entropy_sample": 1.5, "logsumexp": 2.5, "finish": "length"}]},
    "classifier": {"format": "gptlab-trace", "version": 1, "kind": "classifier", "text": "ripe plum",
                   "tokens": ["[CLS]", "ripe", "plum"], "focus": 2,
                   "self_attention": {"axes": ["layer", "query", "key"], "reduce": "mean over heads", "n_layer": 1,
                                      "layers": [[[0.5, 0.25, 0.25], [0.2, 0.6, 0.2], [0.1, 0.3, 0.6]]]},
                   "prediction": {"labels": [{"label": "merlot", "p": 0.7}, {"label": "syrah", "p": 0.3}]}},
    "seq2seq": {"format": "gptlab-trace", "version": 1, "kind": "seq2seq", "source": "six two",
                "translation": "seis dos", "source_tokens": ["six", "two"],
                "target_tokens": ["seis", "dos", "<|endoftext|>"],
                "cross_attention": {"axes": ["layer", "target", "source"], "reduce": "mean over heads",
                                    "n_layer": 1, "n_head": 1, "layers": [[[0.9, 0.1], [0.2, 0.8], [0.5, 0.5]]],
                                    "heads": [[[[0.9, 0.1], [0.2, 0.8], [0.5, 0.5]]]]}},
}


@pytest.mark.parametrize("kind", sorted(V1))
def test_version_1_files_of_every_kind_still_load(kind, tmp_path):
    path = tmp_path / "v1.json"
    path.write_text(json.dumps(V1[kind]))
    trace = load_trace(path)
    assert trace.kind == kind and type(trace) is {"gpt": GPTTrace, "classifier": EncoderTrace,
                                                  "seq2seq": Seq2SeqTrace}[kind]
    assert trace.to_dict()["version"] == 3  # saved again, it is a version-3 file
    assert load_trace(path) == Trace.from_dict(trace.to_dict())
    page, text = render_html(trace), render_terminal(trace, color=False)
    for token in shown_tokens(trace):
        assert html.escape(token) in page and token in text
    if kind == "classifier":  # version 1 kept no per-head attention
        assert trace.tokens[trace.focus] == "plum" and "merlot 70%" in text
        with pytest.raises(UserError, match="no per-head attention"):
            render_terminal(trace, head=0)


def _v2(base: str, **changes) -> dict:
    """A version-2 file made from a version-1 one; a change to None drops that field."""
    d = {**V1[base], "version": 2, "kind": base, **changes}
    return {k: v for k, v in d.items() if v is not None}


@pytest.mark.parametrize("content, words", [
    ("{not json", "is not valid JSON"),
    ("[1, 2]", "not a gptlab trace"),
    (json.dumps({"format": "other", "version": 1}), "not a gptlab trace"),
    (json.dumps(_v2("gpt", version=4)), "newer than this gptlab reads (3): upgrade gptlab"),
    (json.dumps(_v2("gpt", version="2")), "not one gptlab writes"),
    (json.dumps(_v2("gpt", kind=None)), 'has no "kind"'),
    (json.dumps(_v2("gpt", kind="vision")), "unknown trace kind 'vision'"),
    (json.dumps(_v2("seq2seq", cross_attention={"layers": []})), "incomplete or damaged"),
    (json.dumps(_v2("seq2seq", target_tokens=["seis"])), "incomplete or damaged"),
    (json.dumps(_v2("classifier", focus=9)), "incomplete or damaged"),
    (json.dumps(_v2("gpt", steps=[{"tokens": []}])), "incomplete or damaged"),
])
def test_anything_else_is_a_one_line_user_error(tmp_path, content, words):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(UserError) as e:
        load_trace(path)
    message = str(e.value)
    assert words in message and "\n" not in message
    assert ": " in message and any(fix in message for fix in ("write", "upgrade", "pass"))  # names the fix


def test_a_version_2_gpt_file_loads_and_renders_without_dist_or_lens(tmp_path):
    """Version 2 GPT steps have no "dist" or "lens": they load, render, and re-weight their candidates."""
    path = tmp_path / "v2.json"
    path.write_text(json.dumps(_v2("gpt")))
    trace = load_trace(path)
    step = trace.steps[0]
    assert step.dist is None and step.lens is None
    assert math.isclose(step.reweight(1.0)[0], math.exp(2.0 - 2.5))
    page = render_html(trace)
    assert "germany" in page and "logit lens" not in page.lower().split("<script")[0]
    assert "germany" in render_terminal(trace, color=False)


def test_a_missing_file_and_the_wrong_class(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_trace(tmp_path / "nope.json")
    with pytest.raises(UserError, match="load_trace"):
        Seq2SeqTrace.from_dict(V1["gpt"])
