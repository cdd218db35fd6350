"""Shared by the training benchmarks: the real wine reviews tokenized once, the course notebook's
Keras model (TensorFlow backend), timing helpers and the quality figures.

Both frameworks see the same token ids: gptlab's word-level tokenizer (10k, the notebook's
normalisation) trained on the training records, every record followed by <|endoftext|> and
padded with id 0 to 81 tokens as the notebook's TextVectorization does.
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from gptlab.data import Corpus, DataConfig, load_corpus, split_records  # noqa: E402
from gptlab.data.tokenizer import Tokenizer  # noqa: E402
from gptlab.infer.quality import distinct_n, parse_template, template_valid  # noqa: E402
from gptlab.training.batches import encode_records  # noqa: E402
from gptlab.training.config import RunConfig  # noqa: E402
from gptlab.training.tasks.causal_lm import gpt_tokenizer  # noqa: E402

WINE_CSV = str(REPO.parent / "shared" / "data" / "wine-reviews.csv")  # ../shared beside the repo
CTX = 80
SEED = 42


@dataclass
class WineData:
    corpus: Corpus                 # all template rows and their fields (gptlab's trainer re-splits it identically)
    train_recs: list[str]
    val_recs: list[str]
    tok: Tokenizer
    train_seqs: list[np.ndarray]   # ids + <|endoftext|>, at most CTX + 1
    val_seqs: list[np.ndarray]
    provinces: dict[str, set[str]]  # country -> provinces seen in the data
    varieties: set[str]


def load_wine(path: str = WINE_CSV, val_fraction: float = 0.05, seed: int = SEED, max_records: int = 0,
              label_words: bool = True) -> WineData:
    """Template rows of the real reviews, split by record with `seed` (gptlab's split_records), and
    the word tokenizer both frameworks share: the 10,000 most frequent words of the training
    records, and (`label_words`, as `gptlab train` does) every word of their countries, provinces
    and varieties besides, so no name becomes [UNK]."""
    if not Path(path).is_file():
        sys.exit(f"no corpus at {path}: pass --data PATH to a Kaggle wine-reviews CSV")
    cfg = RunConfig(data=DataConfig(data=path, max_records=max_records))  # word tokenizer, 10,000-word cap
    cfg.train.label_words = label_words
    corpus = load_corpus(cfg.data)
    records = corpus.records
    tr, va = split_records(records, val_fraction, seed)
    train_recs, val_recs = [records[i] for i in tr], [records[i] for i in va]
    tok = gpt_tokenizer(cfg, corpus, tr, start_with_eot=False)
    provinces: dict[str, set[str]] = {}
    varieties: set[str] = set()
    for r in records:
        parsed = parse_template(r)
        if parsed:
            c, p, v, _ = parsed
            provinces.setdefault(c, set()).add(p)
            varieties.add(v)
    return WineData(Corpus(records, corpus.source, corpus.skipped, corpus.fields), train_recs, val_recs, tok,
                    encode_records(tok, train_recs, CTX), encode_records(tok, val_recs, CTX), provinces, varieties)


def padded(seqs: list[np.ndarray], ctx: int = CTX) -> tuple[np.ndarray, np.ndarray]:
    """(x, y) int32 arrays (N, ctx), padded with id 0 as the notebook's TextVectorization pads."""
    arr = np.zeros((len(seqs), ctx + 1), dtype=np.int32)
    for i, s in enumerate(seqs):
        arr[i, :len(s)] = s
    return arr[:, :-1], arr[:, 1:]


def median(xs) -> float:
    return statistics.median(xs) if xs else float("nan")


# -- the course notebook's model in Keras 3 (TensorFlow backend) -------------------------------------
def import_keras():
    """keras on the TensorFlow backend, or None with a message (the `bench` extra installs both)."""
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        import keras
        import tensorflow  # noqa: F401  (the backend must be importable)
    except ImportError:
        print("keras/tensorflow not installed: skipping the Keras comparison "
              "(pip install 'gptlab[bench]' or pip install tensorflow-cpu keras)")
        return None
    if keras.backend.backend() != "tensorflow":
        print(f"KERAS_BACKEND is {keras.backend.backend()!r}: the comparison is with TensorFlow; unset it")
        return None
    return keras


def keras_notebook_model(keras, vocab_size: int = 10000, ctx: int = CTX, embed_dim: int = 256, key_dim: int = 256,
                         n_heads: int = 2, ff_dim: int = 256, dropout: float = 0.1):
    """The notebook's GPT: token+position embedding, one post-LN transformer block with a causal
    MultiHeadAttention(2 heads, key_dim 256), FFN 256 relu, Dense(vocab) softmax; Adam, sparse CE.
    5,809,168 parameters with a 10k vocabulary."""
    from keras import layers, ops

    class TokenAndPositionEmbedding(layers.Layer):
        def __init__(self, maxlen, vocab, dim, **kw):
            super().__init__(**kw)
            self.token_emb = layers.Embedding(vocab, dim)
            self.pos_emb = layers.Embedding(maxlen, dim)

        def call(self, x):
            positions = ops.arange(0, ops.shape(x)[-1])
            return self.token_emb(x) + self.pos_emb(positions)

    class TransformerBlock(layers.Layer):
        def __init__(self, **kw):
            super().__init__(**kw)
            self.attn = layers.MultiHeadAttention(n_heads, key_dim, output_shape=embed_dim)
            self.dropout_1 = layers.Dropout(dropout)
            self.ln_1 = layers.LayerNormalization(epsilon=1e-6)
            self.ffn_1 = layers.Dense(ff_dim, activation="relu")
            self.ffn_2 = layers.Dense(embed_dim)
            self.dropout_2 = layers.Dropout(dropout)
            self.ln_2 = layers.LayerNormalization(epsilon=1e-6)

        def call(self, inputs, training=None):
            # The notebook builds the same lower-triangular mask by hand (causal_attention_mask).
            attn_out = self.attn(inputs, inputs, use_causal_mask=True, training=training)
            out1 = self.ln_1(inputs + self.dropout_1(attn_out, training=training))
            ffn = self.ffn_2(self.ffn_1(out1))
            return self.ln_2(out1 + self.dropout_2(ffn, training=training))

    inputs = layers.Input(shape=(None,), dtype="int32")
    x = TokenAndPositionEmbedding(ctx, vocab_size, embed_dim)(inputs)
    x = TransformerBlock()(x)
    outputs = layers.Dense(vocab_size, activation="softmax")(x)
    model = keras.Model(inputs=inputs, outputs=outputs)
    model.compile(optimizer=keras.optimizers.Adam(), loss=keras.losses.SparseCategoricalCrossentropy())
    return model


class StepTimer:
    """Keras callback: wall and process CPU time of each training batch."""

    def __new__(cls, keras):
        class _Timer(keras.callbacks.Callback):
            def __init__(self):
                super().__init__()
                self.times: list[float] = []
                self.cpu_times: list[float] = []
                self._t = self._c = 0.0

            def on_train_batch_begin(self, batch, logs=None):
                self._t, self._c = time.perf_counter(), time.process_time()

            def on_train_batch_end(self, batch, logs=None):
                self.times.append(time.perf_counter() - self._t)
                self.cpu_times.append(time.process_time() - self._c)
        return _Timer()


def set_threads(n: int, tensorflow: bool = True) -> None:
    """Use n CPU threads in both frameworks (0 = their defaults); call before either computes."""
    if not n:
        return
    os.environ["OMP_NUM_THREADS"] = str(n)
    import torch
    torch.set_num_threads(n)
    if not tensorflow:
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        import tensorflow as tf
        tf.config.threading.set_intra_op_parallelism_threads(n)
        tf.config.threading.set_inter_op_parallelism_threads(n)
    except (ImportError, RuntimeError):
        pass


def keras_nll(model, seqs: list[np.ndarray], batch_size: int = 256) -> tuple[float, float]:
    """(NLL per non-padding target, NLL per position counting padding) of a Keras model."""
    x, y = padded(seqs)
    nll = nll_pad = 0.0
    n = 0
    for i in range(0, len(x), batch_size):
        p = np.asarray(model(x[i:i + batch_size], training=False), dtype=np.float64)
        yb = y[i:i + batch_size]
        logp = np.log(np.maximum(np.take_along_axis(p, yb[..., None].astype(np.int64), -1)[..., 0], 1e-12))
        keep = yb != 0
        nll -= float(logp[keep].sum())
        nll_pad -= float(logp.sum())
        n += int(keep.sum())
    return nll / max(n, 1), nll_pad / y.size


# -- quality ---------------------------------------------------------------------------------------
@dataclass
class Quality:
    template_ok: float      # share of samples keeping the template with known country/province/variety
    germany_mass: float     # P(next word starts a German province | "wine review : germany :")
    distinct2: float        # of the samples
    distinct2_real: float   # of as many real validation reviews
    samples: list[str]
    invalid: list[str]      # the samples that broke the template
    template_ok_first: float = float("nan")  # the same share over the first `first` samples only
    first: int = 0


def quality_report(next_probs, sample_fn, data: WineData, n: int = 200, seed: int = 0, first: int = 200) -> Quality:
    """`next_probs(ids) -> np.ndarray (V,)`, `sample_fn(n, seed) -> list[str]` (texts after the prompt).

    With n > first, the template share is also given over the first `first` samples: the same
    samples a run with n = first draws (the samplers draw in fixed batches from one seeded
    generator), so a larger n narrows the estimate without changing the headline figure's samples.
    """
    tok = data.tok
    prompt = "wine review : germany :"
    p = next_probs(tok.encode(prompt))
    # First words of German provinces (multi-word names like `mosel - saar - ruwer` start with one).
    firsts = {tok.encode(prov)[0] for prov in data.provinces.get("germany", ())}
    german = float(sum(p[i] for i in firsts if i != tok.unk_id))
    samples = ["wine review : " + s.strip() for s in sample_fn(n, seed)]
    valid = [template_valid(s, data.provinces, data.varieties) for s in samples]
    invalid = [s for s, v in zip(samples, valid) if not v]
    ok = 1 - len(invalid) / max(len(samples), 1)
    first = min(first, len(samples))
    ok_first = sum(valid[:first]) / max(first, 1)
    rng = np.random.default_rng(seed)
    # distinct-n depends on how many texts: both sides over `first` texts.
    real = [data.val_recs[i].strip() for i in rng.choice(len(data.val_recs), min(first, len(data.val_recs)), replace=False)]
    return Quality(ok, german, distinct_n(samples[:first], 2), distinct_n(real, 2), samples, invalid,
                   ok_first, first)


def gptlab_sampler(model, tok: Tokenizer, prompt: str = "wine review :", temperature: float = 1.0, batch: int = 50):
    """Batched sampling with the KV cache, all rows from the same prompt; stops at <|endoftext|>."""
    import torch

    def sample(n: int, seed: int) -> list[str]:
        g = torch.Generator().manual_seed(seed)
        ids = tok.encode(prompt)
        ctx = model.cfg.context_length
        out: list[str] = []
        model.eval()
        with torch.no_grad():
            for start in range(0, n, batch):
                b = min(batch, n - start)
                cache = model.new_cache(b)
                logits = model(torch.tensor([ids] * b), cache=cache, last_only=True).logits[:, -1]
                rows = [[] for _ in range(b)]
                done = [False] * b
                while cache.length < ctx and not all(done):
                    probs = torch.softmax(logits.float() / temperature, -1)
                    nxt = torch.multinomial(probs, 1, generator=g)
                    for r, t in enumerate(nxt[:, 0].tolist()):
                        if not done[r]:
                            if t in (tok.eot_id, tok.pad_id):
                                done[r] = True
                            else:
                                rows[r].append(t)
                    logits = model(nxt, cache=cache).logits[:, -1]
                out += [tok.decode(r) for r in rows]
        return out
    return sample


def gptlab_next_probs(model):
    import torch

    def next_probs(ids: list[int]) -> np.ndarray:
        model.eval()
        with torch.no_grad():
            logits = model(torch.tensor([ids])).logits[0, -1].float()
        return torch.softmax(logits, -1).numpy()
    return next_probs


def keras_sampler(model, tok: Tokenizer, prompt: str = "wine review :", temperature: float = 1.0, batch: int = 50):
    """The notebook's TextGenerator, batched: full recompute each step, stop at padding or <|endoftext|>."""
    def sample(n: int, seed: int) -> list[str]:
        rng = np.random.default_rng(seed)
        ids = tok.encode(prompt)
        out: list[str] = []
        for start in range(0, n, batch):
            b = min(batch, n - start)
            seqs = [list(ids) for _ in range(b)]
            done = [False] * b
            while len(seqs[0]) < CTX and not all(done):
                probs = np.asarray(model(np.array(seqs, dtype=np.int32), training=False)[:, -1], dtype=np.float64)
                probs = probs ** (1.0 / temperature)
                probs /= probs.sum(-1, keepdims=True)
                for r in range(b):
                    t = int(rng.choice(len(probs[r]), p=probs[r]))
                    seqs[r].append(t)
                    if t in (tok.eot_id, tok.pad_id):
                        done[r] = True
            for s in seqs:
                body = s[len(ids):]
                cut = [i for i, t in enumerate(body) if t in (tok.eot_id, tok.pad_id)]
                out.append(tok.decode(body[:cut[0]] if cut else body))
        return out
    return sample


def keras_next_probs(model):
    def next_probs(ids: list[int]) -> np.ndarray:
        return np.asarray(model(np.array([ids], dtype=np.int32), training=False)[0, -1], dtype=np.float64)
    return next_probs


def fmt_quality(q: Quality) -> str:
    more = (f" ({100 * q.template_ok_first:.1f}% of the first {q.first})" if len(q.samples) > q.first else "")
    return (f"template kept (known country, its province, known variety): {100 * q.template_ok:.1f}% of {len(q.samples)}{more}; "
            f"P(German province | 'wine review : germany :') {100 * q.germany_mass:.1f}%; "
            f"distinct-2 {q.distinct2:.3f} (real reviews {q.distinct2_real:.3f})")


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


def load_note() -> str:
    try:
        return f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores"
    except OSError:
        return ""



