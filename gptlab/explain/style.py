"""What every renderer shares: one colour scale, one stylesheet, HTML escaping and the page
around a fragment, and the terminal's colour switch, highlight and bars.

Weight is drawn in one hue, the course notebook's light blue rgba(135, 206, 250, alpha) with
alpha = weight / the largest weight shown, in HTML and (blended over white) in a terminal, so a
GPT step, an encoder sentence and a seq2seq heatmap read the same way. Dark text stays readable
on every shade of it. No torch here: renderers draw saved traces anywhere.
"""

from __future__ import annotations

import html
import json
import os
import sys
from collections.abc import Iterable
from typing import TextIO

RGB = (135, 206, 250)
EOT = "<|endoftext|>"  # the tokenizer's end-of-text token (gptlab.data.tokenizer.EOT; renderers import no torch)
RESET = "\x1b[0m"
SHADES = " ░▒▓█"                               # weight without colour: survives a pipe or a log file
EIGHTHS = " \u258f\u258e\u258d\u258c\u258b\u258a\u2589"  # 0/8 .. 7/8 of a bar cell


# -- the colour scale ---------------------------------------------------------------------------
def top_weight(values: Iterable[float], vmax: float | None = None) -> float:
    """The weight drawn at full colour: vmax, else the largest value (1.0 when there is none or it is 0)."""
    top = vmax if vmax is not None else max(values, default=1.0)
    return top if top > 0 else 1.0


def alpha(weight: float, top: float) -> float:
    return max(0.0, min(1.0, weight / top))


def css_rgba(a: float) -> str:
    return f"rgba({RGB[0]},{RGB[1]},{RGB[2]},{a:.3f})"


# -- HTML ---------------------------------------------------------------------------------------
def esc(text: object) -> str:
    """Token text as HTML: a token may be `<script>` or `&`, never markup."""
    return html.escape(str(text))


def display_token(token: str, position: int | None = None) -> str:
    """A token as a view shows it: the end-of-text token by its role (it starts a text at position 0)."""
    if token == EOT:
        return "\u27e8start\u27e9" if position == 0 else "\u27e8end\u27e9"
    return token


def script_json(obj: object) -> str:
    """JSON that cannot end the <script> element it sits in."""
    return (json.dumps(obj, separators=(",", ":"), allow_nan=False)
            .replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026"))


# One stylesheet for every kind. Inline in each fragment (no CDN, no file beside it), so a page
# opens offline and a notebook cell renders on its own.
CSS = """
.gptlab-trace{font-family:system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif;color:#1d2330;max-width:70em;min-width:0;overflow-wrap:anywhere}
.gptlab-trace h2{font-size:1.15em;margin:.3em 0}
.gptlab-trace .gen{font-weight:600;color:#7a1f3d}
.gptlab-trace .meta{color:#667085;font-size:.85em;margin:.2em 0 .6em}
.gptlab-trace .pred{margin:.3em 0}
.gptlab-trace .controls{font-size:.85em;margin:.4em 0 .8em;color:#667085}
.gptlab-trace .step{border-top:1px solid #e3e6eb;padding:.5em 0}
.gptlab-trace .stephead{font-size:.85em;color:#555;margin-bottom:.3em}
.gptlab-trace .ctx{font-family:ui-monospace,Menlo,Consolas,monospace;line-height:1.9;white-space:pre-wrap;overflow-wrap:anywhere}
.gptlab-trace .t{border-radius:3px;padding:1px 0}
.gptlab-trace .next{font-weight:700;color:#1f6f5c}
.gptlab-trace .lens{font-size:.8em;color:#667085;margin-top:.3em}
.gptlab-trace table.top{border-collapse:collapse;font-size:.85em;margin-top:.3em;table-layout:fixed;width:100%;max-width:44em}
.gptlab-trace table.top col.w{width:27%}.gptlab-trace table.top col.bar{width:34%}.gptlab-trace table.top col.num{width:13%}
.gptlab-trace table.top td,.gptlab-trace table.top th{padding:1px 4px;text-align:left;overflow:hidden}
.gptlab-trace table.top th{color:#777;font-weight:400}
.gptlab-trace td.w{font-family:ui-monospace,Menlo,Consolas,monospace;white-space:pre;overflow:hidden;text-overflow:ellipsis}
.gptlab-trace td.bar div{background:rgba(122,31,61,.75);height:.9em;border-radius:2px}
.gptlab-trace td.num{text-align:right;font-variant-numeric:tabular-nums}
.gptlab-trace tr.chosen td.w{font-weight:700;color:#1f6f5c}
.gptlab-trace tr.chosen td.bar div{background:#1f6f5c}
.gptlab-trace tr.removed{opacity:.55}.gptlab-trace tr.removed td.w{text-decoration:line-through}
.gptlab-trace tr.other td.w{font-style:italic;font-family:inherit;color:#667085}
.gptlab-trace tr.cut td{font-size:.85em;color:#7a1f3d;border-top:2px dashed #7a1f3d}
.gptlab-heatmap{overflow-x:auto;margin:.4em 0}
.gptlab-heatmap .title,.gptlab-highlight .title{font-weight:600;margin:4px 0}
.gptlab-heatmap table{border-collapse:collapse}
.gptlab-heatmap th{font-weight:400;font-size:12px}
.gptlab-heatmap th.corner{text-align:right;font-size:11px;color:#666;vertical-align:bottom}
.gptlab-heatmap th.col{vertical-align:bottom;padding:2px}
.gptlab-heatmap th.col div{writing-mode:vertical-rl;transform:rotate(180deg);white-space:nowrap}
.gptlab-heatmap th.row{text-align:right;padding-right:6px;white-space:nowrap}
.gptlab-heatmap td{padding:0;width:2.6em;height:1.9em;text-align:center;font-size:11px;border:1px solid #fff;color:#222}
.gptlab-highlight{line-height:2.1}
.gptlab-highlight span.hl{padding:2px 3px;margin:1px;border-radius:3px}
.gptlab-highlight span.focus{outline:2px solid #e11d48}
"""


def page(title: str, body: str) -> str:
    """A whole HTML document around a fragment (the fragment carries its own stylesheet)."""
    return ('<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{esc(title or 'gptlab attention')}</title></head>"
            '<body style="margin:0;padding:1rem;background:#f6f7f9">'
            '<div style="background:#fff;border:1px solid #e3e6eb;border-radius:10px;padding:1rem 1.1rem;'
            f'max-width:1100px;margin:0 auto">{body}</div></body></html>\n')


# -- terminal -----------------------------------------------------------------------------------
def use_color(stream: TextIO | None = None) -> bool:
    """Colour only for a terminal, and never with NO_COLOR set (https://no-color.org)."""
    stream = sys.stdout if stream is None else stream
    if os.environ.get("NO_COLOR"):
        return False
    return bool(getattr(stream, "isatty", lambda: False)())


def ansi_highlight(text: str, a: float) -> str:
    """`text` in black on the light blue at opacity `a`, blended over white (24-bit colour)."""
    r, g, b = (round(255 + (c - 255) * a) for c in RGB)
    return f"\x1b[38;2;0;0;0;48;2;{r};{g};{b}m{text}{RESET}"


def bold(text: str, color: bool) -> str:
    return f"\x1b[1m{text}{RESET}" if color else text


def shade(a: float, width: int) -> str:
    """`width` block characters for a weight in [0, 1]: the colourless heatmap cell."""
    return SHADES[min(int(a * (len(SHADES) - 1) + 0.5), len(SHADES) - 1)] * width


def bar(fraction: float, width: int = 24) -> str:
    eighths = round(max(0.0, min(1.0, fraction)) * width * 8)
    full, part = divmod(eighths, 8)
    return ("\u2588" * full + (EIGHTHS[part] if part else "")).ljust(width)


def fit(s: object, width: int) -> str:
    s = str(s)
    return s if len(s) <= width else s[: max(width - 1, 1)] + "…"
