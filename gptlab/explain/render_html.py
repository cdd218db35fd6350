"""A Trace as HTML: a standalone page (CSS and JS inline, opens offline) or a notebook fragment.

It reproduces the course notebook's `print_probs`: per step, the words the model saw, highlighted
by the predicting position's attention (light blue, alpha = attention / max, mean over heads),
then the most likely next words with their probabilities, here as bars. A small inline script
lets the reader pick any layer or head (or the mean) and repaints the highlights from the data
embedded in the page. No torch here: this module reads plain data only.
"""

from __future__ import annotations

import html
import json
import secrets

from gptlab.explain.trace import Candidate, Trace, TraceStep

HIGHLIGHT_RGB = "135,206,250"  # the notebook's highlight: rgba(135, 206, 250, attention / max)

CSS = """
.gptlab-trace{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;color:#222;max-width:60em}
.gptlab-trace h2{font-size:1.15em;margin:.3em 0}
.gptlab-trace .gen{font-weight:600;color:#0b5394}
.gptlab-trace .meta{color:#666;font-size:.85em;margin:.2em 0 .6em}
.gptlab-trace .controls{font-size:.85em;margin:.4em 0 .8em}
.gptlab-trace .step{border-top:1px solid #ddd;padding:.5em 0}
.gptlab-trace .stephead{font-size:.85em;color:#555;margin-bottom:.3em}
.gptlab-trace .ctx{font-family:ui-monospace,Menlo,Consolas,monospace;line-height:1.9;white-space:pre-wrap}
.gptlab-trace .t{border-radius:3px;padding:1px 0}
.gptlab-trace .next{font-weight:700;color:#0b5394}
.gptlab-trace table.top{border-collapse:collapse;font-size:.85em;margin-top:.3em;table-layout:fixed;width:44em}
.gptlab-trace table.top col.w{width:12em}.gptlab-trace table.top col.bar{width:16em}.gptlab-trace table.top col.num{width:5.3em}
.gptlab-trace table.top td,.gptlab-trace table.top th{padding:1px 6px;text-align:left}
.gptlab-trace table.top th{color:#777;font-weight:400}
.gptlab-trace td.w{font-family:ui-monospace,Menlo,Consolas,monospace;white-space:pre;overflow:hidden;text-overflow:ellipsis}
.gptlab-trace td.bar div{background:rgb(135,206,250);height:.9em;border-radius:2px}
.gptlab-trace td.num{text-align:right;font-variant-numeric:tabular-nums}
.gptlab-trace tr.chosen td.w{font-weight:700}
.gptlab-trace tr.chosen td.w::after{content:" \\2190 chosen";font-weight:400;color:#0b5394}
"""

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


def _script_json(obj) -> str:
    """JSON that cannot end the <script> element it sits in."""
    return (json.dumps(obj, separators=(",", ":"), allow_nan=False)
            .replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026"))


def _pct(p: float) -> str:
    return f"{100 * p:.2f}%"


def _context_html(step: TraceStep, row: list[float], joiner: str) -> str:
    m = max(row) or 1.0
    spans = [f'<span class="t" title="attention {a:.4f}" style="background-color:rgba({HIGHLIGHT_RGB},{a / m:.3f})">'
             f"{html.escape(tok)}</span>" for tok, a in zip(step.tokens, row)]
    lead = "\u2026 " if step.start > 0 else ""
    return lead + joiner.join(spans)


def _top_html(step: TraceStep, top: int) -> str:
    shown: list[Candidate] = step.candidates[:top]
    if all(c.id != step.chosen.id for c in shown):
        shown = shown + [step.chosen]  # drawn from further down the list: show it anyway
    rows = []
    for c in shown:
        cls = ' class="chosen"' if c.id == step.chosen.id else ""
        rows.append(f'<tr{cls}><td class="w">{html.escape(c.token)}</td>'
                    f'<td class="bar"><div style="width:{min(100.0, 100 * c.p_sample):.1f}%"></div></td>'
                    f'<td class="num">{_pct(c.p_sample)}</td><td class="num">{_pct(c.p)}</td>'
                    f'<td class="num">{c.logit:.2f}</td></tr>')
    return ('<table class="top"><colgroup><col class="w"><col class="bar"><col class="num"><col class="num"><col class="num">'
            '</colgroup><tr><th>next token</th><th colspan="2">probability, as drawn</th><th>at T=1</th>'
            '<th>logit</th></tr>' + "".join(rows) + "</table>")


def _settings(trace: Trace) -> str:
    s = trace.sampling
    parts = ["greedy" if s.get("temperature") == 0 else f"temperature {s.get('temperature')}"]
    for key, off, name in (("top_k", 0, "top-k"), ("top_p", 1.0, "top-p"), ("min_p", 0.0, "min-p"),
                           ("repetition_penalty", 1.0, "repetition penalty"), ("seed", None, "seed")):
        if s.get(key, off) != off:
            parts.append(f"{name} {s[key]}")
    m = trace.model
    return (f"{m.get('kind', '?')} model, {trace.n_layer} layer(s) \u00d7 {trace.n_head} head(s), "
            f"context {m.get('context_length', '?')} \u00b7 " + ", ".join(parts))


def render_html(trace: Trace, *, full_page: bool = True, layer: int | str | None = None,
                head: int | str | None = None) -> str:
    """The trace as HTML; `layer`/`head` pick the attention shown first (default: last layer, mean of heads)."""
    uid = "gptlab-trace-" + secrets.token_hex(4)
    esc = html.escape
    joiner = " " if trace.model.get("tokenizer", "word") == "word" else ""
    layer = trace.n_layer - 1 if layer is None else layer
    head = "mean" if head is None else head
    layer_opts = [(str(i), f"layer {i + 1}") for i in range(trace.n_layer)] + [("mean", "mean of layers")]
    head_opts = [("mean", "mean of heads")] + [(str(h), f"head {h + 1}") for h in range(trace.n_head)]

    def select(cls: str, opts, chosen) -> str:
        return f'<select class="{cls}">' + "".join(
            f'<option value="{v}"{" selected" if v == str(chosen) else ""}>{label}</option>' for v, label in opts) + "</select>"

    steps = []
    for k, step in enumerate(trace.steps):
        row = step.attention_row(layer, head)
        finish = f" \u00b7 finished ({esc(step.finish)})" if step.finish else ""
        steps.append(
            f'<div class="step"><div class="stephead">step {k + 1} \u00b7 chose <b>{esc(step.chosen.token)}</b> '
            f"({_pct(step.chosen.p_sample)}) \u00b7 entropy {step.entropy:.2f} bits, drawn from {step.entropy_sample:.2f} bits{finish}</div>"
            f'<div class="ctx">{_context_html(step, row, joiner)}{joiner}<span class="next">\u2192 {esc(step.chosen.token)}</span></div>'
            f"{_top_html(step, trace.top)}</div>")

    body = (
        f'<div class="gptlab-trace" id="{uid}">'
        f'<h2>{esc(trace.prompt)}<span class="gen">{esc(trace.completion)}</span></h2>'
        f'<div class="meta">{esc(_settings(trace))}</div>'
        f'<div class="controls">highlight = attention of the predicting position, scaled by its maximum: '
        f'{select("layer", layer_opts, layer)} {select("head", head_opts, head)}</div>'
        + "".join(steps)
        + f'<script type="application/json" class="gptlab-data">{_script_json({"attention": [s.attention for s in trace.steps]})}</script>'
        f"<style>{CSS}</style><script>{JS % {'uid': uid, 'rgb': HIGHLIGHT_RGB}}</script></div>"
    )
    if not full_page:
        return body
    return ('<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>gptlab trace: {esc(trace.prompt)}</title></head><body>{body}</body></html>\n")
