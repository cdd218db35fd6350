"""A Trace for the terminal: attention as a coloured background behind each word (the notebook's
light blue, alpha = attention / max), the top next tokens as unicode bars. Plain text when the
output is not a terminal or NO_COLOR is set. No torch here: this module reads plain data only."""

from __future__ import annotations

import os
import sys
from typing import TextIO

from gptlab.explain.trace import Trace, TraceStep

HIGHLIGHT = (135, 206, 250)  # the notebook's rgba(135, 206, 250, a), blended over white
BAR_WIDTH = 24
EIGHTHS = " \u258f\u258e\u258d\u258c\u258b\u258a\u2589"  # 0/8 .. 7/8 of a cell
RESET = "\x1b[0m"


def use_color(stream: TextIO | None = None) -> bool:
    """Colour only for a terminal, and never with NO_COLOR set (https://no-color.org)."""
    stream = sys.stdout if stream is None else stream
    if os.environ.get("NO_COLOR"):
        return False
    return bool(getattr(stream, "isatty", lambda: False)())


def bar(fraction: float, width: int = BAR_WIDTH) -> str:
    eighths = round(max(0.0, min(1.0, fraction)) * width * 8)
    full, part = divmod(eighths, 8)
    return ("\u2588" * full + (EIGHTHS[part] if part else "")).ljust(width)


def _highlight(tok: str, alpha: float) -> str:
    r, g, b = (round(255 + (c - 255) * alpha) for c in HIGHLIGHT)
    return f"\x1b[38;2;0;0;0;48;2;{r};{g};{b}m{tok}{RESET}"


def _step_lines(k: int, step: TraceStep, trace: Trace, color: bool, layer, head, joiner: str) -> list[str]:
    row = step.attention_row(layer, head)
    m = max(row) or 1.0
    words = [_highlight(t, a / m) if color else t for t, a in zip(step.tokens, row)]
    lead = "\u2026 " if step.start > 0 else ""
    chosen = f"\x1b[1m{step.chosen.token}{RESET}" if color else step.chosen.token
    lines = [f"step {k + 1}: chose {step.chosen.token!r} ({100 * step.chosen.p_sample:.1f}%), "
             f"entropy {step.entropy:.2f} bits (drawn from {step.entropy_sample:.2f})"
             + (f", finished ({step.finish})" if step.finish else ""),
             "  " + lead + joiner.join(words) + joiner + "\u2192 " + chosen]
    ranked = sorted(range(len(row)), key=lambda i: -row[i])[:5]
    lines.append("  attends most to: " + ", ".join(f"{step.tokens[i].strip() or repr(step.tokens[i])} {row[i] / m:.2f}" for i in ranked))
    shown = step.candidates[:trace.top]
    if all(c.id != step.chosen.id for c in shown):
        shown = shown + [step.chosen]
    width = max(len(c.token) for c in shown)
    for c in shown:
        mark = " \u2190" if c.id == step.chosen.id else ""
        lines.append(f"    {c.token:<{width}} {bar(c.p_sample)} {100 * c.p_sample:6.2f}%  (T=1 {100 * c.p:6.2f}%){mark}")
    return lines


def render_terminal(trace: Trace, *, color: bool | None = None, layer: int | str | None = None,
                    head: int | str | None = None) -> str:
    """The trace as text. color=None decides from stdout (a TTY and no NO_COLOR)."""
    color = use_color() if color is None else color
    joiner = " " if trace.model.get("tokenizer", "word") == "word" else ""
    what = f"layer {int(layer) + 1}" if layer not in (None, "mean") else ("mean of layers" if layer == "mean" else "last layer")
    what += f", head {int(head) + 1}" if head not in (None, "mean") else ", mean of heads"
    lines = [f"{trace.prompt}{trace.completion}",
             f"(highlight: attention of the predicting position, {what}; bars: probability each token was drawn with)"]
    for k, step in enumerate(trace.steps):
        lines.append("")
        lines += _step_lines(k, step, trace, color, layer, head, joiner)
    return "\n".join(lines)
