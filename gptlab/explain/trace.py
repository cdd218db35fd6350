"""An explanation trace: what the model saw, attended to and predicted at each generated step.

Plain data (no torch), saved as one versioned JSON document so a trace can be rendered again
later, elsewhere, without the model:

    {"format": "gptlab-trace", "version": 1, "prompt": ..., "completion": ..., "model": {...},
     "sampling": {...}, "top": 5, "steps": [{"tokens": [...], "attention": [[[...]]], ...}]}
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from gptlab.errors import UserError

FORMAT = "gptlab-trace"
VERSION = 1


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
    candidates: list[Candidate]             # the most likely next tokens by raw logit, best first
    chosen: Candidate                       # the token that was drawn
    entropy: float                          # bits, of the model's distribution (temperature 1)
    entropy_sample: float                   # bits, of the distribution drawn from
    logsumexp: float                        # of the raw logits over the vocabulary: p = exp(logit - logsumexp)
    finish: str | None = None               # "stop" / "length" on the last step

    def attention_row(self, layer: int | str | None = None, head: int | str | None = None) -> list[float]:
        """Attention over `tokens`: one layer (default: the last) or "mean" of layers; one head or the mean (default)."""
        layers = self.attention if layer == "mean" else [self.attention[-1 if layer is None else int(layer)]]
        rows = [heads[int(head)] for heads in layers] if head not in (None, "mean") else [r for heads in layers for r in heads]
        return [math.fsum(col) / len(rows) for col in zip(*rows)]

    def reweight(self, temperature: float) -> list[float]:
        """Candidates' probabilities at another temperature, renormalised over the stored candidates.

        Exact at temperature 1 (it uses logsumexp); elsewhere an approximation that ignores the rest
        of the vocabulary, good when the stored candidates hold most of the mass.
        """
        if temperature == 1.0:
            return [math.exp(c.logit - self.logsumexp) for c in self.candidates]
        return softmax([c.logit for c in self.candidates], temperature)


@dataclass(repr=False)
class Trace:
    prompt: str
    prompt_tokens: list[str]
    completion: str
    finish_reason: str | None
    model: dict                 # kind, n_layer, n_head, d_model, vocab_size, context_length, tokenizer, path
    sampling: dict              # the SamplingConfig used
    top: int                    # candidates to show per step (more may be stored, for re-weighting)
    steps: list[TraceStep] = field(default_factory=list)

    # -- JSON ---------------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {"format": FORMAT, "version": VERSION, **asdict(self)}

    @classmethod
    def from_dict(cls, d: dict) -> "Trace":
        if not isinstance(d, dict) or d.get("format") != FORMAT:
            raise UserError(f"not a gptlab trace (its \"format\" is not {FORMAT!r}): pass a file written by `gptlab explain --json`")
        version = d.get("version")
        if not isinstance(version, int) or version > VERSION:
            raise UserError(f"trace version {version!r} is newer than this gptlab reads ({VERSION}): upgrade gptlab")
        try:
            steps = [TraceStep(**{**s, "candidates": [Candidate(**c) for c in s["candidates"]],
                                  "chosen": Candidate(**s["chosen"])}) for s in d["steps"]]
            return cls(**{f.name: d[f.name] for f in fields(cls) if f.name != "steps"}, steps=steps)
        except (KeyError, TypeError) as e:
            raise UserError(f"trace is incomplete or damaged ({type(e).__name__}: {e}): write it again with `gptlab explain --json`") from None

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), ensure_ascii=False, allow_nan=False)

    def save(self, path: str | os.PathLike) -> None:
        from gptlab.checkpoint import atomic_write_text  # imported here: reading and rendering a trace needs no torch
        atomic_write_text(path, self.to_json() + "\n")

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Trace":
        p = Path(path)
        if not p.is_file():
            raise UserError(f"trace file {p} does not exist: write one with `gptlab explain MODEL PROMPT --json {p}`")
        try:
            d = json.loads(p.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise UserError(f"{p} is not valid JSON ({e}): write the trace again with `gptlab explain --json`") from None
        return cls.from_dict(d)

    # -- views ----------------------------------------------------------------------------------------
    @property
    def n_layer(self) -> int:
        return len(self.steps[0].attention) if self.steps else int(self.model.get("n_layer", 0))

    @property
    def n_head(self) -> int:
        return len(self.steps[0].attention[0]) if self.steps else int(self.model.get("n_head", 0))

    def to_html(self, full_page: bool = True) -> str:
        from gptlab.explain.render_html import render_html
        return render_html(self, full_page=full_page)

    def save_html(self, path: str | os.PathLike) -> None:
        from gptlab.checkpoint import atomic_write_text
        atomic_write_text(path, self.to_html())

    def to_terminal(self, color: bool | None = None, layer: int | str | None = None, head: int | str | None = None) -> str:
        from gptlab.explain.render_term import render_terminal
        return render_terminal(self, color=color, layer=layer, head=head)

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

    def __repr__(self) -> str:
        return f"<gptlab Trace: {self.prompt!r} -> {self.completion!r}, {len(self.steps)} steps>"


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
