"""Any Trace for the terminal, one entry point (`render_terminal`) that draws each kind its way:

- gpt: attention as a coloured background behind each word (the notebook's light blue, alpha =
  attention / max), the top next tokens as unicode bars;
- encoder / classifier: the prediction and the sentence with the focus token's attention, and
  optionally every token's attention as a heatmap;
- seq2seq: the cross-attention heatmap (generated words x source words).

Plain text when the output is not a terminal or NO_COLOR is set. No torch here: plain data only.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from gptlab.explain import heatmap
from gptlab.explain.render_image import image_text
from gptlab.explain.style import alpha, ansi_highlight, bar, bold, display_token, top_weight, use_color

if TYPE_CHECKING:  # types only: trace.py calls these renderers, so a runtime import would be a cycle
    from gptlab.explain.trace import EncoderTrace, GPTTrace, Layer, Seq2SeqTrace, Trace, TraceStep

__all__ = ["bar", "render_terminal", "use_color"]


# -- gpt ------------------------------------------------------------------------------------------
def _step_lines(k: int, step: TraceStep, trace: GPTTrace, color: bool, layer: Layer, head: Layer,
                joiner: str) -> list[str]:
    row = step.attention_row(layer, head)
    top = top_weight(row)
    tokens = [display_token(t, step.start + k) for k, t in enumerate(step.tokens)]
    words = [ansi_highlight(t, alpha(a, top)) if color else t for t, a in zip(tokens, row)]
    lead = "\u2026 " if step.start > 0 else ""
    lines = [f"step {k + 1}: chose {step.chosen.token!r} ({100 * step.chosen.p_sample:.1f}%), "
             f"entropy {step.entropy:.2f} bits (drawn from {step.entropy_sample:.2f})"
             + (f", finished ({step.finish})" if step.finish else ""),
             "  " + lead + joiner.join(words) + joiner + "\u2192 " + bold(display_token(step.chosen.token), color)]
    ranked = sorted(range(len(row)), key=lambda i: -row[i])[:5]
    # Each with its position in prompt + text (#0 is the first token), so two ':' can be told apart.
    lines.append("  attends most to: " + ", ".join(
        f"{_word(step.tokens[i], step.start + i)} (#{step.start + i}) {row[i] / top:.2f}" for i in ranked))
    shown = step.candidates[:trace.top]
    if all(c.id != step.chosen.id for c in shown):
        shown = shown + [step.chosen]
    width = max(len(display_token(c.token)) for c in shown)
    cut = False
    for c in shown:
        if c.p_sample == 0 and not cut:
            lines.append(f"    {'':-<{width}} cut: the words below are never drawn")
            cut = True
        mark = " \u2190" if c.id == step.chosen.id else ""
        lines.append(f"    {display_token(c.token):<{width}} {bar(c.p_sample)} {100 * c.p_sample:6.2f}%  "
                     f"(T=1 {100 * c.p:6.2f}%){mark}")
    if step.lens:
        lines.append("  logit lens: " + ", ".join(
            f"{'emb' if i == 0 else f'L{i}'} {_word(e['top'][0]['token'])} {100 * e['top'][0]['p']:.0f}%"
            for i, e in enumerate(step.lens)))
    return lines


def _word(token: str, position: int | None = None) -> str:
    shown = display_token(token, position)
    return shown.strip() or repr(shown)


def _gpt_text(trace: GPTTrace, color: bool, layer: Layer, head: Layer, **_) -> str:
    joiner = " " if trace.model.get("tokenizer", "word") == "word" else ""
    what = f"layer {int(layer) + 1}" if layer not in (None, "mean") else ("mean of layers" if layer == "mean" else "last layer")
    what += f", head {int(head) + 1}" if head not in (None, "mean") else ", mean of heads"
    lines = [f"{trace.prompt}{trace.completion}",
             f"(highlight: attention of the predicting position, {what}; bars: probability each token was drawn with)"]
    for k, step in enumerate(trace.steps):
        lines.append("")
        lines += _step_lines(k, step, trace, color, layer, head, joiner)
    return "\n".join(lines)


# -- encoder / classifier / seq2seq ---------------------------------------------------------------
def _encoder_text(trace: EncoderTrace, color: bool, layer: Layer, head: Layer, matrix: bool = False,
                  values: bool = False, **_) -> str:
    lines = [trace.prediction_text()] if trace.prediction_text() else []
    lines += [trace.title(layer, head),
              heatmap.terminal_highlight(trace.tokens, trace.weights(layer, head=head), color=color, focus=trace.focus)]
    if matrix:
        lines.append(heatmap.terminal_heatmap(trace.matrix(layer, head), trace.tokens, trace.tokens,
                                              color=color, values=values))
    return "\n".join(lines)


def _seq2seq_text(trace: Seq2SeqTrace, color: bool, layer: Layer, head: Layer, values: bool = False, **_) -> str:
    text = heatmap.terminal_heatmap(trace.matrix(layer, head), trace.target_tokens, trace.source_tokens,
                                    title=trace.title(layer, head) + "\nrows: generated words; columns: source words",
                                    color=color, values=values)
    pred = trace.prediction_text()
    return text + (f"\nwritten with: {pred}" if pred else "")


VIEWS: dict[str, Callable[..., str]] = {"gpt": _gpt_text, "encoder": _encoder_text, "classifier": _encoder_text,
                                        "seq2seq": _seq2seq_text, "image": image_text}


def render_terminal(trace: Trace, *, color: bool | None = None, layer: Layer = None, head: Layer = None,
                    values: bool = False, matrix: bool = False) -> str:
    """The trace as text, whatever its kind. color=None decides from stdout (a TTY and no NO_COLOR).

    values: print attention weights (x100) in heatmap cells; matrix: add an encoder trace's full
    heatmap. Both leave a gpt trace as it is.
    """
    color = use_color() if color is None else color
    return VIEWS[trace.kind](trace, color, layer, head, values=values, matrix=matrix)
