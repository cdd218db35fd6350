"""Any Trace as HTML: a standalone page (CSS and JS inline, opens offline) or a notebook fragment,
one entry point (`render_html`) that draws each kind its way:

- gpt: the interactive step view (`static/trace_view.js`, the page's own): a step slider over every
  generated token, the words highlighted by attention, a grid of every layer x head, the
  distribution each word was drawn from at any temperature / top-k / top-p / min-p, and the logit
  lens. Under it, for where scripts do not run, every step as the course notebook's
  `print_probs` drew it: the context highlighted, the candidates with the probability each was
  drawn with (the ones a filter removed greyed out below the cut) and the logit lens in a line.
- encoder / classifier: the prediction, the sentence highlighted by the focus token's attention,
  and every token's attention as a heatmap.
- seq2seq: the cross-attention heatmap (generated words x source words) and the probability each
  word was written with.

No torch here: this module reads plain data only.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from gptlab.explain import heatmap
from gptlab.explain.render_image import image_html
from gptlab.explain.style import CSS, alpha, css_rgba, display_token, esc, page, script_json, top_weight

if TYPE_CHECKING:  # types only: trace.py calls these renderers, so a runtime import would be a cycle
    from gptlab.explain.trace import Candidate, EncoderTrace, GPTTrace, Layer, Seq2SeqTrace, Trace, TraceStep

# The interactive step view (trace_view.js, with its stylesheet): shared with the page of
# `gptlab serve`, read once. It replaces the static steps below it when scripts run (a browser, a
# trusted notebook); where they do not (a notebook on GitHub), the static steps remain.
VIEW_JS = (Path(__file__).parent / "static" / "trace_view.js").read_text(encoding="utf-8")
VIEW_CSS = (Path(__file__).parent / "static" / "trace_view.css").read_text(encoding="utf-8")
MOUNT_JS = """
(function(){
  var root=document.getElementById("%(uid)s"); if(!root||!window.GptlabTraceView) return;
  var data=JSON.parse(root.querySelector("script.gptlab-data").textContent);
  window.GptlabTraceView.mount(root.querySelector("div.tv-mount"), data, {head: "%(head)s"});
  root.querySelector("div.static-steps").hidden=true;
})();
"""


def _pct(p: float) -> str:
    return f"{100 * p:.2f}%"


# -- gpt ------------------------------------------------------------------------------------------
def _context_html(step: TraceStep, row: list[float], joiner: str) -> str:
    top = top_weight(row)
    spans = [f'<span class="t" title="#{step.start + k} attention {a:.4f}" style="background-color:{css_rgba(alpha(a, top))}">'
             f"{esc(display_token(tok, step.start + k))}</span>" for k, (tok, a) in enumerate(zip(step.tokens, row))]
    lead = "\u2026 " if step.start > 0 else ""
    return lead + joiner.join(spans)


def _active_filters(sampling: dict) -> str:
    if sampling.get("temperature") == 0:
        return "temperature 0 (greedy)"
    on = [f"{name} {sampling[key]}" for key, off, name in (("top_k", 0, "top-k"), ("top_p", 1.0, "top-p"), ("min_p", 0.0, "min-p"))
          if sampling.get(key, off) != off]
    return ", ".join(on)


def _top_html(step: TraceStep, top: int, sampling: dict) -> str:
    """The best candidates with the probability each was drawn with; the ones the filters removed
    greyed out below a line that marks the cut; the rest of the vocabulary as one last row."""
    shown: list[Candidate] = step.candidates[:top]
    if all(c.id != step.chosen.id for c in shown):
        shown = shown + [step.chosen]  # drawn from further down the list: show it anyway
    rows, cut = [], False
    for c in shown:
        removed = c.p_sample == 0
        if removed and not cut:
            rows.append(f'<tr class="cut"><td colspan="5">\u2500\u2500 cut by {esc(_active_filters(sampling))}: '
                        "the words below are never drawn</td></tr>")
            cut = True
        cls = " ".join(x for x in ("chosen" if c.id == step.chosen.id else "", "removed" if removed else "") if x)
        rows.append(f'<tr{f" class={chr(34)}{cls}{chr(34)}" if cls else ""}><td class="w">{esc(display_token(c.token))}</td>'
                    f'<td class="bar"><div style="width:{min(100.0, 100 * c.p_sample):.1f}%"></div></td>'
                    f'<td class="num">{_pct(c.p_sample)}</td><td class="num">{_pct(c.p)}</td>'
                    f'<td class="num">{c.logit:.2f}</td></tr>')
    rest = max(0.0, 1.0 - sum(c.p_sample for c in shown))
    rest_t1 = max(0.0, 1.0 - sum(c.p for c in shown))
    rows.append(f'<tr class="other"><td class="w">all other words</td><td class="bar"><div style="width:{100 * rest:.1f}%">'
                f'</div></td><td class="num">{_pct(rest)}</td><td class="num">{_pct(rest_t1)}</td><td class="num"></td></tr>')
    return ('<table class="top"><colgroup><col class="w"><col class="bar"><col class="num"><col class="num"><col class="num">'
            '</colgroup><tr><th>next token</th><th colspan="2">probability, as drawn</th><th>at T=1</th>'
            '<th>logit</th></tr>' + "".join(rows) + "</table>")


def _lens_html(step: TraceStep) -> str:
    """The logit lens in one line: the word each residual stream would predict, and its probability."""
    if not step.lens:
        return ""
    names = ["embeddings"] + [f"layer {i}" for i in range(1, len(step.lens))]
    parts = [f"{name} \u2192 <b>{esc(display_token(e['top'][0]['token']))}</b> {_pct(e['top'][0]['p'])}"
             for name, e in zip(names, step.lens)]
    return '<div class="lens">logit lens: ' + " \u00b7 ".join(parts) + "</div>"


def _settings(trace: GPTTrace) -> str:
    s = trace.sampling
    parts = ["greedy" if s.get("temperature") == 0 else f"temperature {s.get('temperature')}"]
    for key, off, name in (("top_k", 0, "top-k"), ("top_p", 1.0, "top-p"), ("min_p", 0.0, "min-p"),
                           ("repetition_penalty", 1.0, "repetition penalty"), ("seed", None, "seed")):
        if s.get(key, off) != off:
            parts.append(f"{name} {s[key]}")
    m = trace.model
    return (f"{m.get('kind', '?')} model, {trace.n_layer} layer(s) \u00d7 {trace.n_head} head(s), "
            f"context {m.get('context_length', '?')} \u00b7 " + ", ".join(parts))


def _step_html(k: int, step: TraceStep, trace: GPTTrace, layer: Layer, head: Layer, joiner: str) -> str:
    finish = f" \u00b7 finished ({esc(step.finish)})" if step.finish else ""
    return (f'<div class="step"><div class="stephead">step {k + 1} \u00b7 chose <b>{esc(display_token(step.chosen.token))}</b> '
            f"({_pct(step.chosen.p_sample)}) \u00b7 entropy {step.entropy:.2f} bits, drawn from "
            f"{step.entropy_sample:.2f} bits{finish}</div>"
            f'<div class="ctx">{_context_html(step, step.attention_row(layer, head), joiner)}{joiner}'
            f'<span class="next">\u2192 {esc(display_token(step.chosen.token))}</span></div>'
            f"{_top_html(step, trace.top, trace.sampling)}{_lens_html(step)}</div>")


def _view_choice(layer: Layer, head: Layer) -> str:
    """The interactive view's choice ("mean", "L" or "L:H", 0-based) for the static view's layer and head."""
    if layer == "mean":
        return "mean"  # the interactive view has no "one head, mean of layers": it starts from the mean
    return str(layer) if head == "mean" else f"{layer}:{head}"


def _gpt_body(trace: GPTTrace, uid: str, layer: Layer, head: Layer, **_) -> str:
    joiner = " " if trace.model.get("tokenizer", "word") == "word" else ""
    layer = trace.n_layer - 1 if layer is None else layer  # default: the last layer, as the notebook shows
    layer = layer % trace.n_layer if isinstance(layer, int) and trace.n_layer else layer
    head = "mean" if head is None else head
    head = head % trace.n_head if isinstance(head, int) and trace.n_head else head
    which = ("mean of layers" if layer == "mean" else f"layer {int(layer) + 1}") + (
        ", mean of heads" if head == "mean" else f", head {int(head) + 1}")
    steps = "".join(_step_html(k, step, trace, layer, head, joiner) for k, step in enumerate(trace.steps))
    d = trace.to_dict()
    # Where the model lay on disk is no part of what the view shows, nor of a page shared with others.
    data = script_json({**d, "model": {k: v for k, v in d["model"].items() if k != "path"}})
    return (f'<h2>{esc(trace.prompt)}<span class="gen">{esc(trace.completion)}</span></h2>'
            f'<div class="meta">{esc(_settings(trace))}</div>'
            f'<div class="tv-mount"></div>'
            f'<div class="static-steps"><div class="controls">highlight = attention of the predicting position '
            f"({which}), scaled by its maximum; bars: the probability each word was drawn with</div>{steps}</div>"
            f'<script type="application/json" class="gptlab-data">{data}</script>'
            f"<script>{VIEW_JS}{MOUNT_JS % {'uid': uid, 'head': _view_choice(layer, head)}}</script>")


# -- encoder / classifier / seq2seq ---------------------------------------------------------------
def _prediction_html(text: str) -> str:
    return f'<div class="pred">{esc(text)}</div>' if text else ""


def _encoder_body(trace: EncoderTrace, uid: str, layer: Layer, head: Layer, matrix: bool = True, **_) -> str:
    parts = [_prediction_html(trace.prediction_text()),
             heatmap.html_highlight(trace.tokens, trace.weights(layer, head=head), title=trace.title(layer, head),
                                    focus=trace.focus)]
    if matrix:
        parts.append(heatmap.html_heatmap(trace.matrix(layer, head), trace.tokens, trace.tokens,
                                          values=len(trace.tokens) <= 24, row_title="query", col_title="key",
                                          title="every token's attention (rows: query, columns: key)"))
    return "".join(parts)


def _seq2seq_body(trace: Seq2SeqTrace, uid: str, layer: Layer, head: Layer, **_) -> str:
    return (heatmap.html_heatmap(trace.matrix(layer, head), trace.target_tokens, trace.source_tokens,
                                 title=trace.title(layer, head), row_title="generated", col_title="source")
            + _prediction_html(trace.prediction_text() and "written with: " + trace.prediction_text()))


BODIES: dict[str, Callable[..., str]] = {"gpt": _gpt_body, "encoder": _encoder_body, "classifier": _encoder_body,
                                         "seq2seq": _seq2seq_body, "image": image_html}


def render_html(trace: Trace, *, full_page: bool = True, layer: Layer = None, head: Layer = None,
                matrix: bool = True) -> str:
    """The trace as HTML, whatever its kind; `layer`/`head` pick the attention shown (default: the
    kind's own: the last layer for gpt, the trace's `layer` ("mean") for the others; mean of heads).
    matrix=False leaves out an encoder trace's full heatmap."""
    uid = "gptlab-trace-" + secrets.token_hex(4)
    body = BODIES[trace.kind](trace, uid, layer, head, matrix=matrix)
    css = CSS + VIEW_CSS if trace.kind == "gpt" else CSS
    fragment = (f'<div class="gptlab-trace" data-kind="{esc(trace.kind)}" id="{uid}">'
                f"{body}<style>{css}</style></div>")
    return page(trace.title(layer, head), fragment) if full_page else fragment


# -- two models on one text (`gptlab explain --compare REF --out`) ----------------------------------
# The view of POST /v1/compare on the page, inline here: one renderer for both.
COMPARE_JS = (Path(__file__).parent / "static" / "compare_view.js").read_text(encoding="utf-8")
COMPARE_CSS = (Path(__file__).parent / "static" / "compare_view.css").read_text(encoding="utf-8")
COMPARE_MOUNT_JS = """
(function(){
  var root=document.getElementById("%(uid)s"); if(!root||!window.GptlabCompareView) return;
  window.GptlabCompareView.mount(root.querySelector("div.cv-mount"), JSON.parse(root.querySelector("script.gptlab-data").textContent));
  root.querySelector("pre.static-steps").hidden=true;
})();
"""


def render_compare_html(comparison: dict, terminal: str, *, full_page: bool = True) -> str:
    """A comparison (`Comparison.to_dict()`) as HTML: compare_view.js draws it; `terminal` (its
    `to_terminal()` text) stays in view where scripts do not run."""
    uid = "gptlab-compare-" + secrets.token_hex(4)
    title = f"{comparison.get('model', 'model')} against {comparison.get('reference', 'reference')}"
    fragment = (f'<div class="gptlab-trace" data-kind="compare" id="{uid}"><h2>{esc(title)}</h2>'
                f'<div class="cv-mount"></div><pre class="static-steps">{esc(terminal)}</pre>'
                f'<script type="application/json" class="gptlab-data">{script_json(comparison)}</script>'
                f"<script>{COMPARE_JS}{COMPARE_MOUNT_JS % {'uid': uid}}</script><style>{CSS}{COMPARE_CSS}</style></div>")
    return page(title, fragment) if full_page else fragment
