"""Direct preference optimisation (`gptlab align dpo`): the policy learns from preference pairs
directly, no reward model and no sampling, with the loss -log sigmoid(beta h),
h = [log pi(chosen) - log ref(chosen)] - [log pi(rejected) - log ref(rejected)] (Rafailov et al.
2023), or IPO's (h - 1/(2 beta))^2 (Azar et al. 2023). The reference is the SFT model, frozen."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from gptlab.data import DataConfig
from gptlab.data.instructions import Pair
from gptlab.data.tokenizer import Tokenizer
from gptlab.errors import UserError
from gptlab.model import GPT
from gptlab.settings import setting
from gptlab.training.align import (
    PairsConfig,
    ResponseRows,
    check_out_model,
    encode_response,
    frozen,
    gpt_config,
    load_gpt,
    pairs_for,
    plain_gpt,
    response_logprobs,
    response_rows,
    same_architecture,
    same_tokenizer,
)
from gptlab.training.batches import RowBatches
from gptlab.training.env import Runtime
from gptlab.training.loop import Batch, Task, TrainResult, fit, prepare_out, runtime_for
from gptlab.training.rl import dpo_loss

KIND = "gpt"


@dataclass
class DPOConfig(PairsConfig):
    out: str = setting("runs/dpo", "output folder for the aligned GPT")
    ref: str = setting("", "reference model (the SFT model the policy starts from); '' = MODEL")
    beta: float = setting(0.1, "strength of the pull towards the reference (TRL's default 0.1; smaller drifts further)", above=0)
    ipo: bool = setting(False, "IPO's squared loss instead of DPO's logistic one")
    lr: float = setting(5e-5, "peak learning rate", min=0)
    val_rows: int = setting(200, "held-out pairs", min=0)


Seqs = list[tuple[tuple[list[int], int], tuple[list[int], int]]]


def pair_rows(chunk: Seqs, pad_id: int) -> tuple[ResponseRows, ResponseRows]:
    """Chosen and rejected rows of the same length."""
    L = max(max(len(c[0]), len(r[0])) for c, r in chunk)
    return response_rows([c for c, _ in chunk], pad_id, L), response_rows([r for _, r in chunk], pad_id, L)


class DPO(Task[GPT]):
    unit = "pair"
    kind = KIND
    best_metric = None

    def __init__(self, t: DPOConfig, dcfg: DataConfig, tokenizer: Tokenizer | None = None,
                 pairs: tuple[list[Pair], list[Pair]] | None = None):
        self.t, self.dcfg = t, dcfg
        policy, tok, _ = load_gpt(t.model)
        ref, ref_tok, _ = load_gpt(t.ref, "--ref") if t.ref else (policy, tok, None)
        same_architecture(policy.cfg, ref.cfg)
        same_tokenizer(tok, ref_tok, f"--ref {t.ref}")
        self.tokenizer = tokenizer or tok
        torch.manual_seed(t.seed)
        self.model = plain_gpt(policy, dropout=0.0)  # the log-prob ratios must not see dropout noise
        self.ref = frozen(plain_gpt(ref, dropout=0.0))
        self.ctx = self.model.cfg.context_length
        train, val = pairs if pairs is not None else pairs_for(t, dcfg)
        self.train_seqs, self.dropped = self._encode(train)
        self.val_seqs, _ = self._encode(val)
        if not self.train_seqs:
            raise UserError(f"no preference pair fits the model's context of {self.ctx} tokens")
        self.rows = RowBatches([max(len(c[0]), len(r[0])) for c, r in self.train_seqs], t.batch_size, t.seed)

    def _encode(self, pairs: list[Pair]) -> tuple[Seqs, int]:
        tok = self.tokenizer
        seqs = [(encode_response(tok, p.prompt, p.chosen), encode_response(tok, p.prompt, p.rejected)) for p in pairs]
        kept = [s for s in seqs if max(len(s[0][0]), len(s[1][0])) <= self.ctx + 1]
        return kept, len(seqs) - len(kept)

    def steps_per_epoch(self) -> int:
        return self.rows.steps_per_epoch

    def batch(self, step: int) -> Batch:
        c, r = pair_rows([self.train_seqs[i] for i in self.rows.rows(step)], self.tokenizer.pad_id)
        return Batch({"c_x": c.x_BxT, "c_y": c.y_BxT, "c_m": c.mask_BxT,
                      "r_x": r.x_BxT, "r_y": r.y_BxT, "r_m": r.mask_BxT}, int(c.x_BxT.shape[0]))

    def _margins(self, model: Any, tensors: dict[str, torch.Tensor]) -> tuple[torch.Tensor, ...]:
        """[pi(chosen), pi(rejected), ref(chosen), ref(rejected)]: summed response log-probs (B,)."""
        self.ref.to(tensors["c_x"].device)
        rows = [ResponseRows(tensors[f"{k}_x"], tensors[f"{k}_y"], tensors[f"{k}_m"]) for k in ("c", "r")]
        pi = [response_logprobs(model, x).sum(1) for x in rows]
        with torch.no_grad():
            ref = [response_logprobs(self.ref, x).sum(1) for x in rows]
        return (*pi, *ref)

    def loss_sum(self, model: Any, tensors: dict[str, torch.Tensor]) -> torch.Tensor:
        pc, pr, rc, rr = self._margins(model, tensors)
        return dpo_loss(pc, pr, rc, rr, self.t.beta, self.t.ipo).sum()

    @torch.no_grad()
    def evaluate(self, model: GPT, rt: Runtime) -> dict[str, float]:
        """Held-out pairs: the DPO loss, and how often the implicit reward beta*(log pi - log ref)
        ranks the chosen response first."""
        if not self.val_seqs:
            return {}
        model.eval()
        loss, right = 0.0, 0
        for i in range(0, len(self.val_seqs), 64):
            c, r = pair_rows(self.val_seqs[i:i + 64], self.tokenizer.pad_id)
            tensors = {f"{k}_{n}": getattr(x, a).to(rt.device) for k, x in (("c", c), ("r", r))
                       for n, a in (("x", "x_BxT"), ("y", "y_BxT"), ("m", "mask_BxT"))}
            pc, pr, rc, rr = self._margins(model, tensors)
            loss += float(dpo_loss(pc, pr, rc, rr, self.t.beta, self.t.ipo).sum())
            right += int(((pc - rc) > (pr - rr)).sum())
        n = len(self.val_seqs)
        return {"val_loss": loss / n, "val_accuracy": right / n}

    def config(self) -> dict[str, Any]:
        return {"model": self.model.cfg.to_dict(), "data": self.dcfg.to_dict(),
                "align": {"stage": "ipo" if self.t.ipo else "dpo", "from": self.t.model, "ref": self.t.ref or self.t.model,
                          "beta": self.t.beta, "pairs": self.t.pairs or f"corpus points, noise {self.t.noise}"}}

    def describe(self) -> str:
        return f"gptlab align {'ipo' if self.t.ipo else 'dpo'}: {len(self.train_seqs):,} pairs, beta {self.t.beta}; "


def dpo(t: DPOConfig, dcfg: DataConfig | None = None, *, on_eval=None,
        pairs: tuple[list[Pair], list[Pair]] | None = None) -> TrainResult[GPT]:
    """DPO (or IPO) of t.model on preference pairs; `pairs` (train, held out) overrides the data."""
    dcfg = dcfg or DataConfig()
    dcfg.validate()
    rt = runtime_for(t)
    check_out_model(t)
    model_cfg = gpt_config(t.model)["model"]
    saved = prepare_out(t, KIND, {**model_cfg, "dropout": 0.0}, "gptlab align dpo")
    return fit(DPO(t, dcfg, saved, pairs), t, rt, on_eval=on_eval)
