"""Text to image (`gptlab image train`): latent diffusion in two stages on the one training loop.

1. `AutoencoderTask`: the KL autoencoder learns to round-trip the training images through a small
   latent grid (reconstruction error + kl_weight x KL to N(0, 1)); everything else is frozen.
   Written to OUT/autoencoder.
1b. `CaptionParseTask` (captions of the built-in grammar; --text-pretrain): the caption encoder
   learns to label each word of an object with that object's colour, shape, size, count and side
   of the relation, seconds on a CPU, in memory; it is then frozen. Trained jointly with the
   denoiser instead, it collapsed to a bag of words and position and colour attribution stayed
   at chance (benchmarks/RESULTS_image.md).
2. `DiffusionTask`: the autoencoder is frozen; the caption encoder (unless pre-trained) and the denoiser learn to
   predict the noise added to a scaled latent at a random timestep (DDPM's epsilon objective), or
   its velocity (ImageConfig.prediction), weighted per timestep by Min-SNR-gamma,
   with a share of captions replaced by the empty one (caption dropout) so that the same model also
   predicts without the prompt, which classifier-free guidance needs. Written to OUT.

Both stages save the whole TextToImage (kind "image"), so either folder loads with
`gptlab.checkpoint.load_checkpoint`. A step's batch is a pure function of (seed, step): rows,
posterior samples, timesteps, noise and which captions are dropped. Resume is exact.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gptlab.checkpoint import CONFIG, load_checkpoint, read_config
from gptlab.data.images import load_folder
from gptlab.data.shapes import PARSE_FIELDS, ShapesCorpus, hard_negatives, word_labels
from gptlab.data.tokenizer import Tokenizer
from gptlab.errors import UserError
from gptlab.infer.diffuse import encode_captions, from_pixels, make_scheduler
from gptlab.model.diffusion import IMAGE_PRESETS, ImageConfig, TextToImage, text_config
from gptlab.settings import setting
from gptlab.training.config import OPTIMIZERS, FamilyLoopConfig, fit_vocab
from gptlab.training.env import Runtime
from gptlab.training.loop import Batch, Task, TrainResult, fit, prepare_out, runtime_for
from gptlab.training.state import has_checkpoints

KIND = "image"
AUTOENCODER = "autoencoder"  # stage 1's folder inside OUT
Examples = list[tuple[np.ndarray, str]]
AUTO_PRETRAIN = 1000  # steps of --text-pretrain -1: every held-out caption parsed whole by then (measured)


@dataclass
class ImageTrainConfig(FamilyLoopConfig):
    data: str = setting("shapes", "'shapes' (the built-in captioned shapes) or a captions file (CSV or JSONL of file,caption) beside its images")
    out: str = setting("runs/image", "output folder; stage 1 (the autoencoder) goes to OUT/autoencoder")
    preset: str = setting("small", f"model preset: {', '.join(IMAGE_PRESETS)}", choices=tuple(IMAGE_PRESETS))
    examples: int = setting(20000, "shapes: images rendered for training (a captions file: all its rows)", min=1)
    val_examples: int = setting(256, "images held out for the validation loss (shapes: rendered from another seed; a captions file: its last rows)", min=0)
    data_seed: int = setting(0, "seed of the shapes corpus", min=0)
    text_context: int = setting(16, "caption tokens the text encoder reads, with the end marker (a longer caption is an error)", min=2, max=512)
    text_layers: int = setting(2, "blocks of the caption encoder", min=1, max=64)
    caption_dropout: float = setting(0.1, "share of captions replaced by the empty one in training, so the model learns the unconditional prediction guidance needs", min=0, max=1)
    snr_gamma: float = setting(5.0, "Min-SNR-gamma loss weighting (Hang et al. 2023): each timestep's error counted as min(SNR, gamma) times the clean-image error it implies, so the nearly clean timesteps (a faint noise on a finished image: large errors that matter little to what is drawn) stop dominating the gradient (0 = the plain loss of the prediction type)", min=0)
    snr_floor: float = setting(1.0, "least weight of a timestep's clean-image error (with --snr-gamma): Min-SNR gives the noisiest timesteps, where the layout and so the caption are decided, a weight near their SNR (0.005 at the last step); a floor of 1 counts them as much as a mid-noise step", min=0)
    # Measured (benchmarks/RESULTS_image.md, 30 min): against uniform, mini-GenEval without guidance
    # 0.32 -> 0.42 and the FID-style distance lower at every guidance scale; the best score the same.
    timesteps: str = setting("logit_normal", "how training draws timesteps: uniform, or logit_normal (SD3's: sigmoid of a normal, so the middle of the schedule, where shapes and their places are drawn, gets most steps)", choices=("uniform", "logit_normal"))
    timestep_scale: float = setting(1.0, "standard deviation of the logit-normal timestep draw (larger: flatter)", above=0)
    # 0.5: the median training timestep 622 instead of 500; two seeds side by side for 30 minutes
    # scored 0.78 and 0.80 at their best guidance against 0.75 and 0.74 at 0 (RESULTS_image.md).
    timestep_mean: float = setting(0.5, "mean of the logit-normal timestep draw: > 0 gives more steps to the noisier timesteps, where the layout (how many shapes, and where) is decided; < 0 to the cleaner ones", min=-3, max=3)
    contrast: float = setting(0.0, "weight of a hard-negative caption loss (captions in the built-in grammar): for some rows of each batch the denoiser also predicts under the caption with its relation flipped or its colours swapped, and is pushed to do worse there than under the true one, which a model that reads its caption as a bag of words cannot (0 = off)", min=0)
    contrast_share: float = setting(0.25, "share of each batch's rows, drawn from captions that have a hard negative, that also get the negative's prediction (with --contrast)", above=0, max=1)
    contrast_margin: float = setting(0.01, "scale of the hard-negative loss, in weighted squared error: it is margin x softplus((true error - negative error) / margin), so its push fades once the negative's error is a few margins above the true one", above=0)
    # Measured (benchmarks/RESULTS_image.md, 30 min side by side): mini-GenEval 0.45 -> 0.71 at
    # guidance 2, position 0.04 -> 0.72, colour attribution 0.16 -> 0.68.
    text_pretrain: int = setting(-1, f"steps of pre-training the caption encoder to parse its caption (captions in the built-in grammar: each word of an object is labelled with that object's colour, shape, size, count and side of the relation), after which it is frozen while the denoiser learns; 0 = the encoder learns jointly with the denoiser; -1 = auto: {AUTO_PRETRAIN} steps when every training caption is in the grammar, else 0", min=-1)
    text_pretrain_lr: float = setting(1e-3, "peak learning rate of the caption pre-training (AdamW)", above=0)
    kl_weight: float = setting(1e-4, "weight of the autoencoder's KL term", min=0)
    ae_loss: str = setting("mse", "the autoencoder's reconstruction error: mse, or l1 (which keeps pushing on small errors, so thin edges stay sharp)", choices=("mse", "l1"))
    ae_steps: int = setting(1500, "autoencoder (stage 1) steps", min=1)
    ae_lr: float = setting(2e-3, "autoencoder peak learning rate", min=0)
    autoencoder: str = setting("", "a trained stage-1 folder to reuse (default: OUT/autoencoder, trained first when it is not there)")
    vocab_size: int = setting(1000, "caption vocabulary cap", min=2)
    max_steps: int = setting(3000, "denoiser (stage 2) steps; 0 = from --epochs", min=0)
    batch_size: int = setting(64, "images per step", min=1)
    # Measured (benchmarks/RESULTS_image.md, 30 minutes side by side on 1 thread each, the same
    # autoencoder): Muon at 1e-2 against AdamW at 1e-3, mini-GenEval 0.43 vs 0.17 at guidance 2, the
    # FID-style distance 89 vs 188, the validation loss 0.184 vs 0.221 in 8% fewer steps.
    optimizer: str = setting("muon", "muon (Muon on the blocks' weight matrices, AdamW on the rest, at one learning rate), adamw or adam; the autoencoder always trains with AdamW", choices=OPTIMIZERS)
    lr: float = setting(1e-2, "denoiser peak learning rate", min=0)
    min_lr: float = setting(5e-5, "learning rate at the end of the cosine schedule", min=0)
    warmup_steps: int = setting(100, "linear warmup steps", min=0)
    weight_decay: float = setting(0.0, "AdamW weight decay (matrices only)", min=0)
    beta2: float = setting(0.999, "Adam beta2", min=0, below=1)
    ema: float = setting(0.999, "decay of the weights' moving average, which is what is kept (0 = off)", min=0, below=1)
    # bf16 where the CPU is fast at it: 1.7x the denoiser's steps per second on an AVX-512 BF16
    # machine (100 steps of batch 64: 18.8 s vs 32.6 s), the same validation loss at equal steps.
    precision: str = setting("auto", "auto (bf16 where the hardware is fast at it), fp32 or bf16", choices=("auto", "fp32", "bf16"))
    eval_interval: int = setting(500, "steps between evaluations (0 = only at the end)", min=0)


# -- data -----------------------------------------------------------------------------------------
def load_examples(t: ImageTrainConfig, size: int) -> tuple[Examples, Examples]:
    """(train, val) lists of ((size, size, 3) uint8 image, caption)."""
    if t.data == "shapes":
        if size not in (32, 64):
            raise UserError(f"the built-in shapes are 32x32 or 64x64; the preset draws {size}x{size}: pick --preset small or base")
        train = ShapesCorpus(t.data_seed, size)
        val = ShapesCorpus(t.data_seed + 1_000_003, size)
        return ([(e.image, e.caption) for e in (train[i] for i in range(t.examples))],
                [(e.image, e.caption) for e in (val[i] for i in range(t.val_examples))])
    rows = load_folder(t.data, size)
    n_val = min(t.val_examples, len(rows) // 10)
    if len(rows) - n_val < 1:
        raise UserError(f"{t.data} lists {len(rows)} images: too few to train on")
    return rows[:len(rows) - n_val], rows[len(rows) - n_val:]


def caption_tokenizer(t: ImageTrainConfig, train: Examples) -> Tokenizer:
    texts = [c for _, c in train]
    if t.data == "shapes":
        texts += ShapesCorpus(t.data_seed).vocabulary()  # every word the grammar can say, seen or not
    return Tokenizer.train(texts, t.tokenizer, t.vocab_size)


def _encode_all(tok: Tokenizer, rows: Examples, context: int) -> tuple[torch.Tensor, torch.Tensor]:
    return _encode_texts(tok, [c for _, c in rows], context)


def _encode_texts(tok: Tokenizer, texts: list[str], context: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, context) ids and mask of captions, padded to the full context."""
    ids, mask = encode_captions(tok, texts or [""], context)
    return _pad(ids, context, tok.pad_id), _pad(mask, context, False)


def _negatives(train: Examples) -> list[list[str]]:
    """Each training caption's hard negatives (--contrast), refused when no caption has one."""
    negs = [hard_negatives(c) for _, c in train]
    if not any(negs):
        raise UserError("--contrast needs captions with a relation (above, below, left of, right of) or two "
                        "colours to swap; none of these has one: leave --contrast at 0")
    return negs


def _pad(x: torch.Tensor, width: int, value: Any) -> torch.Tensor:
    out = torch.full((x.shape[0], width), value, dtype=x.dtype)
    out[:, :x.shape[1]] = x
    return out


def _rng(seed: int, step: int, stage: int) -> tuple[np.random.Generator, torch.Generator]:
    rng = np.random.default_rng([seed, step, stage])
    return rng, torch.Generator().manual_seed(int(rng.integers(2**62)))


# -- stage 1 --------------------------------------------------------------------------------------
class AutoencoderTask(Task[TextToImage]):
    unit = "img"
    kind = KIND

    def __init__(self, t: ImageTrainConfig, model: TextToImage, tok: Tokenizer, train: Examples, val: Examples):
        self.t, self.model, self.tokenizer = t, model, tok
        self.images = np.stack([im for im, _ in train])
        self.val = np.stack([im for im, _ in val]) if val else self.images[:64]
        for name, p in model.named_parameters():
            p.requires_grad_(name.startswith("autoencoder."))

    def steps_per_epoch(self) -> int:
        return max(1, len(self.images) // self.t.batch_size)

    def batch(self, step: int) -> Batch:
        rng, gen = _rng(self.t.seed, step, 1)
        rows = rng.integers(0, len(self.images), self.t.batch_size)
        cfg = self.model.cfg
        noise = torch.randn((len(rows), cfg.latent_channels, cfg.latent_size, cfg.latent_size), generator=gen)
        return Batch({"x": from_pixels(list(self.images[rows])), "noise": noise}, len(rows))

    def loss_sum(self, model: Any, tensors: dict[str, torch.Tensor]) -> torch.Tensor:
        recon, mse_B, kl_B = model(tensors["x"], noise=tensors["noise"], autoencode=True)
        rec_B = (recon - tensors["x"]).abs().flatten(1).mean(1) if self.t.ae_loss == "l1" else mse_B
        return (rec_B + self.t.kl_weight * kl_B).sum()

    @torch.no_grad()
    def evaluate(self, model: TextToImage, rt: Runtime) -> dict[str, float]:
        """Round-trip error through the posterior mean, per pixel on the [-1, 1] scale."""
        model.eval()
        x = from_pixels(list(self.val[:512]), rt.device)
        _, mse_B, kl_B = model(x, autoencode=True)
        return {"val_mse": float(mse_B.mean()), "val_kl": float(kl_B.mean())}

    def format_metrics(self, metrics: dict[str, float]) -> str:
        return f"round-trip mse {metrics['val_mse']:.5f}, kl {metrics['val_kl']:.3f}"

    def config(self) -> dict[str, Any]:
        return image_config(self.t, self.model, AUTOENCODER)

    def describe(self) -> str:
        return f"gptlab image train, stage 1 (autoencoder): {len(self.images):,} images; "


def image_config(t: ImageTrainConfig, model: TextToImage, stage: str) -> dict[str, Any]:
    return {"model": model.text_cfg.to_dict(), "image": model.cfg.to_dict(), "stage": stage,
            "data": {"source": t.data, "seed": t.data_seed, "text_context": t.text_context}}


# -- stage 1b: the caption encoder learns to parse ----------------------------------------------
PARSE_SIZES = [len(v) for v in PARSE_FIELDS.values()]  # the parse head's logits, field after field


def parse_targets(tok: Tokenizer, captions: list[str], context: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(ids (N, S), mask (N, S), labels (N, S, fields)) of captions of the built-in grammar: each
    token gets the labels of the word it belongs to (shapes.word_labels), -1 where none (the end
    marker, padding, "and", the relation's words). A caption outside the grammar is an error."""
    ids, mask = _encode_texts(tok, captions, context)
    labels = torch.full((*ids.shape, len(PARSE_FIELDS)), -1, dtype=torch.long)
    bad = []
    for n, c in enumerate(captions):
        per_word = word_labels(c)
        if per_word is None:
            bad.append(c)
            continue
        word_of_char = np.full(len(c), -1)
        at = 0
        for w, word in enumerate(c.split()):
            at = c.index(word, at)
            word_of_char[at:at + len(word)] = w
            at += len(word)
        for j, (a, b) in enumerate(tok.hf.encode(c, add_special_tokens=False).offsets):
            words = [int(w) for w in word_of_char[a:b] if w >= 0]  # a byte-level token may start at a space
            if words and per_word[words[0]] is not None:
                labels[n, j] = torch.tensor(per_word[words[0]])
    if bad:
        raise _not_in_grammar(bad[0], len(bad))
    return ids, mask, labels


def _not_in_grammar(caption: str, count: int = 1) -> UserError:
    which = f"{caption[:60]!r} is not" if count == 1 else f"{count} of these are not (e.g. {caption[:60]!r})"
    return UserError(f"--text-pretrain reads captions of the built-in shapes grammar; {which}: "
                     "train on --data shapes, or set --text-pretrain 0")


class CaptionParseTask(Task[TextToImage]):
    """The caption encoder (and a linear head) learns each word's scene labels: cross-entropy per
    field, over the words of the noun phrases. A bag of words cannot score here: "a red circle above
    a blue square" and "a blue circle above a red square" hold the same words with other labels."""
    unit = "cap"
    kind = KIND

    def __init__(self, t: ImageTrainConfig, model: TextToImage, tok: Tokenizer, train: Examples, val: Examples):
        self.t, self.model, self.tokenizer = t, model, tok
        for name, p in model.named_parameters():
            p.requires_grad_(name.startswith(("text.", "token_norm.", "parse_head.")))
        captions = sorted({c for _, c in train})  # the stage learns captions, not images: each once
        self.ids, self.mask, self.labels = parse_targets(tok, captions, t.text_context)
        held = sorted({c for _, c in val} - set(captions)) or captions[:256]
        self.val = parse_targets(tok, held, t.text_context)

    def steps_per_epoch(self) -> int:
        return max(1, len(self.ids) // self.t.batch_size)

    def batch(self, step: int) -> Batch:
        rng, _ = _rng(self.t.seed, step, 4)
        rows = torch.from_numpy(rng.integers(0, len(self.ids), self.t.batch_size))
        return Batch({"ids": self.ids[rows], "mask": self.mask[rows], "labels": self.labels[rows]}, len(rows))

    @staticmethod
    def _per_field(logits_BxSxK: torch.Tensor) -> list[torch.Tensor]:
        return list(logits_BxSxK.float().split(PARSE_SIZES, dim=-1))

    def loss_sum(self, model: Any, tensors: dict[str, torch.Tensor]) -> torch.Tensor:
        (logits,) = model(None, ids_BxS=tensors["ids"], mask_BxS=tensors["mask"], parse=True)
        labels = tensors["labels"]
        return torch.stack([torch.nn.functional.cross_entropy(lg.flatten(0, 1), labels[..., f].flatten(), ignore_index=-1,
                                                              reduction="sum")
                            for f, lg in enumerate(self._per_field(logits))]).sum()

    @torch.no_grad()
    def evaluate(self, model: TextToImage, rt: Runtime) -> dict[str, float]:
        """On held-out captions: the share of (word, field) labels right, and of captions whole."""
        model.eval()
        ids, mask, labels = (x.to(rt.device) for x in self.val)
        with rt.autocast():
            (logits,) = model(None, ids_BxS=ids, mask_BxS=mask, parse=True)
        pred = torch.stack([lg.argmax(-1) for lg in self._per_field(logits)], dim=-1)  # (N, S, fields)
        known = labels >= 0
        right = (pred == labels) | ~known
        return {"parse_acc": float((pred == labels)[known].float().mean()),
                "caption_acc": float(right.flatten(1).all(1).float().mean())}

    def format_metrics(self, metrics: dict[str, float]) -> str:
        return f"labels right {metrics['parse_acc']:.4f}, captions parsed whole {metrics['caption_acc']:.4f}"

    def config(self) -> dict[str, Any]:
        return image_config(self.t, self.model, "captions")

    def describe(self) -> str:
        return f"gptlab image train, caption encoder pre-training: {len(self.ids):,} captions; "


def text_pretrain_steps(t: ImageTrainConfig, rows: Examples) -> int:
    """t.text_pretrain resolved: -1 (auto) is AUTO_PRETRAIN steps when every caption of `rows` is in
    the built-in grammar and 0 otherwise; a positive count for captions outside it is an error."""
    if t.text_pretrain == 0:
        return 0
    # Each distinct caption once (images share captions: ~1.6k of them for 20k images).
    bad = next((c for c in dict.fromkeys(c for _, c in rows) if word_labels(c) is None), None)
    if t.text_pretrain < 0:
        return AUTO_PRETRAIN if bad is None else 0
    if bad is not None:
        raise _not_in_grammar(bad)
    return t.text_pretrain


def pretrain_text(t: ImageTrainConfig, model: TextToImage, tok: Tokenizer, train: Examples, val: Examples,
                  rt: Runtime) -> TrainResult[TextToImage]:
    """t.text_pretrain steps of CaptionParseTask, in memory (seconds to a minute: a resumed run
    reads the frozen encoder back from its stage-2 checkpoint instead, and one stopped here starts
    it again)."""
    t1 = dataclasses.replace(t, out="", max_steps=t.text_pretrain, optimizer="adamw", lr=t.text_pretrain_lr,
                             min_lr=t.text_pretrain_lr / 10, ema=0.0, epochs=0.0, time_budget=0.0, resume=False,
                             compile=False, eval_interval=0, tensorboard=False, weight_decay=0.0)
    return fit(CaptionParseTask(t1, model, tok, train, val), t1, rt)


# -- stage 2 --------------------------------------------------------------------------------------
VAL_DRAW_SEED = 1337 + 7  # + --data-seed: the fixed validation draw's noise and timesteps


class DiffusionTask(Task[TextToImage]):
    unit = "img"
    kind = KIND

    def __init__(self, t: ImageTrainConfig, model: TextToImage, tok: Tokenizer, train: Examples, val: Examples):
        self.t, self.model, self.tokenizer = t, model, tok
        # The autoencoder is frozen; so is a caption encoder pre-trained to parse (--text-pretrain),
        # which joint training would let drift back toward a bag of words.
        frozen = ("autoencoder.", "parse_head.") + (("text.", "token_norm.") if t.text_pretrain > 0 else ())
        for name, p in model.named_parameters():
            p.requires_grad_(not name.startswith(frozen))
        self.sched = make_scheduler("ddpm", model.cfg)
        a = self.sched.alphas_cumprod.float()
        snr_T = a / (1 - a)  # signal-to-noise ratio of each training timestep
        # (T,) loss weight per timestep. An output error is a clean-image error times SNR (epsilon)
        # or times SNR + 1 (v); Min-SNR-gamma weights the clean-image error min(SNR, gamma) (at
        # least snr_floor), so the output's error is divided by that factor. Or 1 everywhere.
        per_x0 = snr_T if model.cfg.prediction == "epsilon" else snr_T + 1
        x0_weight = snr_T.clamp(max=t.snr_gamma).clamp(min=t.snr_floor)
        self.weight_T = x0_weight / per_x0 if t.snr_gamma > 0 else torch.ones_like(snr_T)
        self.ids, self.mask = _encode_all(tok, train, t.text_context)
        self.null_ids, self.null_mask = _encode_all(tok, [(train[0][0], "")], t.text_context)
        # The frozen autoencoder's posterior of every training image, once: (N, Z, h, w) each.
        self.mean, self.logvar = self._posterior([im for im, _ in train])
        # Latents scaled to unit variance, as Stable Diffusion's 0.18215 does for its autoencoder.
        model.latent_scale.fill_(1.0 / float(self.mean[:5000].std().clamp_min(1e-6)))
        self.val = self._fixed_val(val or train[:64])
        if t.contrast > 0:
            self._hard_negatives(train)

    def _hard_negatives(self, train: Examples) -> None:
        """(2, N, S) ids and masks of up to two hard negatives per training caption, their count
        (N,), and the rows that have one."""
        negs = _negatives(train)
        self.neg_rows = torch.tensor([i for i, n in enumerate(negs) if n], dtype=torch.long)
        self.neg_count = torch.tensor([len(n) for n in negs])
        pairs = [_encode_texts(self.tokenizer, [n[j] if len(n) > j else c for (_, c), n in zip(train, negs)],
                               self.t.text_context) for j in (0, 1)]
        self.neg_ids, self.neg_mask = torch.stack([p[0] for p in pairs]), torch.stack([p[1] for p in pairs])

    @torch.no_grad()
    def _posterior(self, images: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
        was = self.model.training
        self.model.eval()
        parts = [self.model.autoencoder.encode(from_pixels(images[i:i + 256])) for i in range(0, len(images), 256)]
        self.model.train(was)
        return torch.cat([m for m, _ in parts]), torch.cat([lv for _, lv in parts])

    def _fixed_val(self, val: Examples) -> dict[str, torch.Tensor]:
        mean, logvar = self._posterior([im for im, _ in val])
        ids, mask = _encode_all(self.tokenizer, val, self.t.text_context)
        # Uniform timesteps whatever the training draw, and noise seeded by the data, not by --seed,
        # so validation losses compare across both. The offset keeps the default data seed (0) on
        # the draw every run with the default --seed (1337) made when it was seeded by seed + 7.
        out = self._noised(mean, logvar, ids, mask, *_rng(self.t.data_seed + VAL_DRAW_SEED, 0, 3), timesteps="uniform")
        # The word-order read: rows whose caption has a hard negative, at t >= 300 (below that the
        # layout is already in the noised latent and no caption changes much).
        negs = [hard_negatives(c) for _, c in val]
        rows = [i for i, n in enumerate(negs) if n and int(out["t"][i]) >= 300]
        if rows:
            out["order_rows"] = torch.tensor(rows)
            out["order_ids"], out["order_mask"] = _encode_texts(self.tokenizer, [negs[i][0] for i in rows],
                                                                self.t.text_context)
        return out

    def _noised(self, mean, logvar, ids, mask, rng: np.random.Generator, gen: torch.Generator,
                timesteps: str | None = None) -> dict[str, torch.Tensor]:
        z0 = (mean + (0.5 * logvar).exp() * torch.randn(mean.shape, generator=gen)) * self.model.latent_scale
        noise = torch.randn(z0.shape, generator=gen)
        T = self.model.cfg.train_timesteps
        if (timesteps or self.t.timesteps) == "logit_normal":
            u = 1 / (1 + np.exp(-rng.normal(self.t.timestep_mean, self.t.timestep_scale, len(z0))))
            t = torch.from_numpy(np.minimum((u * T).astype(np.int64), T - 1))
        else:
            t = torch.from_numpy(rng.integers(0, T, len(z0)))
        # v = sqrt(a_t) eps - sqrt(1 - a_t) z0, diffusers' formula (the scheduler that noised z0).
        target = noise if self.model.cfg.prediction == "epsilon" else self.sched.get_velocity(z0, noise, t)
        return {"z_t": self.sched.add_noise(z0, noise, t), "t": t, "target": target, "ids": ids, "mask": mask}

    def steps_per_epoch(self) -> int:
        return max(1, len(self.mean) // self.t.batch_size)

    def batch(self, step: int) -> Batch:
        rng, gen = _rng(self.t.seed, step, 2)
        rows = torch.from_numpy(rng.integers(0, len(self.mean), self.t.batch_size))
        k = 0
        if self.t.contrast > 0:  # the first k rows have a hard negative and keep their caption
            k = max(1, round(self.t.contrast_share * len(rows)))
            rows[:k] = self.neg_rows[torch.from_numpy(rng.integers(0, len(self.neg_rows), k))]
        ids, mask = self.ids[rows].clone(), self.mask[rows].clone()
        drop = torch.from_numpy(rng.random(len(rows)) < self.t.caption_dropout)
        drop[:k] = False
        ids[drop], mask[drop] = self.null_ids[0], self.null_mask[0]
        b = self._noised(self.mean[rows], self.logvar[rows], ids, mask, rng, gen)
        b["dropped"] = drop
        if k:
            # Row-aligned like every other tensor, so that the loop's micro-batches and processes
            # (which slice every tensor by rows) keep each row's negative with it.
            which = torch.from_numpy(rng.integers(0, 2, len(rows))) % self.neg_count[rows].clamp_min(1)  # (none: unused)
            b["neg_ids"], b["neg_mask"] = self.neg_ids[which, rows], self.neg_mask[which, rows]
            b["contrast"] = torch.arange(len(rows)) < k
        return Batch(b, len(rows))

    def loss_sum(self, model: Any, tensors: dict[str, torch.Tensor]) -> torch.Tensor:
        z_t, t_B, ids, mask, target = (tensors[k] for k in ("z_t", "t", "ids", "mask", "target"))
        B = len(t_B)
        at_K = tensors["contrast"].nonzero().squeeze(1) if "contrast" in tensors else None
        if at_K is not None and len(at_K):  # the contrast rows again under their hard negatives, in one pass
            z_t, t_B, target = torch.cat([z_t, z_t[at_K]]), torch.cat([t_B, t_B[at_K]]), torch.cat([target, target[at_K]])
            ids, mask = torch.cat([ids, tensors["neg_ids"][at_K]]), torch.cat([mask, tensors["neg_mask"][at_K]])
        pred, _ = model(z_t, t_B, ids, mask)  # noise or velocity
        err_B = self.weight_T.to(t_B.device)[t_B] * (pred.float() - target).pow(2).flatten(1).mean(1)
        loss = err_B[:B].sum()
        if len(err_B) > B:
            # A logistic loss on which caption fits the image better: the true one should.
            m = self.t.contrast_margin
            gap_K = err_B[:B][at_K] - err_B[B:]
            loss = loss + self.t.contrast * m * torch.nn.functional.softplus(gap_K / m).sum()
        return loss

    @torch.no_grad()
    def evaluate(self, model: TextToImage, rt: Runtime) -> dict[str, float]:
        """Prediction error (noise or velocity) on held-out images at fixed timesteps and noise."""
        model.eval()
        v = {k: x.to(rt.device) for k, x in self.val.items()}
        with rt.autocast():
            pred, _ = model(v["z_t"], v["t"], v["ids"], v["mask"])
        err_B = (pred.float() - v["target"]).pow(2).flatten(1).mean(1)
        out = {"val_loss": float(err_B.mean())}
        if "order_rows" in v:  # error under the hard negative / under the true caption: 1 = order not read
            r = v["order_rows"]
            with rt.autocast():
                neg, _ = model(v["z_t"][r], v["t"][r], v["order_ids"], v["order_mask"])
            out["val_order"] = float((neg.float() - v["target"][r]).pow(2).mean() / err_B[r].mean().clamp_min(1e-12))
        return out

    def format_metrics(self, metrics: dict[str, float]) -> str:
        order = f", word order read {metrics['val_order']:.4f} (1 = not)" if "val_order" in metrics else ""
        return f"val loss {metrics['val_loss']:.3f}{order}"

    def config(self) -> dict[str, Any]:
        return image_config(self.t, self.model, "diffusion")

    def describe(self) -> str:
        return (f"gptlab image train, stage 2 (denoiser): {len(self.mean):,} images; latent "
                f"{self.model.cfg.latent_channels}x{self.model.cfg.latent_size}x{self.model.cfg.latent_size} "
                f"x{float(self.model.latent_scale):.3f}; ")


# -- the command's entry --------------------------------------------------------------------------
def _stage1_done(folder: Path) -> bool:
    try:
        cfg = read_config(folder, make="gptlab image train")
    except UserError:
        return False
    return "val_mse" in cfg.get("metrics", {})


def _reuse_autoencoder(path: Path, t: ImageTrainConfig, mcfg: ImageConfig) -> tuple[TextToImage, Tokenizer]:
    """A new model of the settings asked for (`mcfg`, t's text encoder), holding the autoencoder
    and caption tokenizer of the stage-1 folder `path`."""
    saved_model, tok, cfg = load_checkpoint(path)
    if cfg["kind"] != KIND:
        raise UserError(f"--autoencoder {path} holds a {cfg['kind']} model, not an image model")
    saved = cfg["image"]
    ae_keys = ("image_size", "latent_channels", "downsample", "ae_width")
    diff = {k: (saved.get(k), getattr(mcfg, k)) for k in ae_keys if saved.get(k) != getattr(mcfg, k)}
    if diff:
        raise UserError(f"--autoencoder {path} was trained for another shape {diff} (saved, asked): pick the matching --preset")
    tcfg = fit_vocab(text_config(mcfg, tok.vocab_size, t.text_context, t.text_layers), tok.vocab_size)
    torch.manual_seed(t.seed)
    model = TextToImage(tcfg, mcfg)
    model.autoencoder.load_state_dict(saved_model.autoencoder.state_dict())
    return model, tok


def model_config(t: ImageTrainConfig, model_cfg: ImageConfig | None = None) -> ImageConfig:
    """The model settings asked for (default: t's preset), checked: a bad shape is a one-line error."""
    mcfg = model_cfg if model_cfg is not None else IMAGE_PRESETS[t.preset]()
    # The parse head is there exactly when the caption pre-training is (and sized by the grammar).
    mcfg = dataclasses.replace(mcfg, parse_labels=sum(PARSE_SIZES) if t.text_pretrain > 0 else 0)
    try:
        mcfg.validate()
    except ValueError as e:
        raise UserError(f"bad model setting: {e}") from None
    return mcfg


def train_autoencoder(t: ImageTrainConfig, model_cfg: ImageConfig | None = None, save: bool = True,
                      examples: tuple[Examples, Examples] | None = None,
                      tokenizer: Tokenizer | None = None) -> TrainResult[TextToImage]:
    """Stage 1 alone: a fresh TextToImage whose autoencoder is trained (t.ae_steps at t.ae_lr),
    written to OUT/autoencoder (or kept in memory with save=False)."""
    rt = runtime_for(t, save)
    mcfg = model_config(t, model_cfg)
    train_rows, val_rows = examples if examples is not None else load_examples(t, mcfg.image_size)
    tok = tokenizer or caption_tokenizer(t, train_rows)
    _encode_all(tok, train_rows + val_rows, t.text_context)  # a caption too long: refused before any training
    tcfg = fit_vocab(text_config(mcfg, tok.vocab_size, t.text_context, t.text_layers), tok.vocab_size)
    ae_dir = Path(t.out) / AUTOENCODER if t.out else None
    # AdamW for the autoencoder whatever --optimizer says: its weights are convolutions, not the
    # blocks' matrices Muon is for, and its recipe (ae_lr) was measured with AdamW.
    t1 = dataclasses.replace(t, out=str(ae_dir) if ae_dir is not None else "", max_steps=t.ae_steps,
                             optimizer="adamw", lr=t.ae_lr, min_lr=t.ae_lr / 10, ema=0.0, epochs=0.0, time_budget=0.0,
                             resume=t.resume and ae_dir is not None and has_checkpoints(ae_dir))
    if t1.out:
        prepare_out(t1, KIND, tcfg.to_dict(), "gptlab image train")
    torch.manual_seed(t.seed)
    model = TextToImage(tcfg, mcfg)
    return fit(AutoencoderTask(t1, model, tok, train_rows, val_rows), t1, rt)


def train(t: ImageTrainConfig, model_cfg: ImageConfig | None = None, save: bool = True,
          examples: tuple[Examples, Examples] | None = None, on_eval=None) -> TrainResult[TextToImage]:
    """Stage 1 (unless --autoencoder names one, or OUT/autoencoder holds a finished one), then stage 2."""
    rt = runtime_for(t, save)
    mcfg = model_config(t, model_cfg)
    out = Path(t.out) if t.out else None
    # Stage 2's folder is checked first: a run that could not be saved is refused before any work.
    resume2 = t.resume and out is not None and ((out / CONFIG).exists() or has_checkpoints(out))
    t2 = dataclasses.replace(t, resume=resume2)
    text_probe = text_config(mcfg, t.vocab_size, t.text_context, t.text_layers).to_dict()
    saved_tok = prepare_out(t2, KIND, text_probe, "gptlab image train")
    train_rows, val_rows = examples if examples is not None else load_examples(t, mcfg.image_size)
    if t.contrast > 0:
        _negatives(train_rows)  # refused before stage 1's minutes, not after
    # -1 (auto) resolved: every stage below sees the count. The held-out captions too must parse:
    # the pre-training scores itself on them.
    steps = text_pretrain_steps(t, train_rows + val_rows)
    t, t2 = dataclasses.replace(t, text_pretrain=steps), dataclasses.replace(t2, text_pretrain=steps)
    mcfg = model_config(t, model_cfg)  # again, now with the parse head the resolved count asks for

    ae_dir = Path(t.autoencoder) if t.autoencoder else (out / AUTOENCODER if out is not None else None)
    if t.autoencoder and not _stage1_done(Path(t.autoencoder)):
        raise UserError(f"--autoencoder {t.autoencoder} holds no finished autoencoder (stage 1 was stopped or never ran): "
                        "finish it with `gptlab image train --resume --out` its parent folder, or drop --autoencoder")
    if t.autoencoder or (ae_dir is not None and not t.overwrite and _stage1_done(ae_dir)):
        assert ae_dir is not None
        model, tok = _reuse_autoencoder(ae_dir, t, mcfg)
        print(f"gptlab image train: reusing the autoencoder in {ae_dir}", file=sys.stderr)
    else:
        stage1 = train_autoencoder(t, mcfg, save, (train_rows, val_rows), saved_tok)
        if stage1.interrupted:  # saved in OUT/autoencoder; --resume continues it, then stage 2
            return stage1
        model, tok = stage1.model.cpu(), stage1.tokenizer
    _encode_all(tok, train_rows + val_rows, t.text_context)
    if t2.text_pretrain and not (resume2 and out is not None and has_checkpoints(out)):
        started = time.perf_counter()
        pre = pretrain_text(t2, model.train(), tok, train_rows, val_rows, rt)
        if pre.interrupted:
            print("gptlab image train: stopped in the caption pre-training, which is not saved: --resume starts it "
                  "again (the autoencoder is kept)", file=sys.stderr)
            return pre
        model = pre.model.cpu()
        if t.time_budget:  # the pre-training's seconds come out of the denoiser's budget
            t2 = dataclasses.replace(t2, time_budget=max(1.0, t.time_budget - (time.perf_counter() - started)))
    return fit(DiffusionTask(t2, model.train(), tok, train_rows, val_rows), t2, rt, on_eval=on_eval)
