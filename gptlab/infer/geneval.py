"""mini-GenEval: whether a generated image follows its prompt, decided from its pixels alone.

The shapes are segmented (connected components of non-background pixels); each one's kind comes
from the checker's classifier (model/checker.py), its colour is the nearest palette colour of its
pixels and its position is its centroid. `judge` (data/shapes.py) then applies GenEval's rule of
the prompt's category. Overall = the mean over the six categories, as GenEval reports it.

The FID-style distance is the Fréchet distance between Gaussians fitted to per-image features:
the mean checker embedding of the image's shapes, its shape and colour counts, and where its
shapes sit. It compares sets of images (generated vs real renders); lower is closer.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np
import torch

from gptlab.data.shapes import (
    CATEGORIES,
    COLOURS,
    CROP,
    FLIPPED,
    SHAPES,
    Thing,
    caption_of,
    features,
    judge,
    nearest_colour,
    random_spec,
    render_spec,
    segment,
)
from gptlab.data.tokenizer import Tokenizer
from gptlab.infer.diffuse import (
    GenerateConfig,
    encode_captions,
    from_pixels,
    generate,
    make_scheduler,
    predict_x0,
    to_pixels,
)
from gptlab.model.checker import ShapeChecker
from gptlab.model.diffusion import TextToImage

PROMPTS = ("caption", "first-noun")


@torch.no_grad()
def detect_many(checker: ShapeChecker, images: list[np.ndarray]) -> list[tuple[list[Thing], np.ndarray]]:
    """Per (H, W, 3) uint8 image: the shapes found in it and their checker embeddings (N, E).
    Every shape of every image goes through the classifier in one call: at these sizes a call
    costs more than its arithmetic."""
    comps = [segment(img) for img in images]
    flat = [(c, img.shape[0]) for cs, img in zip(comps, images) for c in cs]
    if flat:
        crops = torch.from_numpy(np.stack([c.crop(CROP) for c, _ in flat]))
        feats = torch.from_numpy(np.stack([features(c, size) for c, size in flat]))
        logits, emb_NxE, _ = checker(crops, feats)
        kinds, emb = logits.argmax(1).tolist(), emb_NxE.numpy()
    out, i = [], 0
    for cs in comps:
        things = [Thing(SHAPES[kinds[i + j]], nearest_colour(c.mean_rgb), c.x, c.y, c.r) for j, c in enumerate(cs)]
        out.append((things, emb[i:i + len(cs)] if cs else np.zeros((0, checker.width), np.float32)))
        i += len(cs)
    return out


def detect(checker: ShapeChecker, image: np.ndarray) -> list[Thing]:
    """The shapes found in one image."""
    return detect_many(checker, [image])[0][0]


def score(checker: ShapeChecker, specs: list[dict[str, Any]], images: list[np.ndarray]) -> dict[str, float]:
    """Fraction of prompts followed per category, and "overall" (their mean)."""
    hits: dict[str, list[bool]] = {c: [] for c in CATEGORIES}
    for spec, (things, _) in zip(specs, detect_many(checker, images)):
        hits[spec["category"]].append(judge(spec, things))
    per = {c: float(np.mean(v)) for c, v in hits.items() if v}
    return {"overall": float(np.mean(list(per.values()))) if per else float("nan"), **per}


def image_features(checker: ShapeChecker, images: list[np.ndarray]) -> np.ndarray:
    """(N, D) per image: mean shape embedding, counts per shape and colour, mean position and size."""
    rows = []
    for img, (things, emb) in zip(images, detect_many(checker, images)):
        size = img.shape[0]
        counts = [sum(t.shape == s for t in things) for s in SHAPES] + [sum(t.colour == c for t in things) for c in COLOURS]
        where = [np.mean([t.x / size for t in things]), np.mean([t.y / size for t in things]),
                 np.mean([t.r / size for t in things])] if things else [0.0, 0.0, 0.0]
        mean_emb = emb.mean(axis=0) if len(emb) else np.zeros(checker.width, np.float32)
        rows.append(np.concatenate([mean_emb, counts, where]).astype(np.float64))
    return np.stack(rows)


def frechet_distance(a_NxD: np.ndarray, b_MxD: np.ndarray) -> float:
    """|mu_a - mu_b|^2 + tr(Ca + Cb - 2 (Ca Cb)^1/2), the FID formula, on any features."""
    mu_a, mu_b = a_NxD.mean(0), b_MxD.mean(0)
    ca, cb = np.cov(a_NxD, rowvar=False), np.cov(b_MxD, rowvar=False)
    # tr((Ca Cb)^1/2) = sum of the square roots of Ca Cb's eigenvalues (real, >= 0 up to rounding).
    eig = np.linalg.eigvals(ca @ cb)
    tr_sqrt = float(np.sqrt(np.clip(eig.real, 0, None)).sum())
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(ca) + np.trace(cb) - 2 * tr_sqrt)


def prompt_for(spec: dict[str, Any], how: str = "caption") -> str:
    """The prompt a spec is asked with: its caption, or (the baseline) its first noun alone."""
    if how == "first-noun":
        return f"a {spec['objects'][0]['shape']}"
    return caption_of(spec)


def real_renders(specs: list[dict[str, Any]], seed: int = 0, size: int = 32) -> list[np.ndarray]:
    """One real render per spec: the ceiling a generator is compared with."""
    return [render_spec(s, seed * 100_003 + i, size).image for i, s in enumerate(specs)]


def generate_for(model: TextToImage, tok: Tokenizer, specs: list[dict[str, Any]], g: GenerateConfig,
                 how: str = "caption", batch: int = 64) -> tuple[list[np.ndarray], float]:
    """One image per spec (seeded by g.seed and its batch), and the seconds per image."""
    images: list[np.ndarray] = []
    seconds = 0.0
    for start in range(0, len(specs), batch):
        part = specs[start:start + batch]
        out = generate(model, tok, replace(g, seed=g.seed + start),
                       prompts=[prompt_for(s, how) for s in part])
        images += out.images
        seconds += out.seconds
    return images, seconds / max(len(specs), 1)


@torch.no_grad()
def round_trip(model: TextToImage, images: list[np.ndarray], batch: int = 256) -> list[np.ndarray]:
    """Each (H, W, 3) uint8 image through the autoencoder and back (posterior mean): scored like a
    generated image, it is the ceiling of what the denoiser can reach through that autoencoder."""
    model.eval()
    dev = next(model.parameters()).device
    out: list[np.ndarray] = []
    for i in range(0, len(images), batch):
        out += to_pixels(model.to_image(model.to_latent(from_pixels(images[i:i + batch], dev))))
    return out


@torch.no_grad()
def caption_use(model: TextToImage, tok: Tokenizer, images: list[np.ndarray], captions: list[str],
                timestep: int = 500, seed: int = 0, against: list[str] | None = None) -> float:
    """How much the denoiser reads its caption: the error of the clean latent it implies with the
    `against` captions (default: the empty caption) over that with the true ones, on these images
    noised to `timestep` (the same noise for both). 1.0: the difference changes nothing; the
    higher, the more it tells the model. (At one timestep the ratio is the same in noise terms;
    clean latents make it read the same whatever the model's prediction type.)"""
    model.eval()
    dev = next(model.parameters()).device
    z0 = model.to_latent(from_pixels(images, dev))
    noise = torch.randn(z0.shape, generator=torch.Generator().manual_seed(seed)).to(dev)
    t_B = torch.full((len(images),), timestep, device=dev, dtype=torch.long)
    sched = make_scheduler("ddpm", model.cfg)
    z_t = sched.add_noise(z0, noise, t_B)
    context = model.text_cfg.context_length
    err = []
    for caps in (captions, against if against is not None else [""] * len(captions)):
        ids, mask = encode_captions(tok, caps, context)
        out, _ = model(z_t, t_B, ids.to(dev), mask.to(dev))
        x0 = predict_x0(z_t, out.float(), t_B, sched.alphas_cumprod, model.cfg.prediction)
        err.append(float((x0 - z0).pow(2).mean()))
    return err[1] / max(err[0], 1e-12)


SWAPS = ("relation", "colours", "shapes")


def swapped(spec: dict[str, Any], how: str) -> dict[str, Any]:
    """A two-object spec with the same words in another order of meaning: the relation flipped,
    or the two objects' colours or shapes exchanged. What a bag of words cannot tell apart."""
    out = {**spec, "objects": [dict(o) for o in spec["objects"]]}
    a, b = out["objects"]
    if how == "relation":
        out["relation"] = FLIPPED[spec["relation"]]
    elif how in ("colours", "shapes"):
        key = how[:-1]
        a[key], b[key] = b[key], a[key]
    else:
        raise ValueError(f"unknown swap {how!r}: one of {', '.join(SWAPS)}")
    return out


def word_order_use(model: TextToImage, tok: Tokenizer, n: int = 128,
                   timesteps: tuple[int, ...] = (600, 700, 800, 900), seed: int = 4242) -> dict[str, float]:
    """caption_use against the caption with its meaning swapped (SWAPS), on `n` real renders of
    coloured two-object position prompts, averaged over noisy timesteps, where the layout is
    decided. Swapped colours or shapes are the same words in another order: 1.0 there means the
    model reads its caption as a bag of words, and colour attribution and position can follow the
    prompt only by chance. A flipped relation is another word ("above" / "below"): 1.0 there means
    the relation word is not read at all."""
    specs = []
    for i in range(n):
        s = random_spec(np.random.default_rng([seed, i]), "position")
        if not s["objects"][0]["colour"]:  # colours on both objects, so that swapping them says something
            s = random_spec(np.random.default_rng([seed, i]), "colour_attr") | {"category": "position",
                                                                             "relation": s["relation"]}
        specs.append(s)
    images = real_renders(specs, seed, model.cfg.image_size)
    captions = [caption_of(s) for s in specs]
    out = {}
    for how in SWAPS:
        against = [caption_of(swapped(s, how)) for s in specs]
        out[how] = float(np.mean([caption_use(model, tok, images, captions, ts, seed + ts, against) for ts in timesteps]))
    return out
