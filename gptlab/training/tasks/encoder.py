"""Encoder-only transformers (BERT): masked-LM pretraining on any gptlab corpus, then a classifier
fine-tuned on labelled rows (a wine's variety or country from its description alone).

Registers the checkpoint kinds "encoder" (masked LM) and "classifier". Models live in
`gptlab.model.encoder`; this file holds the data handling and training loops.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np
import torch

from gptlab.checkpoint import load_checkpoint, read_config, save_model
from gptlab.data import DataConfig, load_corpus, normalize_text, split_records
from gptlab.errors import UserError
from gptlab.model import IGNORE_INDEX, ModelConfig
from gptlab.model.encoder import ENCODER_PRESETS, POOLINGS, Classifier, Encoder
from gptlab.training.tasks.seq2seq import LoopConfig, check_out_dir, fit, pad_batch
from gptlab.data.tokenizer import SPECIALS, Tokenizer

CLS, MASK = "[CLS]", "[MASK]"
KIND_ENCODER, KIND_CLASSIFIER = "encoder", "classifier"




# -- tokens and masking ---------------------------------------------------------------------------
def train_tokenizer(texts: list[str], kind: str = "word", vocab_size: int = 10000) -> Tokenizer:
    return Tokenizer.train(texts, kind=kind, vocab_size=vocab_size, extra_specials=(CLS, MASK))


def n_special(tok: Tokenizer) -> int:
    """Specials take the first ids ([PAD] [UNK] <|endoftext|> [CLS] [MASK]); words come after."""
    ids = [tok.token_to_id(s) for s in (*SPECIALS, CLS, MASK)]
    if any(i is None for i in ids):
        raise UserError("this tokenizer lacks [CLS]/[MASK]: it is not from `gptlab encoder pretrain`")
    return max(ids) + 1


def encode_texts(tok: Tokenizer, texts: list[str], context_length: int) -> list[list[int]]:
    """[CLS] + the text's tokens, cut to the context."""
    cls = tok.token_to_id(CLS)
    if cls is None:
        raise UserError("this tokenizer lacks [CLS]: it is not from `gptlab encoder pretrain`")
    return [[cls] + ids[: context_length - 1] for ids in tok.encode_batch(texts)]


def mask_tokens(ids_BxT: torch.Tensor, *, n_special: int, mask_id: int, vocab_size: int,
                generator: torch.Generator | None = None, mask_prob: float = 0.15
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT's masking: select mask_prob of the word tokens (never a special or padding); of those
    80% become [MASK], 10% a random word, 10% stay as they are (so the model cannot learn that
    only [MASK] positions matter). Returns (inputs_BxT, targets_BxT with IGNORE_INDEX where not
    selected)."""
    g = dict(generator=generator, device=ids_BxT.device)
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


def hide_words(ids_BxT: torch.Tensor, p: float, *, first_word: int, mask_id: int,
               generator: torch.Generator | None = None) -> torch.Tensor:
    """Each word token (never a special or padding) replaced by [MASK] with probability p.

    Fine-tuning on a few thousand labelled rows, a classifier soon keys on a handful of words per
    class and stops improving on unseen rows; hiding words at random makes it use the rest of the
    sentence too (the inputs also look like the masked-LM pretraining's).
    """
    if p <= 0:
        return ids_BxT
    hide_BxT = (torch.rand(ids_BxT.shape, generator=generator) < p).to(ids_BxT.device) & (ids_BxT >= first_word)
    return ids_BxT.masked_fill(hide_BxT, mask_id)


# -- data -----------------------------------------------------------------------------------------
def corpus_texts(dcfg: DataConfig, text_field: str = ""):
    """(corpus, texts): the corpus's documents, or one column of it (`text_field`) as documents."""
    if text_field:
        dcfg.template = "{" + text_field + "}"
    corpus = load_corpus(dcfg)
    return corpus, corpus.records


@dataclass
class Labelled:
    texts: list[str]
    labels: list[int]
    names: list[str]          # label index -> label value
    train: list[int]          # row indices
    val: list[int]
    dropped: int              # rows without a label, or with a label outside the top N


def labelled_rows(dcfg: DataConfig, label: str, text_field: str = "description", top: int = 20) -> Labelled:
    """Texts with labels from a table's column, split by record BEFORE filtering by label, so the
    split matches `gptlab encoder pretrain` on the same data (its validation rows stay unseen)."""
    if not label:
        raise UserError("--label is empty: name a column, e.g. --label variety")
    corpus, texts = corpus_texts(dcfg, text_field)
    if corpus.fields is None:
        raise UserError(f"{corpus.source} has no columns, so no labels: classification needs a CSV, "
                        "JSON or JSONL file (or the built-in corpus)")
    columns = dict.fromkeys(k for row in corpus.fields[:1000] for k in row)
    if label not in columns:
        raise UserError(f"{corpus.source} has no column {label!r}: pass --label with one of "
                        f"{', '.join(map(str, columns))}")
    values = [str(row.get(label) if row.get(label) is not None else "").strip() for row in corpus.fields]
    train_idx, val_idx = split_records(texts, dcfg.val_fraction, dcfg.seed)
    counts = Counter(values[i] for i in train_idx if values[i])
    names = [v for v, _ in counts.most_common(top if top > 0 else None)]
    if len(names) < 2:
        raise UserError(f"column {label!r} has {len(names)} distinct value(s) in the training rows: "
                        "a classifier needs at least 2")
    index = {v: i for i, v in enumerate(names)}
    keep = lambda idx: [i for i in idx if values[i] in index]  # noqa: E731
    tr, va = keep(train_idx), keep(val_idx)
    return Labelled(texts, [index.get(v, -1) for v in values], names, tr, va,
                    len(texts) - len(tr) - len(va))


# -- training (shared by both) --------------------------------------------------------------------
@dataclass
class EncoderTrainConfig(LoopConfig):
    out: str = field(default="runs/encoder", metadata={"help": "output folder for the model"})
    preset: str = field(default="small", metadata={"help": f"model preset: {', '.join(ENCODER_PRESETS)}"})
    text_field: str = field(default="", metadata={"help": "train on this column of a table (e.g. description); '' = the corpus's documents"})
    mask_prob: float = field(default=0.15, metadata={"help": "fraction of word tokens selected for prediction (80% [MASK], 10% random, 10% kept)"})
    init: str = field(default="", metadata={"help": "continue from this masked-LM encoder folder (its weights, shape and tokenizer): more pretraining, or adapting an encoder to a new corpus; '' = a new model from --preset"})
    seed: int = field(default=1337, metadata={"help": "seed for initialisation, batch order, masking and dropout"})

    def validate(self) -> None:
        super().validate()
        if self.preset not in ENCODER_PRESETS:
            raise UserError(f"unknown preset {self.preset!r}: choose one of {', '.join(ENCODER_PRESETS)}")
        if not 0.0 < self.mask_prob < 1.0:
            raise UserError(f"--mask-prob must be in (0, 1) (got {self.mask_prob})")


@dataclass
class ClassifyConfig(EncoderTrainConfig):
    out: str = field(default="runs/classifier", metadata={"help": "output folder for the classifier"})
    model: str = field(default="", metadata={"help": "pretrained encoder folder (from `gptlab encoder pretrain`); '' = train from scratch"})
    label: str = field(default="variety", metadata={"help": "column to predict (variety, country, or any column of a CSV/JSONL)"})
    text_field: str = field(default="description", metadata={"help": "column to read the text from"})
    top: int = field(default=20, metadata={"help": "keep the N most common labels (0 = all)"})
    pooling: str = field(default="mean", metadata={"help": "sentence vector: mean (over real tokens), cls, or meanmax (mean and per-feature max, concatenated)"})
    epochs: float = field(default=3.0, metadata={"help": "passes over the training rows (ignored when --steps > 0)"})
    steps: int = field(default=0, metadata={"help": "optimizer steps; 0 = from --epochs"})
    lr: float = field(default=3e-4, metadata={"help": "peak learning rate"})
    min_lr: float = field(default=1e-5, metadata={"help": "learning rate at the end of the cosine"})
    warmup_steps: int = field(default=100, metadata={"help": "linear warmup steps"})
    dev_fraction: float = field(default=0.1, metadata={"help": "training rows held out to pick the best step by accuracy (early stopping; evaluated every --eval-interval steps); 0 = keep the last step"})
    word_dropout: float = field(default=0.2, metadata={"help": "fraction of the words of each training batch hidden as [MASK]: a regularizer for small labelled sets (0 = off)"})
    ema: float = field(default=0.999, metadata={"help": "decay of an exponential moving average of the weights, which is what is evaluated and kept (0 = off)"})

    def validate(self) -> None:
        if not 0.0 <= self.word_dropout < 1.0:
            raise UserError(f"--word-dropout must be in [0, 1) (got {self.word_dropout})")
        if not 0.0 <= self.dev_fraction < 0.5:
            raise UserError(f"--dev-fraction must be in [0, 0.5) (got {self.dev_fraction})")
        if self.steps < 0 or (self.steps == 0 and self.epochs <= 0 and self.time_budget <= 0):
            raise UserError("give --steps or --epochs > 0")
        if self.pooling not in POOLINGS:
            raise UserError(f"--pooling must be one of {', '.join(POOLINGS)} (got {self.pooling!r})")
        self.validate_loop()
        if not self.model and self.preset not in ENCODER_PRESETS:
            raise UserError(f"unknown preset {self.preset!r}: choose one of {', '.join(ENCODER_PRESETS)}")


def _length_batches(lengths: np.ndarray, batch_size: int, rng: np.random.Generator):
    """Endless batches of similar length (little padding), in random order."""
    n = len(lengths)
    while True:
        order = rng.permutation(n)
        chunk = 50 * batch_size
        batches = []
        for i in range(0, n, chunk):
            part = order[i:i + chunk]
            part = part[np.argsort(lengths[part], kind="stable")]
            batches += [part[j:j + batch_size] for j in range(0, len(part), batch_size)]
        for j in rng.permutation(len(batches)):
            yield batches[j]


def _setup(t):
    from gptlab.training.trainer import autocast, resolve_device, resolve_precision
    t.validate()
    device = resolve_device(t.device)
    amp = resolve_precision(t.precision, device)
    if t.threads:
        torch.set_num_threads(t.threads)
    return device, amp, autocast


def warn_if_other_split(cfg: dict, dcfg: DataConfig) -> None:
    """Say so when a saved encoder saw another corpus or split: its text may include our validation rows."""
    seen = cfg.get("data", {})
    if any(seen.get(k) != getattr(dcfg, k) for k in ("data", "seed", "val_fraction")):
        import sys
        print("gptlab encoder: warning: the encoder was pretrained with another --data/--data-seed/--val-fraction, "
              "so some validation rows may have been pretraining text", file=sys.stderr)


# -- masked-LM pretraining ------------------------------------------------------------------------
@dataclass
class EncoderResult:
    model: torch.nn.Module
    tokenizer: Tokenizer
    config: dict
    history: list[dict] = field(default_factory=list)


@torch.no_grad()
def mlm_loss(model: Encoder, seqs: list[list[int]], tok: Tokenizer, device, amp, mask_prob: float = 0.15,
             batch_size: int = 128, limit: int = 2000, seed: int = 0) -> float:
    """Masked-LM loss on fixed masks (seeded), so successive evaluations compare."""
    from gptlab.training.trainer import autocast
    model.eval()
    g = torch.Generator().manual_seed(seed)
    ns, mask_id = n_special(tok), tok.token_to_id(MASK)
    total, count = 0.0, 0
    seqs = seqs[:limit]
    for i in range(0, len(seqs), batch_size):
        ids, key_mask = pad_batch(seqs[i:i + batch_size], tok.pad_id)
        x, y = mask_tokens(ids, n_special=ns, mask_id=mask_id, vocab_size=tok.vocab_size, generator=g,
                           mask_prob=mask_prob)
        with autocast(device, amp):
            out = model(x.to(device), y.to(device), key_mask_BxT=key_mask.to(device))
        total += float(out.nll_sum)
        count += out.n_tokens
    return total / max(count, 1)


def pretrain(t: EncoderTrainConfig, dcfg: DataConfig | None = None, model_cfg: ModelConfig | None = None,
             save: bool = True) -> EncoderResult:
    """Masked-LM pretraining on the corpus's training split; writes the model to t.out."""
    device, amp, autocast = _setup(t)
    dcfg = dcfg or DataConfig()
    if save:
        check_out_dir(Path(t.out), t.overwrite)
    corpus, texts = corpus_texts(dcfg, t.text_field)
    train_idx, val_idx = split_records(texts, dcfg.val_fraction, dcfg.seed)
    start = None
    if t.init:  # the encoder's own tokenizer and shape; its weights are loaded below
        start, tok, init_cfg = load_encoder(t.init, "cpu", kinds=(KIND_ENCODER,))
        mcfg = ModelConfig.from_dict(init_cfg["model"])
        warn_if_other_split(init_cfg, dcfg)
        metrics = {"init": t.init, "init_steps": init_cfg.get("metrics", {}).get("steps")}
    else:
        tok = train_tokenizer([texts[i] for i in train_idx], t.tokenizer, t.vocab_size)
        mcfg = model_cfg if model_cfg is not None else ENCODER_PRESETS[t.preset]()
        mcfg.vocab_size = tok.vocab_size
        metrics = {}
    try:
        mcfg.validate()
    except ValueError as e:
        raise UserError(f"bad model setting: {e}") from None
    seqs = encode_texts(tok, texts, mcfg.context_length)
    train_seqs = [seqs[i] for i in train_idx]
    val_seqs = [seqs[i] for i in val_idx]
    torch.manual_seed(t.seed)
    model = Encoder(mcfg)
    if start is not None:
        model.load_state_dict(start.state_dict())
    model.to(device)
    rng = np.random.default_rng(t.seed)
    g = torch.Generator().manual_seed(t.seed)
    batches = _length_batches(np.array([len(s) for s in train_seqs]), min(t.batch_size, len(train_seqs)), rng)
    ns, mask_id = n_special(tok), tok.token_to_id(MASK)

    def loss_of(step: int) -> torch.Tensor:
        ids, key_mask = pad_batch([train_seqs[i] for i in next(batches)], tok.pad_id)
        x, y = mask_tokens(ids, n_special=ns, mask_id=mask_id, vocab_size=tok.vocab_size, generator=g,
                           mask_prob=t.mask_prob)
        with autocast(device, amp):
            return model(x.to(device), y.to(device), key_mask_BxT=key_mask.to(device)).loss

    evaluate = (lambda: {"val_loss": mlm_loss(model, val_seqs, tok, device, amp, t.mask_prob)}) if val_seqs else None
    total = t.steps if t.steps > 0 else 10**9
    history, stats = fit(model, t, total, loss_of, evaluate, "encoder pretrain", device)
    stats.update(metrics)
    if val_seqs:
        stats["val_loss"] = mlm_loss(model, val_seqs, tok, device, amp, t.mask_prob)
    config = {"kind": KIND_ENCODER, "model": mcfg.to_dict(),
              "encoder": {"text_field": t.text_field, "normalize": dcfg.normalize, "source": corpus.source},
              "data": dcfg.to_dict(), "train": t.to_dict(), "metrics": stats}
    if save:
        save_model(t.out, model, tok, config)
    return EncoderResult(model, tok, config, history)


# -- classification -------------------------------------------------------------------------------
@torch.no_grad()
def predict_ids(model: Classifier, seqs: list[list[int]], pad_id: int, batch_size: int = 256) -> torch.Tensor:
    """Class probabilities (N, K)."""
    model.eval()
    dev = next(model.parameters()).device
    out = []
    for i in range(0, len(seqs), batch_size):
        ids, key_mask = pad_batch(seqs[i:i + batch_size], pad_id)
        out.append(model(ids.to(dev), key_mask_BxT=key_mask.to(dev)).logits.float().softmax(-1).cpu())
    return torch.cat(out) if out else torch.zeros(0, model.head.out_features)


def accuracy(model: Classifier, seqs: list[list[int]], labels: list[int], pad_id: int) -> float:
    if not seqs:
        return float("nan")
    pred = predict_ids(model, seqs, pad_id).argmax(-1)
    return float((pred == torch.tensor(labels)).float().mean())


def load_encoder(path: str | Path, device: str = "cpu", kinds=(KIND_ENCODER, KIND_CLASSIFIER)):
    """(model, tokenizer, config) from an encoder or classifier folder; other kinds are refused."""
    cfg = read_config(path, make="gptlab encoder pretrain" if kinds == (KIND_ENCODER,) else "gptlab encoder classify")
    if cfg.get("kind") not in kinds:
        want = " or ".join(repr(k) for k in kinds)
        raise UserError(f"{path} holds a {cfg.get('kind')!r} model where {want} is needed: make one with "
                        "`gptlab encoder pretrain` / `gptlab encoder classify`")
    return load_checkpoint(path, device)


def classify(t: ClassifyConfig, dcfg: DataConfig | None = None, model_cfg: ModelConfig | None = None,
             save: bool = True, data: Labelled | None = None) -> EncoderResult:
    """Fine-tune a classifier on t.label (from a pretrained encoder, or from scratch)."""
    device, amp, autocast = _setup(t)
    dcfg = dcfg or DataConfig()
    if save:
        check_out_dir(Path(t.out), t.overwrite)
    pre_cfg = None
    if t.model:
        encoder, tok, pre_cfg = load_encoder(t.model, "cpu", kinds=(KIND_ENCODER,))
        mcfg = ModelConfig.from_dict(pre_cfg["model"])
        warn_if_other_split(pre_cfg, dcfg)
    data = data or labelled_rows(dcfg, t.label, t.text_field, t.top)
    if not data.train:
        raise UserError(f"no training rows carry one of the labels of {t.label!r}")
    if not t.model:
        tok = train_tokenizer([data.texts[i] for i in data.train], t.tokenizer, t.vocab_size)
        mcfg = model_cfg if model_cfg is not None else ENCODER_PRESETS[t.preset]()
        mcfg.vocab_size = tok.vocab_size
    try:
        mcfg.validate()
    except ValueError as e:
        raise UserError(f"bad model setting: {e}") from None
    torch.manual_seed(t.seed)
    model = Classifier(mcfg, len(data.names), t.pooling)
    if t.model:
        model.encoder.load_state_dict(encoder.state_dict())
    model.to(device)
    seqs = encode_texts(tok, data.texts, mcfg.context_length)
    # A dev slice of the training rows picks the best step, so the validation rows stay unseen.
    train_rows = list(data.train)
    n_dev = int(len(train_rows) * t.dev_fraction) if len(train_rows) >= 20 else 0
    dev_rows = []
    if n_dev:
        perm = np.random.default_rng(t.seed).permutation(len(train_rows))
        dev_rows = [train_rows[i] for i in sorted(perm[:n_dev])]
        train_rows = [train_rows[i] for i in sorted(perm[n_dev:])]
    tr_seqs = [seqs[i] for i in train_rows]
    tr_y = torch.tensor([data.labels[i] for i in train_rows])
    va_seqs = [seqs[i] for i in data.val]
    va_y = [data.labels[i] for i in data.val]
    rng = np.random.default_rng(t.seed)
    bs = min(t.batch_size, len(tr_seqs))
    batches = _length_batches(np.array([len(s) for s in tr_seqs]), bs, rng)

    first_word, mask_id = n_special(tok), tok.token_to_id(MASK)
    hide_rng = torch.Generator().manual_seed(t.seed)

    def loss_of(step: int) -> torch.Tensor:
        rows = next(batches)
        ids, key_mask = pad_batch([tr_seqs[i] for i in rows], tok.pad_id)
        ids = hide_words(ids, t.word_dropout, first_word=first_word, mask_id=mask_id, generator=hide_rng)
        with autocast(device, amp):
            return model(ids.to(device), tr_y[rows].to(device), key_mask_BxT=key_mask.to(device)).loss

    if dev_rows:
        dev_seqs, dev_y = [seqs[i] for i in dev_rows], [data.labels[i] for i in dev_rows]
        evaluate = lambda: {"dev_accuracy": accuracy(model, dev_seqs, dev_y, tok.pad_id)}  # noqa: E731
    else:
        evaluate = (lambda: {"val_accuracy": accuracy(model, va_seqs, va_y, tok.pad_id)}) if va_seqs else None
    total = t.steps if t.steps > 0 else max(1, round(t.epochs * len(tr_seqs) / bs))
    history, stats = fit(model, t, total, loss_of, evaluate, f"classify {t.label}", device,
                         best_of="dev_accuracy" if dev_rows else None)
    majority = Counter(tr_y.tolist()).most_common(1)[0][0]
    stats.update({"val_accuracy": accuracy(model, va_seqs, va_y, tok.pad_id),
                  "val_majority_baseline": (sum(y == majority for y in va_y) / len(va_y)) if va_y else float("nan"),
                  "train_rows": len(tr_seqs), "dev_rows": len(dev_rows), "val_rows": len(va_seqs),
                  "dropped_rows": data.dropped})
    config = {"kind": KIND_CLASSIFIER, "model": mcfg.to_dict(),
              "classifier": {"labels": data.names, "label": t.label, "text_field": t.text_field,
                             "pooling": t.pooling, "normalize": dcfg.normalize, "pretrained": t.model or None},
              "data": dcfg.to_dict(), "train": t.to_dict(), "metrics": stats}
    if save:
        save_model(t.out, model, tok, config)
    return EncoderResult(model, tok, config, history)


def predict(model: Classifier, tok: Tokenizer, config: dict, texts: list[str], top: int = 1) -> list[list[tuple[str, float]]]:
    """The top labels with probabilities for each text (normalised as the training rows were)."""
    c = config["classifier"]
    if c.get("normalize", True):
        texts = [normalize_text(s) for s in texts]
    probs = predict_ids(model, encode_texts(tok, texts, model.cfg.context_length), tok.pad_id)
    p, k = probs.topk(min(top, probs.shape[-1]), dim=-1)
    return [[(c["labels"][j], float(q)) for q, j in zip(pr.tolist(), kr.tolist())] for pr, kr in zip(p, k)]
