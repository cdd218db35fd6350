"""What the encoder-decoder and encoder-only models look at: capture (torch) -> trace (plain lists,
JSON) -> render (`gptlab.explain.heatmap`, no torch).

Traces are JSON in the spirit of the GPT's "gptlab-trace" version 1, self-contained here:
- seq2seq: {"format": "gptlab-trace", "version": 1, "kind": "seq2seq", "source_tokens": [...],
  "target_tokens": [...], "cross_attention": {"layers": L x T x S (mean over heads),
  "heads": L x H x T x S, ...}}; row t is the decoder position that wrote target_tokens[t].
- encoder / classifier: {"format": "gptlab-trace", "version": 1, "kind": ..., "tokens": [...],
  "focus": i, "self_attention": {"layers": L x T x T (mean over heads), ...}, "prediction": ...}.

The returned objects render themselves in a notebook (`_repr_html_`) and a terminal (`.terminal()`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from gptlab.explain import heatmap as rh
from gptlab.checkpoint import atomic_write_json, atomic_write_text
from gptlab.errors import UserError
from gptlab.data.tokenizer import EOT, UNK, Tokenizer

FORMAT, VERSION = "gptlab-trace", 1


def surface_tokens(tok: Tokenizer, text: str, limit: int | None = None) -> list[str]:
    """Token strings as the user wrote them: an [UNK] shows its original word, marked with '?'."""
    enc = tok.hf.encode(text, add_special_tokens=False)
    out = []
    for t, (a, b) in zip(enc.tokens, enc.offsets):
        out.append(f"{text[a:b]}?" if t == UNK and b > a else t)
    return out[:limit] if limit else out


def _pick_layer(layers: list, layer: int | str | None):
    """One layer's matrix (negative indexes from the end), or the mean over layers ("mean")."""
    if layer is None or layer == "mean":
        n = len(layers)
        return [[sum(layers[l][i][j] for l in range(n)) / n for j in range(len(layers[0][i]))]
                for i in range(len(layers[0]))]
    try:
        return layers[int(layer)]
    except (IndexError, ValueError):
        raise UserError(f"--layer {layer} does not exist: the model has {len(layers)} layers "
                        f"(0..{len(layers) - 1}, -1 = last, or 'mean')") from None


def _layer_name(layer) -> str:
    return "mean over layers" if layer in (None, "mean") else f"layer {layer}"


# -- encoder-decoder ------------------------------------------------------------------------------
@dataclass
class CrossAttentionTrace:
    source: str
    translation: str
    source_tokens: list[str]
    target_tokens: list[str]
    layers: list[list[list[float]]]          # L x T x S, mean over heads
    heads: list[list[list[list[float]]]]     # L x H x T x S
    layer: int | str = "mean"                # what the renderers show by default

    def matrix(self, layer: int | str | None = None) -> list[list[float]]:
        return _pick_layer(self.layers, self.layer if layer is None else layer)

    def to_dict(self) -> dict:
        return {"format": FORMAT, "version": VERSION, "kind": "seq2seq", "source": self.source,
                "translation": self.translation, "source_tokens": self.source_tokens,
                "target_tokens": self.target_tokens,
                "cross_attention": {"axes": ["layer", "target", "source"], "reduce": "mean over heads",
                                    "n_layer": len(self.layers), "n_head": len(self.heads[0]) if self.heads else 0,
                                    "layers": self.layers, "heads": self.heads}}

    @classmethod
    def from_dict(cls, d: dict) -> "CrossAttentionTrace":
        if d.get("format") != FORMAT or d.get("kind") != "seq2seq":
            raise UserError("not a seq2seq gptlab-trace JSON (format/kind do not match)")
        ca = d["cross_attention"]
        return cls(d.get("source", ""), d.get("translation", ""), d["source_tokens"], d["target_tokens"],
                   ca["layers"], ca.get("heads", []))

    def save_json(self, path: str | Path) -> None:
        atomic_write_json(path, self.to_dict())

    def title(self, layer=None) -> str:
        return (f"cross-attention ({_layer_name(self.layer if layer is None else layer)}): "
                f"{self.source!r} -> {self.translation!r}")

    def html(self, layer: int | str | None = None, standalone: bool = False) -> str:
        return rh.html_heatmap(self.matrix(layer), self.target_tokens, self.source_tokens,
                               title=self.title(layer), row_title="generated", col_title="source",
                               standalone=standalone)

    def save_html(self, path: str | Path, layer: int | str | None = None) -> None:
        atomic_write_text(path, self.html(layer, standalone=True))

    def terminal(self, layer: int | str | None = None, color: bool | None = None, values: bool = False) -> str:
        return rh.terminal_heatmap(self.matrix(layer), self.target_tokens, self.source_tokens,
                                   title=self.title(layer) + "\nrows: generated words; columns: source words",
                                   color=color, values=values)

    def _repr_html_(self) -> str:
        return self.html()


@torch.no_grad()
def explain_translation(model, tok: Tokenizer, text: str, beam: int = 1,
                        layer: int | str = "mean") -> CrossAttentionTrace:
    """Translate `text`, then re-run the decoder on its own output to read the cross-attention
    each generated word was written with (the decoder is causal, so this equals what it saw
    step by step)."""
    from gptlab.training.tasks.seq2seq import BOS, translate_ids
    ctx = model.cfg.context_length
    src = tok.encode(text)[:ctx]
    if not src:
        raise UserError("nothing to translate: the text is empty")
    ids = translate_ids(model, tok, [text], beam)[0]
    tgt_in = ([tok.token_to_id(BOS)] + ids)[:ctx]
    dev = next(model.parameters()).device
    out = model(torch.tensor([src], device=dev), torch.tensor([tgt_in], device=dev), return_attn=True)
    heads = [a[0].float().cpu() for a in out.cross_attn]  # per layer (H, T, S)
    target_tokens = ([tok.id_to_token(i) for i in ids] + [EOT])[:len(tgt_in)]
    return CrossAttentionTrace(
        source=text, translation=tok.decode(ids), source_tokens=surface_tokens(tok, text, ctx),
        target_tokens=target_tokens, layers=[_round(h.mean(0)) for h in heads],
        heads=[_round(h) for h in heads], layer=layer)


def _round(t: torch.Tensor) -> list:
    return (t * 1e4).round().div(1e4).tolist()  # 4 decimals keep the JSON small


# -- encoder-only ---------------------------------------------------------------------------------
@dataclass
class EncoderAttentionTrace:
    kind: str                                 # "encoder" or "classifier"
    text: str
    tokens: list[str]
    focus: int                                # the token whose attention is highlighted
    layers: list[list[list[float]]]          # L x T x T (query x key), mean over heads
    prediction: dict = field(default_factory=dict)
    layer: int | str = "mean"

    def matrix(self, layer: int | str | None = None) -> list[list[float]]:
        return _pick_layer(self.layers, self.layer if layer is None else layer)

    def weights(self, layer: int | str | None = None, focus: int | None = None) -> list[float]:
        return self.matrix(layer)[self.focus if focus is None else focus]

    def to_dict(self) -> dict:
        return {"format": FORMAT, "version": VERSION, "kind": self.kind, "text": self.text,
                "tokens": self.tokens, "focus": self.focus,
                "self_attention": {"axes": ["layer", "query", "key"], "reduce": "mean over heads",
                                   "n_layer": len(self.layers), "layers": self.layers},
                "prediction": self.prediction}

    def save_json(self, path: str | Path) -> None:
        atomic_write_json(path, self.to_dict())

    def _prediction_text(self) -> str:
        p = self.prediction
        if "labels" in p:
            return "predicted: " + ", ".join(f"{x['label']} {x['p']:.0%}" for x in p["labels"])
        if "masks" in p:
            return "  ".join(f"[MASK]@{m['position']}: " + ", ".join(f"{x['token']} {x['p']:.0%}" for x in m["top"])
                             for m in p["masks"])
        return ""

    def title(self, layer=None) -> str:
        return (f"attention of {self.tokens[self.focus]!r} (position {self.focus}) over the sentence, "
                f"{_layer_name(self.layer if layer is None else layer)}: it reads both directions")

    def html(self, layer: int | str | None = None, standalone: bool = False, matrix: bool = True) -> str:
        parts = []
        pred = self._prediction_text()
        if pred:
            parts.append(f'<div style="font-family:system-ui,sans-serif;margin:4px 0">{rh.html.escape(pred)}</div>')
        parts.append(rh.html_highlight(self.tokens, self.weights(layer), title=self.title(layer), focus=self.focus))
        if matrix:
            parts.append(rh.html_heatmap(self.matrix(layer), self.tokens, self.tokens, values=len(self.tokens) <= 24,
                                         title="every token's attention (rows: query, columns: key)",
                                         row_title="query", col_title="key"))
        body = "".join(parts)
        return rh._page(self.title(layer), body) if standalone else body

    def save_html(self, path: str | Path, layer: int | str | None = None) -> None:
        atomic_write_text(path, self.html(layer, standalone=True))

    def terminal(self, layer: int | str | None = None, color: bool | None = None, matrix: bool = False) -> str:
        lines = [self.title(layer), rh.terminal_highlight(self.tokens, self.weights(layer), color=color, focus=self.focus)]
        pred = self._prediction_text()
        if pred:
            lines.insert(0, pred)
        if matrix:
            lines.append(rh.terminal_heatmap(self.matrix(layer), self.tokens, self.tokens, color=color))
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        return self.html()


def resolve_focus(tokens: list[str], focus: str | int | None) -> int:
    """A position, or a word of the sentence (its first occurrence); None = position 0 ([CLS])."""
    if focus is None or focus == "":
        return 0
    s = str(focus)
    if s.lstrip("-").isdigit():
        i = int(s)
        if not -len(tokens) <= i < len(tokens):
            raise UserError(f"--token {i} is outside the sentence's {len(tokens)} tokens (0 is [CLS])")
        return i % len(tokens)
    low = [t.lower() for t in tokens]
    if s.lower() in low:
        return low.index(s.lower())
    raise UserError(f"--token {s!r} is not a token of the sentence; tokens: {' '.join(tokens)}")


@torch.no_grad()
def explain_encoder(model, tok: Tokenizer, text: str, focus: str | int | None = None,
                    layer: int | str = "mean", labels: list[str] | None = None,
                    top: int = 3) -> EncoderAttentionTrace:
    """Attention of one token ([CLS] by default) over the sentence; with a classifier the
    predicted labels, with a masked-LM encoder the best words for each [MASK]."""
    from gptlab.training.tasks.encoder import CLS, MASK, encode_texts
    from gptlab.model.encoder import Classifier
    ids = encode_texts(tok, [text], model.cfg.context_length)[0]
    if len(ids) < 2:
        raise UserError("nothing to explain: the text is empty")
    tokens = [CLS] + surface_tokens(tok, text, len(ids) - 1)
    i_focus = resolve_focus(tokens, focus)
    dev = next(model.parameters()).device
    x = torch.tensor([ids], device=dev)
    prediction: dict = {}
    if isinstance(model, Classifier):
        out = model(x, return_attn=True)
        probs = out.logits[0].float().softmax(-1)
        p, k = probs.topk(min(top, probs.numel()))
        prediction = {"labels": [{"label": labels[j] if labels else str(j), "p": round(float(q), 4)}
                                 for q, j in zip(p.tolist(), k.tolist())]}
        attn, kind = out.attn, "classifier"
    else:
        out = model(x, return_attn=True, return_logits=True)
        attn, kind = out.attn, "encoder"
        mask_id = tok.token_to_id(MASK)
        masks = []
        for pos in (x[0] == mask_id).nonzero().flatten().tolist():
            logp = out.logits[0, pos].float().softmax(-1)
            p, k = logp.topk(top)
            masks.append({"position": pos, "top": [{"token": tok.id_to_token(j), "p": round(float(q), 4)}
                                                   for q, j in zip(p.tolist(), k.tolist())]})
        if masks:
            prediction = {"masks": masks}
    layers = [_round(a[0].float().mean(0).cpu()) for a in attn]
    return EncoderAttentionTrace(kind, text, tokens, i_focus, layers, prediction, layer)


def load_trace(path: str | Path):
    """A saved trace JSON back as its object (for re-rendering without the model)."""
    d = json.loads(Path(path).read_text(encoding="utf-8"))
    if d.get("kind") == "seq2seq":
        return CrossAttentionTrace.from_dict(d)
    return EncoderAttentionTrace(d["kind"], d.get("text", ""), d["tokens"], d["focus"],
                                 d["self_attention"]["layers"], d.get("prediction", {}))
