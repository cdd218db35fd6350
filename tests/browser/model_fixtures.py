"""Tiny random models for the Compare and Image tabs of `gptlab serve` (API and browser tests)."""

from __future__ import annotations

from pathlib import Path

import pytest
from serve_harness import make_model

# Lines for a tokenizer other than the wine models' one.
CAPTION_WORDS = ["a red circle above a blue square", "two green triangles left of a yellow cross",
                 "three small purple circles", "a large orange square below a red triangle"]


def make_compare_models(root: Path) -> Path:
    """base, sft and dpo: three GPTs with one tokenizer (different weights), and "other", a GPT with
    another tokenizer, under `root`."""
    from gptlab.checkpoint import save_model
    from gptlab.data.tokenizer import Tokenizer
    from gptlab.model import GPT
    from gptlab.model.config import tiny

    for seed, name in enumerate(("base", "sft", "dpo")):
        make_model(root / name, seed=seed)
    tok = Tokenizer.train(CAPTION_WORDS * 3)
    cfg = tiny(tok.vocab_size)
    save_model(root / "other", GPT(cfg), tok, {"kind": "gpt", "model": cfg.to_dict()})
    return root


def make_image_model(folder: Path, seed: int = 0) -> Path:
    """A random 32x32 TextToImage whose zero-initialised (adaLN-Zero) layers are made random, so its
    pictures and cross-attention maps depend on the prompt (as tests/test_image.py's)."""
    import torch

    from gptlab.checkpoint import save_model
    from gptlab.data.shapes import ShapesCorpus
    from gptlab.data.tokenizer import Tokenizer
    from gptlab.model.diffusion import ImageConfig, TextToImage, text_config

    tok = Tokenizer.train(ShapesCorpus(0).vocabulary(), vocab_size=100)
    torch.manual_seed(seed)
    cfg = ImageConfig(d_model=32, n_layer=2, n_head=2, d_ff=64, image_size=32, ae_width=8, context_length=64)
    model = TextToImage(text_config(cfg, tok.vocab_size, 16, 1), cfg)
    with torch.no_grad():
        for name, p in model.denoiser.named_parameters():
            if "ada" in name or "patch_out" in name:
                p.normal_(0, 0.05)
    save_model(folder, model, tok, {"kind": "image", "model": model.text_cfg.to_dict(), "image": cfg.to_dict(),
                                    "stage": "diffusion"})
    return folder


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One torch thread for a test module: these models take microseconds a layer, and more threads
    only wait on each other (on a busy machine, spinning for seconds)."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
