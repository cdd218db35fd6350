"""Generating images: diffusers' schedulers (DDPM, DDIM, DPM-Solver++) driving gptlab's denoiser,
with classifier-free guidance, a negative prompt, image-to-image and inpainting.

Guidance (Ho & Salimans 2022): eps = eps_neg + s (eps_cond - eps_neg), where eps_neg is the
prediction for the negative prompt (the empty caption by default, which caption dropout taught the
model). s = 1 is the conditional prediction alone; s = 0 ignores the prompt.

Image-to-image (SDEdit): the input image's latent is noised to the timestep `strength` of the way
into the schedule, and denoising starts there. Inpainting (RePaint-style blending in latent
space): after every step, latent pixels outside the mask are replaced by the input's latent
noised to the same level, so only the masked region is generated.

Everything runs under a `torch.Generator`: the same seed gives the same image.
Shapes in names: B images, Z latent channels, h x w latent grid, S caption tokens.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch

from gptlab.data.tokenizer import Tokenizer
from gptlab.errors import UserError
from gptlab.model.diffusion import ImageConfig, TextToImage
from gptlab.settings import check, setting

SAMPLERS = ("ddpm", "ddim", "dpm")


def make_scheduler(name: str, cfg: ImageConfig) -> Any:
    """A diffusers scheduler for the noise schedule the model was trained under."""
    from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler

    common = {"num_train_timesteps": cfg.train_timesteps, "beta_schedule": cfg.beta_schedule,
              "beta_start": cfg.beta_start, "beta_end": cfg.beta_end, "prediction_type": cfg.prediction}
    if name == "ddpm":
        return DDPMScheduler(**common, clip_sample=False)
    if name == "ddim":
        return DDIMScheduler(**common, clip_sample=False, set_alpha_to_one=True)
    if name == "dpm":
        # lambda_min_clipped: diffusers' guard for a cosine schedule (which still diverged in a measured
        # run: use the default scaled_linear one with this sampler).
        return DPMSolverMultistepScheduler(**common, algorithm_type="dpmsolver++", solver_order=2, lambda_min_clipped=-5.1)
    raise UserError(f"unknown sampler {name!r}: use one of {', '.join(SAMPLERS)}")


def predict_x0(z_t: torch.Tensor, out: torch.Tensor, t: torch.Tensor, alphas_cumprod: torch.Tensor,
               prediction: str = "epsilon") -> torch.Tensor:
    """The clean latent the denoiser's output implies: (z_t - sqrt(1 - a_t) eps) / sqrt(a_t) for a
    noise prediction, sqrt(a_t) z_t - sqrt(1 - a_t) v for a velocity."""
    a = alphas_cumprod.to(z_t.device)[t.long()].float().view(-1, *([1] * (z_t.dim() - 1)))
    if prediction == "v_prediction":
        return a.sqrt() * z_t - (1 - a).sqrt() * out
    return (z_t - (1 - a).sqrt() * out) / a.sqrt()


def guide(eps_cond: torch.Tensor, eps_neg: torch.Tensor, scale: float) -> torch.Tensor:
    """Classifier-free guidance: eps_neg + scale (eps_cond - eps_neg) (the same for a velocity,
    which is linear in eps at a given z_t)."""
    return eps_neg + scale * (eps_cond - eps_neg)


@dataclass
class GenerateConfig:
    prompt: str = setting("", "what to draw")
    negative_prompt: str = setting("", "what to steer away from ('' = the empty caption)")
    guidance: float = setting(3.0, "classifier-free guidance scale (1 = no guidance, 0 = ignore the prompt)", min=0, max=100)
    steps: int = setting(20, "denoising steps", min=1, max=1000)
    sampler: str = setting("dpm", "ddpm, ddim or dpm (DPM-Solver++ 2M)", choices=SAMPLERS)
    eta: float = setting(0.0, "DDIM's eta: 0 = deterministic", min=0, max=1)
    seed: int = setting(0, "seed of the starting noise", min=0, max=2**63 - 1)
    n: int = setting(1, "images to make", min=1, max=256)
    strength: float = setting(1.0, "image-to-image: how far into the noise the input goes (1 = start from pure noise)", above=0, max=1)
    filmstrip: int = setting(0, "keep the predicted clean image at this many steps (0 = none)", min=0, max=1000)


@dataclass
class Generated:
    images: list[np.ndarray]                       # (H, W, 3) uint8 each
    filmstrip: list[tuple[int, list[np.ndarray]]] = field(default_factory=list)  # (step, predicted x0 per image)
    cross_attn: torch.Tensor | None = None         # (B, N, S) summed over layers, heads and steps, when asked
    tokens: list[list[str]] = field(default_factory=list)  # the caption tokens the attention is over
    seconds: float = 0.0


def encode_captions(tok: Tokenizer, captions: list[str], context: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids (B, S), mask (B, S)): each caption's tokens then <|endoftext|>; the empty caption is
    <|endoftext|> alone. A caption longer than the text encoder's context is an error."""
    rows = []
    for c in captions:
        ids = tok.encode(c) + [tok.eot_id]
        if len(ids) > context:
            raise UserError(f"caption {c[:60]!r} is {len(ids)} tokens with its end marker, more than the text "
                            f"encoder's context of {context}: shorten it (or train with a larger --text-context)")
        rows.append(ids)
    width = max(len(r) for r in rows)
    ids_BxS = torch.full((len(rows), width), tok.pad_id, dtype=torch.long)
    mask_BxS = torch.zeros((len(rows), width), dtype=torch.bool)
    for i, r in enumerate(rows):
        ids_BxS[i, :len(r)] = torch.tensor(r)
        mask_BxS[i, :len(r)] = True
    return ids_BxS, mask_BxS


def to_pixels(x_Bx3xHxW: torch.Tensor) -> list[np.ndarray]:
    x = ((x_Bx3xHxW.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return list(x.permute(0, 2, 3, 1).cpu().numpy())


def from_pixels(images: list[np.ndarray], device: torch.device | str = "cpu") -> torch.Tensor:
    x = torch.from_numpy(np.stack(images)).to(device).permute(0, 3, 1, 2).float()
    return x / 127.5 - 1.0


def check_request(g: GenerateConfig) -> None:
    """The one-line errors a command and the server share."""
    if g.guidance < 0:
        raise UserError(f"--guidance {g.guidance} is negative: use 0 (ignore the prompt), 1 (no guidance) or more")
    if g.steps < 1:
        raise UserError(f"--steps {g.steps}: denoising needs at least 1 step (20 is a good start)")
    check(g)


@torch.no_grad()
def generate(model: TextToImage, tok: Tokenizer, g: GenerateConfig, *, init_image: np.ndarray | None = None,
             mask: np.ndarray | None = None, capture_attn: bool = False, text_context: int | None = None,
             prompts: list[str] | None = None, on_step: Callable[[int, int], None] | None = None) -> Generated:
    """g.n images for g.prompt, or one per prompt of `prompts` (in one batch). init_image (H, W, 3) uint8: image-to-image from it at g.strength;
    mask (H, W) bool with it: inpaint where True (the rest is kept from the input).
    capture_attn: sum each caption token's cross-attention over layers, heads and steps (DAAM)."""
    import time

    if prompts is not None:
        g = replace(g, prompt=prompts[0] if prompts else "", n=len(prompts))
    check_request(g)
    if mask is not None and init_image is None:
        raise UserError("inpainting needs an input image: pass --init with --mask")
    cfg = model.cfg
    dev = next(model.parameters()).device
    t0 = time.perf_counter()
    context = text_context or model.text_cfg.context_length
    ids_c, mask_c = encode_captions(tok, prompts if prompts is not None else [g.prompt] * g.n, context)
    ids_n, mask_n = encode_captions(tok, [g.negative_prompt] * g.n, context)
    width = max(ids_c.shape[1], ids_n.shape[1])
    # One batch of 2n rows (conditional, negative): one call per step instead of two.
    ids = torch.cat([_pad_to(ids_c, width, tok.pad_id), _pad_to(ids_n, width, tok.pad_id)]).to(dev)
    key_mask = torch.cat([_pad_to(mask_c, width, False), _pad_to(mask_n, width, False)]).to(dev)
    text = model.encode_text(ids, key_mask)

    sched = make_scheduler(g.sampler, cfg)
    sched.set_timesteps(g.steps, device=dev)
    timesteps = sched.timesteps
    gen = torch.Generator(device="cpu").manual_seed(g.seed)
    shape = (g.n, cfg.latent_channels, cfg.latent_size, cfg.latent_size)
    noise = torch.randn(shape, generator=gen).to(dev)

    z0_input = None
    if init_image is not None:
        if init_image.shape[:2] != (cfg.image_size, cfg.image_size):
            raise UserError(f"the input image is {init_image.shape[1]}x{init_image.shape[0]}, the model draws "
                            f"{cfg.image_size}x{cfg.image_size}: resize it")
        z0_input = model.to_latent(from_pixels([init_image] * g.n, dev))
        if mask is None:
            # SDEdit: skip the first (1 - strength) of the steps, start from the input noised to there.
            keep = max(1, min(g.steps, round(g.steps * g.strength)))
            timesteps = timesteps[g.steps - keep:]
            z = sched.add_noise(z0_input, noise, timesteps[:1].repeat(g.n))
        else:
            z = noise * sched.init_noise_sigma
    else:
        z = noise * sched.init_noise_sigma
    latent_mask = None
    if mask is not None:
        m = torch.from_numpy(np.asarray(mask, dtype=np.float32))[None, None].to(dev)
        latent_mask = torch.nn.functional.adaptive_max_pool2d(m, cfg.latent_size)  # (1, 1, h, w): 1 = generate

    alphas = sched.alphas_cumprod.to(dev)
    want_strip = set(np.linspace(0, len(timesteps) - 1, g.filmstrip).round().astype(int).tolist()) if g.filmstrip else set()
    out = Generated([])
    attn_sum = None
    step_kw = {"eta": g.eta, "generator": gen} if g.sampler == "ddim" else {"generator": gen} if g.sampler == "ddpm" else {}
    for i, t in enumerate(timesteps):
        z_in = sched.scale_model_input(z, t)
        t_batch = t.repeat(2 * g.n).to(dev)
        eps2, cross = model.denoiser(torch.cat([z_in, z_in]), t_batch, text, key_mask, return_attn=capture_attn)
        eps_c, eps_n = eps2.chunk(2)
        eps = guide(eps_c, eps_n, g.guidance)
        if capture_attn:
            # DAAM: summed over layers and heads (and, across the loop, steps), conditional rows only.
            a = torch.stack(cross).sum(dim=(0, 2))[: g.n]  # (n, N, S)
            attn_sum = a if attn_sum is None else attn_sum + a
        if i in want_strip:
            x0 = predict_x0(z, eps, t.repeat(g.n), alphas, cfg.prediction)
            out.filmstrip.append((i + 1, to_pixels(model.to_image(x0))))
        z = sched.step(eps, t, z, **step_kw).prev_sample
        if latent_mask is not None and z0_input is not None:
            nxt = timesteps[i + 1] if i + 1 < len(timesteps) else None
            known = z0_input if nxt is None else sched.add_noise(z0_input, noise, nxt.repeat(g.n))
            z = latent_mask * z + (1 - latent_mask) * known
        if on_step is not None:
            on_step(i + 1, len(timesteps))
    images = model.to_image(z)
    if mask is not None and init_image is not None:
        # The kept region is the input's own pixels, not their round trip through the autoencoder.
        m_px = torch.from_numpy(np.asarray(mask, dtype=np.float32))[None, None].to(dev)
        images = m_px * images + (1 - m_px) * from_pixels([init_image] * g.n, dev)
    out.images = to_pixels(images)
    if attn_sum is not None:
        out.cross_attn = attn_sum[:, :, : int(mask_c[0].sum())].cpu()
        out.tokens = [[tok.id_to_token(int(i)) for i in ids_c[0, : int(mask_c[0].sum())]]] * g.n
    out.seconds = time.perf_counter() - t0
    return out


def _pad_to(x: torch.Tensor, width: int, value: Any) -> torch.Tensor:
    if x.shape[1] == width:
        return x
    pad = torch.full((x.shape[0], width - x.shape[1]), value, dtype=x.dtype)
    return torch.cat([x, pad], dim=1)
