"""What the alignment tasks share (tasks/sft.py, reward.py, dpo.py, ppo.py): their loop defaults,
loading and checking the models they combine (policy, reference, reward model), turning
(prompt, response) texts into token rows with a response mask, and sampling responses.

A response row is encode_prompt(prompt) + encode(response) + <|endoftext|>: the prompt goes
through the tokenizer's `encode_prompt` (which starts texts with <|endoftext|> where the model was
trained so), and the final <|endoftext|> is a target like any other token: a model that never
learns it never stops ([PAD] stays a separate id, never a target).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch

from gptlab.checkpoint import load_checkpoint, read_config
from gptlab.data import DataConfig, split_records
from gptlab.data.instructions import Pair, preference_pairs, read_pairs, review_rows
from gptlab.data.tokenizer import Tokenizer
from gptlab.errors import UserError
from gptlab.infer.generate import generate_steps
from gptlab.infer.sampling import SamplingConfig
from gptlab.model import GPT, IGNORE_INDEX, ModelConfig
from gptlab.model.align import RewardModel
from gptlab.settings import setting
from gptlab.training.config import LoopConfig
from gptlab.training.rl import token_logprobs

GPT_KINDS = ("gpt", "gpt-value")
KIND_REWARD = "reward"


@dataclass
class AlignConfig(LoopConfig):
    """The loop's defaults for fine-tuning a trained GPT: a lower learning rate, short warmup,
    no weight decay, fp32 (a reward model's scalar and small log-prob differences want it)."""
    model: str = setting("", "the GPT folder to start from (MODEL)")
    epochs: float = setting(1.0, "passes over the training data (ignored when --max-steps is set)", min=0)
    lr: float = setting(1e-4, "peak learning rate", min=0)
    min_lr: float = setting(1e-5, "learning rate at the end of the cosine schedule", min=0)
    weight_decay: float = setting(0.0, "AdamW weight decay (matrices only)", min=0)
    warmup_steps: int = setting(20, "linear warmup steps (a run shorter than 4x this warms up for a quarter of its steps)", min=0)
    batch_size: int = setting(16, "rows (examples, pairs, prompts) per optimizer step", min=1)
    eval_interval: int = setting(100, "steps between evaluations (0 = only at the end)", min=0)
    precision: str = setting("fp32", "fp32, bf16 or auto", choices=("auto", "fp32", "bf16"))
    val_rows: int = setting(64, "held-out rows (examples, pairs, prompts) for evaluation", min=0)

    def validate(self) -> None:
        super().validate()
        if not self.model:
            raise UserError("no model given: pass the GPT folder to start from as MODEL (or -m MODEL)")


# -- models ------------------------------------------------------------------------------------------
def gpt_config(path: str, what: str = "MODEL") -> dict:
    """The config.json of a GPT folder (a PPO policy is one), checked before anything is loaded."""
    cfg = read_config(path)
    if cfg.get("kind") not in GPT_KINDS:
        raise UserError(f"{what} {path} holds a {cfg.get('kind')!r} model where a GPT is needed: "
                        "train one with `gptlab train` (or `gptlab align sft`)")
    return cfg


def load_gpt(path: str, what: str = "MODEL") -> tuple[GPT, Tokenizer, dict]:
    """A GPT (or a PPO policy, which is one) from its folder, on the CPU."""
    gpt_config(path, what)
    model, tok, cfg = load_checkpoint(path, "cpu")
    return model, tok, cfg


def plain_gpt(model: GPT, dropout: float | None = None) -> GPT:
    """A new GPT with `model`'s weights (a PPO policy's value head and rollout left behind);
    dropout: replace the config's (0 for RL: sampling and scoring must see the same network)."""
    cfg = copy.deepcopy(model.cfg)
    if dropout is not None:
        cfg.dropout, cfg.attn_dropout = dropout, dropout
    out = GPT(cfg)
    mine = out.state_dict()
    out.load_state_dict({k: v for k, v in model.state_dict().items() if k in mine})
    return out


ModuleT = TypeVar("ModuleT", bound=torch.nn.Module)


def frozen(model: ModuleT) -> ModuleT:
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def load_reward(path: str) -> tuple[RewardModel, Tokenizer, dict]:
    cfg = read_config(path, make="gptlab align reward")
    if cfg.get("kind") != KIND_REWARD:
        raise UserError(f"--reward {path} holds a {cfg.get('kind')!r} model where a reward model is needed: "
                        "train one with `gptlab align reward`")
    model, tok, cfg = load_checkpoint(path, "cpu")
    return frozen(model), tok, cfg


def same_tokenizer(a: Tokenizer, b: Tokenizer, what: str) -> None:
    """A UserError unless two tokenizers map every token to the same id (a reward model reads the
    policy's ids; another vocabulary would read other words)."""
    if a.hf.get_vocab() != b.hf.get_vocab():
        raise UserError(f"{what} has another tokenizer than the policy ({b.vocab_size} vs {a.vocab_size} tokens, or "
                        "other ids): train it from the same SFT model (`gptlab align reward SFT_MODEL`)")


ARCH_KEYS = ("vocab_size", "context_length", "d_model", "n_layer", "n_head", "head_dim", "d_ff", "norm",
             "activation", "tie_embeddings", "head_bias", "bias", "final_norm")


def same_architecture(policy: ModelConfig, ref: ModelConfig, what: str = "--ref") -> None:
    diff = {k: (getattr(ref, k), getattr(policy, k)) for k in ARCH_KEYS if getattr(ref, k) != getattr(policy, k)}
    if diff:
        shown = ", ".join(f"{k} {r} vs {p}" for k, (r, p) in list(diff.items())[:3])
        raise UserError(f"{what} is a model of another architecture than the policy ({shown}): "
                        "use the SFT model the policy was trained from")


# -- rows ---------------------------------------------------------------------------------------------
def encode_response(tok: Tokenizer, prompt: str, response: str) -> tuple[list[int], int]:
    """(ids of prompt + response + <|endoftext|>, number of prompt ids)."""
    p = tok.encode_prompt(prompt)
    return p + tok.encode(" " + response) + [tok.eot_id], len(p)


@dataclass
class ResponseRows:
    x_BxT: torch.Tensor        # inputs
    y_BxT: torch.Tensor        # next tokens, IGNORE_INDEX on the prompt and padding
    mask_BxT: torch.Tensor     # 1.0 where y is a response token (its <|endoftext|> included)

    @property
    def n_targets(self) -> int:
        return int(self.mask_BxT.sum())


def response_rows(seqs: Sequence[tuple[Sequence[int], int]], pad_id: int, length: int | None = None) -> ResponseRows:
    """Right-padded rows (B, T) from (ids, prompt length) pairs; targets only on the responses."""
    T = (length or max(len(s) for s, _ in seqs)) - 1
    x = torch.full((len(seqs), T), pad_id, dtype=torch.long)
    y = torch.full((len(seqs), T), IGNORE_INDEX, dtype=torch.long)
    for i, (ids, n_prompt) in enumerate(seqs):
        ids_t = torch.as_tensor(list(ids)[:T + 1], dtype=torch.long)
        n = len(ids_t) - 1
        x[i, :n] = ids_t[:-1]
        y[i, :n] = ids_t[1:]
        y[i, :max(n_prompt - 1, 0)] = IGNORE_INDEX  # the first target that counts is the response's first token
    return ResponseRows(x, y, (y != IGNORE_INDEX).float())


def response_logprobs(model: Any, rows: ResponseRows) -> torch.Tensor:
    """Per-token log-probs (B, T) of the response targets under `model` (0 elsewhere)."""
    logits = model(rows.x_BxT, return_logits=True).logits
    return token_logprobs(logits, rows.y_BxT) * rows.mask_BxT


def last_index(rows: ResponseRows) -> torch.Tensor:
    """Position of each row's last target in x (where its final <|endoftext|> is read from)."""
    T = rows.mask_BxT.shape[1]
    pos = torch.arange(T).expand_as(rows.mask_BxT)
    return torch.where(rows.mask_BxT > 0, pos, torch.zeros_like(pos)).max(dim=1).values + 1


def reward_inputs(rows: ResponseRows, pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids (B, T+1) = the whole rows, index of each row's last token): what a RewardModel reads."""
    last_B = last_index(rows)
    full = torch.cat([rows.x_BxT, torch.full_like(rows.x_BxT[:, :1], pad_id)], dim=1)
    rows_B = torch.arange(full.shape[0])
    full[rows_B, last_B] = rows.y_BxT[rows_B, last_B - 1]
    return full, last_B


@torch.no_grad()
def score(reward_model: RewardModel, tok: Tokenizer, seqs: Sequence[tuple[Sequence[int], int]], batch: int = 64) -> torch.Tensor:
    """Rewards (N,) of whole rows (prompt + response + <|endoftext|>). A row longer than the reward
    model's context (a response that filled the policy's) loses its first tokens: the reward is
    read at the last one."""
    dev = next(reward_model.parameters()).device
    C = reward_model.cfg.context_length
    seqs = [(list(s)[-C:], max(n - max(len(s) - C, 0), 0)) for s, n in seqs]
    out = []
    for i in range(0, len(seqs), batch):
        ids, last = reward_inputs(response_rows(seqs[i:i + batch], tok.pad_id), tok.pad_id)
        out.append(reward_model(ids.to(dev), last.to(dev)).cpu())
    return torch.cat(out) if out else torch.zeros(0)


@dataclass
class Sampled:
    ids: list[int]     # the response's ids (its <|endoftext|> last when it ended)
    ended: bool


@torch.no_grad()
def sample_responses(model: GPT, tok: Tokenizer, prompts: Sequence[Sequence[int]], *, max_new: int,
                     temperature: float, generator: torch.Generator) -> list[Sampled]:
    """One response per prompt, sampled from `model` (its mode is restored afterwards)."""
    was = model.training
    model.eval()
    cfg = SamplingConfig(temperature=temperature, max_new_tokens=max_new)
    ids: list[list[int]] = [[] for _ in prompts]
    ended = [False] * len(prompts)
    for step in generate_steps(model, prompts, cfg, eot_id=tok.eot_id, pad_id=tok.pad_id, generator=generator):
        for b, t in enumerate(step.tokens_B.tolist()):
            if step.active[b]:
                ids[b].append(t)
            if step.finish[b] == "stop":
                ended[b] = True
    model.train(was)
    return [Sampled(i, e) for i, e in zip(ids, ended)]


def response_text(tok: Tokenizer, ids: Sequence[int]) -> str:
    return tok.decode([i for i in ids if i != tok.eot_id]).strip()


def check_out_model(t: AlignConfig) -> None:
    """--out must not be the model trained from (it would be overwritten while read)."""
    if t.out and Path(t.out).resolve() == Path(t.model).resolve():
        raise UserError(f"--out {t.out} is the model being fine-tuned: pick another --out")


def with_words(tok: Tokenizer, texts: Sequence[str]) -> Tokenizer:
    """`tok` with the words of `texts` it lacks added (word-level tokenizers: the instructions'
    'write', 'points', '92' ... would otherwise all read as [UNK]); the same tokenizer otherwise.
    Added words match whole words only, after the tokenizer's own lowercasing."""
    from tokenizers import AddedToken
    from tokenizers import Tokenizer as HFTokenizer

    new = list(dict.fromkeys(w for t in texts for w in tok.unknown_words(t)))
    if not new:
        return tok
    hf = HFTokenizer.from_str(tok.hf.to_str())
    hf.add_tokens([AddedToken(w, single_word=True, normalized=True) for w in new])
    return Tokenizer(hf, tok.kind)


# -- preference pairs ------------------------------------------------------------------------------
@dataclass
class PairsConfig(AlignConfig):
    """The settings of the tasks that learn from preference pairs (reward model, DPO)."""
    pairs: str = setting("", "preference pairs file (.jsonl or .csv with prompt, chosen, rejected); '' = make them from the corpus's points")
    n_pairs: int = setting(4000, "training pairs made from the corpus (ignored with --pairs)", min=1)
    noise: float = setting(0.0, "fraction of the pairs made from the corpus whose labels are flipped (annotator disagreement)", min=0, max=0.5)
    val_rows: int = setting(500, "held-out pairs", min=0)


def pairs_for(t: PairsConfig, dcfg: DataConfig) -> tuple[list[Pair], list[Pair]]:
    """(training pairs, held-out pairs): from the pairs file split by dcfg, or made from the
    corpus's points, the held-out ones from reviews the training pairs never use."""
    if t.pairs:
        pairs = read_pairs(t.pairs)
        train_idx, val_idx = split_records(pairs, dcfg.val_fraction, dcfg.seed)
        return [pairs[i] for i in train_idx], [pairs[i] for i in val_idx][:t.val_rows]
    rows = review_rows(dcfg)
    train_idx, val_idx = split_records(rows, max(dcfg.val_fraction, 0.1), dcfg.seed)
    train = preference_pairs([rows[i] for i in train_idx], t.n_pairs, dcfg.seed, t.noise)
    val = preference_pairs([rows[i] for i in val_idx], t.val_rows, dcfg.seed + 1) if t.val_rows else []
    return train, val


# -- rewards and the evaluation of a policy ------------------------------------------------------------
RewardFn = Callable[[Sequence[int], Sequence[int]], float]  # (prompt ids, response ids) -> reward
GoldFn = Callable[[str, str, bool], float]  # (prompt, response text, ended) -> gold reward


def default_gold(dcfg: DataConfig) -> GoldFn | None:
    """The gold reward of the built-in corpus (its generator's rule); None for other corpora,
    whose gold scorer the caller trains on a split the policy never sees."""
    from gptlab.data.instructions import gold_reward
    return gold_reward if dcfg.data == "builtin" else None


class Scorer:
    """The reward of sampled responses: a reward model's, or a Python function's (toy rewards,
    tests). `no_end_penalty` is subtracted from a response cut off by the context (TRL's
    missing_eos_penalty): without it a policy may learn that rambling on scores.
    `checker_penalty` is subtracted from a response to an instruction (`write a review : c : v :`)
    that the checker rejects (wrong country, a province not of it, wrong variety): a rule-based
    reward beside the learned one. The reward model is trained on pairs of valid reviews, so it
    cannot see that a response ignores the instruction, and a policy drifting off it would go
    unpunished (measured: PPO's follow rate fell from 0.88 to 0.55 at KL 10 without it)."""

    def __init__(self, tok: Tokenizer, model: RewardModel | None = None, fn: RewardFn | None = None,
                 no_end_penalty: float = 0.0, checker_penalty: float = 0.0):
        if (model is None) == (fn is None):
            raise ValueError("give a reward model or a reward function")
        self.tok, self.model, self.fn, self.no_end_penalty = tok, model, fn, no_end_penalty
        self.checker_penalty = checker_penalty
        self.shift, self.scale = 0.0, 1.0  # the reward model's score -> (score - shift) / scale

    def __call__(self, prompts: Sequence[Sequence[int]], responses: Sequence[Sampled]) -> torch.Tensor:
        if self.fn is not None:
            r = torch.tensor([float(self.fn(p, s.ids)) for p, s in zip(prompts, responses)])
        else:
            r = (self.raw(prompts, responses) - self.shift) / self.scale
        ended = torch.tensor([s.ended for s in responses], dtype=torch.float32)
        r = r - self.no_end_penalty * (1 - ended)
        if self.checker_penalty:
            r = r - self.checker_penalty * self.rejected(prompts, responses).to(r.device)
        return r

    def raw(self, prompts: Sequence[Sequence[int]], responses: Sequence[Sampled]) -> torch.Tensor:
        """(B,) the reward model's own scores, before normalisation and penalties."""
        assert self.model is not None
        return score(self.model, self.tok, [(list(p) + s.ids, len(p)) for p, s in zip(prompts, responses)])

    def rejected(self, prompts: Sequence[Sequence[int]], responses: Sequence[Sampled]) -> torch.Tensor:
        """(B,) 1.0 where the prompt is an instruction and the checker finds the response does not
        follow it; prompts that are not instructions (toy rewards) are never rejected."""
        from gptlab.data.instructions import check_response, parse_prompt

        out = []
        for p, s in zip(prompts, responses):
            prompt = response_text(self.tok, p)
            try:
                parse_prompt(prompt)
            except UserError:
                out.append(0.0)
                continue
            out.append(float(bool(check_response(prompt, response_text(self.tok, s.ids), True))))
        return torch.tensor(out)

    def to(self, device: torch.device) -> Scorer:
        if self.model is not None:
            self.model.to(device)
        return self


NORM_PROMPTS = 64  # prompts whose responses set a reward model's shift and scale


@torch.no_grad()
def normalise_reward(scorer: Scorer, policy: GPT, tok: Tokenizer, prompts: Sequence[str], seed: int) -> None:
    """Shift and scale `scorer`'s reward model to mean 0, std 1 over `policy`'s T=1 responses to
    `prompts` (InstructGPT's normalisation). A reward model's raw scale is arbitrary (one trained on
    300 pairs moves by hundredths), and a KL coefficient or a checker penalty should weigh the same
    against any. Seeded, so a resumed run gets the same shift and scale."""
    dev = policy.tok_emb.weight.device
    g = torch.Generator(device=dev).manual_seed(seed + 7919)
    ids = [tok.encode_prompt(p) for p in prompts]
    out = sample_responses(policy, tok, ids, max_new=max(policy.cfg.context_length + 1 - max(map(len, ids)), 1),
                           temperature=1.0, generator=g)
    raw = scorer.to(dev).raw(ids, out).float()
    # The floor keeps an untrained reward model (scores equal to 1e-4) from having its noise blown up.
    scorer.shift, scorer.scale = float(raw.mean()), float(raw.std().clamp(min=1e-3))


@torch.no_grad()
def evaluate_policy(model: GPT, ref: GPT, tok: Tokenizer, prompts: Sequence[str], scorer: Scorer, seed: int,
                    gold: GoldFn | None) -> dict[str, float]:
    """One T=1 sample per held-out prompt: mean proxy reward, KL(policy || ref) per response (the
    k1 estimate summed over its tokens), stop rate, the fraction that follow the instruction, and
    the mean gold reward when there is a gold scorer."""
    if not prompts:
        return {}
    from gptlab.data.instructions import follow_rates

    dev = model.tok_emb.weight.device
    ref.to(dev)
    scorer.to(dev)
    g = torch.Generator(device=dev).manual_seed(seed)
    ids = [tok.encode_prompt(p) for p in prompts]
    C = model.cfg.context_length
    out = sample_responses(model, tok, ids, max_new=max(C - max(len(i) for i in ids), 1), temperature=1.0, generator=g)
    rewards = scorer(ids, out)
    rows = response_rows([(p + s.ids, len(p)) for p, s in zip(ids, out)], tok.pad_id)
    rows = ResponseRows(rows.x_BxT.to(dev), rows.y_BxT.to(dev), rows.mask_BxT.to(dev))
    was = model.training
    model.eval()
    kl = (response_logprobs(model, rows) - response_logprobs(ref, rows)).sum(1)
    model.train(was)
    m = {"reward": float(rewards.mean()), "kl": float(kl.mean()),
         "stop_rate": sum(s.ended for s in out) / len(out),
         "length": sum(len(s.ids) for s in out) / len(out)}
    texts = [response_text(tok, s.ids) for s in out]
    m.update(follow_rates(prompts, texts, [s.ended for s in out]))
    if gold is not None:
        m["gold"] = sum(gold(p, x, s.ended) for p, x, s in zip(prompts, texts, out)) / len(out)
    return m


def policy_prompts(dcfg: DataConfig, val_rows: int) -> tuple[list[str], list[str]]:
    """(training prompts, held-out prompts) without points, from the corpus's reviews."""
    from gptlab.data.instructions import prompt_of

    rows = review_rows(dcfg)
    train_idx, val_idx = split_records(rows, max(dcfg.val_fraction, 0.05), dcfg.seed)
    return [prompt_of(rows[i]) for i in train_idx], [prompt_of(rows[i]) for i in val_idx][:val_rows]


# -- best-of-n --------------------------------------------------------------------------------------------
@torch.no_grad()
def best_of_n(model: GPT, tok: Tokenizer, prompts: Sequence[str], scorer: Scorer, n_max: int, seed: int,
              gold: GoldFn | None, temperature: float = 1.0) -> list[dict[str, float]]:
    """Best-of-n sampling for n = 1, 2, 4, ... n_max: n_max responses per prompt are drawn once;
    best-of-n keeps the one of the first n with the highest proxy reward. One row per n: its KL
    to the model (log n - (n-1)/n, exactly), the mean proxy reward of the picks, and with gold=True
    their mean gold reward."""
    from gptlab.training.rl import best_of_n_kl

    if not prompts:
        raise UserError("no prompts to sample: give a bigger corpus or more --prompts")
    dev = model.tok_emb.weight.device
    scorer.to(dev)
    g = torch.Generator(device=dev).manual_seed(seed)
    ids = [tok.encode_prompt(p) for p in prompts]
    C = model.cfg.context_length
    rows = [i for i in ids for _ in range(n_max)]
    out: list[Sampled] = []
    for k in range(0, len(rows), 256):
        out += sample_responses(model, tok, rows[k:k + 256], max_new=max(C + 1 - max(len(i) for i in ids), 1),
                                temperature=temperature, generator=g)
    proxy = scorer(rows, out).view(len(prompts), n_max)
    golds = torch.tensor([gold(prompts[j // n_max], response_text(tok, s.ids), s.ended) if gold else 0.0
                          for j, s in enumerate(out)]).view(len(prompts), n_max)
    table = []
    n = 1
    while n <= n_max:
        pick = proxy[:, :n].argmax(dim=1, keepdim=True)
        row = {"n": n, "kl": best_of_n_kl(n), "reward": float(proxy.gather(1, pick).mean())}
        if gold is not None:
            row["gold"] = float(golds.gather(1, pick).mean())
        table.append(row)
        n *= 2
    return table
