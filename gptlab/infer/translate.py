"""Translation with a trained encoder-decoder: batched greedy decoding and beam search with the
decoder's KV cache (pure loops over ids), and exact match / chrF against references."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, cast

import torch

from gptlab.checkpoint import load_checkpoint, read_config
from gptlab.data.pairs import BOS, normalize
from gptlab.data.tokenizer import Tokenizer
from gptlab.errors import UserError
from gptlab.model.padding import pad_batch
from gptlab.model.seq2seq import Seq2Seq

KIND = "seq2seq"


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
        # Seq2Seq.decode always fills logits (only forward with targets leaves them out).
        logits_Bx1xV = cast(torch.Tensor, model.decode(last_Bx1, memory, mask, cache=cache, last_only=True).logits)
        logits_BxV = logits_Bx1xV[:, -1]
        next_B = logits_BxV.argmax(dim=-1)
        for i in (~done & (next_B != eos_id)).nonzero().flatten().tolist():
            out[i].append(int(next_B[i]))
        done |= next_B == eos_id
        if bool(done.all()):
            break
        last_Bx1 = next_B[:, None]
    return out


def _advance(n: int, K: int, V: int, top_s: list[float], top_i: list[int], beams: list[list[int]],
             finished: list[tuple[float, list[int]]], eos_id: int, length_penalty: float) -> tuple[list, bool]:
    """Sentence n's K live moves (score, beam, token) from its 2K best candidates, and whether it is
    done. An ending counts only if it is among the K best moves; the sentence is done once no live
    beam can beat the K-th best ending (exact for length_penalty=0, where scores only fall; Hugging
    Face's heuristic otherwise)."""
    live: list[tuple[float, int, int]] = []
    for rank, (s, i) in enumerate(zip(top_s, top_i)):
        if s == -math.inf:
            break
        k, v = divmod(i, V)
        if v == eos_id:
            if rank < K:
                hyp = beams[k]
                finished.append((s / (len(hyp) + 1) ** length_penalty, hyp))
            continue
        live.append((s, k, v))
        if len(live) == K:
            break
    if not live:
        return [], True
    if len(finished) >= K:
        kth = sorted((f[0] for f in finished), reverse=True)[K - 1]
        if live[0][0] / (len(beams[live[0][1]]) + 1) ** length_penalty <= kth:
            return [], True
    return live, False


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
        # Seq2Seq.decode always fills logits.
        logits_NKx1xV = cast(torch.Tensor, model.decode(last, memory, mask, cache=cache, last_only=True).logits)
        logp_NKxV = logits_NKx1xV[:, -1].float().log_softmax(-1)
        V = logp_NKxV.shape[-1]
        cand_NxKV = (scores_NxK.reshape(N * K, 1) + logp_NKxV).reshape(N, K * V)
        top_s, top_i = (x.tolist() for x in cand_NxKV.topk(min(2 * K, K * V), dim=-1))
        rows, tokens, new_scores, new_beams = [], [], [], []
        for n in range(N):
            live: list[tuple[float, int, int]] = []
            if not done[n]:
                live, done[n] = _advance(n, K, V, top_s[n], top_i[n], beams[n], finished[n], eos_id, length_penalty)
            live += [(-math.inf, 0, eos_id)] * (K - len(live))  # dead rows keep the batch square
            rows += [n * K + k for _, k, _ in live]
            tokens += [v for _, _, v in live]
            new_scores += [s for s, _, _ in live]
            new_beams.append([beams[n][k] + [v] if s > -math.inf else [] for s, k, v in live])
        if all(done):
            break
        beams = new_beams
        cache.select(torch.tensor(rows, device=dev))
        scores_NxK = torch.tensor(new_scores, device=dev).reshape(N, K)
        last = torch.tensor(tokens, device=dev)[:, None]
    return [_best(finished[n], beams[n], scores_NxK[n].tolist(), length_penalty) for n in range(N)]


def _best(finished: list[tuple[float, list[int]]], beams: list[list[int]], scores: list[float],
          length_penalty: float) -> list[int]:
    """The best ending; a sentence that ran out of length ranks its live beams as they stand."""
    if not finished:
        finished = [(s / max(len(b), 1) ** length_penalty, b) for s, b in zip(scores, beams) if s > -math.inf]
    return max(finished, key=lambda x: x[0])[1] if finished else []


def bos_token_id(tok: Tokenizer) -> int:
    """The id of the decoder's start token <s>; a UserError for a tokenizer without one."""
    bos = tok.token_to_id(BOS)
    if bos is None:
        raise UserError(f"this tokenizer has no {BOS} token: it is not from `gptlab seq2seq train`")
    return bos


def translate_ids(model: Seq2Seq, tok: Tokenizer, texts: list[str], beam: int = 1,
                  batch_size: int = 256, max_len: int | None = None) -> list[list[int]]:
    """Token ids of each translation; empty sources give empty translations."""
    bos = bos_token_id(tok)
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
    out: dict[str, Any] = {"n": len(pairs), "exact_match": exact, "beam": beam}
    try:
        import sacrebleu
        out["chrf"] = sacrebleu.corpus_chrf(hyps, [refs]).score
    except ImportError:
        out["chrf"] = None
    out["examples"] = [{"source": s, "reference": r, "output": h}
                       for (s, _), r, h in list(zip(pairs, refs, hyps))[:5]]
    return out


def load(path: str | Path, device: str = "cpu") -> tuple[Seq2Seq, Tokenizer, dict]:
    """A seq2seq model folder -> (model in eval mode, tokenizer, config)."""
    cfg = read_config(path, make="gptlab seq2seq train")
    if cfg.get("kind") != KIND:
        raise UserError(f"{path} holds a {cfg.get('kind')!r} model, not a translation model: "
                        "train one with `gptlab seq2seq train`")
    model, tok, cfg = load_checkpoint(path, device)
    return model, tok, cfg
