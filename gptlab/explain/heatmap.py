"""Rendering attention as pictures: an HTML heatmap (inline CSS, no scripts, no CDN), a terminal
heatmap, and a highlighted sentence (one token's attention over the others).

Pure Python on lists of floats: no torch, so it renders saved JSON traces anywhere.
"""

from __future__ import annotations

import html
import os
import sys
from typing import Sequence

Matrix = Sequence[Sequence[float]]
SHADES = " ░▒▓█"
# One hue (a blue) for weight: opacity carries the value, so light and dark page themes both work.
RGB = (37, 99, 235)


def _check(matrix: Matrix, row_labels: Sequence[str], col_labels: Sequence[str]) -> None:
    if len(matrix) != len(row_labels):
        raise ValueError(f"{len(matrix)} rows but {len(row_labels)} row labels")
    for r in matrix:
        if len(r) != len(col_labels):
            raise ValueError(f"a row has {len(r)} values but there are {len(col_labels)} column labels")


def _scale(matrix: Matrix, vmax: float | None) -> float:
    top = vmax if vmax is not None else max((max(r) for r in matrix if len(r)), default=1.0)
    return top if top > 0 else 1.0


# -- HTML -----------------------------------------------------------------------------------------
def html_heatmap(matrix: Matrix, row_labels: Sequence[str], col_labels: Sequence[str], *,
                 title: str = "", row_title: str = "", col_title: str = "", vmax: float | None = None,
                 values: bool = True, standalone: bool = False) -> str:
    """A <table> whose cell (i, j) is shaded by matrix[i][j]; hover shows the exact weight.

    Columns are labelled on top (rotated), rows on the left. vmax: the weight drawn full colour
    (default: the largest in the matrix). standalone=True wraps it in a whole HTML page.
    """
    _check(matrix, row_labels, col_labels)
    top = _scale(matrix, vmax)
    e = html.escape
    cell = "padding:0;width:2.6em;height:1.9em;text-align:center;font-size:11px;border:1px solid #fff"
    parts = ['<div class="gptlab-heatmap" style="font-family:system-ui,sans-serif;overflow-x:auto">']
    if title:
        parts.append(f'<div style="font-weight:600;margin:4px 0">{e(title)}</div>')
    parts.append('<table style="border-collapse:collapse">')
    parts.append(f'<tr><th style="text-align:right;font-size:11px;color:#666;vertical-align:bottom">'
                 f'{e(row_title)}{" ↓ / " if row_title and col_title else ""}{e(col_title)}{" →" if col_title else ""}</th>')
    for c in col_labels:
        parts.append('<th style="vertical-align:bottom;padding:2px;font-weight:normal;font-size:12px">'
                     f'<div style="writing-mode:vertical-rl;transform:rotate(180deg);white-space:nowrap">{e(str(c))}</div></th>')
    parts.append("</tr>")
    for label, row in zip(row_labels, matrix):
        parts.append(f'<tr><th style="text-align:right;padding-right:6px;font-weight:normal;font-size:12px;'
                     f'white-space:nowrap">{e(str(label))}</th>')
        for c, v in zip(col_labels, row):
            a = max(0.0, min(1.0, v / top))
            fg = "#fff" if a > 0.55 else "#222"
            text = f"{v:.2f}".lstrip("0") if values and v >= 0.005 else ""
            parts.append(f'<td title="{e(str(label))} → {e(str(c))}: {v:.3f}" style="{cell};'
                         f'background:rgba({RGB[0]},{RGB[1]},{RGB[2]},{a:.3f});color:{fg}">{text}</td>')
        parts.append("</tr>")
    parts.append("</table></div>")
    body = "".join(parts)
    return _page(title, body) if standalone else body


def html_highlight(tokens: Sequence[str], weights: Sequence[float], *, title: str = "",
                   focus: int | None = None, vmax: float | None = None, standalone: bool = False) -> str:
    """The sentence with each token's background shaded by its weight; `focus` is outlined."""
    if len(tokens) != len(weights):
        raise ValueError(f"{len(tokens)} tokens but {len(weights)} weights")
    top = _scale([weights], vmax)
    e = html.escape
    parts = ['<div class="gptlab-highlight" style="font-family:system-ui,sans-serif;line-height:2.1">']
    if title:
        parts.append(f'<div style="font-weight:600;margin:4px 0">{e(title)}</div>')
    for i, (t, w) in enumerate(zip(tokens, weights)):
        a = max(0.0, min(1.0, w / top))
        border = "outline:2px solid #e11d48;" if i == focus else ""
        fg = "#fff" if a > 0.55 else "#222"
        parts.append(f'<span title="{w:.3f}" style="{border}background:rgba({RGB[0]},{RGB[1]},{RGB[2]},{a:.3f});'
                     f'color:{fg};padding:2px 3px;margin:1px;border-radius:3px">{e(str(t))}</span> ')
    parts.append("</div>")
    body = "".join(parts)
    return _page(title, body) if standalone else body


def _page(title: str, body: str) -> str:
    return ("<!DOCTYPE html><html><head><meta charset=\"utf-8\">"
            f"<title>{html.escape(title or 'gptlab attention')}</title></head>"
            f"<body style=\"margin:16px\">{body}</body></html>\n")


# -- terminal -------------------------------------------------------------------------------------
def use_color(stream=None) -> bool:
    """ANSI colour when writing to a terminal that has not asked for none (NO_COLOR)."""
    stream = stream or sys.stdout
    return hasattr(stream, "isatty") and stream.isatty() and not os.environ.get("NO_COLOR")


def _fit(s: str, width: int) -> str:
    s = str(s)
    return s if len(s) <= width else s[: max(width - 1, 1)] + "…"


def _ansi_bg(a: float) -> str:
    # The 24-step grey ramp (232..255) from dark to light: heavier weight = lighter cell.
    return f"\x1b[48;5;{232 + round(a * 23)}m"


def terminal_heatmap(matrix: Matrix, row_labels: Sequence[str], col_labels: Sequence[str], *,
                     title: str = "", color: bool | None = None, values: bool = False,
                     vmax: float | None = None, cell_width: int = 0, label_width: int = 16) -> str:
    """Rows labelled on the left, columns numbered on top with a legend below, cells shaded.

    Without colour the shade is drawn with block characters (░▒▓█), so it survives a pipe or a
    log file; values=True prints the weights (x100) in the cells instead.
    """
    _check(matrix, row_labels, col_labels)
    color = use_color() if color is None else color
    top = _scale(matrix, vmax)
    width = cell_width or max(3, min(8, max((len(str(c)) for c in col_labels), default=3) + 1))
    lw = min(label_width, max((len(str(r)) for r in row_labels), default=1))
    lines = [title] if title else []
    # Column headers: the token itself when it fits the cell, else its number (see the legend).
    fits = all(len(str(c)) < width for c in col_labels)
    head = [(_fit(c, width - 1) if fits else str(j)).center(width) for j, c in enumerate(col_labels)]
    lines.append(" " * (lw + 1) + "".join(head))
    for label, row in zip(row_labels, matrix):
        cells = []
        for v in row:
            a = max(0.0, min(1.0, v / top))
            if values:
                txt = f"{round(v * 100):d}".rjust(width - 1) + " "
            else:
                txt = SHADES[min(int(a * (len(SHADES) - 1) + 0.5), len(SHADES) - 1)] * (width - 1) + " "
            cells.append(f"{_ansi_bg(a)}{txt}\x1b[0m" if color and values else txt)
        lines.append(_fit(label, lw).rjust(lw) + " " + "".join(cells))
    if not fits:
        lines.append("columns: " + "  ".join(f"{j}={c}" for j, c in enumerate(col_labels)))
    return "\n".join(lines)


def terminal_highlight(tokens: Sequence[str], weights: Sequence[float], *, color: bool | None = None,
                       focus: int | None = None, vmax: float | None = None) -> str:
    """The sentence with weights: shaded backgrounds in colour, else `token(37)` in percent."""
    if len(tokens) != len(weights):
        raise ValueError(f"{len(tokens)} tokens but {len(weights)} weights")
    color = use_color() if color is None else color
    top = _scale([weights], vmax)
    out = []
    for i, (t, w) in enumerate(zip(tokens, weights)):
        mark = "*" if i == focus else ""
        if color:
            a = max(0.0, min(1.0, w / top))
            fg = "\x1b[30m" if a > 0.5 else "\x1b[97m"
            out.append(f"{_ansi_bg(a)}{fg}{mark}{t}\x1b[0m")
        else:
            out.append(f"{mark}{t}({round(w * 100)})")
    return " ".join(out)
