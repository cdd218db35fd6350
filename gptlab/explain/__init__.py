"""Explanations for every family: capture (model -> Trace) and renderers (Trace -> HTML / terminal).

- `trace`: the one versioned schema ("gptlab-trace" version 3, a `kind` per family) and its
  loader, `load_trace`, which also reads version-1 and -2 files; `distribution`: the sampler's
  pipeline redone on a GPT step's stored logits (any temperature, top-k, top-p, min-p);
- `capture`: runs a model with attention capture (GPT steps, encoder/classifier, seq2seq);
- `render_html`, `render_term`: one view per kind behind one entry point each; `heatmap` and
  `style` hold the pictures and the colours, CSS and escaping they share.

Everything but `capture` reads plain data and never imports torch; `capture` is imported only when
asked for, so loading and rendering a saved trace stays light.
"""

from gptlab.explain.render_html import render_html
from gptlab.explain.render_term import render_terminal
from gptlab.explain.style import use_color
from gptlab.explain.trace import (
    FORMAT,
    KINDS,
    VERSION,
    Candidate,
    EncoderTrace,
    GPTTrace,
    Seq2SeqTrace,
    Trace,
    TraceStep,
    load_trace,
)

_FROM_CAPTURE = ("explain", "capture_step", "capture_attention", "explain_encoder", "explain_translation")

__all__ = ["FORMAT", "KINDS", "VERSION", "Candidate", "EncoderTrace", "GPTTrace", "Seq2SeqTrace", "Trace",
           "TraceStep", "capture_attention", "capture_step", "explain", "explain_encoder", "explain_translation",
           "load_trace", "render_html", "render_terminal", "use_color"]


def __getattr__(name: str):
    if name in _FROM_CAPTURE:
        from gptlab.explain import capture
        return getattr(capture, name)
    raise AttributeError(f"module 'gptlab.explain' has no attribute {name!r}")
