"""Sampling: pure functions from next-token logits to a token, with an explicit `torch.Generator`.

The pipeline over logits (B, V) is: repetition penalty -> temperature -> the filters in `FILTERS`
(top-k, top-p, min-p; each sets the logits it removes to -inf) -> softmax -> one draw per row.
Temperature 0 means greedy: the argmax of the penalised logits.

Nothing here knows about tokenizers or models; `gptlab.infer.generate` calls these once per step.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import torch

from gptlab.errors import UserError


@dataclass
class SamplingConfig:
    temperature: float = field(default=1.0, metadata={"help": "divide the logits by T before softmax: < 1 sharper, > 1 flatter, 0 = always the most likely token"})
    top_k: int = field(default=0, metadata={"help": "sample only among the k most likely tokens (0 = off)"})
    top_p: float = field(default=1.0, metadata={"help": "nucleus sampling: keep the fewest tokens whose probabilities add up to p (1 = off)"})
    min_p: float = field(default=0.0, metadata={"help": "drop tokens less likely than min_p times the most likely one (0 = off)"})
    repetition_penalty: float = field(default=1.0, metadata={"help": "make tokens already in the text less likely (> 1) or more likely (< 1); 1 = off"})
    max_new_tokens: int = field(default=80, metadata={"help": "stop after this many new tokens"})
    stop: list[str] = field(default_factory=list, metadata={"help": "stop when the generated text contains one of these strings (it is not included)"})
    seed: int | None = field(default=None, metadata={"help": "random seed: the same seed and settings give the same text"})

    def validate(self) -> SamplingConfig:
        """Raise UserError (one line: what is wrong, what to do) on settings that cannot work."""
        if not (self.temperature >= 0 and math.isfinite(self.temperature)):
            raise UserError(f"temperature must be >= 0 (got {self.temperature}): use 0 for greedy, 1 for the model's own distribution")
        if self.top_k < 0:
            raise UserError(f"top-k must be >= 0 (got {self.top_k}): use 0 to switch it off")
        if not 0.0 < self.top_p <= 1.0:
            raise UserError(f"top-p must be in (0, 1] (got {self.top_p}): use 1 to switch it off, e.g. 0.9 to keep 90% of the mass")
        if not 0.0 <= self.min_p < 1.0:
            raise UserError(f"min-p must be in [0, 1) (got {self.min_p}): use 0 to switch it off, e.g. 0.05")
        if not (self.repetition_penalty > 0 and math.isfinite(self.repetition_penalty)):
            raise UserError(f"repetition penalty must be > 0 (got {self.repetition_penalty}): use 1 to switch it off, e.g. 1.2")
        if self.max_new_tokens < 0:
            raise UserError(f"max new tokens must be >= 0 (got {self.max_new_tokens})")
        if isinstance(self.stop, str) or not all(isinstance(s, str) for s in self.stop):
            raise UserError(f"stop must be a list of strings (got {self.stop!r}): e.g. stop=['wine review']")
        return self

    def to_dict(self) -> dict:
        return asdict(self)


# -- filters: each maps logits (B, V) to logits with the removed tokens at -inf ----------------------
def top_k_filter(logits_BxV: torch.Tensor, k: int) -> torch.Tensor:
    if k >= logits_BxV.shape[-1]:
        return logits_BxV
    kth_Bx1 = logits_BxV.topk(k, dim=-1).values[:, -1:]
    return logits_BxV.masked_fill(logits_BxV < kth_Bx1, float("-inf"))


def top_p_filter(logits_BxV: torch.Tensor, p: float) -> torch.Tensor:
    """Keep the smallest set of most likely tokens whose probability mass is >= p."""
    if p >= 1.0:
        return logits_BxV
    probs_BxV = logits_BxV.softmax(dim=-1)
    V = logits_BxV.shape[-1]
    # Sorting 10k logits per row is slow on a CPU; the nucleus almost always lies in the top few
    # hundred, so look there first and sort everything only for the rows where it does not.
    k = min(V, 256)
    while True:
        sorted_BxK, idx_BxK = probs_BxV.topk(k, dim=-1)
        mass_before_BxK = sorted_BxK.cumsum(dim=-1) - sorted_BxK
        if k == V or bool((mass_before_BxK[:, -1] + sorted_BxK[:, -1] >= p).all()):
            break
        k = min(V, k * 8)
    # A token is dropped when the tokens ranked before it already reach p; the top one always stays.
    drop_BxK = mass_before_BxK >= p
    drop_BxK[:, 0] = False
    keep_BxV = torch.zeros_like(logits_BxV, dtype=torch.bool).scatter_(-1, idx_BxK, ~drop_BxK)
    return logits_BxV.masked_fill(~keep_BxV, float("-inf"))


def min_p_filter(logits_BxV: torch.Tensor, min_p: float) -> torch.Tensor:
    """Drop tokens whose probability is below min_p times the top token's."""
    # p_i < min_p * p_max  <=>  logit_i < logit_max + log(min_p)
    floor_Bx1 = logits_BxV.max(dim=-1, keepdim=True).values + math.log(min_p)
    return logits_BxV.masked_fill(logits_BxV < floor_Bx1, float("-inf"))


# (SamplingConfig field, filter, value meaning "off"), applied in this order after temperature.
# top-k takes an int (k), the others a float.
FILTERS: tuple[tuple[str, Callable[[torch.Tensor, int], torch.Tensor] | Callable[[torch.Tensor, float], torch.Tensor],
                     float], ...] = (
    ("top_k", top_k_filter, 0),
    ("top_p", top_p_filter, 1.0),
    ("min_p", min_p_filter, 0.0),
)


def apply_repetition_penalty(logits_BxV: torch.Tensor, seen_BxV: torch.Tensor, penalty: float) -> torch.Tensor:
    """CTRL's penalty: a token already seen has its logit divided by `penalty` if positive, else multiplied."""
    if penalty == 1.0:
        return logits_BxV
    penalised = torch.where(logits_BxV > 0, logits_BxV / penalty, logits_BxV * penalty)
    return torch.where(seen_BxV, penalised, logits_BxV)


def process_logits(logits_BxV: torch.Tensor, cfg: SamplingConfig,
                   seen_BxV: torch.Tensor | None = None) -> torch.Tensor:
    """The logits actually sampled from: penalty, temperature, filters. T=0 keeps only the argmax."""
    if logits_BxV.dtype != torch.float64:
        logits_BxV = logits_BxV.float()  # half-precision logits would round the softmax
    if seen_BxV is not None:
        logits_BxV = apply_repetition_penalty(logits_BxV, seen_BxV, cfg.repetition_penalty)
    if cfg.temperature == 0:
        best_Bx1 = logits_BxV.argmax(dim=-1, keepdim=True)
        return torch.full_like(logits_BxV, float("-inf")).scatter_(-1, best_Bx1, 0.0)
    if cfg.temperature != 1.0:
        logits_BxV = logits_BxV / cfg.temperature
    for name, fn, off in FILTERS:
        value = getattr(cfg, name)
        if value != off:
            logits_BxV = fn(logits_BxV, value)
    return logits_BxV


def draw(probs_BxV: torch.Tensor, generator: torch.Generator | None = None,
         u_Bx1: torch.Tensor | None = None) -> torch.Tensor:
    """One token per row from probabilities (B, V) -> (B,): inverse-CDF sampling, one uniform number per row.

    `u_Bx1`: those numbers, when the caller draws them (the serving engine, one generator per row,
    each drawing as `torch.rand((1, 1), generator=g, dtype=probs.dtype)`); else from `generator`.

    Same distribution as `torch.multinomial`, which on a CPU draws V random numbers per row and
    costs more than the forward pass of a small model. The target is kept below the total mass, so
    float rounding cannot land on zero-probability (filtered) tokens at the end of the vocabulary;
    searchsorted(right=True) skips them elsewhere.
    """
    cdf_BxV = probs_BxV.cumsum(dim=-1)
    total_Bx1 = cdf_BxV[:, -1:]
    if u_Bx1 is None:
        u_Bx1 = torch.rand(total_Bx1.shape, generator=generator, device=probs_BxV.device, dtype=cdf_BxV.dtype)
    target_Bx1 = torch.minimum(u_Bx1 * total_Bx1, torch.nextafter(total_Bx1, torch.zeros_like(total_Bx1)))
    return torch.searchsorted(cdf_BxV, target_Bx1, right=True).squeeze(-1)


def sample(logits_BxV: torch.Tensor, cfg: SamplingConfig, generator: torch.Generator | None = None,
           seen_BxV: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Next tokens (B,) and the distribution they were drawn from (B, V)."""
    probs_BxV = process_logits(logits_BxV, cfg, seen_BxV).softmax(dim=-1)
    if cfg.temperature == 0:
        return probs_BxV.argmax(dim=-1), probs_BxV
    return draw(probs_BxV, generator), probs_BxV


def make_generator(seed: int | None, device: torch.device | str = "cpu") -> torch.Generator:
    g = torch.Generator(device=device)
    if seed is None:
        g.seed()
    else:
        g.manual_seed(seed)
    return g


def entropy_bits(probs_V: torch.Tensor) -> torch.Tensor:
    """Shannon entropy in bits over the last dimension (0 log 0 = 0)."""
    # 0 * log(tiny) = 0 gives 0 log 0 = 0 (faster than xlogy on a CPU); "0.0 -" rather than a
    # unary minus, so a certain outcome shows 0.000, not -0.000.
    logp_V = probs_V.clamp_min(torch.finfo(probs_V.dtype).tiny).log_()
    return 0.0 - logp_V.mul_(probs_V).sum(dim=-1) / math.log(2)


# -- the temperature table (the course's slide, and `gptlab temperature`) -------------------------
def round_column(values: Sequence[float], decimals: int = 3) -> list[float]:
    """Round so the rounded values add up to the rounded total (largest-remainder rounding).

    This is how a probability table is rounded for people: 0.4842 / 0.3964 / 0.1194 shows as
    0.484 / 0.397 / 0.119, which adds up to 1.000 (plain rounding would give 0.999).
    """
    scale = 10 ** decimals
    total = round(math.fsum(values) * scale)
    floors = [math.floor(v * scale + 1e-9) for v in values]
    short = total - sum(floors)
    by_remainder = sorted(range(len(values)), key=lambda i: -(values[i] * scale - floors[i]))
    for i in by_remainder[:max(short, 0)]:
        floors[i] += 1
    return [f / scale for f in floors]


@dataclass
class TemperatureTable:
    """Probabilities of the most likely next tokens at several temperatures.

    probs[i][j] is token i's probability at temperatures[j] over the whole vocabulary (exact, not
    rounded); entropy[j] is the entropy in bits of the whole distribution at temperatures[j].
    """
    temperatures: list[float]
    tokens: list[str]
    token_ids: list[int]
    logits: list[float]
    probs: list[list[float]]
    entropy: list[float]
    prompt: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)

    def format(self, decimals: int = 3) -> str:
        """The table as text, probabilities rounded so each column adds up to its rounded total."""
        cols = [round_column([row[j] for row in self.probs], decimals) for j in range(len(self.temperatures))]
        heads = ["token", "logit"] + [f"p(T={_fmt_t(t)})" for t in self.temperatures]
        body = [[tok, f"{lg:.2f}"] + [f"{cols[j][i]:.{decimals}f}" for j in range(len(cols))]
                for i, (tok, lg) in enumerate(zip(self.tokens, self.logits))]
        body.append(["entropy (bits)", ""] + [f"{h:.{decimals}f}" for h in self.entropy])
        widths = [max(len(r[c]) for r in [heads] + body) for c in range(len(heads))]
        lines = []
        if self.prompt is not None:
            lines.append(f"next token after {self.prompt!r}")
        for k, row in enumerate([heads] + body):
            if k == len(body):
                lines.append("  ".join("-" * w for w in widths))
            lines.append("  ".join(cell.ljust(w) if c == 0 else cell.rjust(w) for c, (cell, w) in enumerate(zip(row, widths))))
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.format()

    def _repr_html_(self) -> str:
        import html
        cols = [round_column([row[j] for row in self.probs]) for j in range(len(self.temperatures))]
        head = "".join(f"<th>p(T={_fmt_t(t)})</th>" for t in self.temperatures)
        rows = "".join(
            f"<tr><td>{html.escape(tok)}</td><td>{lg:.2f}</td>" + "".join(f"<td>{cols[j][i]:.3f}</td>" for j in range(len(cols))) + "</tr>"
            for i, (tok, lg) in enumerate(zip(self.tokens, self.logits)))
        ent = "".join(f"<td>{h:.3f}</td>" for h in self.entropy)
        caption = f"<caption>next token after {html.escape(repr(self.prompt))}</caption>" if self.prompt is not None else ""
        return (f"<table>{caption}<tr><th>token</th><th>logit</th>{head}</tr>{rows}"
                f"<tr><td><i>entropy (bits)</i></td><td></td>{ent}</tr></table>")


def _fmt_t(t: float) -> str:
    return f"{t:g}"


def temperature_table(logits_V: torch.Tensor | Sequence[float], temperatures: Sequence[float], *,
                      top: int = 5, label: Callable[[int], str] = str, prompt: str | None = None) -> TemperatureTable:
    """Softmax of one logits vector at each temperature, for the `top` most likely tokens."""
    temperatures = [float(t) for t in temperatures]
    if not temperatures:
        raise UserError("no temperatures given: pass some, e.g. -T 0.5 1 1.5")
    for t in temperatures:
        if not (t >= 0 and math.isfinite(t)):
            raise UserError(f"temperature must be >= 0 (got {t}): use 0 for greedy, 1 for the model's own distribution")
    if top < 1:
        raise UserError(f"--top must be >= 1 (got {top})")
    logits_V = torch.as_tensor(logits_V, dtype=torch.float64).flatten()
    order = logits_V.argsort(descending=True)[:top]
    probs_TxV = torch.stack([process_logits(logits_V[None], SamplingConfig(temperature=t))[0].double().softmax(-1)
                             for t in temperatures])
    return TemperatureTable(
        temperatures=temperatures,
        tokens=[label(int(i)) for i in order],
        token_ids=[int(i) for i in order],
        logits=[float(logits_V[i]) for i in order],
        probs=[[float(probs_TxV[j, i]) for j in range(len(temperatures))] for i in order],
        entropy=[float(h) for h in entropy_bits(probs_TxV)],
        prompt=prompt,
    )
