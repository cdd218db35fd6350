"""Policy optimisation against a reward, with a KL penalty to the SFT model: PPO
(`gptlab align ppo`) and a critic-free group method, GRPO or RLOO (`gptlab align grpo`).

PPO (Schulman et al. 2017; Ziegler et al. 2019's recipe for language models): a rollout samples
one response per prompt from the current policy; each response token's reward is
-kl_coef * KL estimate (policy vs SFT), plus the reward model's score on the last token; GAE over
the critic's values gives advantages (whitened); then `ppo_epochs` passes of minibatches of the
clipped surrogate and a clipped value loss. One loop step = one minibatch: the rollout is made by
`batch()` at the first step of its block, from the policy as it is then, and kept in the model's
buffers, so a run stopped between two minibatches resumes on the same rollout.

GRPO (Shao et al. 2024) / RLOO (Ahmadian et al. 2024): `group_size` responses per prompt, each
response's advantage its reward against its group's (no critic); one update per rollout
(on-policy, so the ratio is 1 and clipping never binds), the KL to the SFT model as k3 in the loss.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from gptlab.data import DataConfig
from gptlab.data.instructions import CHECKER_PENALTY
from gptlab.data.tokenizer import Tokenizer
from gptlab.errors import UserError
from gptlab.model import GPT
from gptlab.model.align import ROLLOUT_KEYS, ValuePolicy
from gptlab.settings import setting
from gptlab.training.align import (
    NORM_PROMPTS,
    AlignConfig,
    GoldFn,
    ResponseRows,
    RewardFn,
    Sampled,
    Scorer,
    check_out_model,
    default_gold,
    evaluate_policy,
    frozen,
    gpt_config,
    last_index,
    load_gpt,
    load_reward,
    normalise_reward,
    plain_gpt,
    policy_prompts,
    response_rows,
    response_text,
    same_architecture,
    same_tokenizer,
    sample_responses,
)
from gptlab.training.env import Runtime
from gptlab.training.loop import Batch, Task, TrainResult, fit, prepare_out, runtime_for
from gptlab.training.rl import (
    gae,
    group_advantages,
    kl_k1,
    kl_k3,
    ppo_policy_loss,
    token_logprobs,
    value_loss,
    whiten,
)

KIND_PPO, KIND_GRPO = "gpt-value", "gpt"


@dataclass
class RLConfig(AlignConfig):
    """What PPO and the group methods share."""
    reward: str = setting("", "reward model folder (from `gptlab align reward`), trained from the same SFT model")
    ref: str = setting("", "reference model for the KL penalty (the SFT model); '' = MODEL")
    kl_coef: float = setting(0.05, "weight of the KL penalty to the reference (TRL: 0.05)", min=0)
    temperature: float = setting(1.0, "sampling temperature of the rollouts", above=0)
    no_end_penalty: float = setting(1.0, "subtracted from the reward of a response the context cut off before <|endoftext|>", min=0)
    reward_norm: bool = setting(True, "normalise the reward model's scores to mean 0, std 1 over the starting policy's responses (InstructGPT's practice)")
    checker_penalty: float = setting(CHECKER_PENALTY, "subtracted from the reward of a response the checker rejects (wrong country, province or variety for the instruction): a rule-based reward beside the learned one, which never saw an off-instruction answer (0 = off)", min=0)
    lr: float = setting(3e-5, "peak learning rate", min=0)
    warmup_steps: int = setting(0, "linear warmup steps", min=0)
    schedule: str = setting("constant", "cosine (after warmup) or constant", choices=("cosine", "constant"))
    eval_interval: int = setting(50, "steps between evaluations on held-out prompts (0 = only at the end)", min=0)
    val_rows: int = setting(64, "held-out prompts sampled at each evaluation", min=0)


@dataclass
class PPOConfig(RLConfig):
    out: str = setting("runs/ppo", "output folder for the policy (a GPT with a value head)")
    rollout_size: int = setting(64, "prompts per rollout (a multiple of --batch-size, the minibatch)", min=1)
    ppo_epochs: int = setting(4, "passes over each rollout (TRL: 4)", min=1)
    clip: float = setting(0.2, "PPO's clip range for the probability ratio (TRL: 0.2)", above=0)
    value_clip: float = setting(0.2, "clip range of the value update", above=0)
    vf_coef: float = setting(0.1, "weight of the value loss (TRL: 0.1)", min=0)
    gamma: float = setting(1.0, "discount (TRL: 1.0)", min=0, max=1)
    lam: float = setting(0.95, "GAE lambda (TRL: 0.95)", min=0, max=1)
    kl_estimator: str = setting("k1", "per-token KL in the reward: k1 = log pi - log ref (unbiased, TRL's default), "
                                      "k3 = (r - 1) - log r (never negative)", choices=("k1", "k3"))

    def validate(self) -> None:
        super().validate()
        if self.rollout_size % self.batch_size:
            raise UserError(f"--rollout-size {self.rollout_size} must be a multiple of --batch-size {self.batch_size} (the minibatch)")


@dataclass
class GRPOConfig(RLConfig):
    out: str = setting("runs/grpo", "output folder for the aligned GPT")
    batch_size: int = setting(64, "responses per step: prompts x --group-size", min=1)
    group_size: int = setting(8, "responses sampled per prompt, each judged against the others", min=2)
    method: str = setting("grpo", "grpo: (r - group mean) / group std; rloo: r - mean of the others", choices=("grpo", "rloo"))
    kl_coef: float = setting(0.04, "weight of the k3 KL estimate in the loss (DeepSeekMath: 0.04)", min=0)
    clip: float = setting(0.2, "clip range of the ratio (on-policy: inactive, kept for the loss's form)", above=0)

    def validate(self) -> None:
        super().validate()
        if self.batch_size % self.group_size:
            raise UserError(f"--batch-size {self.batch_size} must be a multiple of --group-size {self.group_size}")


class _RLTask(Task[Any]):
    """Policy, reference, scorer and prompts: what PPO and GRPO set up alike."""
    t: RLConfig

    def _setup(self, t: RLConfig, dcfg: DataConfig, reward_fn: RewardFn | None, prompts: tuple[list[str], list[str]] | None,
               gold: GoldFn | None) -> tuple[GPT, Tokenizer]:
        self.t, self.dcfg = t, dcfg
        policy, tok, _ = load_gpt(t.model)
        ref, ref_tok, _ = load_gpt(t.ref, "--ref") if t.ref else (policy, tok, None)
        same_architecture(policy.cfg, ref.cfg)
        same_tokenizer(tok, ref_tok, f"--ref {t.ref}")
        if reward_fn is None:
            if not t.reward:
                raise UserError("no reward model given: pass --reward FOLDER (from `gptlab align reward`)")
            rm, rm_tok, _ = load_reward(t.reward)
            same_tokenizer(tok, rm_tok, f"the reward model {t.reward}")
            self.scorer = Scorer(tok, model=rm, no_end_penalty=t.no_end_penalty, checker_penalty=t.checker_penalty)
        else:
            self.scorer = Scorer(tok, fn=reward_fn, no_end_penalty=t.no_end_penalty, checker_penalty=t.checker_penalty)
        self.ref = frozen(plain_gpt(ref, dropout=0.0))
        self.train_prompts, self.val_prompts = prompts if prompts is not None else policy_prompts(dcfg, t.val_rows)
        if not self.train_prompts:
            raise UserError("no training prompts: give a bigger corpus")
        self.ctx = policy.cfg.context_length
        self.gold = gold or default_gold(dcfg)
        if reward_fn is None and t.reward_norm:
            normalise_reward(self.scorer, policy, tok, self.train_prompts[:NORM_PROMPTS], t.seed)
        return policy, tok

    def _rollout(self, model: GPT, prompts: list[str], g: torch.Generator) -> tuple[ResponseRows, list[Sampled], torch.Tensor]:
        """Sample one response per prompt from `model`: (rows padded to the context, the
        responses, their rewards (R,))."""
        tok = self.tokenizer
        ids = [tok.encode_prompt(p) for p in prompts]
        max_new = self.ctx + 1 - max(len(i) for i in ids)
        if max_new < 1:
            raise UserError(f"a prompt fills the model's context of {self.ctx} tokens: no room for a response")
        out = sample_responses(model, tok, ids, max_new=max_new, temperature=self.t.temperature, generator=g)
        rows = response_rows([(p + s.ids, len(p)) for p, s in zip(ids, out)], tok.pad_id, self.ctx + 1)
        self.scorer.to(model.tok_emb.weight.device)
        return rows, out, self.scorer(ids, out).float()

    def _logp(self, model: Any, x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        logits = model(x, return_logits=True).logits
        return token_logprobs(logits / self.t.temperature, y) * mask

    def evaluate(self, model: GPT, rt: Runtime) -> dict[str, float]:
        return evaluate_policy(model, self.ref, self.tokenizer, self.val_prompts, self.scorer, self.t.seed, self.gold)

    def sample(self, model: GPT, rt: Runtime, step: int) -> str | None:
        if not self.val_prompts:
            return None
        g = torch.Generator(device=rt.device).manual_seed(self.t.seed + step)
        p = self.val_prompts[0]
        s = sample_responses(model, self.tokenizer, [self.tokenizer.encode_prompt(p)], max_new=self.ctx,
                             temperature=1.0, generator=g)[0]
        return f"{p} {response_text(self.tokenizer, s.ids)}{'' if s.ended else ' ...'}"

    def _align_config(self, stage: str) -> dict[str, Any]:
        t = self.t
        return {"stage": stage, "from": t.model, "ref": t.ref or t.model, "reward": t.reward or "python function",
                "kl_coef": t.kl_coef}


class PPO(_RLTask):
    kind = KIND_PPO
    t: PPOConfig

    def __init__(self, t: PPOConfig, dcfg: DataConfig, tokenizer: Tokenizer | None = None, *,
                 reward_fn: RewardFn | None = None, prompts: tuple[list[str], list[str]] | None = None,
                 gold: GoldFn | None = None):
        policy, tok = self._setup(t, dcfg, reward_fn, prompts, gold)
        self.tokenizer = tokenizer or tok
        torch.manual_seed(t.seed)
        cfg = plain_gpt(policy, dropout=0.0).cfg
        self.model = ValuePolicy(cfg, t.rollout_size, self.ctx)
        self.model.load_state_dict(policy.state_dict(), strict=False)  # the value head starts at zero
        self.minibatches = t.rollout_size // t.batch_size
        self.per_rollout = t.ppo_epochs * self.minibatches
        self.last_terms: dict[str, torch.Tensor] = {}
        self.rollout_stats: dict[str, float] = {}

    def steps_per_epoch(self) -> int:
        return max(len(self.train_prompts) // self.t.rollout_size, 1) * self.per_rollout

    def _make_rollout(self, r: int) -> None:
        """Rollout r from the policy as it is now, into the model's buffers."""
        t, model = self.t, self.model
        dev = model.tok_emb.weight.device
        order = torch.randperm(len(self.train_prompts), generator=torch.Generator().manual_seed(t.seed * 7919 + r))
        prompts = [self.train_prompts[i] for i in order[:t.rollout_size].tolist()]
        if len(prompts) < t.rollout_size:  # fewer prompts than a rollout: repeat them
            prompts = (prompts * t.rollout_size)[:t.rollout_size]
        g = torch.Generator(device=dev).manual_seed(t.seed * 104729 + r)
        rows, out, scores = self._rollout(model, prompts, g)
        x, y, m = rows.x_BxT.to(dev), rows.y_BxT.to(dev), rows.mask_BxT.to(dev)
        was = model.training
        model.eval()
        with torch.no_grad():
            po = model(x, with_values=True)
            old_logp = token_logprobs(po.logits / t.temperature, y) * m
            self.ref.to(dev)
            ref_logp = self._logp(self.ref, x, y, m)
            kl_tok = (kl_k1 if t.kl_estimator == "k1" else kl_k3)(old_logp, ref_logp) * m
            rewards = -t.kl_coef * kl_tok
            rows_R = torch.arange(len(prompts), device=dev)
            rewards[rows_R, last_index(rows).to(dev) - 1] += scores.to(dev)
            values = po.values * m
            adv, ret = gae(rewards, values, m, t.gamma, t.lam)
            adv = whiten(adv, m)
        model.train(was)
        new = {"inputs": x.float(), "targets": y.float(), "response_mask": m, "old_logp": old_logp,
               "old_values": values, "advantages": adv, "returns": ret}
        for k in ROLLOUT_KEYS:
            getattr(model, f"rollout_{k}").copy_(new[k])
        model.rollout_index.fill_(r)
        self.rollout_stats = {"rollout_reward": float(scores.mean()), "rollout_kl": float((kl_k1(old_logp, ref_logp) * m).sum(1).mean())}

    def batch(self, step: int) -> Batch:
        r, k = divmod(step, self.per_rollout)
        if int(self.model.rollout_index.item()) != r:
            self._make_rollout(r)
        epoch, mb = divmod(k, self.minibatches)
        perm = torch.randperm(self.t.rollout_size, generator=torch.Generator().manual_seed(self.t.seed * 31 + r * 1009 + epoch))
        rows = perm[mb * self.t.batch_size:(mb + 1) * self.t.batch_size].to(self.model.rollout_inputs.device)
        tensors = {k: getattr(self.model, f"rollout_{k}")[rows].detach().cpu() for k in ROLLOUT_KEYS}
        tensors["inputs"], tensors["targets"] = tensors["inputs"].long(), tensors["targets"].long()
        return Batch(tensors, int(tensors["response_mask"].sum()))

    def terms(self, model: Any, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The minibatch's losses (summed over its response tokens), ratios and active clips."""
        t, m = self.t, tensors["response_mask"]
        po = model(tensors["inputs"], with_values=True)
        logp = token_logprobs(po.logits / t.temperature, tensors["targets"]) * m
        policy_loss, ratio, clipped = ppo_policy_loss(logp, tensors["old_logp"], tensors["advantages"], m, t.clip)
        v_loss = value_loss(po.values, tensors["old_values"], tensors["returns"], m, t.value_clip)
        return {"loss": policy_loss + t.vf_coef * v_loss, "policy_loss": policy_loss, "value_loss": v_loss,
                "ratio": ratio, "clipped": clipped}

    def loss_sum(self, model: Any, tensors: dict[str, torch.Tensor]) -> torch.Tensor:
        self.last_terms = self.terms(model, tensors)
        return self.last_terms["loss"]

    def evaluate(self, model: GPT, rt: Runtime) -> dict[str, float]:
        return {**super().evaluate(model, rt), **self.rollout_stats}

    def config(self) -> dict[str, Any]:
        t = self.t
        return {"model": self.model.cfg.to_dict(), "data": self.dcfg.to_dict(),
                "rollout": {"rows": t.rollout_size, "length": self.ctx},
                "align": {**self._align_config("ppo"), "clip": t.clip, "ppo_epochs": t.ppo_epochs}}

    def describe(self) -> str:
        return (f"gptlab align ppo: {len(self.train_prompts):,} prompts, rollouts of {self.t.rollout_size} "
                f"({self.per_rollout} minibatch steps each), kl {self.t.kl_coef}; ")


class GroupPolicy(_RLTask):
    """GRPO / RLOO: a GPT, no critic."""
    kind = KIND_GRPO
    t: GRPOConfig

    def __init__(self, t: GRPOConfig, dcfg: DataConfig, tokenizer: Tokenizer | None = None, *,
                 reward_fn: RewardFn | None = None, prompts: tuple[list[str], list[str]] | None = None,
                 gold: GoldFn | None = None):
        policy, tok = self._setup(t, dcfg, reward_fn, prompts, gold)
        self.tokenizer = tokenizer or tok
        torch.manual_seed(t.seed)
        self.model = plain_gpt(policy, dropout=0.0)
        self.n_prompts = t.batch_size // t.group_size

    def steps_per_epoch(self) -> int:
        return max(len(self.train_prompts) // self.n_prompts, 1)

    def batch(self, step: int) -> Batch:
        """The step's rollout, from the current policy: a pure function of (seed, step, weights),
        so a resumed run (which restores the weights) sees the same one."""
        t, model = self.t, self.model
        dev = model.tok_emb.weight.device
        pick = torch.randint(len(self.train_prompts), (self.n_prompts,), generator=torch.Generator().manual_seed(t.seed * 7919 + step))
        prompts = [self.train_prompts[i] for i in pick.tolist() for _ in range(t.group_size)]
        g = torch.Generator(device=dev).manual_seed(t.seed * 104729 + step)
        rows, _, scores = self._rollout(model, prompts, g)
        adv_R = group_advantages(scores.view(self.n_prompts, t.group_size), t.method).flatten()
        with torch.no_grad():
            self.ref.to(dev)
            ref_logp = self._logp(self.ref, rows.x_BxT.to(dev), rows.y_BxT.to(dev), rows.mask_BxT.to(dev)).cpu()
        return Batch({"x": rows.x_BxT, "y": rows.y_BxT, "m": rows.mask_BxT, "adv": adv_R, "ref_logp": ref_logp},
                     rows.n_targets)

    def loss_sum(self, model: Any, tensors: dict[str, torch.Tensor]) -> torch.Tensor:
        m = tensors["m"]
        logp = self._logp(model, tensors["x"], tensors["y"], m)
        adv_BxT = tensors["adv"][:, None].expand_as(m)
        policy_loss, _, _ = ppo_policy_loss(logp, logp.detach(), adv_BxT, m, self.t.clip)
        return policy_loss + self.t.kl_coef * (kl_k3(logp, tensors["ref_logp"]) * m).sum()

    def config(self) -> dict[str, Any]:
        t = self.t
        return {"model": self.model.cfg.to_dict(), "data": self.dcfg.to_dict(),
                "align": {**self._align_config(t.method), "group_size": t.group_size}}

    def describe(self) -> str:
        return (f"gptlab align grpo ({self.t.method}): {len(self.train_prompts):,} prompts, {self.n_prompts} x "
                f"{self.t.group_size} responses per step, kl {self.t.kl_coef}; ")


def _start(t: RLConfig, dcfg: DataConfig | None, kind: str, make: str) -> tuple[DataConfig, Runtime, Tokenizer | None]:
    dcfg = dcfg or DataConfig()
    dcfg.validate()
    rt = runtime_for(t)
    check_out_model(t)
    model_cfg = gpt_config(t.model)["model"]
    return dcfg, rt, prepare_out(t, kind, {**model_cfg, "dropout": 0.0}, make)


def ppo(t: PPOConfig, dcfg: DataConfig | None = None, *, reward_fn: RewardFn | None = None,
        prompts: tuple[list[str], list[str]] | None = None, gold: GoldFn | None = None,
        on_eval=None) -> TrainResult[ValuePolicy]:
    """PPO of t.model against t.reward (or `reward_fn(prompt_ids, response_ids)`); `prompts`
    (train, held out) overrides the corpus's; `gold(prompt, text, ended)` is evaluated beside the
    proxy (default: the built-in corpus's rule there, none elsewhere)."""
    dcfg, rt, saved = _start(t, dcfg, KIND_PPO, "gptlab align ppo")
    return fit(PPO(t, dcfg, saved, reward_fn=reward_fn, prompts=prompts, gold=gold), t, rt, on_eval=on_eval)


def grpo(t: GRPOConfig, dcfg: DataConfig | None = None, *, reward_fn: RewardFn | None = None,
         prompts: tuple[list[str], list[str]] | None = None, gold: GoldFn | None = None,
         on_eval=None) -> TrainResult[GPT]:
    """GRPO or RLOO of t.model; arguments as `ppo`'s."""
    dcfg, rt, saved = _start(t, dcfg, KIND_GRPO, "gptlab align grpo")
    return fit(GroupPolicy(t, dcfg, saved, reward_fn=reward_fn, prompts=prompts, gold=gold), t, rt, on_eval=on_eval)
