"""Views of an image trace (kind "image"): the picture, each prompt word's cross-attention map laid
over it (DAAM's per-word heatmaps, one small picture per word), and the denoising filmstrip.
No torch, no PIL: the images are the trace's PNG data URLs, the maps are HTML grids over them."""

from __future__ import annotations

from typing import TYPE_CHECKING

from gptlab.explain.style import esc

if TYPE_CHECKING:  # types only: trace.py calls the renderers, so a runtime import would be a cycle
    from gptlab.explain.trace import ImageTrace

SIDE = 128  # pixels each picture is drawn at
RAMP = " .:-=+*#%@"

IMAGE_CSS = """
.gi-row{display:flex;flex-wrap:wrap;gap:12px;align-items:flex-start;margin:8px 0}
.gi-fig{margin:0;text-align:center;font:12px system-ui,sans-serif}
.gi-pic{position:relative;width:128px;height:128px}
.gi-pic img{width:128px;height:128px;image-rendering:pixelated;display:block}
.gi-map{position:absolute;inset:0;display:grid}
.gi-map div{background:rgba(255,40,40,var(--a))}
.gi-fig:hover .gi-map div{background:rgba(255,255,0,var(--a))}
.gi-note{font:12px system-ui,sans-serif;color:#555}
"""


def _normalised(h: list[float]) -> list[float]:
    """Scaled from the map's own minimum (0) to its maximum (1); a flat map is all 0."""
    lo, hi = (min(h), max(h)) if h else (0.0, 0.0)
    return [(v - lo) / (hi - lo) if hi - lo > 1e-12 else 0.0 for v in h]


def _picture(src: str, caption: str, heat: list[float] | None = None, grid: tuple[int, int] = (0, 0)) -> str:
    overlay = ""
    if heat is not None:
        rows, cols = grid
        cells = "".join(f'<div style="--a:{0.75 * a:.3f}"></div>' for a in _normalised(heat))
        overlay = (f'<div class="gi-map" style="grid-template-columns:repeat({cols},1fr);'
                   f'grid-template-rows:repeat({rows},1fr)">{cells}</div>')
    return (f'<figure class="gi-fig"><div class="gi-pic"><img alt="{esc(caption)}" src="{esc(src)}">{overlay}</div>'
            f"<figcaption>{esc(caption)}</figcaption></figure>")


def image_html(trace: ImageTrace, uid: str = "", layer=None, head=None, **_) -> str:
    grid = (trace.grid[0], trace.grid[1])
    s = trace.settings
    how = ", ".join(f"{k} {v}" for k, v in s.items() if v not in ("", None))
    parts = [f"<h3>{esc(trace.title())}</h3>", f'<p class="gi-note">{esc(how)}</p>',
             '<div class="gi-row">', _picture(trace.image, "generated")]
    parts += [_picture(trace.image, tok, heat, grid) for tok, heat in zip(trace.tokens, trace.heatmaps)]
    parts.append("</div>")
    parts.append('<p class="gi-note">Each word\'s map: its cross-attention from every latent patch, summed over '
                 "layers, heads and steps, scaled from its own minimum to its maximum (red = most).</p>")
    if trace.filmstrip:
        parts.append('<h3>denoising filmstrip: the clean image predicted at each step</h3><div class="gi-row">')
        parts += [_picture(f["image"], f"step {f['step']}/{f['of']}") for f in trace.filmstrip]
        parts.append("</div>")
    return "".join(parts) + f"<style>{IMAGE_CSS}</style>"


def image_text(trace: ImageTrace, color: bool = False, layer=None, head=None, **_) -> str:
    """Each word's map as a block of characters (darker = less attention), side by side."""
    rows, cols = trace.grid
    lines = [trace.title(), ""]
    per_line = max(1, 72 // (cols + 3))
    for start in range(0, len(trace.tokens), per_line):
        toks = trace.tokens[start:start + per_line]
        maps = [_normalised(h) for h in trace.heatmaps[start:start + per_line]]
        lines.append("   ".join(t[:cols].ljust(cols) for t in toks))
        for r in range(rows):
            lines.append("   ".join("".join(RAMP[min(len(RAMP) - 1, int(m[r * cols + c] * (len(RAMP) - 1) + 0.5))]
                                            for c in range(cols)) for m in maps))
        lines.append("")
    if trace.filmstrip:
        lines.append("filmstrip: steps " + ", ".join(f"{f['step']}/{f['of']}" for f in trace.filmstrip)
                     + " (see the HTML view)")
    return "\n".join(lines).rstrip()
