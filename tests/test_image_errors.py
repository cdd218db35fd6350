"""`gptlab image` meets bad input with one line naming the problem and the fix, exit status 2,
no traceback, nothing half-written."""

from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest
from conftest import one_line_error
from PIL import Image

from gptlab.checkpoint import save_model
from gptlab.cli import main
from gptlab.data.shapes import ShapesCorpus
from gptlab.data.tokenizer import Tokenizer
from gptlab.errors import UserError
from gptlab.infer.diffuse import GenerateConfig, generate
from gptlab.model.diffusion import ImageConfig, TextToImage, text_config

TRAIN = ["--d-model", "32", "--n-layer", "1", "--n-head", "2", "--d-ff", "64", "--ae-width", "8", "--ae-steps", "1",
         "--max-steps", "1", "--batch-size", "2", "--no-progress", "--no-tensorboard", "--threads", "1"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    tok = Tokenizer.train(ShapesCorpus(0).vocabulary(), vocab_size=100)
    cfg = ImageConfig(d_model=32, n_layer=1, n_head=2, d_ff=64, ae_width=8)
    model = TextToImage(text_config(cfg, tok.vocab_size, 8, 1), cfg)
    out = tmp_path_factory.mktemp("img") / "m"
    save_model(out, model, tok, {"kind": "image", "model": model.text_cfg.to_dict(), "image": cfg.to_dict(),
                                 "stage": "diffusion"})
    return out


def _png_header_only(path, w, h):
    """A PNG whose header says w x h (PIL cannot write a 0x0 one)."""
    def chunk(tag, data):
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b""))


def _folder(tmp_path, files: dict, caption: str = "a red circle"):
    for name, write in files.items():
        write(tmp_path / name)
    (tmp_path / "captions.csv").write_text("file,caption\n" + "".join(f"{n},{caption}\n" for n in files))
    return str(tmp_path / "captions.csv")


def _good(p):
    Image.fromarray(ShapesCorpus(0)[0].image).save(p)


def test_a_folder_holding_a_non_image(tmp_path, capsys):
    data = _folder(tmp_path, {"a.png": _good, "notes.png": lambda p: p.write_text("not a picture")})
    one_line_error(capsys, ["image", "train", "--data", data, "--out", str(tmp_path / "m"), *TRAIN],
                    "notes.png", "not an image")
    assert not (tmp_path / "m").exists() or not any((tmp_path / "m").iterdir())


def test_a_0x0_image(tmp_path, capsys):
    data = _folder(tmp_path, {"a.png": _good, "empty.png": lambda p: _png_header_only(p, 0, 0)})
    one_line_error(capsys, ["image", "train", "--data", data, "--out", str(tmp_path / "m"), *TRAIN],
                    "empty.png", "0x0")


def test_a_10000x10000_image(tmp_path, capsys):
    data = _folder(tmp_path, {"a.png": _good, "huge.png": lambda p: Image.new("1", (10000, 10000)).save(p)})
    one_line_error(capsys, ["image", "train", "--data", data, "--out", str(tmp_path / "m"), *TRAIN],
                    "huge.png", "10000x10000", "shrink")


def test_captions_longer_than_the_context(tmp_path, capsys):
    data = _folder(tmp_path, {"a.png": _good, "b.png": _good}, caption="a red circle above a blue square")
    one_line_error(capsys, ["image", "train", "--data", data, "--out", str(tmp_path / "m"), "--text-context", "4", *TRAIN],
                    "tokens", "context", "--text-context")


def test_contrast_on_captions_without_a_hard_negative(tmp_path, capsys):
    data = _folder(tmp_path, {"a.png": _good, "b.png": _good}, caption="a red circle")
    one_line_error(capsys, ["image", "train", "--data", data, "--out", str(tmp_path / "m"), "--contrast", "1", *TRAIN],
                    "--contrast", "relation", "leave --contrast at 0")
    assert not (tmp_path / "m" / "autoencoder").exists()  # refused before stage 1 trains


def test_a_prompt_longer_than_the_context(model_dir, tmp_path, capsys):
    one_line_error(capsys, ["image", "generate", str(model_dir), "a red circle " * 4, "--out", str(tmp_path / "x.png")],
                    "context", "shorten")
    assert not (tmp_path / "x.png").exists()


def test_negative_guidance(model_dir, tmp_path, capsys):
    one_line_error(capsys, ["image", "generate", str(model_dir), "a circle", "--guidance", "-1",
                             "--out", str(tmp_path / "x.png")], "--guidance", ">= 0")
    one_line_error(capsys, ["image", "eval", str(model_dir), "--guidance", "1", "-0.5"], "--guidance", ">= 0")


def test_zero_steps(model_dir, tmp_path, capsys):
    one_line_error(capsys, ["image", "generate", str(model_dir), "a circle", "--steps", "0",
                             "--out", str(tmp_path / "x.png")], "--steps", ">= 1")
    one_line_error(capsys, ["image", "explain", str(model_dir), "a circle", "--steps", "0"], "--steps")


def test_the_python_api_refuses_the_same(model_dir):
    from gptlab.checkpoint import load_checkpoint
    model, tok, _ = load_checkpoint(model_dir)
    for bad, words in (({"guidance": -1.0}, "guidance"), ({"steps": 0}, "steps")):
        with pytest.raises(UserError, match=words):
            generate(model, tok, GenerateConfig(prompt="a circle", **bad))


def test_a_mask_without_an_input_image_and_a_wrong_model(model_dir, tmp_path, capsys):
    mask = tmp_path / "m.png"
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(mask)
    one_line_error(capsys, ["image", "generate", str(model_dir), "a circle", "--mask", str(mask)], "--mask needs --init")
    one_line_error(capsys, ["image", "generate", str(tmp_path / "nothing"), "a circle"], "does not exist")


def test_help_of_every_image_command(capsys):
    for action in ("train", "generate", "explain", "eval"):
        with pytest.raises(SystemExit) as e:
            main(["image", action, "--help"])
        assert e.value.code == 0
    assert "--guidance" in capsys.readouterr().out
