"""Any Trace as HTML: a standalone page (CSS and JS inline, opens offline) or a notebook fragment,
one entry point (`render_html`) that draws each kind its way:

- gpt: the course notebook's `print_probs`: per step, the words the model saw, highlighted by the
  predicting position's attention (alpha = attention / max, mean over heads), then the most
  likely next words with their probabilities as bars. A small inline script lets the reader pick
  any layer or head (or the mean) and repaints the highlights from the data embedded in the page.
- encoder / classifier: the prediction, the sentence highlighted by the focus token's attention,
  and every token's attention as a heatmap.
- seq2seq: the cross-attention heatmap (generated words x source words) and the probability each
  word was written with.

No torch here: this module reads plain data only.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from typing import TYPE_CHECKING

from gptlab.explain import heatmap
from gptlab.explain.style import CSS, RGB, alpha, css_rgba, esc, page, script_json, top_weight

if TYPE_CHECKING:  # types only: trace.py calls these renderers, so a runtime import would be a cycle
    from gptlab.explain.trace import Candidate, EncoderTrace, GPTTrace, Layer, Seq2SeqTrace, Trace, TraceStep

# Recolours the highlights for the selected layer/head from the JSON embedded beside it.
JS = """
(function(){
  var root=document.getElementById("%(uid)s"); if(!root) return;
  var data=JSON.parse(root.querySelector("script.gptlab-data").textContent);
  var ls=root.querySelector("select.layer"), hs=root.querySelector("select.head");
  function row(att,l,h){
    var layers=l==="mean"?att:[att[+l]], rows=[];
    layers.forEach(function(heads){ if(h==="mean"){rows=rows.concat(heads);} else {rows.push(heads[+h]);} });
    var out=[];
    for(var j=0;j<rows[0].length;j++){var s=0; rows.forEach(function(r){s+=r[j];}); out.push(s/rows.length);}
    return out;
  }
  function paint(){
    root.querySelectorAll("div.step").forEach(function(div,i){
      var r=row(data.attention[i],ls.value,hs.value), m=Math.max.apply(null,r)||1;
      div.querySelectorAll("span.t").forEach(function(sp,j){
        sp.style.backgroundColor="rgba(%(rgb)s,"+(r[j]/m).toFixed(3)+")";
        sp.title="attention "+r[j].toFixed(4);
      });
    });
  }
  ls.onchange=paint; hs.onchange=paint;
})();
"""


def _pct(p: float) -> str:
    return f"{100 * p:.2f}%"


# -- gpt ------------------------------------------------------------------------------------------
def _context_html(step: TraceStep, row: list[float], joiner: str) -> str:
    top = top_weight(row)
    spans = [f'<span class="t" title="attention {a:.4f}" style="background-color:{css_rgba(alpha(a, top))}">'
             f"{esc(tok)}</span>" for tok, a in zip(step.tokens, row)]
    lead = "\u2026 " if step.start > 0 else ""
    return lead + joiner.join(spans)


def _top_html(step: TraceStep, top: int) -> str:
    shown: list[Candidate] = step.candidates[:top]
    if all(c.id != step.chosen.id for c in shown):
        shown = shown + [step.chosen]  # drawn from further down the list: show it anyway
    rows = []
    for c in shown:
        cls = ' class="chosen"' if c.id == step.chosen.id else ""
        rows.append(f'<tr{cls}><td class="w">{esc(c.token)}</td>'
                    f'<td class="bar"><div style="width:{min(100.0, 100 * c.p_sample):.1f}%"></div></td>'
                    f'<td class="num">{_pct(c.p_sample)}</td><td class="num">{_pct(c.p)}</td>'
                    f'<td class="num">{c.logit:.2f}</td></tr>')
    return ('<table class="top"><colgroup><col class="w"><col class="bar"><col class="num"><col class="num"><col class="num">'
            '</colgroup><tr><th>next token</th><th colspan="2">probability, as drawn</th><th>at T=1</th>'
            '<th>logit</th></tr>' + "".join(rows) + "</table>")


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


def _select(cls: str, opts: list[tuple[str, str]], chosen: object) -> str:
    return f'<select class="{cls}">' + "".join(
        f'<option value="{v}"{" selected" if v == str(chosen) else ""}>{label}</option>' for v, label in opts) + "</select>"


def _step_html(k: int, step: TraceStep, trace: GPTTrace, layer: Layer, head: Layer, joiner: str) -> str:
    finish = f" \u00b7 finished ({esc(step.finish)})" if step.finish else ""
    return (f'<div class="step"><div class="stephead">step {k + 1} \u00b7 chose <b>{esc(step.chosen.token)}</b> '
            f"({_pct(step.chosen.p_sample)}) \u00b7 entropy {step.entropy:.2f} bits, drawn from "
            f"{step.entropy_sample:.2f} bits{finish}</div>"
            f'<div class="ctx">{_context_html(step, step.attention_row(layer, head), joiner)}{joiner}'
            f'<span class="next">\u2192 {esc(step.chosen.token)}</span></div>{_top_html(step, trace.top)}</div>')


def _gpt_body(trace: GPTTrace, uid: str, layer: Layer, head: Layer, **_) -> str:
    joiner = " " if trace.model.get("tokenizer", "word") == "word" else ""
    layer = trace.n_layer - 1 if layer is None else layer  # default: the last layer, as the notebook shows
    head = "mean" if head is None else head
    layer_opts = [(str(i), f"layer {i + 1}") for i in range(trace.n_layer)] + [("mean", "mean of layers")]
    head_opts = [("mean", "mean of heads")] + [(str(h), f"head {h + 1}") for h in range(trace.n_head)]
    steps = "".join(_step_html(k, step, trace, layer, head, joiner) for k, step in enumerate(trace.steps))
    data = script_json({"attention": [s.attention for s in trace.steps]})
    return (f'<h2>{esc(trace.prompt)}<span class="gen">{esc(trace.completion)}</span></h2>'
            f'<div class="meta">{esc(_settings(trace))}</div>'
            f'<div class="controls">highlight = attention of the predicting position, scaled by its maximum: '
            f'{_select("layer", layer_opts, layer)} {_select("head", head_opts, head)}</div>{steps}'
            f'<script type="application/json" class="gptlab-data">{data}</script>'
            f"<script>{JS % {'uid': uid, 'rgb': ','.join(map(str, RGB))}}</script>")


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
                                         "seq2seq": _seq2seq_body}


def render_html(trace: Trace, *, full_page: bool = True, layer: Layer = None, head: Layer = None,
                matrix: bool = True) -> str:
    """The trace as HTML, whatever its kind; `layer`/`head` pick the attention shown (default: the
    kind's own: the last layer for gpt, the trace's `layer` ("mean") for the others; mean of heads).
    matrix=False leaves out an encoder trace's full heatmap."""
    uid = "gptlab-trace-" + secrets.token_hex(4)
    body = BODIES[trace.kind](trace, uid, layer, head, matrix=matrix)
    fragment = (f'<div class="gptlab-trace" data-kind="{esc(trace.kind)}" id="{uid}">'
                f"{body}<style>{CSS}</style></div>")
    return page(trace.title(layer, head), fragment) if full_page else fragment
