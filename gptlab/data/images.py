"""A folder of images with a captions file, and PNG writing: the other corpus `gptlab image train`
reads, next to the built-in shapes.

The captions file is CSV (`file,caption` with that header, or two columns without one) or JSONL
(`{"file": ..., "caption": ...}` per line); paths are relative to the captions file's folder.
Every image is checked before any training starts: a file that is not an image, an empty (0x0)
image or one larger than MAX_SIDE is a one-line error naming the file.
"""

from __future__ import annotations

import csv
import io
import json
import os
import struct
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from gptlab.data.shapes import MAX_SIDE
from gptlab.errors import UserError

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def read_captions(path: str | os.PathLike) -> list[tuple[Path, str]]:
    """(image path, caption) rows of a CSV or JSONL captions file."""
    p = Path(path).expanduser()
    if p.is_dir():
        found = [p / n for n in ("captions.csv", "captions.jsonl") if (p / n).is_file()]
        if not found:
            raise UserError(f"{p} holds no captions.csv or captions.jsonl: add one (file,caption per row)")
        p = found[0]
    if not p.is_file():
        raise UserError(f"captions file {p} not found: pass a CSV or JSONL file of file,caption rows, or --data shapes")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise UserError(f"{p} is not UTF-8 text (byte {e.start}): convert it") from None
    rows: list[tuple[str, str]] = []
    if p.suffix.lower() in (".jsonl", ".json"):
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise UserError(f"{p} line {n} is not JSON ({e.msg}): one {{\"file\", \"caption\"}} object per line") from None
            if not isinstance(obj, dict) or not isinstance(obj.get("file"), str) or not isinstance(obj.get("caption"), str):
                raise UserError(f"{p} line {n} needs string keys \"file\" and \"caption\"")
            rows.append((obj["file"], obj["caption"]))
    else:
        for n, cols in enumerate(csv.reader(io.StringIO(text)), 1):
            if not cols or not "".join(cols).strip():
                continue
            if n == 1 and [c.strip().lower() for c in cols[:2]] == ["file", "caption"]:
                continue
            if len(cols) < 2:
                raise UserError(f"{p} line {n} has one column: each row must be file,caption")
            rows.append((cols[0].strip(), cols[1].strip()))
    if not rows:
        raise UserError(f"{p} lists no images: add file,caption rows")
    return [(p.parent / f, c) for f, c in rows]


def load_image(path: str | os.PathLike, size: int) -> np.ndarray:
    """(size, size, 3) uint8 RGB: the image at `path`, checked, centre-cropped square and resized."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"image {p} not found: fix its row in the captions file")
    with open(p, "rb") as f:
        head = f.read(24)
    if head[:8] == PNG_SIGNATURE and head[12:16] == b"IHDR":  # PIL cannot even open a 0x0 PNG: say what it is
        w, h = struct.unpack(">II", head[16:24])
        check_size(w, h, str(p))
    try:
        with warnings.catch_warnings():  # the size is checked below, before anything is decoded
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            opened = Image.open(p)
        with opened:
            w, h = opened.size  # from the header: nothing decoded yet
            check_size(w, h, str(p))
            side = min(w, h)
            left, top = (w - side) // 2, (h - side) // 2
            square = opened.convert("RGB").crop((left, top, left + side, top + side))
            return np.asarray(square.resize((size, size), Image.Resampling.BOX), dtype=np.uint8).copy()
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, SyntaxError, ValueError) as e:
        # A truncated file, or a format PIL cannot read: never half an image.
        raise UserError(f"{p} is not an image PIL can read ({str(e)[:60]}): remove it from the captions file") from None


def check_size(w: int, h: int, what: str) -> None:
    if w < 1 or h < 1:
        raise UserError(f"{what} is {w}x{h} pixels: an empty image has nothing to learn; remove it")
    if max(w, h) > MAX_SIDE:
        raise UserError(f"{what} is {w}x{h} pixels, larger than {MAX_SIDE} on a side: shrink it first "
                        "(gptlab trains at 32x32 or 64x64)")


def load_folder(path: str | os.PathLike, size: int) -> list[tuple[np.ndarray, str]]:
    """Every (image, caption) of a captions file, all checked and loaded up front."""
    return [(load_image(f, size), caption) for f, caption in read_captions(path)]


def save_png(path: str | os.PathLike, image: np.ndarray) -> None:
    """Write an (H, W, 3) uint8 image as PNG via a temporary file: a crash leaves no half file."""
    p = Path(path)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"save_png wants (H, W, 3) uint8 (got {image.shape} {image.dtype})")
    check_size(image.shape[1], image.shape[0], "the image to save")
    tmp = p.with_name(p.name + ".tmp")
    try:
        Image.fromarray(image, "RGB").save(tmp, format="PNG")
        os.replace(tmp, p)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def grid(images: list[np.ndarray], cols: int = 0, pad: int = 2) -> np.ndarray:
    """Images of one size side by side in rows of `cols` (0 = about square), on a grey ground."""
    if not images:
        raise ValueError("grid of no images")
    n = len(images)
    cols = cols or int(np.ceil(np.sqrt(n)))
    rows = (n + cols - 1) // cols
    h, w, _ = images[0].shape
    out = np.full((rows * (h + pad) + pad, cols * (w + pad) + pad, 3), 96, np.uint8)
    for i, im in enumerate(images):
        r, c = divmod(i, cols)
        out[pad + r * (h + pad):pad + r * (h + pad) + h, pad + c * (w + pad):pad + c * (w + pad) + w] = im
    return out


def overlay_heat(image: np.ndarray, heat: list[float], rows: int, cols: int, strength: float = 0.75) -> np.ndarray:
    """An (H, W, 3) uint8 image with a (rows x cols, row-major) map laid over it in red, scaled from
    the map's own minimum (clear) to its maximum (`strength` red): a DAAM word map as a picture."""
    h = np.asarray(heat, np.float64).reshape(rows, cols)
    span = h.max() - h.min()
    a = (h - h.min()) / span if span > 1e-12 else np.zeros_like(h)
    H, W, _ = image.shape
    a = np.repeat(np.repeat(a, H // rows, axis=0), W // cols, axis=1)[..., None] * strength
    return (image * (1 - a) + np.array([255, 40, 40]) * a).round().clip(0, 255).astype(np.uint8)


def upscale(image: np.ndarray, factor: int) -> np.ndarray:
    """Nearest-neighbour enlargement: a 32x32 sample is easier to see at 4x."""
    return np.repeat(np.repeat(image, factor, axis=0), factor, axis=1)


def png_data_url(image: np.ndarray) -> str:
    """An (H, W, 3) uint8 image as a data:image/png;base64 URL, for HTML and JSON traces."""
    import base64

    buf = io.BytesIO()
    Image.fromarray(image, "RGB").save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")
