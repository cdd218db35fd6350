"""Explanation traces of every family, as plain data (no torch) in one versioned JSON schema, so a
trace can be rendered again later, elsewhere, without the model.

Every trace (version 3) is one JSON object with a common envelope and a body per `kind`:

    {"format": "gptlab-trace", "version": 3, "kind": "gpt" | "encoder" | "classifier" | "seq2seq",
     "model": {"kind", "n_layer", "n_head", "d_model", "vocab_size", "context_length", "tokenizer", ...},
     ...the kind's fields}

- gpt: "prompt", "prompt_tokens", "completion", "finish_reason", "sampling", "top" and "steps":
  per generated token {"tokens", "token_ids", "start", "attention" [layer][head][position] (the
  predicting position's row), "candidates" and "chosen" {token, id, logit, p, p_sample},
  "entropy", "entropy_sample", "logsumexp", "finish", "dist", "lens"}. "dist" holds the logits
  the sampler saw before temperature, enough to redo its distribution at any temperature
  (`gptlab.explain.distribution`): every one for a vocabulary up to 4096, else the top 50 and a
  histogram of the rest. "lens" is the logit lens: per residual stream (the embeddings, then
  after each layer) {"top": [{token, id, p}], "p_chosen"}, what the model would predict from there.
- encoder / classifier: "text", "tokens", "focus" (the token highlighted), "self_attention"
  (an attention block over query x key) and "prediction": {"labels": [{label, p}], "entropy"}
  for a classifier, {"masks": [{position, top: [{token, p}], entropy}]} for a masked-LM encoder.
- seq2seq: "source", "translation", "source_tokens", "target_tokens", "cross_attention" (an
  attention block over target x source; row t is the decoder position that wrote
  target_tokens[t]) and "next_tokens": per target row {"p" (of the word written), "top":
  [{token, id, p}], "entropy" (bits)}.

An attention block is {"axes", "reduce": "mean over heads", "n_layer", "n_head", "layers"
(L x rows x columns, mean over heads), "heads" (L x H x rows x columns)}.

Version 1 and 2 files still load: a version-1 GPT one has no "kind" (it is "gpt"), a version-1
encoder one has no "heads", and none has "model" (encoder, seq2seq) or "next_tokens"; GPT steps
before version 3 have no "dist" or "lens" (the views then re-weight the stored candidates only, and
say so). Anything else (not JSON, another
format, a newer version, an unknown kind, missing fields) is a one-line `UserError`.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from gptlab.errors import UserError
from gptlab.explain.distribution import distribution

FORMAT = "gptlab-trace"
VERSION = 3
KINDS = ("gpt", "encoder", "classifier", "seq2seq", "image")
WRITERS = "`gptlab explain`, `gptlab encoder explain` or `gptlab seq2seq explain` with --json"

Layer = int | str | None  # an index (negative from the end), "mean", or None for the trace's default


# -- picking layers and heads (one rule for every kind) -------------------------------------------
def pick(choice: Layer, n: int, what: str) -> list[int]:
    """Indexes to average over: all of them for "mean", else the one chosen (negative from the end)."""
    if choice == "mean":
        return list(range(n))
    try:
        i = n if choice is None else int(choice)  # None: the out-of-range message below
    except (TypeError, ValueError):
        i = n  # out of range: the same message as a wrong number
    if not -n <= i < n:
        raise UserError(f"--{what} {choice} does not exist: the trace has {n} {what}s "
                        f"(0..{n - 1}, -1 = last, or 'mean')")
    return [i % n]


def mean_of(arrays: list) -> list:
    """Elementwise mean of equally shaped rows (lists of floats) or matrices (lists of rows)."""
    if len(arrays) == 1:
        return arrays[0]
    if arrays and arrays[0] and isinstance(arrays[0][0], list):
        return [mean_of([a[i] for a in arrays]) for i in range(len(arrays[0]))]
    return [math.fsum(col) / len(arrays) for col in zip(*arrays)]


def view_name(layer: Layer, head: Layer = None) -> str:
    """Layers and heads are stored from 0 (as the model indexes them) and shown from 1 (as the
    commands' --layer/--head count them)."""
    def shown(i: Layer) -> str:
        k = int(i)  # type: ignore[arg-type]  # not None or "mean" here
        return str(k + 1) if k >= 0 else ("the last" if k == -1 else f"{-k} from the end")
    name = "mean over layers" if layer in (None, "mean") else f"layer {shown(layer)}"
    return name + ("" if head in (None, "mean") else f", head {shown(head)}")


def _one_line(e: Exception) -> str:
    return " ".join(f"{type(e).__name__}: {e}".split())[:200]


def read_header(d: object) -> str:
    """The trace's kind, after checking format, version and kind; UserError naming the fix otherwise."""
    if not isinstance(d, dict) or d.get("format") != FORMAT:
        raise UserError(f"not a gptlab trace (its \"format\" is not {FORMAT!r}): pass a file written by {WRITERS}")
    version = d.get("version")
    if type(version) is not int or version < 1:
        raise UserError(f"trace \"version\" {version!r} is not one gptlab writes (1..{VERSION}): "
                        f"write the trace again with {WRITERS}")
    if version > VERSION:
        raise UserError(f"trace version {version} is newer than this gptlab reads ({VERSION}): upgrade gptlab")
    kind = d.get("kind", "gpt" if version == 1 else None)  # version 1 GPT traces did not name their kind
    if kind is None:
        raise UserError(f"trace has no \"kind\" (one of {', '.join(KINDS)}): write it again with {WRITERS}")
    if not isinstance(kind, str) or kind not in KINDS:
        raise UserError(f"unknown trace kind {kind!r} (this gptlab reads {', '.join(KINDS)}): "
                        "upgrade gptlab, or write the trace again")
    return kind


# -- the base: envelope, JSON, loading and the views every kind shares -----------------------------
class Trace:
    """What a model saw and predicted, for one input; subclasses hold one kind each."""

    kind: str

    # -- JSON ---------------------------------------------------------------------------------------
    def body(self) -> dict:
        raise NotImplementedError

    def to_dict(self) -> dict:
        return {"format": FORMAT, "version": VERSION, "kind": self.kind, **self.body()}

    @classmethod
    def from_dict(cls, d: dict) -> Trace:
        """The trace object for `d` (any kind, version 1 to 3); UserError when it is not one."""
        kind = read_header(d)
        target = TRACE_CLASSES[kind]
        if not issubclass(target, cls):
            raise UserError(f"this is a {kind} trace, not a {cls.__name__}: read it with gptlab.explain.load_trace")
        try:
            trace = target.from_body(d, kind)
            trace.check()
        except (KeyError, TypeError, ValueError, AttributeError, IndexError) as e:
            raise UserError(f"trace is incomplete or damaged ({_one_line(e)}): write it again with {WRITERS}") from None
        return trace

    @classmethod
    def from_body(cls, d: dict, kind: str) -> Trace:
        raise NotImplementedError

    def check(self) -> None:
        """Raise ValueError when the attention does not match the tokens (a damaged file)."""

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), ensure_ascii=False, allow_nan=False)

    def save_json(self, path: str | os.PathLike) -> None:
        from gptlab.checkpoint import atomic_write_text  # imported here: reading and rendering need no torch
        atomic_write_text(path, self.to_json() + "\n")

    save = save_json

    @classmethod
    def load(cls, path: str | os.PathLike) -> Trace:
        p = Path(path)
        if not p.is_file():
            raise UserError(f"trace file {p} does not exist: write one with {WRITERS} {p}")
        try:
            d = json.loads(p.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise UserError(f"{p} is not valid JSON ({_one_line(e)}): write the trace again with {WRITERS}") from None
        return cls.from_dict(d)

    # -- views ----------------------------------------------------------------------------------------
    @property
    def n_layer(self) -> int:
        raise NotImplementedError

    @property
    def n_head(self) -> int:
        raise NotImplementedError

    def title(self, layer: Layer = None, head: Layer = None) -> str:
        raise NotImplementedError

    def to_html(self, full_page: bool = True, layer: Layer = None, head: Layer = None, **options) -> str:
        from gptlab.explain.render_html import render_html
        return render_html(self, full_page=full_page, layer=layer, head=head, **options)

    def html(self, layer: Layer = None, standalone: bool = False, **options) -> str:
        return self.to_html(full_page=standalone, layer=layer, **options)

    def save_html(self, path: str | os.PathLike, layer: Layer = None, head: Layer = None) -> None:
        from gptlab.checkpoint import atomic_write_text
        atomic_write_text(path, self.to_html(layer=layer, head=head))

    def to_terminal(self, color: bool | None = None, layer: Layer = None, head: Layer = None, **options) -> str:
        from gptlab.explain.render_term import render_terminal
        return render_terminal(self, color=color, layer=layer, head=head, **options)

    def terminal(self, layer: Layer = None, color: bool | None = None, **options) -> str:
        return self.to_terminal(color=color, layer=layer, **options)

    def _repr_html_(self) -> str:
        return self.to_html(full_page=False)

    def show(self) -> None:
        """Display inline in Jupyter; print the terminal view anywhere else."""
        try:
            from IPython import get_ipython
            from IPython.display import HTML, display
            shell = get_ipython()
        except ImportError:
            shell = None
        if shell is not None and getattr(shell, "kernel", None) is not None:
            display(HTML(self._repr_html_()))
        else:
            print(self.to_terminal())

    def __str__(self) -> str:
        return self.to_terminal(color=False)


# -- gpt: generation steps --------------------------------------------------------------------------
@dataclass
class Candidate:
    token: str
    id: int
    logit: float        # the model's raw logit
    p: float            # probability at temperature 1 over the whole vocabulary, before any setting
    p_sample: float     # probability it was drawn with: after repetition penalty, temperature, top-k/top-p/min-p


@dataclass
class TraceStep:
    tokens: list[str]                       # what the model saw when predicting this step's token
    token_ids: list[int]
    start: int                              # index of tokens[0] in prompt + completion (> 0 once the window slid)
    attention: list[list[list[float]]]      # [layer][head][position]: the predicting position's attention, rows sum to 1
    candidates: list[Candidate]             # the best next tokens for the sampler (by raw logit unless a repetition penalty moved some)
    chosen: Candidate                       # the token that was drawn
    entropy: float                          # bits, of the model's distribution (temperature 1)
    entropy_sample: float                   # bits, of the distribution drawn from
    logsumexp: float                        # of the raw logits over the vocabulary: p = exp(logit - logsumexp)
    finish: str | None = None               # "stop" / "length" on the last step
    dist: dict | None = None                # the sampler's logits before temperature (module docstring); None before version 3
    lens: list[dict] | None = None          # logit lens per residual stream; None before version 3

    def attention_row(self, layer: Layer = None, head: Layer = None) -> list[float]:
        """Attention over `tokens`: one layer (default: the last) or "mean" of layers; one head or the mean (default)."""
        layers = pick(-1 if layer is None else layer, len(self.attention), "layer")
        heads = pick("mean" if head is None else head, len(self.attention[0]), "head")
        return mean_of([self.attention[li][h] for li in layers for h in heads])

    def reweight(self, temperature: float, top_k: int = 0, top_p: float = 1.0, min_p: float = 0.0) -> list[float]:
        """Candidates' probabilities under other sampling settings, over the whole vocabulary.

        From `dist` (version 3): the sampler's own pipeline (`gptlab.explain.distribution`). An
        older trace has only its candidates: exact at temperature 1 without filters (it uses
        logsumexp); elsewhere renormalised over the candidates, which ignores the rest of the vocabulary.
        """
        if self.dist is not None:
            p = {g.id: g.p for g in distribution(self.dist, temperature, top_k, top_p, min_p) if g.id is not None}
            return [p.get(c.id, 0.0) for c in self.candidates]
        if temperature == 1.0 and (top_k, top_p, min_p) == (0, 1.0, 0.0):
            return [math.exp(c.logit - self.logsumexp) for c in self.candidates]
        return softmax([c.logit for c in self.candidates], temperature)


@dataclass(repr=False)
class GPTTrace(Trace):
    prompt: str
    prompt_tokens: list[str]
    completion: str
    finish_reason: str | None
    model: dict                 # kind, n_layer, n_head, d_model, vocab_size, context_length, tokenizer, path
    sampling: dict              # the SamplingConfig used
    top: int                    # candidates to show per step (more may be stored, for re-weighting)
    steps: list[TraceStep] = field(default_factory=list)

    kind = "gpt"  # not a field: one kind per class

    def body(self) -> dict:
        return asdict(self)

    @classmethod
    def from_body(cls, d: dict, kind: str) -> GPTTrace:
        steps = [TraceStep(**{**s, "candidates": [Candidate(**c) for c in s["candidates"]],
                              "chosen": Candidate(**s["chosen"])}) for s in d["steps"]]
        return cls(**{f.name: d[f.name] for f in fields(cls) if f.name != "steps"}, steps=steps)

    def check(self) -> None:
        for k, s in enumerate(self.steps):
            if any(len(row) != len(s.tokens) for heads in s.attention for row in heads) or not s.attention:
                raise ValueError(f"step {k + 1}'s attention does not match its {len(s.tokens)} tokens")

    @property
    def n_layer(self) -> int:
        return len(self.steps[0].attention) if self.steps else int(self.model.get("n_layer", 0))

    @property
    def n_head(self) -> int:
        return len(self.steps[0].attention[0]) if self.steps else int(self.model.get("n_head", 0))

    def title(self, layer: Layer = None, head: Layer = None) -> str:
        return f"gptlab trace: {self.prompt}"

    def __repr__(self) -> str:
        return f"<gptlab GPTTrace: {self.prompt!r} -> {self.completion!r}, {len(self.steps)} steps>"


# -- encoder / classifier / seq2seq: attention matrices ----------------------------------------------
def attention_block(axes: tuple[str, str], layers: list, heads: list) -> dict:
    block = {"axes": ["layer", *axes], "reduce": "mean over heads", "n_layer": len(layers),
             "n_head": len(heads[0]) if heads else 0, "layers": layers}
    if heads:
        block["heads"] = heads
    return block


class MatrixTrace(Trace):
    """A trace whose attention is whole matrices per layer (mean over heads) and per head."""

    layers: list[list[list[float]]]
    heads: list[list[list[list[float]]]]
    layer: Layer
    model: dict

    def matrix(self, layer: Layer = None, head: Layer = None) -> list[list[float]]:
        """One layer's (or the mean over layers') matrix: mean over heads, or one head's."""
        layers = pick(self.layer if layer is None else layer, len(self.layers), "layer")
        if head in (None, "mean"):
            return mean_of([self.layers[i] for i in layers])
        if not self.heads:
            raise UserError("this trace keeps no per-head attention (a version-1 file): "
                            "show the mean of heads, or write the trace again")
        h = pick(head, len(self.heads[0]), "head")[0]
        return mean_of([self.heads[i][h] for i in layers])

    def _check_shape(self, n_rows: int, n_cols: int) -> None:
        maps = list(self.layers) + [m for heads in self.heads for m in heads]
        if not self.layers or any(len(m) != n_rows or any(len(r) != n_cols for r in m) for m in maps):
            raise ValueError(f"the attention does not match the {n_rows} x {n_cols} tokens")

    @property
    def n_layer(self) -> int:
        return len(self.layers)

    @property
    def n_head(self) -> int:
        return len(self.heads[0]) if self.heads else int(self.model.get("n_head", 0))


@dataclass(repr=False)
class EncoderTrace(MatrixTrace):
    kind: str                                 # "encoder" (masked LM) or "classifier"
    text: str
    tokens: list[str]
    focus: int                                # the token whose attention is highlighted
    layers: list[list[list[float]]]           # L x T x T (query x key), mean over heads
    prediction: dict = field(default_factory=dict)
    layer: Layer = field(default="mean", compare=False)  # what the views show by default; not saved
    heads: list[list[list[list[float]]]] = field(default_factory=list)  # L x H x T x T; [] in version 1
    model: dict = field(default_factory=dict)

    def body(self) -> dict:
        return {"model": self.model, "text": self.text, "tokens": self.tokens, "focus": self.focus,
                "self_attention": attention_block(("query", "key"), self.layers, self.heads),
                "prediction": self.prediction}

    @classmethod
    def from_body(cls, d: dict, kind: str) -> EncoderTrace:
        sa = d["self_attention"]
        return cls(kind, d.get("text", ""), d["tokens"], int(d["focus"]), sa["layers"], d.get("prediction") or {},
                   heads=sa.get("heads", []), model=d.get("model") or {})

    def check(self) -> None:
        self._check_shape(len(self.tokens), len(self.tokens))
        if not 0 <= self.focus < len(self.tokens):
            raise ValueError(f"focus {self.focus} is outside the {len(self.tokens)} tokens")

    def weights(self, layer: Layer = None, focus: int | None = None, head: Layer = None) -> list[float]:
        return self.matrix(layer, head)[self.focus if focus is None else focus]

    def prediction_text(self) -> str:
        p = self.prediction
        if "labels" in p:
            return "predicted: " + ", ".join(f"{x['label']} {x['p']:.0%}" for x in p["labels"])
        if "masks" in p:
            return "  ".join(f"[MASK]@{m['position']}: " + ", ".join(f"{x['token']} {x['p']:.0%}" for x in m["top"])
                             for m in p["masks"])
        return ""

    def title(self, layer: Layer = None, head: Layer = None) -> str:
        return (f"attention of {self.tokens[self.focus]!r} (position {self.focus}) over the sentence, "
                f"{view_name(self.layer if layer is None else layer, head)}: it reads both directions")

    def __repr__(self) -> str:
        return f"<gptlab EncoderTrace ({self.kind}): {self.text!r}, {len(self.tokens)} tokens>"


@dataclass(repr=False)
class Seq2SeqTrace(MatrixTrace):
    source: str
    translation: str
    source_tokens: list[str]
    target_tokens: list[str]
    layers: list[list[list[float]]]           # L x T x S, mean over heads
    heads: list[list[list[list[float]]]]      # L x H x T x S
    layer: Layer = field(default="mean", compare=False)  # what the views show by default; not saved
    next_tokens: list[dict] = field(default_factory=list)  # per target row: {"p", "top": [{token, id, p}], "entropy"}
    model: dict = field(default_factory=dict)

    kind = "seq2seq"  # not a field: one kind per class

    def body(self) -> dict:
        return {"model": self.model, "source": self.source, "translation": self.translation,
                "source_tokens": self.source_tokens, "target_tokens": self.target_tokens,
                "cross_attention": attention_block(("target", "source"), self.layers, self.heads),
                "next_tokens": self.next_tokens}

    @classmethod
    def from_body(cls, d: dict, kind: str) -> Seq2SeqTrace:
        ca = d["cross_attention"]
        return cls(d.get("source", ""), d.get("translation", ""), d["source_tokens"], d["target_tokens"],
                   ca["layers"], ca.get("heads", []), next_tokens=d.get("next_tokens") or [],
                   model=d.get("model") or {})

    def check(self) -> None:
        self._check_shape(len(self.target_tokens), len(self.source_tokens))

    def prediction_text(self) -> str:
        """Each generated word with the probability and entropy (bits) it was written with."""
        return "  ".join(f"{t} {n['p']:.0%} ({n['entropy']:.2f} bits)"
                         for t, n in zip(self.target_tokens, self.next_tokens))

    def title(self, layer: Layer = None, head: Layer = None) -> str:
        return (f"cross-attention ({view_name(self.layer if layer is None else layer, head)}): "
                f"{self.source!r} -> {self.translation!r}")

    def __repr__(self) -> str:
        return f"<gptlab Seq2SeqTrace: {self.source!r} -> {self.translation!r}>"


# -- image: a generated picture, each prompt word's cross-attention over it (DAAM), a filmstrip --------
@dataclass(repr=False)
class ImageTrace(Trace):
    """`gptlab image explain`: images are PNG data URLs; "heatmaps" holds, per caption token, its
    cross-attention over the latent grid (rows x cols, row-major) summed over layers, heads and
    denoising steps, then divided by their number (Tang et al. 2022, DAAM)."""
    prompt: str
    tokens: list[str]
    grid: list[int]                          # [rows, cols] of the latent grid
    heatmaps: list[list[float]]              # per token, rows * cols weights
    image: str                               # the generated image, a data:image/png URL
    filmstrip: list[dict] = field(default_factory=list)  # {"step", "of", "image"}: predicted clean image
    settings: dict = field(default_factory=dict)
    model: dict = field(default_factory=dict)

    kind = "image"  # not a field: one kind per class

    def body(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_body(cls, d: dict, kind: str) -> ImageTrace:
        return cls(**{f.name: d[f.name] for f in fields(cls) if f.name in d})

    def check(self) -> None:
        rows, cols = self.grid
        if len(self.heatmaps) != len(self.tokens) or any(len(h) != rows * cols for h in self.heatmaps):
            raise ValueError(f"heatmaps do not match {len(self.tokens)} tokens x a {rows}x{cols} grid")

    @property
    def n_layer(self) -> int:
        return int(self.model.get("n_layer", 0))

    @property
    def n_head(self) -> int:
        return int(self.model.get("n_head", 0))

    def title(self, layer: Layer = None, head: Layer = None) -> str:
        return f"where each word looked (cross-attention, DAAM): {self.prompt!r}"

    def __repr__(self) -> str:
        return f"<gptlab ImageTrace: {self.prompt!r}, {len(self.tokens)} tokens, {len(self.filmstrip)} film frames>"


TRACE_CLASSES: dict[str, type[Trace]] = {"gpt": GPTTrace, "encoder": EncoderTrace, "classifier": EncoderTrace,
                                         "seq2seq": Seq2SeqTrace, "image": ImageTrace}


def load_trace(path: str | os.PathLike) -> Trace:
    """A saved trace (any kind, version 1 to 3) back as its object, to render again without the model."""
    return Trace.load(path)


# -- plain math, for renderers that re-weight without torch ----------------------------------------------
def softmax(logits: list[float], temperature: float = 1.0) -> list[float]:
    if temperature == 0:
        best = max(range(len(logits)), key=logits.__getitem__)
        return [1.0 if i == best else 0.0 for i in range(len(logits))]
    m = max(logits)
    e = [math.exp((x - m) / temperature) for x in logits]
    s = math.fsum(e)
    return [x / s for x in e]


def entropy_bits(probs: list[float]) -> float:
    return -math.fsum(p * math.log2(p) for p in probs if p > 0)
