"""`gptlab image train | generate | explain | eval`: text to image by latent diffusion.

train: the built-in captioned shapes (or a captions file of your images) -> an autoencoder, then a
denoiser reading the caption through cross-attention. generate: prompt, negative prompt, guidance,
steps, sampler, seed; image-to-image (--init, --strength) and inpainting (--init, --mask); a grid
PNG. explain: each prompt word's cross-attention map (DAAM) and the denoising filmstrip, in the
terminal and as HTML / a gptlab-trace JSON. eval: mini-GenEval on the built-in grammar.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import asdict, dataclass
from typing import Any

from gptlab.cli.common import OWN_DEFAULT, Slot, add_device_arg, add_positionals, resolve_device, show_trace
from gptlab.cli.options import Section, add_options, read_options
from gptlab.errors import UserError
from gptlab.settings import setting
from gptlab.training.config import own_fields

MODEL_HELP = "model folder from `gptlab image train`"


@dataclass
class OutputOptions:
    out: str = setting("image.png", "PNG file to write (several images: one grid)")
    init: str = setting("", "image-to-image: start from this image (PNG/JPEG; resized to the model's size)")
    mask: str = setting("", "inpainting: a PNG the size of --init, white where to draw anew (needs --init)")
    zoom: int = setting(4, "enlarge the PNG this many times (nearest neighbour: 32x32 is small)", min=1, max=32)
    cols: int = setting(0, "images per row of the grid (0 = about square)", min=0, max=256)


@dataclass
class EvalOptions:
    per_category: int = setting(20, "prompts per GenEval category (6 categories)", min=1, max=10000)
    guidance: list[float] = setting([1.0, 3.0], "guidance scales to score (one row each)", min=0, max=100)
    prompts: str = setting("caption", "what the model is asked: the caption, or (a baseline) its first noun only", choices=("caption", "first-noun"))
    eval_seed: int = setting(12345, "seed of the held-out prompt set", min=0)
    json_out: str = setting("", "write the scores here as JSON")
    threads: int = setting(0, "CPU threads for torch (0 = torch's default: all cores), as training's --threads", min=0)


def _train_sections() -> list[Section]:
    from gptlab.model.diffusion import IMAGE_PRESETS, ImageConfig
    from gptlab.training.tasks.diffusion import ImageTrainConfig
    return [Section("train", ImageTrainConfig, "training", first=own_fields(ImageTrainConfig)),
            Section("model", ImageConfig, "model (flags not given come from --preset; defaults shown are the small preset's)",
                    IMAGE_PRESETS["small"](),
                    # What a DiT block does not read: it is pre-norm with its own (modulated) norms.
                    skip=("vocab_size", "norm", "ln_eps", "tie_embeddings", "head_bias", "final_norm", "parse_labels"))]


def _gen_section(title: str = "generation", skip: tuple[str, ...] = ()) -> Section:
    from gptlab.infer.diffuse import GenerateConfig
    return Section("gen", GenerateConfig, title, skip=("prompt", "filmstrip", *skip))


def register(sub: Any) -> None:
    p = sub.add_parser("image", help="text to image: train a small latent diffusion model, generate, explain, score",
                       description="Latent diffusion at laptop size: a KL autoencoder, gptlab's text encoder and a "
                                   "denoiser over latent patches with cross-attention to the caption; classifier-free "
                                   "guidance; mini-GenEval on built-in captioned shapes.")
    ss = p.add_subparsers(dest="action", metavar="ACTION")
    p.set_defaults(func=lambda a: (p.print_help(), 2)[1])

    tr = ss.add_parser("train", help="train on the built-in captioned shapes or a captions file",
                       description="Stage 1 trains the autoencoder (OUT/autoencoder), stage 2 the caption encoder "
                                   "and denoiser (OUT). --data shapes: coloured shapes with captions such as 'two red "
                                   "circles' or 'a blue square left of a green cross'. --data FILE: CSV or JSONL of "
                                   "file,caption next to the images.")
    add_options(tr, _train_sections())
    tr.set_defaults(func=run_train)

    g = ss.add_parser("generate", help="draw images for a prompt",
                      description="Example: gptlab image generate runs/image \"a red circle above a blue square\" "
                                  "--guidance 3 --n 8 --out grid.png")
    _model_and_prompt(g)
    add_options(g, [_gen_section(), Section("output", OutputOptions, "output")], config_file=False)
    g.set_defaults(func=run_generate)

    e = ss.add_parser("explain", help="each prompt word's cross-attention map (DAAM) and the denoising filmstrip",
                      description="Generate one image and show, for each word of the prompt, where the denoiser's "
                                  "cross-attention to it fell (summed over layers, heads and steps), and the clean "
                                  "image it predicted along the way.")
    _model_and_prompt(e)
    add_options(e, [_gen_section()], config_file=False)
    e.add_argument("--frames", type=int, default=6, help="filmstrip frames (default: 6)")
    e.add_argument("--html", metavar="FILE", help="write the HTML view here")
    e.add_argument("--json", metavar="FILE", help="write the trace (gptlab-trace JSON, kind image) here")
    e.set_defaults(func=run_explain)

    ev = ss.add_parser("eval", help="mini-GenEval: how often the images follow their prompts, per category",
                       description="Generate an image per held-out prompt of the built-in grammar and decide from "
                                   "its pixels alone (segmented shapes, a shape classifier trained on the renderer, "
                                   "colours and positions measured) whether it follows the prompt, per GenEval "
                                   "category; also an FID-style distance to real renders on the checker's features.")
    add_positionals(ev, model_help=MODEL_HELP)
    add_device_arg(ev)
    add_options(ev, [_gen_section("sampling", skip=("guidance", "n", "strength", "negative_prompt")),
                     Section("eval", EvalOptions, "evaluation")], config_file=False)
    ev.set_defaults(func=run_eval)


def _model_and_prompt(p: argparse.ArgumentParser) -> None:
    p.add_argument("-p", "--prompt", dest="prompt_opt", metavar="PROMPT", default=None,
                   help="the PROMPT as a flag" + OWN_DEFAULT)
    add_positionals(p, Slot("prompt", "PROMPT", 1, alias="prompt_opt", help="what to draw"), model_help=MODEL_HELP)
    add_device_arg(p)


def _load(args: argparse.Namespace):
    from gptlab.checkpoint import load_checkpoint
    model, tok, cfg = load_checkpoint(args.model, resolve_device(args.device))
    if cfg["kind"] != "image":
        raise UserError(f"{args.model} holds a {cfg['kind']} model: `gptlab image` needs one from `gptlab image train`")
    return model, tok, cfg


def run_train(args: argparse.Namespace) -> int:
    from gptlab.model.diffusion import IMAGE_PRESETS
    from gptlab.training.tasks.diffusion import ImageTrainConfig, train

    def base(values: dict[str, dict[str, Any]]) -> dict[str, Any]:
        preset = values["train"].get("preset", ImageTrainConfig().preset)
        if preset not in IMAGE_PRESETS:
            raise UserError(f"unknown preset {preset!r}: choose one of {', '.join(IMAGE_PRESETS)}")
        return {"train": ImageTrainConfig(), "model": IMAGE_PRESETS[preset]()}

    objs = read_options(args, base, "image train")
    t, mcfg = objs["train"], objs["model"]
    if mcfg.image_size % (2**mcfg.downsample * mcfg.patch) == 0:  # else validate names the problem
        mcfg.context_length = max(mcfg.context_length, mcfg.tokens)  # a larger --image-size needs more tokens
    r = train(t, mcfg)
    m = r.metrics
    print(f"trained {sum(p.numel() for p in r.model.parameters()):,} parameters; denoiser {m['steps']} steps in "
          f"{m['train_seconds']}s; validation noise-prediction loss {m.get('val_loss', float('nan')):.4f}; saved to {t.out}")
    return 130 if r.interrupted else 0


def _read_mask(path: str, size: int):
    from gptlab.data.images import load_image
    return load_image(path, size).max(axis=2) >= 128  # white = draw anew


def run_generate(args: argparse.Namespace) -> int:
    from gptlab.data.images import grid, load_image, save_png, upscale
    from gptlab.infer.diffuse import GenerateConfig, generate

    objs = read_options(args, lambda v: {"gen": GenerateConfig(), "output": OutputOptions()}, "image generate")
    g, o = objs["gen"], objs["output"]
    g.prompt = args.prompt
    if o.mask and not o.init:
        raise UserError("--mask needs --init: inpainting redraws part of an image you give")
    if not o.out.lower().endswith(".png"):
        raise UserError(f"--out {o.out}: gptlab writes PNG files; name it *.png")
    model, tok, _ = _load(args)
    size = model.cfg.image_size
    init = load_image(o.init, size) if o.init else None
    mask = _read_mask(o.mask, size) if o.mask else None
    out = generate(model, tok, g, init_image=init, mask=mask)
    picture = out.images[0] if len(out.images) == 1 else grid(out.images, o.cols)
    save_png(o.out, upscale(picture, o.zoom))
    print(f"wrote {o.out}: {len(out.images)} image(s) of {size}x{size} in {out.seconds:.2f}s "
          f"({g.sampler}, {g.steps} steps, guidance {g.guidance}, seed {g.seed})")
    return 0


def run_explain(args: argparse.Namespace) -> int:
    from gptlab.explain.capture_image import explain_image
    from gptlab.infer.diffuse import GenerateConfig

    if not 0 <= args.frames <= 100:
        raise UserError(f"--frames {args.frames}: use 0..100")
    g = read_options(args, lambda v: {"gen": GenerateConfig()}, "image explain")["gen"]
    g.prompt = args.prompt
    model, tok, _ = _load(args)
    trace, _ = explain_image(model, tok, g, frames=args.frames, path=str(args.model))
    return show_trace(trace.to_terminal(), trace, args)


def run_eval(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from gptlab.data.shapes import CATEGORIES, eval_specs
    from gptlab.infer.diffuse import GenerateConfig
    from gptlab.infer.geneval import frechet_distance, generate_for, image_features, real_renders, score, word_order_use
    from gptlab.training.tasks.checker import CheckerConfig, train_checker

    objs = read_options(args, lambda v: {"gen": GenerateConfig(), "eval": EvalOptions()}, "image eval")
    g, ev = objs["gen"], objs["eval"]
    if ev.threads:
        import torch
        torch.set_num_threads(ev.threads)
    model, tok, _ = _load(args)
    specs = eval_specs(ev.per_category, ev.eval_seed)
    size = model.cfg.image_size
    checker = train_checker(CheckerConfig(size=size))
    real = real_renders(specs, ev.eval_seed, size)
    real_feats = image_features(checker, real)
    rows: list[dict[str, Any]] = [{"name": "real renders (ceiling)", **score(checker, specs, real)}]
    for scale in ev.guidance:
        images, per_image = generate_for(model, tok, specs, replace(g, guidance=scale), ev.prompts)
        rows.append({"name": f"model, guidance {scale:g}" + (" (first noun only)" if ev.prompts == "first-noun" else ""),
                     "guidance": scale, **score(checker, specs, images),
                     "fd": frechet_distance(image_features(checker, images), real_feats), "seconds_per_image": per_image})
    cols = ["overall", *CATEGORIES]
    print(f"mini-GenEval: {len(specs)} prompts ({ev.per_category} per category), {g.sampler} {g.steps} steps")
    print(f"{'':34}" + "".join(f"{c[:11]:>12}" for c in cols) + f"{'FD':>9}")
    for r in rows:
        fd = f"{r['fd']:9.2f}" if "fd" in r else f"{'':9}"
        print(f"{r['name'][:34]:34}" + "".join(f"{r.get(c, float('nan')):12.3f}" for c in cols) + fd)
    order = word_order_use(model, tok)
    print("word order read (error under the caption with its meaning swapped / under the caption; 1.000 = "
          "not read): " + ", ".join(f"{k} {v:.4f}" for k, v in order.items()))
    if ev.json_out:
        from gptlab.checkpoint import atomic_write_json
        atomic_write_json(ev.json_out, {"settings": {**asdict(g), **asdict(ev)}, "rows": rows, "word_order": order})
        print(f"wrote {ev.json_out}", file=sys.stderr)
    return 0

