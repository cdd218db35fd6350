"""Encoder-decoder translation: sentence pairs, the built-in number task, training, greedy and beam
search, evaluation. The model itself lives in `gptlab.model.seq2seq`; this file registers the
checkpoint kind "seq2seq" so `gptlab.load` and `load_checkpoint` rebuild it.

Data: a tab-separated pairs file (`source<TAB>target[<TAB>anything...]`: the Anki/Tatoeba `spa-eng`
files of the Keras English-to-Spanish example fit as they are), or `numbers`: English number words
to Spanish number words for 0..9999 made with num2words, split by number so every test number is
one the model never saw ("three hundred forty-two" -> "trescientos cuarenta y dos").
"""

from __future__ import annotations

import contextlib

import math
import random
import sys
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from gptlab.checkpoint import CONFIG, load_checkpoint, save_model
from gptlab.errors import UserError
from gptlab.model import IGNORE_INDEX
from gptlab.model.seq2seq import SEQ2SEQ_PRESETS, Seq2Seq, Seq2SeqConfig
from gptlab.data.tokenizer import Tokenizer

BOS = "<s>"  # the decoder's start token; <|endoftext|> ends a target
KIND = "seq2seq"




# -- data ------------------------------------------------------------------------------------------
def read_pairs(path: str | Path, reverse: bool = False, max_pairs: int = 0,
               encoding: str = "utf-8") -> list[tuple[str, str]]:
    """(source, target) from a TSV file: first two columns of each non-blank line.

    Any line without a tab or with an empty side is an error naming its line number: a half-read
    pairs file would silently train on garbage.
    """
    p = Path(path).expanduser()
    if not p.is_file():
        raise UserError(f"pairs file {p} not found: pass a TSV file (source<TAB>target per line) or --data numbers")
    try:
        text = p.read_text(encoding=encoding)
    except UnicodeDecodeError as e:
        raise UserError(f"{p} is not {encoding} text (byte {e.start}): pass --encoding latin-1 or convert it") from None
    pairs = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        cols = line.split("\t")
        if len(cols) < 2:
            raise UserError(f"{p} line {n} has no tab: each line must be source<TAB>target "
                            f"(got {line[:40]!r})")
        src, tgt = cols[0].strip(), cols[1].strip()
        if not src or not tgt:
            side = "source" if not src else "target"
            raise UserError(f"{p} line {n} has an empty {side}: fill it or delete the line")
        pairs.append((tgt, src) if reverse else (src, tgt))
        if max_pairs and len(pairs) >= max_pairs:
            break
    if not pairs:
        raise UserError(f"{p} holds no pairs, only blank lines: pass a file with source<TAB>target lines")
    return pairs


def english_number(n: int) -> str:
    """US style, as the issue writes it: "three hundred forty-two" (no "and", no commas)."""
    from num2words import num2words
    return num2words(n, lang="en").replace(",", "").replace(" and ", " ")


def spanish_number(n: int) -> str:
    from num2words import num2words
    return num2words(n, lang="es")


def number_pairs(max_number: int = 9999, seed: int = 0, val_fraction: float = 0.1,
                 test_fraction: float = 0.1, reverse: bool = False) -> dict[str, list[tuple[str, str]]]:
    """The built-in task, split BY NUMBER with a fixed seed: {"train", "val", "test"} pair lists."""
    try:
        import num2words  # noqa: F401
    except ImportError:
        raise UserError("the built-in number task needs num2words: pip install num2words "
                        "(or 'gptlab[families]'), or pass --data PAIRS.tsv") from None
    if max_number < 10:
        raise UserError(f"--max-number must be >= 10 (got {max_number})")
    numbers = list(range(max_number + 1))
    random.Random(seed).shuffle(numbers)
    n_test = round(len(numbers) * test_fraction)
    n_val = round(len(numbers) * val_fraction)
    splits = {"test": numbers[:n_test], "val": numbers[n_test:n_test + n_val],
              "train": numbers[n_test + n_val:]}
    out = {}
    for name, nums in splits.items():
        pairs = [(english_number(n), spanish_number(n)) for n in sorted(nums)]
        out[name] = [(b, a) for a, b in pairs] if reverse else pairs
    return out


def split_pairs(pairs: list[tuple[str, str]], seed: int, val_fraction: float,
                test_fraction: float) -> dict[str, list[tuple[str, str]]]:
    """Random split of a pairs file by pair."""
    order = list(range(len(pairs)))
    random.Random(seed).shuffle(order)
    n_test = round(len(pairs) * test_fraction)
    n_val = round(len(pairs) * val_fraction)
    if len(pairs) - n_test - n_val < 1:
        raise UserError(f"only {len(pairs)} pairs: too few to hold out {n_val + n_test}; lower --val-fraction/--test-fraction")
    pick = lambda idx: [pairs[i] for i in idx]  # noqa: E731
    return {"test": pick(order[:n_test]), "val": pick(order[n_test:n_test + n_val]),
            "train": pick(order[n_test + n_val:])}


def train_tokenizer(pairs: list[tuple[str, str]], kind: str = "word", vocab_size: int = 15000) -> Tokenizer:
    """One vocabulary for both languages (see gptlab/model/seq2seq.py for why), with <s>."""
    texts = [s for pair in pairs for s in pair]
    return Tokenizer.train(texts, kind=kind, vocab_size=vocab_size, extra_specials=(BOS,))


def normalize(tok: Tokenizer, text: str) -> str:
    """The text as the model reads and writes it (lowercased, punctuation split): exact match
    compares these."""
    return tok.decode(tok.encode(text))


@dataclass
class EncodedPairs:
    src: list[np.ndarray]
    tgt: list[np.ndarray]   # <s> target <|endoftext|>
    dropped: int            # pairs longer than the context


def encode_pairs(tok: Tokenizer, pairs: list[tuple[str, str]], context_length: int) -> EncodedPairs:
    bos = tok.token_to_id(BOS)
    srcs = tok.encode_batch([s for s, _ in pairs])
    tgts = tok.encode_batch([t for _, t in pairs])
    out = EncodedPairs([], [], 0)
    for s, t in zip(srcs, tgts):
        # A target cut short would teach the model to stop mid-sentence: drop such pairs instead.
        if not s or len(s) > context_length or len(t) + 1 > context_length:
            out.dropped += 1
            continue
        out.src.append(np.asarray(s, dtype=np.int64))
        out.tgt.append(np.asarray([bos] + t + [tok.eot_id], dtype=np.int64))
    return out


def pad_batch(seqs: list, pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad id sequences: (ids_BxL, mask_BxL with True on real tokens)."""
    L = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), L), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), L), dtype=torch.bool)
    for i, s in enumerate(seqs):
        ids[i, :len(s)] = torch.as_tensor(s, dtype=torch.long)
        mask[i, :len(s)] = True
    return ids, mask


@dataclass
class PairBatch:
    src_BxS: torch.Tensor
    src_mask_BxS: torch.Tensor
    tgt_in_BxT: torch.Tensor
    targets_BxT: torch.Tensor   # IGNORE_INDEX on padding

    def to(self, device) -> "PairBatch":
        return PairBatch(*(t.to(device) for t in (self.src_BxS, self.src_mask_BxS, self.tgt_in_BxT, self.targets_BxT)))


def collate_pairs(data: EncodedPairs, rows, pad_id: int) -> PairBatch:
    src, src_mask = pad_batch([data.src[i] for i in rows], pad_id)
    tgt, tgt_mask = pad_batch([data.tgt[i] for i in rows], pad_id)
    targets = tgt[:, 1:].masked_fill(~tgt_mask[:, 1:], IGNORE_INDEX)
    return PairBatch(src, src_mask, tgt[:, :-1], targets)


# -- decoding: pure loops over ids -----------------------------------------------------------------
def _device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def greedy_decode(model: Seq2Seq, src_ids: list[list[int]], bos_id: int, eos_id: int, pad_id: int = 0,
                  max_len: int | None = None) -> list[list[int]]:
    """Batched greedy decoding with the decoder's KV cache; ids without <s> and <|endoftext|>."""
    model.eval()
    dev = _device(model)
    src, mask = (t.to(dev) for t in pad_batch(src_ids, pad_id))
    memory, _ = model.encode(src, mask)
    B = len(src_ids)
    steps = min(max_len or model.cfg.context_length, model.cfg.context_length)
    cache = model.new_cache(B, steps)
    last_Bx1 = torch.full((B, 1), bos_id, dtype=torch.long, device=dev)
    done = torch.zeros(B, dtype=torch.bool, device=dev)
    out: list[list[int]] = [[] for _ in range(B)]
    for _ in range(steps):
        logits_BxV = model.decode(last_Bx1, memory, mask, cache=cache, last_only=True).logits[:, -1]
        next_B = logits_BxV.argmax(dim=-1)
        for i in (~done & (next_B != eos_id)).nonzero().flatten().tolist():
            out[i].append(int(next_B[i]))
        done |= next_B == eos_id
        if bool(done.all()):
            break
        last_Bx1 = next_B[:, None]
    return out


@torch.no_grad()
def beam_search(model: Seq2Seq, src_ids: list[list[int]], bos_id: int, eos_id: int, pad_id: int = 0,
                beam_size: int = 4, max_len: int | None = None,
                length_penalty: float = 1.0) -> list[list[int]]:
    """Batched beam search: N sentences x K beams share one decoder pass per step.

    Hypotheses are ranked by log-probability / length**length_penalty. A sentence stops when K
    hypotheses have ended and the best live beam scores no better than the K-th of them; stopping
    at the first K endings instead lets weak beams that end early crowd out the good one. With
    beam_size=1 the single ending is the greedy one and nothing live beats it: exactly greedy.
    The decoder's self-attention cache and the cached cross-attention K/V follow their beams
    through `cache.select(rows)`.
    """
    if beam_size < 1:
        raise UserError(f"--beam must be >= 1 (got {beam_size})")
    model.eval()
    dev = _device(model)
    N, K = len(src_ids), beam_size
    src, mask = (t.to(dev) for t in pad_batch(src_ids, pad_id))
    memory, _ = model.encode(src, mask)
    memory, mask = memory.repeat_interleave(K, dim=0), mask.repeat_interleave(K, dim=0)
    steps = min(max_len or model.cfg.context_length, model.cfg.context_length)
    cache = model.new_cache(N * K, steps)
    scores_NxK = torch.full((N, K), -math.inf, device=dev)
    scores_NxK[:, 0] = 0.0  # one live beam at the start, so the K beams do not start as copies
    beams: list[list[list[int]]] = [[[] for _ in range(K)] for _ in range(N)]
    finished: list[list[tuple[float, list[int]]]] = [[] for _ in range(N)]
    done = [False] * N
    last = torch.full((N * K, 1), bos_id, dtype=torch.long, device=dev)
    for _ in range(steps):
        logits = model.decode(last, memory, mask, cache=cache, last_only=True).logits[:, -1]
        logp_NKxV = logits.float().log_softmax(dim=-1)
        V = logp_NKxV.shape[-1]
        cand_NxKV = (scores_NxK.reshape(N * K, 1) + logp_NKxV).reshape(N, K * V)
        top_s, top_i = cand_NxKV.topk(min(2 * K, K * V), dim=-1)
        top_s, top_i = top_s.tolist(), top_i.tolist()
        rows, tokens, new_scores, new_beams = [], [], [], []
        for n in range(N):
            live: list[tuple[float, int, int]] = []
            if not done[n]:
                for rank, (s, i) in enumerate(zip(top_s[n], top_i[n])):
                    if s == -math.inf:
                        break
                    k, v = divmod(i, V)
                    if v == eos_id:
                        if rank < K:  # an ending counts only if it is among the K best moves
                            hyp = beams[n][k]
                            finished[n].append((s / (len(hyp) + 1) ** length_penalty, hyp))
                        continue
                    live.append((s, k, v))
                    if len(live) == K:
                        break
                if not live:
                    done[n] = True
                elif len(finished[n]) >= K:
                    # Done once no live beam can beat the K-th best ending (exact for
                    # length_penalty=0, where scores only fall; Hugging Face's heuristic otherwise).
                    kth = sorted((f[0] for f in finished[n]), reverse=True)[K - 1]
                    hyp_len = len(beams[n][live[0][1]]) + 1
                    done[n] = live[0][0] / hyp_len ** length_penalty <= kth
            if done[n]:
                live = []
            live += [(-math.inf, 0, eos_id)] * (K - len(live))  # dead rows keep the batch square
            for s, k, v in live:
                rows.append(n * K + k)
                tokens.append(v)
                new_scores.append(s)
            new_beams.append([beams[n][k] + [v] if s > -math.inf else [] for s, k, v in live])
        if all(done):
            break
        beams = new_beams
        rows_t = torch.tensor(rows, device=dev)
        cache.select(rows_t)
        scores_NxK = torch.tensor(new_scores, device=dev).reshape(N, K)
        last = torch.tensor(tokens, device=dev)[:, None]
    results = []
    for n in range(N):
        if not finished[n]:  # ran out of length: rank the live beams as they stand
            for k in range(K):
                s = float(scores_NxK[n, k])
                if s > -math.inf:
                    finished[n].append((s / max(len(beams[n][k]), 1) ** length_penalty, beams[n][k]))
        results.append(max(finished[n], key=lambda x: x[0])[1] if finished[n] else [])
    return results


def translate_ids(model: Seq2Seq, tok: Tokenizer, texts: list[str], beam: int = 1,
                  batch_size: int = 256, max_len: int | None = None) -> list[list[int]]:
    """Token ids of each translation; empty sources give empty translations."""
    bos = tok.token_to_id(BOS)
    if bos is None:
        raise UserError(f"this tokenizer has no {BOS} token: it is not from `gptlab seq2seq train`")
    ctx = model.cfg.context_length
    enc = [ids[:ctx] for ids in tok.encode_batch(texts)]
    out: list[list[int]] = [[] for _ in texts]
    todo = [i for i, ids in enumerate(enc) if ids]
    for j in range(0, len(todo), batch_size):
        chunk = todo[j:j + batch_size]
        src = [enc[i] for i in chunk]
        if beam == 1:
            ids = greedy_decode(model, src, bos, tok.eot_id, tok.pad_id, max_len)
        else:
            ids = beam_search(model, src, bos, tok.eot_id, tok.pad_id, beam, max_len)
        for i, r in zip(chunk, ids):
            out[i] = r
    return out


def translate(model: Seq2Seq, tok: Tokenizer, texts: list[str], beam: int = 1,
              batch_size: int = 256) -> list[str]:
    return [tok.decode(ids) for ids in translate_ids(model, tok, texts, beam, batch_size)]


def evaluate_translation(model: Seq2Seq, tok: Tokenizer, pairs: list[tuple[str, str]],
                         beam: int = 1) -> dict:
    """Exact match (of the normalized token sequence) and chrF (sacrebleu, when installed)."""
    hyps = translate(model, tok, [s for s, _ in pairs], beam)
    refs = [normalize(tok, t) for _, t in pairs]
    exact = sum(h == r for h, r in zip(hyps, refs)) / max(len(pairs), 1)
    out = {"n": len(pairs), "exact_match": exact, "beam": beam}
    try:
        import sacrebleu
        out["chrf"] = sacrebleu.corpus_chrf(hyps, [refs]).score
    except ImportError:
        out["chrf"] = None
    out["examples"] = [{"source": s, "reference": r, "output": h}
                       for (s, _), r, h in list(zip(pairs, refs, hyps))[:5]]
    return out


# -- training --------------------------------------------------------------------------------------
@dataclass
class LoopConfig:
    """The settings `fit` reads: the training loop shared by `gptlab seq2seq train` and `gptlab encoder
    pretrain | classify`. Each family's config adds its data and model fields and may change a default."""
    tokenizer: str = field(default="word", metadata={"help": "word or bpe"})
    vocab_size: int = field(default=10000, metadata={"help": "vocabulary cap"})
    steps: int = field(default=2000, metadata={"help": "optimizer steps"})
    time_budget: float = field(default=0.0, metadata={"help": "stop after this many seconds (0 = no limit); the LR schedule is planned for the budget"})
    batch_size: int = field(default=64, metadata={"help": "sequences per step"})
    optimizer: str = field(default="adamw", metadata={"help": "adamw or adam"})
    lr: float = field(default=1e-3, metadata={"help": "peak learning rate"})
    min_lr: float = field(default=1e-4, metadata={"help": "learning rate at the end of the cosine"})
    warmup_steps: int = field(default=200, metadata={"help": "linear warmup steps"})
    schedule: str = field(default="cosine", metadata={"help": "cosine or constant"})
    weight_decay: float = field(default=0.01, metadata={"help": "AdamW weight decay (matrices only)"})
    beta1: float = field(default=0.9, metadata={"help": "Adam beta1"})
    beta2: float = field(default=0.98, metadata={"help": "Adam beta2 (Vaswani: 0.98)"})
    adam_eps: float = field(default=1e-8, metadata={"help": "Adam epsilon"})
    grad_clip: float = field(default=1.0, metadata={"help": "clip the gradient norm (0 = off)"})
    ema: float = field(default=0.0, metadata={"help": "decay of an exponential moving average of the weights, which is what is evaluated and kept (e.g. 0.999; 0 = off)"})
    eval_interval: int = field(default=500, metadata={"help": "steps between validation losses (0 = only at the end)"})
    precision: str = field(default="fp32", metadata={"help": "fp32, bf16 or auto (bf16 where the hardware is fast at it)"})
    device: str = field(default="auto", metadata={"help": "auto, cpu, cuda, mps"})
    threads: int = field(default=0, metadata={"help": "CPU threads (0 = torch's default)"})
    seed: int = field(default=1337, metadata={"help": "seed for initialisation, batch order and dropout"})
    overwrite: bool = field(default=False, metadata={"help": "replace a model already in --out"})
    progress: bool = field(default=True, metadata={"help": "show a progress bar"})

    def validate(self) -> None:
        if self.steps < 1 and self.time_budget <= 0:
            raise UserError(f"--steps must be >= 1 (got {self.steps})")
        self.validate_loop()

    def validate_loop(self) -> None:
        """The checks of the loop's own settings (a config that counts its steps differently calls only these)."""
        if self.batch_size < 1:
            raise UserError(f"--batch-size must be >= 1 (got {self.batch_size})")
        if not 0.0 <= self.ema < 1.0:
            raise UserError(f"--ema must be in [0, 1) (got {self.ema}): a decay such as 0.999, or 0 for none")

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass
class Seq2SeqTrainConfig(LoopConfig):
    data: str = field(default="numbers", metadata={"help": "'numbers' (built-in English -> Spanish number words) or a TSV pairs file (source<TAB>target, e.g. Tatoeba spa-eng.txt)"})
    out: str = field(default="runs/seq2seq", metadata={"help": "output folder for the model"})
    preset: str = field(default="small", metadata={"help": f"model preset: {', '.join(SEQ2SEQ_PRESETS)}"})
    reverse: bool = field(default=False, metadata={"help": "translate column 2 -> column 1 instead"})
    max_number: int = field(default=9999, metadata={"help": "numbers task: numbers 0..N"})
    max_pairs: int = field(default=0, metadata={"help": "pairs file: read only the first N pairs (0 = all)"})
    val_fraction: float = field(default=0.1, metadata={"help": "pairs (or numbers) held out for validation"})
    test_fraction: float = field(default=0.1, metadata={"help": "pairs (or numbers) held out for the final test"})
    data_seed: int = field(default=0, metadata={"help": "seed of the train/val/test split"})
    eval_pairs: int = field(default=500, metadata={"help": "validation pairs translated for exact match at the end"})
    # Defaults that differ from the loop's: one vocabulary for both languages; Vaswani's epsilon.
    tokenizer: str = field(default="word", metadata={"help": "word or bpe; one vocabulary for both languages"})
    vocab_size: int = field(default=15000, metadata={"help": "vocabulary cap (shared by source and target)"})
    steps: int = field(default=3000, metadata={"help": "optimizer steps"})
    batch_size: int = field(default=64, metadata={"help": "pairs per step"})
    adam_eps: float = field(default=1e-9, metadata={"help": "Adam epsilon (Vaswani: 1e-9)"})

    def validate(self) -> None:
        super().validate()
        if self.preset not in SEQ2SEQ_PRESETS:
            raise UserError(f"unknown preset {self.preset!r}: choose one of {', '.join(SEQ2SEQ_PRESETS)}")
        for name in ("val_fraction", "test_fraction"):
            if not 0.0 <= getattr(self, name) < 0.5:
                raise UserError(f"--{name.replace('_', '-')} must be in [0, 0.5) (got {getattr(self, name)})")


@dataclass
class Seq2SeqResult:
    model: Seq2Seq
    tokenizer: Tokenizer
    config: dict
    splits: dict[str, list[tuple[str, str]]]
    history: list[dict] = field(default_factory=list)


def load_splits(t: Seq2SeqTrainConfig) -> dict[str, list[tuple[str, str]]]:
    if t.data == "numbers":
        return number_pairs(t.max_number, t.data_seed, t.val_fraction, t.test_fraction, t.reverse)
    pairs = read_pairs(t.data, t.reverse, t.max_pairs)
    return split_pairs(pairs, t.data_seed, t.val_fraction, t.test_fraction)


def check_out_dir(out: Path, overwrite: bool) -> None:
    """Refuse to replace a model unasked, before any training time is spent."""
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file: pass a folder")
    if (out / CONFIG).exists() and not overwrite:
        raise UserError(f"{out} already holds a model: pass --overwrite to replace it, or another --out")


def same_length_batches(lengths: np.ndarray, batch_size: int, rng: np.random.Generator | None = None):
    """Batches of row indices whose sources all have the same length (one pass; shuffled with rng).

    No source padding: no compute spent on it and no source mask to build. (It also kept training
    exact while `layers.build_mask` still let cross-attention query t read padded source key t;
    the tests pin that it no longer does.) Targets are still padded: causality hides that.
    """
    groups: dict[int, list[int]] = {}
    for i, n in enumerate(lengths.tolist()):
        groups.setdefault(n, []).append(i)
    batches = []
    for rows in groups.values():
        rows = np.asarray(rows)
        if rng is not None:
            rows = rows[rng.permutation(len(rows))]
        batches += [rows[j:j + batch_size] for j in range(0, len(rows), batch_size)]
    if rng is not None:
        batches = [batches[j] for j in rng.permutation(len(batches))]
    return batches


def _endless(lengths: np.ndarray, batch_size: int, rng: np.random.Generator):
    while True:
        yield from same_length_batches(lengths, batch_size, rng)


@torch.no_grad()
def validation_loss(model: Seq2Seq, data: EncodedPairs, pad_id: int, device, amp, batch_size: int = 256,
                    limit: int = 2000) -> float:
    """Teacher-forced NLL per target token over (up to `limit`) validation pairs."""
    from gptlab.training.trainer import autocast
    model.eval()
    n = min(len(data.src), limit)
    total, count = 0.0, 0
    for rows in same_length_batches(np.array([len(s) for s in data.src[:n]]), batch_size):
        b = collate_pairs(data, rows, pad_id).to(device)
        with autocast(device, amp):
            out = model(b.src_BxS, b.tgt_in_BxT, b.targets_BxT)
        total += float(out.nll_sum)
        count += out.n_tokens
    model.train()
    return total / max(count, 1)


class WeightAverage:
    """An exponential moving average of a model's parameters (Polyak averaging).

    Late in fine-tuning on a small labelled set, successive weights scatter around a good point as
    each batch pulls them its way; their running average sits nearer that point and usually scores
    better on unseen rows than any single step. The decay ramps up from 0 ((1 + step) / (10 + step))
    so the first steps' random-ish weights are soon forgotten.
    """

    def __init__(self, model: torch.nn.Module, decay: float):
        self.decay = decay
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.shadow = [p.detach().clone() for p in self.params]

    @torch.no_grad()
    def update(self, step: int) -> None:
        d = min(self.decay, (1 + step) / (10 + step))
        torch._foreach_lerp_(self.shadow, [p.detach() for p in self.params], 1.0 - d)

    @torch.no_grad()
    def copy_to_model(self) -> None:
        torch._foreach_copy_(self.params, self.shadow)

    @contextlib.contextmanager
    def swapped(self):
        """The averaged weights in the model for the duration (evaluation), the training weights after."""
        with torch.no_grad():
            current = [p.detach().clone() for p in self.params]
            torch._foreach_copy_(self.params, self.shadow)
        try:
            yield
        finally:
            with torch.no_grad():
                torch._foreach_copy_(self.params, current)


def fit(model: torch.nn.Module, t, total_steps: int, loss_of: Callable[[int], torch.Tensor],
        evaluate: Callable[[], dict] | None, desc: str, device, best_of: str | None = None) -> tuple[list[dict], dict]:
    """The loop both families share: the GPT trainer's AdamW and warmup/cosine schedule, gradient
    clipping, a tqdm bar, for `total_steps` steps or t.time_budget seconds (the schedule is then
    planned for the budget). loss_of(step) returns one batch's loss; evaluate() a dict of metrics
    every t.eval_interval steps. Returns (history, stats).

    best_of: a metric of evaluate() to maximise (early stopping): it is also evaluated after the
    last step, and the model ends with the weights of its best evaluation (stats: best_step).
    """
    from gptlab.training.trainer import build_optimizer, lr_at
    opt = build_optimizer(model, t, device)
    averaged = WeightAverage(model, t.ema) if t.ema else None
    history: list[dict] = []
    bar = None
    if t.progress:
        from tqdm import tqdm
        bar = tqdm(total=total_steps if total_steps < 10**9 else None, desc=desc, unit="step",
                   dynamic_ncols=True, file=sys.stderr)
    start = time.perf_counter()
    model.train()
    step, ema, lr = 0, None, 0.0
    best: tuple[int, float, dict] | None = None  # (step, metric, weights) of the best evaluation
    while step < total_steps:
        elapsed = time.perf_counter() - start
        if t.time_budget and elapsed >= t.time_budget:
            break
        progress = step / total_steps if not t.time_budget else max(step / total_steps, elapsed / t.time_budget)
        lr = lr_at(step, progress, t)
        for g in opt.param_groups:
            g["lr"] = lr
        loss = loss_of(step)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if t.grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip)
        opt.step()
        step += 1
        if averaged is not None:
            averaged.update(step)
        v = loss.item()
        ema = v if ema is None else 0.95 * ema + 0.05 * v
        if evaluate is not None and t.eval_interval and step % t.eval_interval == 0 and step < total_steps:
            with averaged.swapped() if averaged is not None else contextlib.nullcontext():
                ev = evaluate()
                if best_of is not None and (best is None or ev[best_of] > best[1]):
                    best = (step, ev[best_of], {k: v.detach().clone() for k, v in model.state_dict().items()})
            model.train()
            history.append({"step": step, "train_loss": ema, "lr": lr, **ev})
            if bar is not None:
                bar.write(f"step {step}: train loss {ema:.3f}, " + ", ".join(f"{k} {x:.3f}" for k, x in ev.items()))
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{ema:.3f}", lr=f"{lr:.1e}")
    if bar is not None:
        bar.close()
    stats = {"steps": step, "train_seconds": round(time.perf_counter() - start, 1), "train_loss": ema}
    if averaged is not None:  # the averaged weights are the model from here on
        averaged.copy_to_model()
    if best_of is not None and evaluate is not None:
        ev = evaluate()
        history.append({"step": step, "train_loss": ema, "lr": lr, **ev})
        if best is not None and best[1] > ev[best_of]:
            model.load_state_dict(best[2])
            stats.update(best_step=best[0], **{f"best_{best_of}": best[1]})
        else:
            stats.update(best_step=step, **{f"best_{best_of}": ev[best_of]})
    model.eval()
    return history, stats


def train(t: Seq2SeqTrainConfig, model_cfg: Seq2SeqConfig | None = None,
          splits: dict[str, list[tuple[str, str]]] | None = None, save: bool = True) -> Seq2SeqResult:
    """Train a translation model and (unless save=False) write it to t.out.

    model_cfg: None = the preset's; its vocab_size is set from the tokenizer.
    splits: {"train", "val", "test"} pair lists; None = read t.data.
    """
    from gptlab.training.trainer import autocast, resolve_device, resolve_precision
    t.validate()
    out_dir = Path(t.out)
    if save:
        check_out_dir(out_dir, t.overwrite)
    device = resolve_device(t.device)
    amp = resolve_precision(t.precision, device)
    if t.threads:
        torch.set_num_threads(t.threads)
    splits = splits if splits is not None else load_splits(t)
    if not splits.get("train"):
        raise UserError("no training pairs: pass a bigger pairs file or lower --val-fraction/--test-fraction")
    tok = train_tokenizer(splits["train"], t.tokenizer, t.vocab_size)
    mcfg = model_cfg if model_cfg is not None else SEQ2SEQ_PRESETS[t.preset]()
    mcfg.vocab_size = tok.vocab_size
    try:
        mcfg.validate()
    except ValueError as e:
        raise UserError(f"bad model setting: {e}") from None
    train_data = encode_pairs(tok, splits["train"], mcfg.context_length)
    val_data = encode_pairs(tok, splits.get("val", []), mcfg.context_length)
    if not train_data.src:
        raise UserError(f"every training pair is longer than --context-length {mcfg.context_length} tokens: raise it")
    if train_data.dropped:
        print(f"seq2seq: dropped {train_data.dropped} training pairs longer than {mcfg.context_length} tokens "
              f"(raise --context-length to keep them)", file=sys.stderr)

    torch.manual_seed(t.seed)
    model = Seq2Seq(mcfg).to(device)
    batches = _endless(np.array([len(s) for s in train_data.src]), t.batch_size, np.random.default_rng(t.seed))

    def loss_of(step: int) -> torch.Tensor:
        b = collate_pairs(train_data, next(batches), tok.pad_id).to(device)
        with autocast(device, amp):  # same-length sources: no source mask needed
            return model(b.src_BxS, b.tgt_in_BxT, b.targets_BxT).loss

    evaluate = (lambda: {"val_loss": validation_loss(model, val_data, tok.pad_id, device, amp)}) if val_data.src else None
    history, metrics = fit(model, t, t.steps if t.steps > 0 else 10**9, loss_of, evaluate, "seq2seq train", device)
    if val_data.src:
        metrics["val_loss"] = validation_loss(model, val_data, tok.pad_id, device, amp)
        if t.eval_pairs:
            ev = evaluate_translation(model, tok, splits["val"][:t.eval_pairs])
            metrics["val_exact_match"] = ev["exact_match"]
            metrics["val_chrf"] = ev["chrf"]
    config = {"kind": KIND, "model": mcfg.to_dict(),
              "seq2seq": {"bos_token": BOS, "data": t.data, "reverse": t.reverse},
              "train": t.to_dict(), "metrics": metrics}
    if save:
        save_model(out_dir, model, tok, config)
    return Seq2SeqResult(model, tok, config, splits, history)


def load(path: str | Path, device: str = "cpu") -> tuple[Seq2Seq, Tokenizer, dict]:
    """A seq2seq model folder -> (model in eval mode, tokenizer, config)."""
    from gptlab.checkpoint import read_config
    cfg = read_config(path, make="gptlab seq2seq train")
    if cfg.get("kind") != KIND:
        raise UserError(f"{path} holds a {cfg.get('kind')!r} model, not a translation model: "
                        "train one with `gptlab seq2seq train`")
    model, tok, cfg = load_checkpoint(path, device)
    return model, tok, cfg
