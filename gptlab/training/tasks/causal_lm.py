"""The GPT's task: next-token prediction on a corpus (`gptlab train`)."""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from gptlab.data import Corpus, load_corpus, split_records
from gptlab.data.normalize import normalize_text
from gptlab.data.records import cell_text, header_template, label_fields, label_values, template_fields
from gptlab.data.tokenizer import Tokenizer
from gptlab.errors import UserError
from gptlab.model import GPT
from gptlab.model.label_head import share_directions
from gptlab.training.batches import BatchPlan, encode_records, eval_batches
from gptlab.training.config import RunConfig
from gptlab.training.env import Runtime
from gptlab.training.loop import Batch, Task, TrainResult, fit, prepare_out, runtime_for

KIND = "gpt"
# Values of the first label field that condition groups of the later fields' words (a country's
# provinces): the most frequent, so a column of many values cannot add thousands of groups.
_CONDITIONS = 64


@torch.no_grad()
def heldout_nll(model: GPT, seqs: list, batch_size: int, pad_id: int, ctx: int, limit: int = 0,
                device: torch.device | str = "cpu", autocast: Callable[[], Any] = contextlib.nullcontext) -> tuple[float, int]:
    """(summed NLL in nats, target tokens) of `model` on token sequences, in fixed validation batches."""
    nll, n = 0.0, 0
    for b in eval_batches(seqs, batch_size, pad_id, ctx, limit):
        # The model's own summed loss (the fused output layer + cross-entropy training uses): with
        # padding no longer scored, nothing here needs the full (B, T, V) logits.
        with autocast():
            out = model(b.x_BxT.to(device), b.y_BxT.to(device))
        nll += float(out.nll_sum)
        n += int(out.n_tokens)
    return nll, n


def gpt_tokenizer(cfg: RunConfig, corpus: Corpus, train_idx: list[int], start_with_eot: bool = True) -> Tokenizer:
    """The tokenizer a GPT fits on a corpus's training records (`gptlab train`, `gptlab scale`, the
    benchmarks): texts start with <|endoftext|> (unless `start_with_eot` is False, as for the Keras
    notebook's model, which has no start token), and a word vocabulary holds the label fields' words
    (--label-words: the names, as the documents spell them) besides its cap: up to a tenth of the
    cap more, at least 100 (the most frequent names' first: a column of many thousand names cannot
    swell it)."""
    d, t = cfg.data, cfg.train
    keep: list[str] = []
    if t.label_words and corpus.fields:
        keep = label_values([corpus.fields[i] for i in train_idx], template_fields(d.template))
        keep = [normalize_text(v) for v in keep] if d.normalize else keep
    return Tokenizer.train([corpus.records[i] for i in train_idx], kind=t.tokenizer, vocab_size=cfg.model.vocab_size,
                           lowercase=d.normalize, start_with_eot=start_with_eot, keep=keep,
                           keep_at_most=max(100, cfg.model.vocab_size // 10))


def label_groups(cfg: RunConfig, rows: list[dict], fields: dict[str, Counter[str]], tok: Tokenizer) -> torch.Tensor | None:
    """(V, G) 0/1 groups of output rows for the label fields (`label_fields`) of the training
    records' `rows`: for each field, the ids of its values' first words (where a name starts:
    `cabernet`) and of their other words (`sauvignon`); then for each later field and each value of
    the first one (up to `_CONDITIONS` of the most frequent), the words of the values seen with it
    (the provinces of germany, the varieties of germany), as the records spell them. None when there
    is no label field. Measured on real reviews in benchmarks/RESULTS.md."""
    if not fields:
        return None
    spell = normalize_text if cfg.data.normalize else str
    first, *later = fields
    conditions = [a for a, _ in fields[first].most_common(_CONDITIONS)] if later else []
    seen_with: dict[tuple[str, str], set[str]] = {}
    for r in rows:
        a = cell_text(r.get(first))
        for name in later:
            b = cell_text(r.get(name))
            if b in fields[name]:
                seen_with.setdefault((name, a), set()).add(b)
    # Each name's ids once: a name is in up to three groups.
    ids = {v: tok.encode(spell(v)) for counts in fields.values() for v in counts}
    groups: list[set[int]] = []
    for counts in fields.values():
        groups += [{ids[v][0] for v in counts if ids[v]}, {i for v in counts for i in ids[v][1:]}]
    groups += [{i for v in seen_with.get((name, a), ()) for i in ids[v]} for name in later for a in conditions]
    groups_VxG = torch.zeros(tok.vocab_size, len(groups))
    for g, members in enumerate(groups):
        groups_VxG[sorted(members - {tok.unk_id}), g] = 1.0
    return groups_VxG


def header_targets(cfg: RunConfig, rows: list[dict], fields: dict[str, Counter[str]], tok: Tokenizer,
                   seqs: list[np.ndarray]) -> np.ndarray | None:
    """For each training record (its fields' `rows`), how many targets of its token sequence
    (`seqs`, from `encode_records`) are words of its header (the template through its last label
    field: `wine review : germany : mosel : riesling :`); None when there is no label field."""
    names = template_fields(cfg.data.template)
    header = header_template(cfg.data.template, list(fields))
    if header is None:
        return None
    texts = [header.format_map({n: cell_text(r.get(n)) for n in names}) for r in rows]
    start = 1 if tok.starts_with_eot else 0
    n = np.zeros(len(rows), dtype=np.int64)
    for k, ids in enumerate(tok.encode_batch([normalize_text(t) if cfg.data.normalize else t for t in texts])):
        seq = seqs[k][start:start + len(ids)]
        # The header's words as the whole record is split: a word tokenizer splits them alike.
        same = seq == np.asarray(ids[:len(seq)], dtype=np.int64)
        m = len(seq) if same.all() else int(np.argmin(same))  # up to the first word that differs
        # Target j predicts token j + 1: with a start token the header's m words are the first m
        # targets; without, its first word is no target.
        n[k] = m if start else max(m - 1, 0)
    return n


class CausalLM(Task[GPT]):
    kind = KIND

    def __init__(self, cfg: RunConfig, corpus: Corpus, tokenizer: Tokenizer | None = None):
        t = cfg.train
        self.cfg, self.corpus = cfg, corpus
        records = corpus.records
        train_idx, val_idx = split_records(records, cfg.data.val_fraction, cfg.data.seed)
        self.train_recs = [records[i] for i in train_idx]
        self.val_recs = [records[i] for i in val_idx]
        self.tokenizer = tokenizer or gpt_tokenizer(cfg, corpus, train_idx)
        cfg.model.vocab_size = self.tokenizer.vocab_size
        self.ctx = ctx = cfg.model.context_length
        train_seqs = encode_records(self.tokenizer, self.train_recs, ctx, truncate=t.batching != "pack")
        self.val_seqs = encode_records(self.tokenizer, self.val_recs, ctx)
        self.plan = BatchPlan(train_seqs, t.batch_size, ctx, self.tokenizer.pad_id, t.batching, t.seed)
        if self.plan.steps_per_epoch == 0:
            raise UserError(f"the corpus yields no training sequence for context {ctx}: give more text or a smaller --context-length")
        torch.manual_seed(t.seed)
        self.model = GPT(cfg.model)
        # The training records' label fields, found once for the output layer's groups and the header's weight.
        rows = [corpus.fields[i] for i in train_idx] if corpus.fields else []
        fields = label_fields(rows, template_fields(cfg.data.template)) if rows else {}
        if t.label_directions and self.tokenizer.kind == "word" and not cfg.model.tie_embeddings:
            groups_VxG = label_groups(cfg, rows, fields, self.tokenizer)
            if groups_VxG is not None:
                share_directions(self.model.lm_head, groups_VxG)
        self.header_n = None
        if t.label_weight != 1.0 and self.tokenizer.kind == "word" and t.batching != "pack":
            self.header_n = header_targets(cfg, rows, fields, self.tokenizer, train_seqs)
        self._epoch: tuple[int, list] | None = None
        self._shown: torch.Tensor | None = None

    def steps_per_epoch(self) -> int:
        return self.plan.steps_per_epoch

    def batch(self, step: int) -> Batch:
        epoch, i = divmod(step, self.plan.steps_per_epoch)
        if self._epoch is None or self._epoch[0] != epoch:
            self._epoch = (epoch, self.plan.epoch(epoch))
        rows = self._epoch[1][i]
        b = self.plan.make(rows)
        tensors = {"x": b.x_BxT, "y": b.y_BxT}
        if self.header_n is not None:
            header_Bx1 = torch.from_numpy(self.header_n[rows])[:, None]
            in_header_BxT = torch.arange(b.y_BxT.shape[1])[None] < header_Bx1
            tensors["w"] = 1.0 + (self.cfg.train.label_weight - 1.0) * in_header_BxT.float()
        return Batch(tensors, b.n_tokens)

    def loss_sum(self, model: Any, tensors: dict[str, torch.Tensor]) -> torch.Tensor:
        out = model(tensors["x"], tensors["y"], weights_BxT=tensors.get("w"))
        # With the header weighted, the run shows the plain NLL (comparable to the held-out loss).
        self._shown = out.nll_plain_sum if "w" in tensors else None
        return out.nll_sum

    def shown_loss_sum(self) -> torch.Tensor | None:
        return self._shown

    @torch.no_grad()
    def evaluate(self, model: GPT, rt: Runtime) -> dict[str, float]:
        """NLL per target token (padding is not a target: the model is never trained to predict it)."""
        if not self.val_seqs:
            return {}
        model.eval()
        nll, n = heldout_nll(model, self.val_seqs, self.cfg.train.batch_size, self.tokenizer.pad_id, self.ctx,
                             self.cfg.train.eval_batches, rt.device, rt.autocast)
        return {"val_loss": nll / max(n, 1)}

    @torch.no_grad()
    def sample(self, model: GPT, rt: Runtime, step: int) -> str | None:
        """One sample for the progress log (the notebook's TextGenerator callback)."""
        t = self.cfg.train
        if not t.sample_prompt:
            return None
        model.eval()
        tok = self.tokenizer
        ids = tok.encode_prompt(t.sample_prompt)[-(self.ctx - 1):]
        g = torch.Generator(device="cpu").manual_seed(t.seed + step)
        cache = model.new_cache(1)
        logits = model(torch.tensor([ids], device=rt.device), cache=cache, last_only=True).logits
        new: list[int] = []
        while cache.length < self.ctx:
            probs = torch.softmax(logits[0, -1].float().cpu() / max(t.sample_temperature, 1e-6), -1)
            nxt = int(torch.multinomial(probs, 1, generator=g))
            if nxt == tok.eot_id:
                break
            new.append(nxt)
            logits = model(torch.tensor([[nxt]], device=rt.device), cache=cache).logits
        return t.sample_prompt + " " + tok.decode(new)

    def format_metrics(self, metrics: dict[str, float]) -> str:
        return f"val loss {metrics['val_loss']:.3f} per token"

    def config(self) -> dict[str, Any]:
        d = self.cfg.to_dict()
        return {"model": d["model"], "data": d["data"],
                "corpus": {"source": self.corpus.source, "records": len(self.corpus.records),
                           "skipped": self.corpus.skipped, "train_records": len(self.train_recs),
                           "val_records": len(self.val_recs)}}

    def describe(self) -> str:
        c = self.corpus
        skipped = f" ({c.skipped:,} skipped)" if c.skipped else ""
        return (f"gptlab train: {c.source}: {len(self.train_recs):,} train / {len(self.val_recs):,} val records"
                f"{skipped}; vocab {self.tokenizer.vocab_size:,}; ")


def check_config(cfg: RunConfig) -> None:
    try:
        cfg.model.validate()
    except ValueError as e:
        raise UserError(str(e)) from None
    cfg.data.validate()


def train(cfg: RunConfig, corpus: Corpus | None = None, *, on_eval=None, tokenizer: Tokenizer | None = None) -> TrainResult[GPT]:
    """Train a GPT as `cfg` says; `corpus` (a gptlab.data.Corpus) overrides cfg.data's source.

    tokenizer: use this one instead of fitting a new one on the training records (runs whose
    losses must compare, in nats per token, share one vocabulary). A resumed run keeps its own.
    on_eval: see `gptlab.training.loop.fit`.
    """
    check_config(cfg)
    rt = runtime_for(cfg.train)
    saved_tok = prepare_out(cfg.train, KIND, cfg.model.to_dict(), "gptlab train")
    corpus = corpus if corpus is not None else load_corpus(cfg.data)
    task = CausalLM(cfg, corpus, saved_tok or tokenizer)
    return fit(task, cfg.train, rt, on_eval=on_eval)
