"""Explanations: capture (tensors -> Trace) and renderers (Trace -> HTML / terminal text).

`trace`, `render_html` and `render_term` read plain data and never import torch; `capture` runs
the model and is imported only when asked for, so loading and rendering a saved trace stays light.
"""

from gptlab.explain.render_html import render_html
from gptlab.explain.render_term import render_terminal, use_color
from gptlab.explain.trace import FORMAT, VERSION, Candidate, Trace, TraceStep

__all__ = ["FORMAT", "VERSION", "Candidate", "Trace", "TraceStep", "render_html", "render_terminal",
           "use_color", "explain", "capture_step"]


def __getattr__(name: str):
    if name in ("explain", "capture_step"):
        from gptlab.explain import capture
        return getattr(capture, name)
    raise AttributeError(f"module 'gptlab.explain' has no attribute {name!r}")
