"""Attention as pictures: a heatmap (rows attend over columns) and a highlighted sentence (one
token's attention over the others), each as HTML (a table or spans, no scripts) and as terminal
text. Pure Python on lists of floats: no torch, so it renders saved JSON traces anywhere.

Colours, escaping and the stylesheet come from `gptlab.explain.style`, shared with the GPT view.
"""

from __future__ import annotations

from collections.abc import Sequence

from gptlab.explain.style import CSS, alpha, ansi_highlight, css_rgba, esc, fit, page, shade, top_weight, use_color

Matrix = Sequence[Sequence[float]]


def _check(matrix: Matrix, row_labels: Sequence[str], col_labels: Sequence[str]) -> None:
    if len(matrix) != len(row_labels):
        raise ValueError(f"{len(matrix)} rows but {len(row_labels)} row labels")
    for r in matrix:
        if len(r) != len(col_labels):
            raise ValueError(f"a row has {len(r)} values but there are {len(col_labels)} column labels")


def _matrix_top(matrix: Matrix, vmax: float | None) -> float:
    return top_weight((v for r in matrix for v in r), vmax)


def _standalone(title: str, body: str) -> str:
    # Called on its own (not through render_html), the picture brings its stylesheet along.
    return page(title, f'<div class="gptlab-trace">{body}<style>{CSS}</style></div>')


# -- HTML -----------------------------------------------------------------------------------------
def html_heatmap(matrix: Matrix, row_labels: Sequence[str], col_labels: Sequence[str], *,
                 title: str = "", row_title: str = "", col_title: str = "", vmax: float | None = None,
                 values: bool = True, standalone: bool = False) -> str:
    """A <table> whose cell (i, j) is shaded by matrix[i][j]; hover shows the exact weight.

    Columns are labelled on top (rotated), rows on the left. vmax: the weight drawn full colour
    (default: the largest in the matrix). standalone=True wraps it in a whole HTML page.
    """
    _check(matrix, row_labels, col_labels)
    top = _matrix_top(matrix, vmax)
    parts = ['<div class="gptlab-heatmap">']
    if title:
        parts.append(f'<div class="title">{esc(title)}</div>')
    corner = f'{esc(row_title)}{" ↓ / " if row_title and col_title else ""}{esc(col_title)}{" →" if col_title else ""}'
    parts.append(f'<table><tr><th class="corner">{corner}</th>')
    parts += [f'<th class="col"><div>{esc(c)}</div></th>' for c in col_labels]
    parts.append("</tr>")
    for label, row in zip(row_labels, matrix):
        parts.append(f'<tr><th class="row">{esc(label)}</th>')
        for c, v in zip(col_labels, row):
            text = f"{v:.2f}".lstrip("0") if values and v >= 0.005 else ""
            parts.append(f'<td title="{esc(label)} → {esc(c)}: {v:.3f}" '
                         f'style="background:{css_rgba(alpha(v, top))}">{text}</td>')
        parts.append("</tr>")
    parts.append("</table></div>")
    body = "".join(parts)
    return _standalone(title, body) if standalone else body


def html_highlight(tokens: Sequence[str], weights: Sequence[float], *, title: str = "",
                   focus: int | None = None, vmax: float | None = None, standalone: bool = False) -> str:
    """The sentence with each token's background shaded by its weight; `focus` is outlined."""
    if len(tokens) != len(weights):
        raise ValueError(f"{len(tokens)} tokens but {len(weights)} weights")
    top = top_weight(weights, vmax)
    parts = ['<div class="gptlab-highlight">']
    if title:
        parts.append(f'<div class="title">{esc(title)}</div>')
    for i, (t, w) in enumerate(zip(tokens, weights)):
        cls = "hl focus" if i == focus else "hl"
        parts.append(f'<span class="{cls}" title="{w:.3f}" style="background:{css_rgba(alpha(w, top))}">{esc(t)}</span> ')
    parts.append("</div>")
    body = "".join(parts)
    return _standalone(title, body) if standalone else body


# -- terminal -------------------------------------------------------------------------------------
def terminal_heatmap(matrix: Matrix, row_labels: Sequence[str], col_labels: Sequence[str], *,
                     title: str = "", color: bool | None = None, values: bool = False,
                     vmax: float | None = None, cell_width: int = 0, label_width: int = 16) -> str:
    """Rows labelled on the left, columns on top (numbered, with a legend, when a word does not fit).

    In colour a cell's background is shaded by weight; without, the cell is block characters
    (░▒▓█), so the picture survives a pipe or a log file. values=True prints the weights (x100).
    """
    _check(matrix, row_labels, col_labels)
    color = use_color() if color is None else color
    top = _matrix_top(matrix, vmax)
    width = cell_width or max(3, min(8, max((len(str(c)) for c in col_labels), default=3) + 1))
    lw = min(label_width, max((len(str(r)) for r in row_labels), default=1))
    lines = [title] if title else []
    fits = all(len(str(c)) < width for c in col_labels)
    head = [(fit(c, width - 1) if fits else str(j)).center(width) for j, c in enumerate(col_labels)]
    lines.append(" " * (lw + 1) + "".join(head))
    for label, row in zip(row_labels, matrix):
        cells = []
        for v in row:
            a = alpha(v, top)
            txt = f"{round(v * 100):d}".rjust(width - 1) if values else ""
            cells.append((ansi_highlight(txt.ljust(width - 1), a) if color else txt or shade(a, width - 1)) + " ")
        lines.append(fit(label, lw).rjust(lw) + " " + "".join(cells))
    if not fits:
        lines.append("columns: " + "  ".join(f"{j}={c}" for j, c in enumerate(col_labels)))
    return "\n".join(lines)


def terminal_highlight(tokens: Sequence[str], weights: Sequence[float], *, color: bool | None = None,
                       focus: int | None = None, vmax: float | None = None) -> str:
    """The sentence with weights: shaded backgrounds in colour, else `token(37)` in percent; `*` marks the focus."""
    if len(tokens) != len(weights):
        raise ValueError(f"{len(tokens)} tokens but {len(weights)} weights")
    color = use_color() if color is None else color
    top = top_weight(weights, vmax)
    out = []
    for i, (t, w) in enumerate(zip(tokens, weights)):
        mark = "*" if i == focus else ""
        out.append(ansi_highlight(f"{mark}{t}", alpha(w, top)) if color else f"{mark}{t}({round(w * 100)})")
    return " ".join(out)
