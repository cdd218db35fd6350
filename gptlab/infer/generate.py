"""Generation: the sampling loop over token ids, with a KV cache. Text only at the edges.

`generate_steps` is the engine: prompts of token ids in, one `Step` per new token out (the chosen
ids, the logits and distribution they came from and, on request, each layer's attention row of the
predicting position). Everything else -- whole completions, streaming text, explanation traces,
the web server -- consumes those steps.

Batches may mix prompt lengths: prompts are left-padded and the model gets explicit positions and a
key mask, so each row computes exactly what it would alone. Once a sequence would outgrow the
model's context, the window slides: each step re-runs the model on the last `context_length`
tokens (absolute position embeddings make cached keys invalid once positions shift).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

import torch

from gptlab.data.tokenizer import Tokenizer, check_text
from gptlab.errors import UserError
from gptlab.infer import native
from gptlab.infer.sampling import SamplingConfig, make_generator, sample

if TYPE_CHECKING:
    from gptlab.model.gpt import GPT

BATCH_SIZE = 64  # rows per forward pass when many completions are asked for at once


class GenerationWarning(UserWarning):
    """Something about the input was changed to make generation possible (cut prompt, unknown words)."""


@dataclass
class Step:
    """One new token for every row of the batch."""
    index: int                          # 0 for the first new token
    tokens_B: torch.Tensor              # (B,) chosen ids; pad for rows that had already finished
    logits_BxV: torch.Tensor            # (B, V) the model's raw logits that predicted them (float32)
    probs_BxV: torch.Tensor             # (B, V) the distribution drawn from: penalty, temperature, filters applied
    active: list[bool]                  # rows that produced a token at this step
    finish: list[str | None]            # "stop" or "length" for rows that finished at this step
    attn: list[torch.Tensor] | None = None  # per layer (B, H, S): attention of the predicting position (capture=True)
    context: list[list[int]] | None = None  # per row, the ids it attended over: the last len() of the S keys (capture=True)
    # (capture=True) the predicting position's residual streams (B, C): the embeddings, then each block's output
    streams: list[torch.Tensor] | None = None


def _left_pad(seqs: Sequence[Sequence[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """(ids (B, W), positions (B, W) or None, key mask (B, W) or None); None where no row is padded."""
    W = max(len(s) for s in seqs)
    ids_BxW = torch.tensor([[pad_id] * (W - len(s)) + list(s) for s in seqs], dtype=torch.long, device=device)
    if all(len(s) == W for s in seqs):
        return ids_BxW, None, None
    n_pad_Bx1 = torch.tensor([[W - len(s)] for s in seqs], device=device)
    slot_1xW = torch.arange(W, device=device)[None]
    return ids_BxW, (slot_1xW - n_pad_Bx1).clamp(min=0), slot_1xW >= n_pad_Bx1


def fit_context(prompts: Sequence[Sequence[int]], context_length: int) -> list[list[int]]:
    """Keep the last `context_length` ids of each prompt, saying so once."""
    long = [len(p) for p in prompts if len(p) > context_length]
    if long:
        which = "a prompt" if len(prompts) == 1 else f"{len(long)} of {len(prompts)} prompts"
        warnings.warn(f"{which} ({max(long)} tokens) is longer than the model's context of {context_length} "
                      f"tokens: keeping the last {context_length}", GenerationWarning, stacklevel=3)
    return [list(p[-context_length:]) for p in prompts]


@dataclass
class _Decoding:
    """What the decoding loop carries from step to step."""
    hist: list[list[int]]                 # every row's ids so far (prompt, then new tokens)
    cache_steps: int                      # steps fed through the KV cache; after them the window slides
    cache: Any = None
    ids_BxT: torch.Tensor | None = None   # the next input: the prompts, then each row's newest token
    pos_BxT: torch.Tensor | None = None
    key_mask_BxS: torch.Tensor | None = None
    next_pos_BxN: torch.Tensor | None = None
    seen_BxV: torch.Tensor | None = None  # tokens already in each row (repetition penalty)
    decode: Any = None                    # model.decoder(), built once: the one-token steps after the prompt


def _start(model: GPT, hist: list[list[int]], cfg: SamplingConfig, pad_id: int, use_cache: bool,
           device: torch.device) -> _Decoding:
    C, B, L_max = model.cfg.context_length, len(hist), max(len(h) for h in hist)
    # Step i feeds slot L_max + i - 1 of the cache; past the context, the window slides instead.
    st = _Decoding(hist, C - L_max + 1 if use_cache else 0)
    if cfg.repetition_penalty != 1.0:
        st.seen_BxV = torch.zeros(B, model.cfg.vocab_size, dtype=torch.bool, device=device)
        for b, h in enumerate(hist):
            st.seen_BxV[b, torch.tensor(h, device=device)] = True
    if st.cache_steps > 0:
        if not model.training:  # the lean path is for inference (dropout stays a forward() matter)
            # A few rows on a CPU: the whole step in one C call per row where it can (infer/native.py).
            st.decode = native.decoder(model, B) or model.decoder()
        st.cache = model.new_cache(B, max_len=min(C, L_max + cfg.max_new_tokens - 1))
        st.ids_BxT, st.pos_BxT, st.key_mask_BxS = _left_pad(hist, pad_id, device)
        # Positions and key mask for every later step, sliced per step below (cheaper than
        # building them each step; positions differ by row when prompts are left-padded).
        lengths_Bx1 = torch.tensor([[len(h)] for h in hist], device=device)
        st.next_pos_BxN = lengths_Bx1 - 1 + torch.arange(st.cache.max_len - L_max + 1, device=device)[None]
        if st.key_mask_BxS is not None:
            extra = st.key_mask_BxS.new_ones(B, st.cache.max_len - L_max)
            st.key_mask_BxS = torch.cat([st.key_mask_BxS, extra], dim=1)
    return st


def _next_logits(model: GPT, st: _Decoding, i: int, L_max: int, pad_id: int, capture: bool,
                 device: torch.device) -> tuple[torch.Tensor, Any, Any]:
    """(logits_BxV of each row's next token, and when capturing, this step's attention per layer
    (B, H, T, S) and residual streams (B, C))."""
    if i < st.cache_steps:
        step_mask_BxS = None if st.key_mask_BxS is None else st.key_mask_BxS[:, :L_max + i]
        if i > 0 and st.decode is not None:  # one token per row: the lean decoding path
            # Past step 0 the generate loop has set both to the newest token and its position.
            ids_Bx1, pos_Bx1 = cast("torch.Tensor", st.ids_BxT), cast("torch.Tensor", st.pos_BxT)
            attn: list[torch.Tensor] | None = [] if capture else None
            streams: list[torch.Tensor] | None = [] if capture else None
            logits_BxV = st.decode(ids_Bx1[:, 0], pos_Bx1[:, 0], st.cache, step_mask_BxS,
                                   attn_out=attn, streams_out=streams)
            return logits_BxV.float(), attn, streams
        out = model(st.ids_BxT, pos_BxT=st.pos_BxT, cache=st.cache, last_only=True, return_attn=capture,
                    return_streams=capture, key_mask_BxS=step_mask_BxS)
        return out.logits[:, -1].float(), out.attn, out.streams
    C = model.cfg.context_length
    window_ids, window_pos, window_mask = _left_pad([h[-C:] for h in st.hist], pad_id, device)
    out = model(window_ids, pos_BxT=window_pos, key_mask_BxS=window_mask, last_only=True, return_attn=capture,
                return_streams=capture)
    return out.logits[:, -1].float(), out.attn, out.streams


def _finish_rows(st: _Decoding, tokens_B: torch.Tensor, done: list[bool], i: int, last: bool,
                 eot_id: int | None, stop_fn: Callable[[int, int], bool] | None) -> list[str | None]:
    """Append each live row's new id; mark the rows that end here ("stop" or "length")."""
    finish: list[str | None] = [None] * len(done)
    for b, t in enumerate(tokens_B.tolist()):
        if done[b]:
            continue
        st.hist[b].append(t)
        if t == eot_id or (stop_fn is not None and stop_fn(b, t)):
            finish[b] = "stop"
        elif last:
            finish[b] = "length"
        done[b] = finish[b] is not None
    return finish


def generate_steps(model: GPT, prompts: Sequence[Sequence[int]], cfg: SamplingConfig, *,
                   eot_id: int | None = None, pad_id: int = 0, generator: torch.Generator | None = None,
                   stop_fn: Callable[[int, int], bool] | None = None, capture: bool = False,
                   use_cache: bool = True) -> Iterator[Step]:
    """Sample up to cfg.max_new_tokens ids after each prompt; yield one Step per new token.

    A row finishes on `eot_id` (kept as its last id), when `stop_fn(row, id)` returns True (called
    for every other new id, in order: the text side uses it for stop strings), or at max_new_tokens.
    `use_cache=False` re-runs the model on the whole window every step (the reference the cache is
    tested against). `generator` defaults to one seeded with cfg.seed.
    """
    cfg.validate()
    if not prompts or cfg.max_new_tokens == 0:
        return
    if any(len(p) == 0 for p in prompts):
        raise UserError("a prompt has no tokens: give at least one token (the text side starts empty prompts with end-of-text)")
    C = model.cfg.context_length
    device = model.tok_emb.weight.device
    hist = fit_context(prompts, C)
    B, L_max = len(hist), max(len(h) for h in hist)
    generator = generator if generator is not None else make_generator(cfg.seed, device)
    done = [False] * B
    arange_B = torch.arange(B, device=device)
    with torch.inference_mode():
        st = _start(model, hist, cfg, pad_id, use_cache, device)
    for i in range(cfg.max_new_tokens):
        with torch.inference_mode():
            context = [h[-C:] for h in hist] if capture else None
            logits_BxV, attn, streams = _next_logits(model, st, i, L_max, pad_id, capture, device)
            tokens_B, probs_BxV = sample(logits_BxV, cfg, generator, st.seen_BxV)
            if any(done):
                tokens_B = tokens_B.masked_fill(torch.tensor(done, device=device), pad_id)
            if st.seen_BxV is not None:
                st.seen_BxV[arange_B, tokens_B] = True
            attn = [a[:, :, -1] for a in attn] if capture else None
            if i + 1 < st.cache_steps:  # _start set next_pos_BxN along with the cache
                st.ids_BxT, st.pos_BxT = tokens_B[:, None], cast("torch.Tensor", st.next_pos_BxN)[:, i + 1:i + 2]
        active = [not d for d in done]
        finish = _finish_rows(st, tokens_B, done, i, i == cfg.max_new_tokens - 1, eot_id, stop_fn)
        yield Step(i, tokens_B, logits_BxV, probs_BxV, active, finish, attn, context, streams if capture else None)
        if all(done):
            return


# -- the text side ------------------------------------------------------------------------------------
@dataclass
class Completion:
    prompt: str                 # as given
    text: str                   # the generated continuation only (prompt + text reads as one text)
    token_ids: list[int]        # every sampled id, including a final end-of-text id when that stopped it
    finish_reason: str          # "stop" (end-of-text or a stop string) or "length" (max_new_tokens)


class TextTracker:
    """The decoded continuation of one row, cut at stop strings, for whole texts and for streaming.

    Decoding is incremental (only the last few ids are re-decoded per token, so a step costs the same
    at token 5 and token 500); a piece that ends in an unfinished UTF-8 character waits for the next
    id. While the text ends in the beginning of a stop string, `take()` holds that part back, so the
    streamed pieces always add up to the final `text`.
    """

    def __init__(self, tokenizer: Tokenizer, prompt_ids: Sequence[int], stop: Sequence[str] = ()):
        self.tokenizer = tokenizer
        self.ids = list(prompt_ids[-4:])  # a little left context so word boundaries decode right
        self.prefix_offset = 0
        self.read_offset = len(self.ids)
        self.stop = [s for s in stop if s]
        self.text = ""
        self.sent = 0
        self.stopped = False

    def push(self, token_id: int) -> bool:
        """Add one generated id; True when the text now contains a stop string (and was cut there)."""
        if self.stopped:
            return True
        self.ids.append(token_id)
        decode = self.tokenizer.decode
        before = decode(self.ids[self.prefix_offset:self.read_offset])
        after = decode(self.ids[self.prefix_offset:])
        if len(after) > len(before) and not after.endswith("\ufffd"):
            self.text += after[len(before):]
            self.prefix_offset, self.read_offset = self.read_offset, len(self.ids)
        hits = [i for i in (self.text.find(s) for s in self.stop) if i >= 0]
        if hits:
            self.text = self.text[:min(hits)]
            self.stopped = True
        return self.stopped

    def take(self, final: bool = False) -> str:
        """Text not handed out yet; unless `final`, minus a tail that may begin a stop string."""
        end = len(self.text)
        if not final:
            for s in self.stop:
                for k in range(min(len(s) - 1, end), 0, -1):
                    if self.text.endswith(s[:k]):
                        end = min(end, len(self.text) - k)
                        break
        end = max(end, self.sent)
        piece, self.sent = self.text[self.sent:end], end
        return piece


def encode_prompts(tokenizer: Tokenizer, prompts: Sequence[str]) -> list[list[int]]:
    """Token ids of each prompt, as the model saw texts begin (`Tokenizer.encode_prompt`); unknown words
    are named in one warning; an empty prompt starts at end-of-text."""
    for p in prompts:  # before the warning: a prompt that is not text gets one error line, nothing else
        check_text(p, "the prompt")
    unknown = list(dict.fromkeys(w for p in prompts for w in tokenizer.unknown_words(p)))
    if unknown:
        shown = ", ".join(repr(w) for w in unknown[:20]) + (f" and {len(unknown) - 20} more" if len(unknown) > 20 else "")
        warnings.warn(f"{len(unknown)} word(s) not in the model's vocabulary, read as [UNK]: {shown}",
                      GenerationWarning, stacklevel=3)
    return [tokenizer.encode_prompt(p) for p in prompts]


def text_steps(model: torch.nn.Module, tokenizer: Tokenizer, prompt_ids: Sequence[Sequence[int]],
               trackers: Sequence[TextTracker], cfg: SamplingConfig, generator: torch.Generator,
               capture: bool = False) -> Iterator[Step]:
    """The engine's steps, each new id also pushed to its row's TextTracker (which applies stop strings).

    `model`: a loaded model that passed check_generative (a GPT).
    """
    return generate_steps(cast("GPT", model), prompt_ids, cfg, eot_id=tokenizer.eot_id, pad_id=tokenizer.pad_id,
                          generator=generator, stop_fn=lambda b, t: trackers[b].push(t), capture=capture)


def check_generative(model: torch.nn.Module, kind: str) -> GPT:
    """`model` as the GPT it is; a UserError for the families that do not generate token by token."""
    if not (getattr(model, "causal", False) and hasattr(getattr(model, "cfg", None), "context_length")):
        raise UserError(f"this is a {kind!r} model, which does not generate text token by token: "
                        "use a GPT model (kind 'gpt') here")
    return cast("GPT", model)  # causal with a context length: a GPT (an Encoder is a GPT with causal=False)


def generate_text(model: GPT, tokenizer: Tokenizer, prompts: Sequence[str], cfg: SamplingConfig,
                  n: int = 1) -> list[Completion]:
    """n completions of each prompt, in order (prompt 0's n, then prompt 1's, ...)."""
    cfg.validate()
    if n < 1:
        raise UserError(f"n must be >= 1 (got {n})")
    ids = encode_prompts(tokenizer, prompts)
    rows = [(p, i) for p, i in zip(prompts, ids) for _ in range(n)]
    generator = make_generator(cfg.seed, model.tok_emb.weight.device)
    out: list[Completion] = []
    for start in range(0, len(rows), BATCH_SIZE):
        chunk = rows[start:start + BATCH_SIZE]
        token_ids: list[list[int]] = [[] for _ in chunk]
        reasons = ["length"] * len(chunk)
        trackers = [TextTracker(tokenizer, i, cfg.stop) for _, i in chunk]
        for step in text_steps(model, tokenizer, [i for _, i in chunk], trackers, cfg, generator):
            for b, t in enumerate(step.tokens_B.tolist()):
                if step.active[b]:
                    token_ids[b].append(t)
                reason = step.finish[b]
                if reason:
                    reasons[b] = reason
        out += [Completion(p, tr.text, tids, r) for (p, _), tr, tids, r in zip(chunk, trackers, token_ids, reasons)]
    return out


def stream_text(model: GPT, tokenizer: Tokenizer, prompt: str, cfg: SamplingConfig) -> Iterator[str]:
    """Pieces of one completion's text as they are generated; they add up to Completion.text."""
    cfg.validate()
    ids = encode_prompts(tokenizer, [prompt])
    generator = make_generator(cfg.seed, model.tok_emb.weight.device)
    tracker = TextTracker(tokenizer, ids[0], cfg.stop)
    for step in text_steps(model, tokenizer, ids, [tracker], cfg, generator):
        piece = tracker.take(final=step.finish[0] is not None)
        if piece:
            yield piece
