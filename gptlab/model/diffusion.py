"""Latent diffusion at laptop size (Rombach et al. 2022, with a DiT denoiser, Peebles & Xie 2023).

- `KLAutoencoder`: a small convolutional VAE from a (3, H, W) image in [-1, 1] to a latent grid
  (latent_channels, H/f, W/f), KL-regularised toward N(0, 1) as Stable Diffusion's is.
- the text encoder is gptlab's `Encoder` (the GPT's blocks with `causal=False`) over the caption;
- `Denoiser`: latent patches as tokens. Each block is gptlab's `Attention` (bidirectional
  self-attention), `Attention(cross=True)` to the caption's vectors, and `MLP`, each residual
  sub-layer modulated by the timestep through adaLN-Zero (shift, scale and a gate computed from
  the timestep embedding; the gates start at zero, so every block starts as the identity), and
  QK-norm in both attentions (ImageConfig.qk_norm, on in every preset).
- `TextToImage` holds the three, and the factor that scales latents to unit variance.

The noise schedule is not here: the model predicts the noise `eps` of a noised latent at integer
timestep t, or its velocity v = sqrt(a_t) eps - sqrt(1 - a_t) x0 (ImageConfig.prediction); the schedules and samplers are diffusers' (infer/diffuse.py, training/tasks/diffusion.py).

Shapes in names: B batch, N latent tokens, S caption tokens, C model width, Z latent channels,
H x W pixels, h x w latent grid, L heads.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from gptlab.model.config import MAX_LAYERS, MAX_WIDTH, ModelConfig, setting
from gptlab.model.encoder import Encoder, pool
from gptlab.model.layers import MLP, Attention

MAX_IMAGE = 256  # the largest canvas side a denoiser is built for: this is a CPU-sized model


@dataclass
class ImageConfig(ModelConfig):
    """The denoiser's transformer (the ModelConfig fields it shares with every gptlab block), the
    autoencoder, and the noise schedule the model was trained under."""
    vocab_size: int = setting(2, "unused: the denoiser reads latent patches, not tokens", min=2, max=2)
    context_length: int = setting(64, "latent tokens the denoiser sees: (image_size / 2**downsample / patch)**2", max=MAX_IMAGE**2)
    d_model: int = setting(128, "width of the denoiser (and of the text encoder it reads)", min=1, max=MAX_WIDTH)
    n_layer: int = setting(4, "denoiser blocks", min=1, max=MAX_LAYERS)
    d_ff: int = setting(512, "hidden width of the denoiser's feed-forward layers", min=1, max=16 * MAX_WIDTH)
    dropout: float = setting(0.0, "dropout in the denoiser", min=0, below=1)
    image_size: int = setting(32, "canvas side in pixels", min=8, max=MAX_IMAGE)
    latent_channels: int = setting(4, "channels of the autoencoder's latent grid", min=1, max=64)
    downsample: int = setting(2, "halvings from pixels to latents (2: 32x32 -> 8x8)", min=0, max=5)
    ae_width: int = setting(48, "channels of the autoencoder's convolutions", min=1, max=1024)
    patch: int = setting(1, "latent pixels per side of a denoiser token", min=1, max=16)
    train_timesteps: int = setting(1000, "diffusion timesteps of the noise schedule", min=2, max=100000)
    # Stable Diffusion's schedule by default: DPM-Solver++ is stable on it, while on the cosine
    # schedule (last alpha_cumprod 2e-9) its first clean-image estimate blows up (measured).
    beta_schedule: str = setting("scaled_linear", "noise schedule (diffusers' names)", choices=("linear", "scaled_linear", "squaredcos_cap_v2"))
    beta_start: float = setting(0.00085, "first beta of a linear or scaled_linear schedule (Stable Diffusion's)", above=0, below=1)
    beta_end: float = setting(0.012, "last beta of a linear or scaled_linear schedule (Stable Diffusion's)", above=0, below=1)
    # Epsilon by default only so that checkpoints saved before it existed (no such key) still load;
    # every preset predicts v.
    prediction: str = setting("epsilon", "what the denoiser outputs: epsilon (the added noise, DDPM's) or v_prediction "
                              "(sqrt(a) eps - sqrt(1 - a) x0, Salimans & Ho 2022: at high noise it is the clean image "
                              "itself, so what the caption says reaches the output directly)",
                              choices=("epsilon", "v_prediction"))
    # Off by default only so that checkpoints saved before it existed (no such key) still load;
    # every preset turns it on.
    pooled_text: bool = setting(False, "add the caption's mean vector to the timestep embedding that drives adaLN (as Imagen and SD-XL add a pooled text vector), besides cross-attention")
    # Off by default: at 2 CPU threads it doubles a compiled step's time (measured), which its
    # better loss per step does not repay in minutes; and older checkpoints have no such key.
    conv_mlp: bool = setting(False, "a depthwise 3x3 convolution over the token grid inside each feed-forward layer, so that neighbouring patches shape each other's outlines directly")
    token_skip: bool = setting(False, "add each caption word's own normalised embedding (token + position) to the caption encoder's output, so that no word the denoiser cross-attends to can be lost inside the encoder")
    # Off by default only so that checkpoints saved before it existed (no such key) still load.
    qk_norm: bool = setting(False, "RMS-normalise each attention head's queries and keys (with a learned gain), as SD3's MMDiT does: the attention logits cannot grow with the weights")
    # Set by `gptlab image train --text-pretrain`, not a flag of its own.
    parse_labels: int = setting(0, "outputs of a linear head on the caption encoder that reads each word's labels of the scene (the caption encoder is first trained to parse its caption, then frozen); 0 = no head", min=0, max=1024)

    @property
    def latent_size(self) -> int:
        return self.image_size >> self.downsample

    @property
    def tokens(self) -> int:
        return (self.latent_size // self.patch) ** 2

    def validate(self) -> None:
        super().validate()
        if self.image_size % (2**self.downsample * self.patch):
            raise ValueError(f"image_size {self.image_size} must be a multiple of 2**downsample * patch "
                             f"= {2**self.downsample * self.patch}")
        if self.context_length < self.tokens:
            raise ValueError(f"context_length {self.context_length} < the {self.tokens} latent tokens of a "
                             f"{self.image_size}x{self.image_size} image: set it to {self.tokens}")


def image_tiny() -> ImageConfig:
    """For tests: builds and trains a step in well under a second."""
    return ImageConfig(context_length=16, d_model=32, n_layer=2, n_head=2, d_ff=64, image_size=16,
                       latent_channels=4, downsample=2, ae_width=8, patch=1, pooled_text=True, prediction="v_prediction", qk_norm=True)


def image_small() -> ImageConfig:
    """32x32 shapes on a CPU: ~1M parameters. A 16x16x4 latent read as 2x2 patches (64 tokens, as
    many as an 8x8 latent at patch 1): after 300 autoencoder steps the checker scored round trips of
    real renders 0.52 through it against 0.13 through an 8x8x4 latent (width 48), whose two
    halvings lose the thin arms and corners that tell a cross from a circle."""
    return ImageConfig(context_length=64, d_model=128, n_layer=4, n_head=4, d_ff=512, image_size=32,
                       latent_channels=4, downsample=1, ae_width=32, patch=2, pooled_text=True, prediction="v_prediction", qk_norm=True)


def image_base() -> ImageConfig:
    """64x64, for a GPU."""
    return ImageConfig(context_length=256, d_model=256, n_layer=8, n_head=8, d_ff=1024, image_size=64,
                       latent_channels=4, downsample=2, ae_width=96, patch=1, pooled_text=True, prediction="v_prediction", qk_norm=True)


IMAGE_PRESETS = {"tiny": image_tiny, "small": image_small, "base": image_base}


def text_config(cfg: ImageConfig, vocab_size: int, context_length: int, n_layer: int = 2) -> ModelConfig:
    """The caption encoder for a denoiser of `cfg`: gptlab's encoder blocks at the denoiser's width."""
    return ModelConfig(vocab_size=vocab_size, context_length=context_length, d_model=cfg.d_model,
                       n_layer=n_layer, n_head=cfg.n_head, d_ff=cfg.d_ff, dropout=cfg.dropout, norm="pre",
                       activation="gelu", tie_embeddings=True)


# -- the autoencoder ------------------------------------------------------------------------------
class KLAutoencoder(nn.Module):
    def __init__(self, cfg: ImageConfig):
        super().__init__()
        w, z = cfg.ae_width, cfg.latent_channels
        down: list[nn.Module] = [nn.Conv2d(3, w, 3, padding=1), nn.GELU()]
        up: list[nn.Module] = [nn.Conv2d(z, w, 3, padding=1), nn.GELU()]
        for _ in range(cfg.downsample):
            down += [nn.Conv2d(w, w, 4, stride=2, padding=1), nn.GELU(), nn.Conv2d(w, w, 3, padding=1), nn.GELU()]
            up += [nn.ConvTranspose2d(w, w, 4, stride=2, padding=1), nn.GELU(), nn.Conv2d(w, w, 3, padding=1), nn.GELU()]
        self.encoder = nn.Sequential(*down, nn.Conv2d(w, 2 * z, 1))
        self.decoder = nn.Sequential(*up, nn.Conv2d(w, 3, 3, padding=1))

    def encode(self, x_Bx3xHxW: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The posterior's mean and log-variance, each (B, Z, h, w)."""
        mean, logvar = self.encoder(x_Bx3xHxW).chunk(2, dim=1)
        return mean, logvar.clamp(-30.0, 20.0)

    def decode(self, z_BxZxhxw: torch.Tensor) -> torch.Tensor:
        return self.decoder(z_BxZxhxw)

    def forward(self, x_Bx3xHxW: torch.Tensor, noise_BxZxhxw: torch.Tensor | None = None):
        """(reconstruction, squared error per row (B,), KL to N(0, 1) per row (B,)); both per
        element means. noise: the posterior sample's noise (None: decode the mean)."""
        mean, logvar = self.encode(x_Bx3xHxW)
        z = mean if noise_BxZxhxw is None else mean + (0.5 * logvar).exp() * noise_BxZxhxw
        recon = self.decode(z)
        mse_B = (recon - x_Bx3xHxW).pow(2).flatten(1).mean(1)
        kl_B = 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar).flatten(1).mean(1)
        return recon, mse_B, kl_B


# -- the denoiser ---------------------------------------------------------------------------------
def timestep_embedding(t_B: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """(B, dim) sinusoids of the (integer or fractional) timesteps, as in DDPM and DiT."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t_B.device, dtype=torch.float32) / half)
    args = t_B.float()[:, None] * freqs[None]
    emb = torch.cat([args.cos(), args.sin()], dim=-1)
    return F.pad(emb, (0, dim % 2))


def _modulate(x_BxNxC: torch.Tensor, shift_BxC: torch.Tensor, scale_BxC: torch.Tensor) -> torch.Tensor:
    return x_BxNxC * (1 + scale_BxC[:, None]) + shift_BxC[:, None]


class ConvMLP(MLP):
    """gptlab's MLP with a depthwise 3x3 convolution over the (side, side) token grid between its
    up-projection and its activation (as in PVTv2's and Hourglass's feed-forwards): a token's hidden
    units see its eight neighbours', a local bias that attention has to learn from data."""

    def __init__(self, cfg: ImageConfig):
        super().__init__(cfg)
        self.side = cfg.latent_size // cfg.patch
        self.dw = nn.Conv2d(cfg.d_ff, cfg.d_ff, 3, padding=1, groups=cfg.d_ff)

    def forward(self, x_BxNxC: torch.Tensor) -> torch.Tensor:
        h = self.up(x_BxNxC)  # (B, N, F)
        B, N, Fd = h.shape
        g = h.transpose(1, 2).reshape(B, Fd, self.side, self.side)
        h = h + self.dw(g).reshape(B, Fd, N).transpose(1, 2)
        return self.down(self.act(h))

    def decoder(self) -> Callable[[torch.Tensor], torch.Tensor]:
        # MLP's decoder (behind MLP.decode and Block.decoder) works on rows one at a time; this
        # feed-forward mixes each token with its grid neighbours, so inheriting it would silently
        # skip the convolution.
        raise TypeError("ConvMLP mixes neighbouring tokens of the latent grid: call forward() on the whole grid")


class DiTBlock(nn.Module):
    """Self-attention, cross-attention to the caption, feed-forward: gptlab's sub-layers, pre-norm,
    each norm shifted and scaled and each output gated by the timestep (adaLN-Zero)."""

    def __init__(self, cfg: ImageConfig):
        super().__init__()
        self.norms = nn.ModuleList(nn.LayerNorm(cfg.d_model, elementwise_affine=False, eps=1e-6) for _ in range(3))
        self.attn = Attention(cfg, qk_norm=cfg.qk_norm)
        self.cross_attn = Attention(cfg, cross=True, qk_norm=cfg.qk_norm)
        self.mlp = ConvMLP(cfg) if cfg.conv_mlp else MLP(cfg)
        self.ada = nn.Linear(cfg.d_model, 9 * cfg.d_model)

    def forward(self, x_BxNxC: torch.Tensor, cond_BxC: torch.Tensor, text_BxSxC: torch.Tensor,
                text_mask_BxS: torch.Tensor | None, return_attn: bool = False):
        """(new x, cross-attention (B, L, N, S) when asked)."""
        mods = self.ada(F.silu(cond_BxC)).chunk(9, dim=-1)
        h = _modulate(self.norms[0](x_BxNxC), mods[0], mods[1])
        x_BxNxC = x_BxNxC + mods[2][:, None] * self.attn(h, causal=False)[0]
        h = _modulate(self.norms[1](x_BxNxC), mods[3], mods[4])
        y, cross_BxLxNxS = self.cross_attn(h, context_BxSxC=text_BxSxC, key_mask_BxS=text_mask_BxS,
                                           return_attn=return_attn)
        x_BxNxC = x_BxNxC + mods[5][:, None] * y
        h = _modulate(self.norms[2](x_BxNxC), mods[6], mods[7])
        return x_BxNxC + mods[8][:, None] * self.mlp(h), cross_BxLxNxS


class Denoiser(nn.Module):
    def __init__(self, cfg: ImageConfig):
        super().__init__()
        self.cfg = cfg
        p, z, c = cfg.patch, cfg.latent_channels, cfg.d_model
        self.patch_in = nn.Linear(z * p * p, c)
        self.pos_emb = nn.Parameter(torch.zeros(1, cfg.tokens, c))
        self.time_mlp = nn.Sequential(nn.Linear(c, c), nn.SiLU(), nn.Linear(c, c))
        # The caption's mean vector joins the timestep in the adaLN conditioning: every token's
        # norm is then shifted and scaled by what the whole prompt asks for (colour, shape, count),
        # a path that does not wait for cross-attention to learn where to look.
        self.text_pool = nn.Sequential(nn.Linear(c, c), nn.SiLU(), nn.Linear(c, c)) if cfg.pooled_text else None
        self.blocks = nn.ModuleList(DiTBlock(cfg) for _ in range(cfg.n_layer))
        self.norm_out = nn.LayerNorm(c, elementwise_affine=False, eps=1e-6)
        self.ada_out = nn.Linear(c, 2 * c)
        self.patch_out = nn.Linear(c, z * p * p)

    def patchify(self, z_BxZxhxw: torch.Tensor) -> torch.Tensor:
        B, Z, h, w = z_BxZxhxw.shape
        p = self.cfg.patch
        x = z_BxZxhxw.view(B, Z, h // p, p, w // p, p).permute(0, 2, 4, 1, 3, 5)
        return x.reshape(B, (h // p) * (w // p), Z * p * p)  # (B, N, Z p p), rows of patches

    def unpatchify(self, x_BxNxP: torch.Tensor) -> torch.Tensor:
        B, N, _ = x_BxNxP.shape
        p, Z, side = self.cfg.patch, self.cfg.latent_channels, self.cfg.latent_size // self.cfg.patch
        x = x_BxNxP.view(B, side, side, Z, p, p).permute(0, 3, 1, 4, 2, 5)
        return x.reshape(B, Z, side * p, side * p)

    def forward(self, z_BxZxhxw: torch.Tensor, t_B: torch.Tensor, text_BxSxC: torch.Tensor,
                text_mask_BxS: torch.Tensor | None = None, return_attn: bool = False):
        """(predicted noise (B, Z, h, w), per block cross-attention (B, L, N, S) when asked)."""
        x = self.patch_in(self.patchify(z_BxZxhxw)) + self.pos_emb
        cond_BxC = self.time_mlp(timestep_embedding(t_B, self.cfg.d_model))
        if self.text_pool is not None:
            cond_BxC = cond_BxC + self.text_pool(pool(text_BxSxC, text_mask_BxS, "mean"))  # over real tokens only
        cross = []
        for block in self.blocks:
            x, a = block(x, cond_BxC, text_BxSxC, text_mask_BxS, return_attn)
            if return_attn:
                cross.append(a)
        shift, scale = self.ada_out(F.silu(cond_BxC)).chunk(2, dim=-1)
        return self.unpatchify(self.patch_out(_modulate(self.norm_out(x), shift, scale))), cross


def sincos_2d(side: int, dim: int) -> torch.Tensor:
    """(side * side, dim) fixed 2-D sine-cosine position vectors, row-major (DiT's, from MAE): half
    the channels encode the row, half the column."""
    def one_axis(pos: torch.Tensor, d: int) -> torch.Tensor:
        freqs = 1.0 / 10000 ** (torch.arange(d // 2, dtype=torch.float32) / max(d // 2, 1))
        args = pos[:, None] * freqs[None]
        return torch.cat([args.sin(), args.cos()], dim=1)  # (n, d)
    rows, cols = torch.meshgrid(torch.arange(side, dtype=torch.float32), torch.arange(side, dtype=torch.float32), indexing="ij")
    half = dim // 2 // 2 * 2
    emb = torch.cat([one_axis(rows.flatten(), half), one_axis(cols.flatten(), half)], dim=1)
    return F.pad(emb, (0, dim - emb.shape[1]))


def _init_denoiser(d: Denoiser) -> None:
    """DiT's: Xavier-uniform weights, the timestep MLP N(0, 0.02), positions started at fixed 2-D
    sine-cosines (then learned), and zeros for every adaLN projection and the output layer, so that
    each block starts as the identity and the first prediction is 0. Measured against N(0, 0.02)
    everywhere with positions N(0, 0.02): see benchmarks/RESULTS_image.md (the patches' own content
    then reached each token at a quarter of a position vector's size, and positions hardly at all)."""
    for m in d.modules():
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            nn.init.zeros_(m.bias)
    for m in d.time_mlp.modules():
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0.0, 0.02)
    with torch.no_grad():
        d.pos_emb.copy_(sincos_2d(d.cfg.latent_size // d.cfg.patch, d.cfg.d_model)[None])
    for name, m in d.named_modules():
        if name.endswith(("ada", "ada_out", "patch_out")) and isinstance(m, nn.Linear):
            nn.init.zeros_(m.weight)
            nn.init.zeros_(m.bias)


class TextToImage(nn.Module):
    """Autoencoder + caption encoder + denoiser. `latent_scale` (a saved buffer) is the factor
    that gives the autoencoder's latents unit variance (Stable Diffusion's 0.18215, measured)."""

    latent_scale: torch.Tensor

    def __init__(self, text_cfg: ModelConfig, cfg: ImageConfig):
        super().__init__()
        cfg.validate()
        self.cfg, self.text_cfg = cfg, text_cfg
        self.autoencoder = KLAutoencoder(cfg)
        self.text = Encoder(text_cfg)
        self.text_proj = nn.Linear(text_cfg.d_model, cfg.d_model) if text_cfg.d_model != cfg.d_model else nn.Identity()
        self.token_norm = nn.LayerNorm(text_cfg.d_model) if cfg.token_skip else None
        # (C -> labels) logits of each word's scene labels; only the caption pre-training uses it.
        self.parse_head = nn.Linear(text_cfg.d_model, cfg.parse_labels) if cfg.parse_labels else None
        self.denoiser = Denoiser(cfg)
        _init_denoiser(self.denoiser)
        self.register_buffer("latent_scale", torch.ones(()))

    def _text_hidden(self, ids_BxS: torch.Tensor, mask_BxS: torch.Tensor) -> torch.Tensor:
        hidden_BxSxC = self.text.encode(ids_BxS, mask_BxS)[0]
        if self.token_norm is not None:
            pos_S = torch.arange(ids_BxS.shape[1], device=ids_BxS.device)
            hidden_BxSxC = hidden_BxSxC + self.token_norm(self.text.tok_emb(ids_BxS) + self.text.pos_emb(pos_S))
        return hidden_BxSxC

    def encode_text(self, ids_BxS: torch.Tensor, mask_BxS: torch.Tensor) -> torch.Tensor:
        """(B, S, C) caption vectors; mask True on real tokens (padding is hidden from every query)."""
        return self.text_proj(self._text_hidden(ids_BxS, mask_BxS))

    def to_latent(self, x_Bx3xHxW: torch.Tensor) -> torch.Tensor:
        """Scaled posterior means: what the denoiser learns to generate."""
        return self.autoencoder.encode(x_Bx3xHxW)[0] * self.latent_scale

    def to_image(self, z_BxZxhxw: torch.Tensor) -> torch.Tensor:
        return self.autoencoder.decode(z_BxZxhxw / self.latent_scale).clamp(-1, 1)

    def forward(self, z_BxZxhxw: torch.Tensor, t_B: torch.Tensor | None = None, ids_BxS: torch.Tensor | None = None,
                mask_BxS: torch.Tensor | None = None, *, return_attn: bool = False, autoencode: bool = False,
                noise: torch.Tensor | None = None, parse: bool = False) -> tuple[Any, ...]:
        """The denoiser: (predicted noise (B, Z, h, w), per block cross-attention (B, L, N, S)
        when asked) for noised latents at timesteps t_B under captions ids_BxS (mask True on real
        tokens). With autoencode=True, the autoencoder's training pass on images (B, 3, H, W)
        instead: (reconstruction, squared error (B,), KL (B,)), the posterior sampled with `noise`.
        With parse=True, the caption pre-training's pass: (per-word label logits (B, S, labels),)
        for captions ids_BxS (z is ignored). One entry point, so that the training loop's wrappers
        (DDP, compile) see every stage."""
        if autoencode:
            return self.autoencoder(z_BxZxhxw, noise)
        if parse:
            if self.parse_head is None or ids_BxS is None or mask_BxS is None:
                raise TypeError("parsing needs a model built with parse_labels and caption ids with their mask")
            return (self.parse_head(self._text_hidden(ids_BxS, mask_BxS)),)
        if t_B is None or ids_BxS is None or mask_BxS is None:
            raise TypeError("the denoiser needs timesteps, caption ids and their mask")
        return self.denoiser(z_BxZxhxw, t_B, self.encode_text(ids_BxS, mask_BxS), mask_BxS, return_attn)
