"""Capture for `gptlab image explain`: generate one image while summing each prompt token's
cross-attention over layers, heads and steps (DAAM), and keep the predicted clean image at a few
steps (the filmstrip); the result is an ImageTrace (kind "image")."""

from __future__ import annotations

from dataclasses import asdict, replace

from gptlab.data.images import png_data_url
from gptlab.data.tokenizer import Tokenizer
from gptlab.explain.trace import ImageTrace
from gptlab.infer.diffuse import GenerateConfig, Generated, generate
from gptlab.model.diffusion import TextToImage


def explain_image(model: TextToImage, tok: Tokenizer, g: GenerateConfig, frames: int = 6,
                  path: str = "") -> tuple[ImageTrace, Generated]:
    """The trace of the first image of `g` (n is forced to 1), and what generate returned."""
    g = replace(g, n=1, filmstrip=frames)
    out = generate(model, tok, g, capture_attn=True)
    assert out.cross_attn is not None  # capture_attn=True
    cfg = model.cfg
    side = cfg.latent_size // cfg.patch
    # Sum over layers, heads and steps -> a mean, so maps of runs with other step counts compare.
    attn_NxS = out.cross_attn[0] / (cfg.n_layer * cfg.n_head * g.steps)
    settings = {k: v for k, v in asdict(g).items() if k in ("negative_prompt", "guidance", "steps", "sampler", "seed")}
    trace = ImageTrace(
        prompt=g.prompt, tokens=out.tokens[0], grid=[side, side],
        heatmaps=[[round(float(v), 6) for v in attn_NxS[:, s]] for s in range(attn_NxS.shape[1])],
        image=png_data_url(out.images[0]),
        filmstrip=[{"step": step, "of": g.steps, "image": png_data_url(imgs[0])} for step, imgs in out.filmstrip],
        settings=settings,
        model={"kind": "image", "n_layer": cfg.n_layer, "n_head": cfg.n_head, "d_model": cfg.d_model,
               "image_size": cfg.image_size, "latent": [cfg.latent_channels, cfg.latent_size, cfg.latent_size],
               "path": path})
    return trace, out
