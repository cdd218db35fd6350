"""Where alignment changed a model's mind (`gptlab explain MODEL PROMPT --compare REF`): for the
same text, each step's top candidates under the aligned model and under its reference (the SFT
model), the probability each gives the token that was written, and the KL between their
next-token distributions, KL(aligned || reference) in nats.

The text is the prompt and a continuation sampled from the aligned model; both models then read
it in one forward pass each, so the figures are exact, not sampled. `Comparison.to_dict` is the
JSON the server's POST /v1/compare answers and `gptlab explain --compare --out` embeds; one viewer
draws it in both places (static/compare_view.js, see render_html.render_compare_html)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from gptlab.data.tokenizer import Tokenizer
from gptlab.errors import UserError
from gptlab.explain.capture import token_labels
from gptlab.infer.generate import encode_prompts, generate_steps
from gptlab.infer.sampling import SamplingConfig, make_generator
from gptlab.model import GPT


@dataclass
class CompareStep:
    token: str                               # the token written at this step
    kl: float                                # KL(aligned || ref) of the next-token distributions, nats
    p: float                                 # the token's probability under the aligned model
    ref_p: float                             # ... and under the reference
    top: list[tuple[str, float]] = field(default_factory=list)
    ref_top: list[tuple[str, float]] = field(default_factory=list)


@dataclass
class Comparison:
    prompt: str
    steps: list[CompareStep]
    text: str = ""                           # the continuation the steps wrote (sampled from the aligned model)
    model: str = "model"                     # what to call the two models in a view
    reference: str = "reference"

    @property
    def total_kl(self) -> float:
        return sum(s.kl for s in self.steps)

    def to_dict(self) -> dict:
        """Plain JSON-ready data: the view's input (top lists as {"token", "p"} objects)."""
        def top(pairs: list[tuple[str, float]]) -> list[dict]:
            return [{"token": t, "p": p} for t, p in pairs]
        return {"object": "comparison", "model": self.model, "reference": self.reference, "prompt": self.prompt,
                "text": self.text, "total_kl": self.total_kl,
                "steps": [{"token": s.token, "kl": s.kl, "p": s.p, "ref_p": s.ref_p, "top": top(s.top),
                           "ref_top": top(s.ref_top)} for s in self.steps]}

    def to_terminal(self) -> str:
        """One line per step: the token, the KL, both probabilities and both top lists."""
        lines = [f"prompt: {self.prompt}",
                 f"{'token':>14}  {'KL':>6}  {'p':>5}  {'p ref':>5}  aligned top | reference top"]
        for s in self.steps:
            top = " ".join(f"{t} {p:.2f}" for t, p in s.top)
            ref = " ".join(f"{t} {p:.2f}" for t, p in s.ref_top)
            mark = " *" if s.top and s.ref_top and s.top[0][0] != s.ref_top[0][0] else ""
            lines.append(f"{s.token[:14]:>14}  {s.kl:6.3f}  {s.p:5.2f}  {s.ref_p:5.2f}  {top} | {ref}{mark}")
        lines.append(f"KL of the whole continuation: {self.total_kl:.3f} nats (* = the models' first choices differ)")
        return "\n".join(lines)


def same_vocabulary(a: Tokenizer, b: Tokenizer, what: str = "--compare: the reference model") -> None:
    """A UserError unless both tokenizers give every token the same id: the KL compares distributions
    over one vocabulary, id by id."""
    if a.hf.get_vocab() != b.hf.get_vocab():
        raise UserError(f"{what} has another tokenizer ({b.vocab_size} vs {a.vocab_size} tokens, or other ids): "
                        "compare a model with the one it was aligned from (its SFT model)")


@torch.no_grad()
def compare(model: GPT, ref: GPT, tok: Tokenizer, prompt: str, cfg: SamplingConfig, steps: int, top: int = 5,
            names: tuple[str, str] = ("model", "reference")) -> Comparison:
    """Sample `steps` tokens after `prompt` from `model`, then read prompt + continuation with both.
    `names`: what the views call `model` and `ref`."""
    ids = encode_prompts(tok, [prompt])[0]
    dev = model.tok_emb.weight.device
    ref.to(dev).eval()
    model.eval()
    sampling = SamplingConfig(**{**cfg.to_dict(), "max_new_tokens": steps})
    new: list[int] = []
    for step in generate_steps(model, [ids], sampling, eot_id=tok.eot_id, pad_id=tok.pad_id,
                               generator=make_generator(cfg.seed, dev)):
        new.append(int(step.tokens_B[0]))
    C = min(model.cfg.context_length, ref.cfg.context_length)
    seq = (ids + new)[-(C + 1):]
    n_new = min(len(new), len(seq) - 1)
    x = torch.tensor([seq[:-1]], device=dev)
    logp = torch.log_softmax(model(x, return_logits=True).logits[0].float(), -1)[-n_new:]  # (N, V)
    ref_logp = torch.log_softmax(ref(x, return_logits=True).logits[0].float(), -1)[-n_new:]
    kl = (logp.exp() * (logp - ref_logp)).sum(-1)
    label = token_labels(tok)
    written = seq[-n_new:]
    out = []
    for i, t in enumerate(written):
        p, r = logp[i].exp(), ref_logp[i].exp()
        tp, ti = p.topk(min(top, p.numel()))
        rp, ri = r.topk(min(top, r.numel()))
        out.append(CompareStep(label(t), float(kl[i]), float(p[t]), float(r[t]),
                               [(label(int(j)), float(q)) for q, j in zip(tp, ti)],
                               [(label(int(j)), float(q)) for q, j in zip(rp, ri)]))
    return Comparison(prompt, out, tok.decode(new), *names)
