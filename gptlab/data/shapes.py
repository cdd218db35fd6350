"""The built-in captioned-image corpus: coloured shapes on a black canvas, captions from a grammar.

Every example is a pure function of (seed, index): `ShapesCorpus(seed)[i]` is the same image,
caption and ground truth on every machine, so a training step's batch and a held-out prompt set
need no files. The captions follow GenEval's six categories (Ghosh et al. 2023), which is what
`gptlab image eval` scores a model on:

    single_object   "a large square"
    colours         "a small red circle"
    two_objects     "a circle and a triangle"
    counting        "three blue crosses"
    position        "a red circle above a blue square"
    colour_attr     "a yellow triangle and a purple cross"

Each example keeps its ground truth: the spec the caption was written from, and every shape drawn
(kind, colour, size word, centre, radius). `judge(spec, objects)` decides whether a list of objects
follows a spec; applied to the ground truth it is the reference, applied to the shapes `segment`
finds in pixels (plus a shape classifier, infer/geneval.py) it is the checker.

Shapes never touch (a gap of >= 2 pixels), so each one is one connected component of the
non-background pixels. Torch-free: the renderer and the segmentation are numpy.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np

SHAPES = ("circle", "square", "triangle", "cross")
PLURALS = {"circle": "circles", "square": "squares", "triangle": "triangles", "cross": "crosses"}
# Saturated and far apart in RGB, so the nearest palette colour of a blurred shape is still its own.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (225, 35, 35), "green": (40, 190, 50), "blue": (40, 80, 240),
    "yellow": (235, 220, 40), "purple": (165, 50, 215), "cyan": (40, 215, 225),
}
SIZES = ("small", "large")
RELATIONS = ("above", "below", "left of", "right of")
NUMBERS = {2: "two", 3: "three", 4: "four"}
CATEGORIES = ("single_object", "two_objects", "counting", "colours", "position", "colour_attr")
# Radii (half the extent) at 32x32, in pixels; scaled with the canvas.
RADII = {"small": (3.0, 4.0), "large": (5.5, 7.0)}
# A pixel is foreground when its brightest channel is above this (the canvas is black).
FOREGROUND = 70
MIN_AREA = 4  # components smaller than this are specks of noise, not shapes
MAX_SIDE = 4096  # the largest image side gptlab reads or writes


@dataclass
class Thing:
    """One shape: drawn (ground truth) or found in pixels."""
    shape: str
    colour: str
    x: float            # centre, pixels from the left
    y: float            # centre, pixels from the top
    r: float = 0.0      # half the extent
    size: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"shape": self.shape, "colour": self.colour, "x": round(self.x, 2), "y": round(self.y, 2),
                "r": round(self.r, 2), "size": self.size}


@dataclass
class Example:
    image: np.ndarray            # (H, W, 3) uint8
    caption: str
    spec: dict[str, Any]         # what the caption asks for (see `judge`)
    things: list[Thing] = field(default_factory=list)  # what was drawn


# -- drawing ------------------------------------------------------------------------------------
def shape_mask(shape: str, cx: float, cy: float, r: float, size: int) -> np.ndarray:
    """(size, size) bool: the pixels whose centres fall inside the shape."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64) + 0.5
    dx, dy = xx - cx, yy - cy
    if shape == "circle":
        return dx * dx + dy * dy <= r * r
    if shape == "square":
        s = r * 0.85  # about the circle's area, so size words mean the same for every shape
        return (np.abs(dx) <= s) & (np.abs(dy) <= s)
    if shape == "triangle":  # pointing up: the half-width grows from 0 at the top to r at the bottom
        t = (dy + r) / (2 * r)
        return (t >= 0) & (t <= 1) & (np.abs(dx) <= r * t + 0.35)
    if shape == "cross":
        w = max(r / 4, 0.8)  # thin arms: a plump cross, blurred, reads as a circle
        return ((np.abs(dx) <= w) & (np.abs(dy) <= r)) | ((np.abs(dy) <= w) & (np.abs(dx) <= r))
    raise ValueError(f"unknown shape {shape!r}")


def draw(things: list[Thing], size: int = 32) -> np.ndarray:
    img = np.zeros((size, size, 3), np.uint8)
    for t in things:
        img[shape_mask(t.shape, t.x, t.y, t.r, size)] = COLOURS[t.colour]
    return img


def _apart(a: Thing, b: Thing, gap: float = 2.0) -> bool:
    return abs(a.x - b.x) > a.r + b.r + gap or abs(a.y - b.y) > a.r + b.r + gap


def holds(relation: str, a: Thing, b: Thing, margin: float = 2.0, ratio: float = 1.0) -> bool:
    """`a` is `relation` `b`: the centres differ along the relation's axis by more than `margin`
    pixels and by more than `ratio` times across it (y grows downwards)."""
    dx, dy = a.x - b.x, a.y - b.y
    along, across = {"above": (-dy, dx), "below": (dy, dx), "left of": (-dx, dy), "right of": (dx, dy)}[relation]
    return along > margin and along > ratio * abs(across)


# -- the grammar --------------------------------------------------------------------------------
def _noun(shape: str, colour: str | None, size: str | None, count: int = 1) -> str:
    words = [w for w in (size, colour) if w]
    noun = PLURALS[shape] if count > 1 else shape
    head = NUMBERS[count] if count > 1 else "a"
    return " ".join([head, *words, noun])


def caption_of(spec: dict[str, Any]) -> str:
    objs = spec["objects"]
    first = _noun(objs[0]["shape"], objs[0].get("colour"), objs[0].get("size"), objs[0].get("count", 1))
    if len(objs) == 1:
        return first
    second = _noun(objs[1]["shape"], objs[1].get("colour"), objs[1].get("size"))
    return f"{first} {spec['relation']} {second}" if spec.get("relation") else f"{first} and {second}"


FLIPPED = {"above": "below", "below": "above", "left of": "right of", "right of": "left of"}


def hard_negatives(caption: str) -> list[str]:
    """Captions one edit away in meaning that a bag of words reads alike: the relation flipped
    ("above" -> "below"), and the two objects' colours exchanged (the same words in another
    order). Empty when the caption has neither (one object, or two without two colours)."""
    out = []
    for rel in sorted(FLIPPED, key=len, reverse=True):  # "left of" before a bare word could match it
        if f" {rel} " in caption:
            out.append(caption.replace(f" {rel} ", f" {FLIPPED[rel]} ", 1))
            break
    words = caption.split()
    at = [i for i, w in enumerate(words) if w in COLOURS]
    if len(at) == 2 and words[at[0]] != words[at[1]]:
        words[at[0]], words[at[1]] = words[at[1]], words[at[0]]
        out.append(" ".join(words))
    return out


# What each word of a caption says about the scene, for a caption encoder pretrained to read the
# grammar (`gptlab image train --text-pretrain`): every word of an object's noun phrase is labelled
# with that object's colour, shape, size, count and its side of the relation, so an encoder that
# gets them right has put "the red circle, on top" into the vectors the denoiser attends to, which
# a bag of words cannot (the same words, another order, other labels).
ANY = "any"  # the caption leaves it open
SIDES = {"above": ("top", "bottom"), "below": ("bottom", "top"), "left of": ("left", "right"),
         "right of": ("right", "left")}
PARSE_FIELDS: dict[str, tuple[str, ...]] = {
    "colour": (*COLOURS, ANY), "shape": SHAPES, "size": (*SIZES, ANY), "count": ("1", *map(str, NUMBERS)),
    "side": (ANY, "top", "bottom", "left", "right"),
}
_SINGULAR = {v: k for k, v in PLURALS.items()}
_COUNTS = {"a": 1, **{w: n for n, w in NUMBERS.items()}}


def _phrase(words: list[str], i: int) -> tuple[dict[str, Any], int] | None:
    """The noun phrase at words[i:] ("a", "three", then a size, a colour, the noun): (object, next i)."""
    if i >= len(words) or words[i] not in _COUNTS:
        return None
    count, i = _COUNTS[words[i]], i + 1
    size = words[i] if i < len(words) and words[i] in SIZES else None
    i += size is not None
    colour = words[i] if i < len(words) and words[i] in COLOURS else None
    i += colour is not None
    if i >= len(words):
        return None
    noun = words[i]
    shape = noun if count == 1 and noun in SHAPES else _SINGULAR.get(noun) if count > 1 else None
    if shape is None:
        return None
    return {"shape": shape, "colour": colour, "size": size, "count": count}, i + 1


def parse_caption(caption: str) -> dict[str, Any] | None:
    """The spec a caption of the grammar was written from (objects and relation, no category), or
    None when it is not in the grammar. `caption_of(parse_caption(c)) == c` for every such caption."""
    words = caption.split()
    first = _phrase(words, 0)
    if first is None:
        return None
    obj1, i = first
    if i == len(words):
        return {"objects": [obj1], "relation": None}
    if obj1["count"] != 1:
        return None
    rel = None
    for r in RELATIONS:
        if words[i:i + len(r.split())] == r.split():
            rel, i = r, i + len(r.split())
            break
    else:
        if words[i] != "and":
            return None
        i += 1
    second = _phrase(words, i)
    if second is None or second[1] != len(words) or second[0]["count"] != 1:
        return None
    return {"objects": [obj1, second[0]], "relation": rel}


def word_labels(caption: str) -> list[tuple[int, ...] | None] | None:
    """Per whitespace word of a caption of the grammar, its object's label index in each of
    PARSE_FIELDS (in order), or None for a word outside the noun phrases ("and", "above", "left",
    "of"); None when the caption is not in the grammar."""
    spec = parse_caption(caption)
    if spec is None:
        return None
    sides = SIDES[spec["relation"]] if spec["relation"] else (ANY, ANY)
    out: list[tuple[int, ...] | None] = []
    for k, o in enumerate(spec["objects"]):
        values = {"colour": o["colour"] or ANY, "shape": o["shape"], "size": o["size"] or ANY,
                  "count": str(o["count"]), "side": sides[k]}
        label = tuple(PARSE_FIELDS[f].index(values[f]) for f in PARSE_FIELDS)
        n_words = len(_noun(o["shape"], o["colour"], o["size"], o["count"]).split())
        if k == 1:
            out += [None] * len((spec["relation"] or "and").split())
        out += [label] * n_words
    return out


def random_spec(rng: np.random.Generator, category: str) -> dict[str, Any]:
    """A caption's meaning in one of the CATEGORIES: objects (shape, colour or None, size or None,
    count) and, for position, the relation of the first object to the second."""
    def pick(seq):
        return seq[int(rng.integers(len(seq)))]

    def maybe(seq, p=0.5):
        return pick(seq) if rng.random() < p else None

    s1, s2 = (SHAPES[i] for i in rng.permutation(len(SHAPES))[:2])
    c1, c2 = (list(COLOURS)[i] for i in rng.permutation(len(COLOURS))[:2])
    if category == "single_object":
        objs = [{"shape": s1, "colour": None, "size": maybe(SIZES)}]
    elif category == "colours":
        objs = [{"shape": s1, "colour": c1, "size": maybe(SIZES)}]
    elif category == "counting":
        objs = [{"shape": s1, "colour": maybe(list(COLOURS)), "size": None, "count": pick(list(NUMBERS))}]
    elif category == "two_objects":
        objs = [{"shape": s1, "colour": None, "size": None}, {"shape": s2, "colour": None, "size": None}]
    elif category == "colour_attr":
        objs = [{"shape": s1, "colour": c1, "size": None}, {"shape": s2, "colour": c2, "size": None}]
    elif category == "position":
        with_colour = rng.random() < 0.5
        objs = [{"shape": s1, "colour": c1 if with_colour else None, "size": None},
                {"shape": s2, "colour": c2 if with_colour else None, "size": None}]
    else:
        raise ValueError(f"unknown category {category!r}")
    for o in objs:
        o.setdefault("count", 1)
    return {"category": category, "objects": objs, "relation": pick(RELATIONS) if category == "position" else None}


def _place(rng: np.random.Generator, wanted: list[tuple[str, str, str]], size: int,
           relation: str | None) -> list[Thing] | None:
    """Non-touching positions for (shape, colour, size word) in order; None when the canvas is too full."""
    scale = size / 32
    things: list[Thing] = []
    for shape, colour, word in wanted:
        lo, hi = RADII[word]
        r = float(rng.uniform(lo, hi)) * scale
        for _ in range(60):
            x, y = (float(v) for v in rng.uniform(r + 1, size - r - 1, 2))
            t = Thing(shape, colour, x, y, r, word)
            if not all(_apart(t, o) for o in things):
                continue
            # A relation is drawn with room to spare: the judge asks for 2 px and along > across.
            if relation and things and not holds(relation, things[0], t, margin=5 * scale, ratio=1.5):
                continue
            things.append(t)
            break
        else:
            return None
    return things


def _things_for(rng: np.random.Generator, spec: dict[str, Any], size: int) -> list[Thing]:
    wanted = []
    for o in spec["objects"]:
        for _ in range(o.get("count", 1)):
            colour = o.get("colour") or list(COLOURS)[int(rng.integers(len(COLOURS)))]
            word = o.get("size") or ("small" if o.get("count", 1) > 2 else SIZES[int(rng.integers(2))])
            wanted.append((o["shape"], colour, word))
    for _ in range(200):
        found = _place(rng, wanted, size, spec.get("relation"))
        if found is not None:
            return found
    raise RuntimeError(f"could not place {wanted} on a {size}x{size} canvas")


def render(seed: int, index: int, size: int = 32, category: str | None = None) -> Example:
    """Example `index` of the corpus of `seed`: deterministic, independent of every other index."""
    rng = np.random.default_rng([seed, index, size])
    cat = category or CATEGORIES[int(rng.integers(len(CATEGORIES)))]
    spec = random_spec(rng, cat)
    things = _things_for(rng, spec, size)
    return Example(draw(things, size), caption_of(spec), spec, things)


def render_spec(spec: dict[str, Any], seed: int, size: int = 32) -> Example:
    """A real render of a given spec: the ceiling a generator is compared with."""
    rng = np.random.default_rng([seed, size, 7])
    things = _things_for(rng, spec, size)
    return Example(draw(things, size), caption_of(spec), spec, things)


class ShapesCorpus:
    """The built-in corpus of `seed`: example i is `render(seed, i)`; as long as asked (`length`)."""

    def __init__(self, seed: int = 0, size: int = 32, length: int = 1_000_000):
        if size not in (32, 64):
            raise ValueError(f"the shapes corpus draws 32x32 or 64x64 canvases (got {size})")
        self.seed, self.size, self.length = seed, size, length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> Example:
        return render(self.seed, int(i), self.size)

    def vocabulary(self) -> list[str]:
        """Every caption word the grammar can write (a tokenizer trained on this knows them all)."""
        words = ["a", "and", *SHAPES, *PLURALS.values(), *COLOURS, *SIZES, *NUMBERS.values()]
        words += [w for r in RELATIONS for w in r.split()]
        return sorted(set(words))


def eval_specs(n_per_category: int, seed: int = 12345) -> list[dict[str, Any]]:
    """A held-out prompt set: n specs per category (from a stream the training corpus never uses)."""
    out = []
    for ci, cat in enumerate(CATEGORIES):
        for i in range(n_per_category):
            out.append(random_spec(np.random.default_rng([seed, ci, i, 99]), cat))
    return out


# -- reading pixels back -------------------------------------------------------------------------
@dataclass
class Component:
    pixels: np.ndarray           # (N, 2) int rows, cols
    mean_rgb: np.ndarray         # (3,) float, of the brightest half of its pixels
    x: float                     # centre of its bounding box (a triangle's centroid sits low)
    y: float
    r: float                     # half the larger side of its bounding box

    def crop(self, side: int = 12) -> np.ndarray:
        """(side, side) float mask: the component in a square around its bounding box, so the shape
        classifier sees every size at one scale and aspect ratio is kept."""
        rows, cols = self.pixels[:, 0], self.pixels[:, 1]
        r0, r1, c0, c1 = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
        ext = max(r1 - r0, c1 - c0)
        cy, cx = (r0 + r1) / 2, (c0 + c1) / 2
        grid = np.zeros((ext + 2, ext + 2), np.float32)
        grid[(rows - cy + (ext + 2) / 2).astype(int), (cols - cx + (ext + 2) / 2).astype(int)] = 1.0
        idx = ((np.arange(side) + 0.5) * (ext + 2) / side).astype(int)
        return grid[np.ix_(idx, idx)]


def segment(image: np.ndarray, min_area: int = MIN_AREA) -> list[Component]:
    """The connected components (4-neighbour) of the non-background pixels of an (H, W, 3) uint8 image."""
    fg = image.max(axis=2) > FOREGROUND
    seen = np.zeros_like(fg)
    h, w = fg.shape
    out = []
    for r0, c0 in zip(*np.nonzero(fg)):
        if seen[r0, c0]:
            continue
        seen[r0, c0] = True
        queue, pix = deque([(r0, c0)]), []
        while queue:
            r, c = queue.popleft()
            pix.append((r, c))
            for rr, cc in ((r - 1, c), (r + 1, c), (r, c - 1), (r, c + 1)):
                if 0 <= rr < h and 0 <= cc < w and fg[rr, cc] and not seen[rr, cc]:
                    seen[rr, cc] = True
                    queue.append((rr, cc))
        if len(pix) < min_area:
            continue
        p = np.array(pix)
        rgb = image[p[:, 0], p[:, 1]].astype(np.float64)
        # The edges of a blurred shape are darker: its colour is that of its brighter half.
        bright = rgb[rgb.max(axis=1) >= np.median(rgb.max(axis=1))]
        (r0, c0), (r1, c1) = p.min(axis=0), p.max(axis=0) + 1
        out.append(Component(p, bright.mean(axis=0), (c0 + c1) / 2, (r0 + r1) / 2, max(r1 - r0, c1 - c0) / 2))
    return out


def nearest_colour(rgb: np.ndarray) -> str:
    names = list(COLOURS)
    d = [float(((rgb - np.array(COLOURS[n])) ** 2).sum()) for n in names]
    return names[int(np.argmin(d))]


def judge(spec: dict[str, Any], things: list[Thing]) -> bool:
    """Whether shapes `things` follow `spec`, by GenEval's rules per category: the named shapes are
    there (with the colours named), counts are exact, a relation holds between some pair."""
    def match(o: dict[str, Any]) -> list[Thing]:
        return [t for t in things if t.shape == o["shape"] and (not o.get("colour") or t.colour == o["colour"])]

    objs = spec["objects"]
    if spec["category"] == "counting":
        return len(match(objs[0])) == objs[0]["count"]
    if spec["category"] == "position":
        return any(holds(spec["relation"], a, b) for a in match(objs[0]) for b in match(objs[1]))
    return all(match(o) for o in objs)


# -- the checker's training data ------------------------------------------------------------------
CROP = 12  # side of the mask crops the shape classifier reads


def features(c: Component, size: int) -> np.ndarray:
    """(2,) what the crop alone does not say: how much of its box the shape fills, and its size."""
    return np.array([len(c.pixels) / (2 * c.r) ** 2, 2 * c.r / size], np.float32)


def degrade(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A render made to look generated: blurred by a random amount, with pixel noise."""
    x = image.astype(np.float32)
    a = float(rng.uniform(0, 0.6))
    if a > 0:
        p = np.pad(x, ((1, 1), (1, 1), (0, 0)), mode="edge")
        box = sum(p[1 + dy:1 + dy + x.shape[0], 1 + dx:1 + dx + x.shape[1]] for dy in (-1, 0, 1) for dx in (-1, 0, 1)) / 9
        x = (1 - a) * x + a * box
    x += rng.normal(0, float(rng.uniform(0, 12)), x.shape)
    return np.clip(x, 0, 255).astype(np.uint8)


def shape_examples(seed: int, n: int, size: int = 32) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """n single shapes of every kind, colour and a continuum of sizes, some degraded, as the shape
    classifier sees them: crops (n, CROP, CROP), features (n, 2) and labels (n,) into SHAPES."""
    rng = np.random.default_rng([seed, size, 31])
    crops: list[np.ndarray] = []
    feats: list[np.ndarray] = []
    labels: list[int] = []
    while len(labels) < n:
        k = int(rng.integers(len(SHAPES)))
        r = float(rng.uniform(2.8, 7.5)) * size / 32
        x, y = (float(v) for v in rng.uniform(r + 1, size - r - 1, 2))
        img = draw([Thing(SHAPES[k], list(COLOURS)[int(rng.integers(len(COLOURS)))], x, y, r)], size)
        if rng.random() < 0.5:
            img = degrade(img, rng)
        comps = segment(img)
        if len(comps) != 1:
            continue
        crops.append(comps[0].crop(CROP))
        feats.append(features(comps[0], size))
        labels.append(k)
    return np.stack(crops), np.stack(feats), np.array(labels, np.int64)
