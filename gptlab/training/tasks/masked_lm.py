"""The encoder's pretraining task: masked-language modelling (BERT), `gptlab encoder pretrain`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from gptlab.data import DataConfig, split_records
from gptlab.data.texts import corpus_texts, encode_texts, mask_id, n_special, train_tokenizer, warn_if_other_split
from gptlab.data.tokenizer import Tokenizer
from gptlab.errors import UserError
from gptlab.infer.classify import KIND_ENCODER, load_encoder
from gptlab.model import IGNORE_INDEX, ModelConfig
from gptlab.model.encoder import ENCODER_PRESETS, Encoder
from gptlab.model.padding import pad_batch
from gptlab.settings import setting
from gptlab.training.batches import RowBatches
from gptlab.training.config import FamilyLoopConfig, fit_vocab
from gptlab.training.env import Runtime
from gptlab.training.loop import Batch, Task, TrainResult, fit, prepare_out, runtime_for


@dataclass
class EncoderTrainConfig(FamilyLoopConfig):
    out: str = setting("runs/encoder", "output folder for the model")
    preset: str = setting("small", f"model preset: {', '.join(ENCODER_PRESETS)}", choices=tuple(ENCODER_PRESETS))
    text_field: str = setting("", "train on this column of a table (e.g. description); '' = the corpus's documents")
    mask_prob: float = setting(0.15, "fraction of word tokens selected for prediction (80% [MASK], 10% random, 10% kept)", above=0, below=1)
    init: str = setting("", "continue from this masked-LM encoder folder (its weights, shape and tokenizer): more pretraining, or adapting an encoder to a new corpus; '' = a new model from --preset")
    max_steps: int = setting(2000, "optimizer steps; 0 = from --epochs", min=0)


def mask_tokens(ids_BxT: torch.Tensor, *, n_special: int, mask_id: int, vocab_size: int,
                generator: torch.Generator | None = None, mask_prob: float = 0.15
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT's masking: select mask_prob of the word tokens (never a special or padding); of those
    80% become [MASK], 10% a random word, 10% stay as they are (so the model cannot learn that
    only [MASK] positions matter). Returns (inputs_BxT, targets_BxT with IGNORE_INDEX where not
    selected)."""
    g: dict[str, Any] = dict(generator=generator, device=ids_BxT.device)
    maskable = ids_BxT >= n_special
    selected = (torch.rand(ids_BxT.shape, **g) < mask_prob) & maskable
    u = torch.rand(ids_BxT.shape, **g)
    to_mask = selected & (u < 0.8)
    to_random = selected & (u >= 0.8) & (u < 0.9)
    inputs = ids_BxT.clone()
    inputs[to_mask] = mask_id
    random_ids = torch.randint(n_special, vocab_size, ids_BxT.shape, **g)
    inputs[to_random] = random_ids[to_random]
    targets = torch.where(selected, ids_BxT, torch.full_like(ids_BxT, IGNORE_INDEX))
    return inputs, targets


class MaskedLM(Task[Encoder]):
    kind = KIND_ENCODER

    def __init__(self, t: EncoderTrainConfig, dcfg: DataConfig, mcfg: ModelConfig | None,
                 tokenizer: Tokenizer | None = None):
        self.t, self.dcfg = t, dcfg
        self.corpus, texts = corpus_texts(dcfg, t.text_field)
        train_idx, val_idx = split_records(texts, dcfg.val_fraction, dcfg.seed)
        start, self.extra = None, {}
        if t.init:  # the encoder's own tokenizer and shape; its weights are loaded below
            start, init_tok, init_cfg = load_encoder(t.init, "cpu", kinds=(KIND_ENCODER,))
            tokenizer, mcfg = tokenizer or init_tok, ModelConfig.from_dict(init_cfg["model"])
            warn_if_other_split(init_cfg, dcfg)
            self.extra = {"init": t.init, "init_steps": init_cfg.get("metrics", {}).get("steps")}
        self.tokenizer = tok = tokenizer or train_tokenizer([texts[i] for i in train_idx], t.tokenizer, t.vocab_size)
        self.mcfg = mcfg = fit_vocab(mcfg if mcfg is not None else ENCODER_PRESETS[t.preset](), tok.vocab_size)
        seqs = encode_texts(tok, texts, mcfg.context_length)
        self.train_seqs = [seqs[i] for i in train_idx]
        self.val_seqs = [seqs[i] for i in val_idx]
        if not self.train_seqs:
            raise UserError("no training texts: give a bigger corpus or a lower --val-fraction")
        self.rows = RowBatches([len(s) for s in self.train_seqs], t.batch_size, t.seed)
        self.n_special, self.mask_id = n_special(tok), mask_id(tok)
        torch.manual_seed(t.seed)
        self.model = Encoder(mcfg)
        if start is not None:
            self.model.load_state_dict(start.state_dict())

    def steps_per_epoch(self) -> int:
        return self.rows.steps_per_epoch

    def _masked(self, seqs: list[list[int]], g: torch.Generator) -> dict[str, torch.Tensor]:
        ids, key_mask = pad_batch(seqs, self.tokenizer.pad_id)
        x, y = mask_tokens(ids, n_special=self.n_special, mask_id=self.mask_id, vocab_size=self.tokenizer.vocab_size,
                           generator=g, mask_prob=self.t.mask_prob)
        return {"x": x, "y": y, "key_mask": key_mask}

    def batch(self, step: int) -> Batch:
        # The masks of a step come from a generator seeded by (seed, step): resume draws the same.
        g = torch.Generator().manual_seed(self.t.seed * 1_000_003 + step)
        b = self._masked([self.train_seqs[i] for i in self.rows.rows(step)], g)
        return Batch(b, int((b["y"] != IGNORE_INDEX).sum()))

    def loss_sum(self, model: Any, tensors: dict[str, torch.Tensor]) -> torch.Tensor:
        return model(tensors["x"], tensors["y"], key_mask_BxT=tensors["key_mask"]).nll_sum

    @torch.no_grad()
    def evaluate(self, model: Encoder, rt: Runtime, batch_size: int = 128, limit: int = 2000) -> dict[str, float]:
        """Masked-LM loss on fixed masks (seeded), so successive evaluations compare."""
        if not self.val_seqs:
            return {}
        model.eval()
        g = torch.Generator().manual_seed(0)
        total, count = 0.0, 0
        seqs = self.val_seqs[:limit]
        for i in range(0, len(seqs), batch_size):
            b = {k: v.to(rt.device) for k, v in self._masked(seqs[i:i + batch_size], g).items()}
            with rt.autocast():
                out = model(b["x"], b["y"], key_mask_BxT=b["key_mask"])
            total += float(out.nll_sum)
            count += out.n_tokens
        return {"val_loss": total / max(count, 1)}

    def final_metrics(self, model: Encoder, rt: Runtime) -> dict[str, Any]:
        return dict(self.extra)

    def config(self) -> dict[str, Any]:
        return {"model": self.mcfg.to_dict(),
                "encoder": {"text_field": self.t.text_field, "normalize": self.dcfg.normalize, "source": self.corpus.source},
                "data": self.dcfg.to_dict()}

    def describe(self) -> str:
        return (f"gptlab encoder pretrain: {self.corpus.source}: {len(self.train_seqs):,} train / "
                f"{len(self.val_seqs):,} val texts; vocab {self.tokenizer.vocab_size:,}; ")


def pretrain(t: EncoderTrainConfig, dcfg: DataConfig | None = None, model_cfg: ModelConfig | None = None,
             save: bool = True, on_eval=None) -> TrainResult[Encoder]:
    """Masked-LM pretraining on the corpus's training split; writes the model to t.out."""
    rt = runtime_for(t, save)
    dcfg = dcfg or DataConfig()
    dcfg.validate()
    mcfg = model_cfg if model_cfg is not None or t.init else ENCODER_PRESETS[t.preset]()
    saved_tok = prepare_out(t, KIND_ENCODER, mcfg.to_dict() if mcfg else {}, "gptlab encoder pretrain")
    return fit(MaskedLM(t, dcfg, mcfg, saved_tok), t, rt, on_eval=on_eval)
