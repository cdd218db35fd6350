"""The reward model (`gptlab align reward`): the GPT's blocks with a scalar head, trained on
preference pairs with the Bradley-Terry loss -log sigmoid(r(chosen) - r(rejected)).

Pairs come from a pairs file (prompt, chosen, rejected) or from the corpus's points (the
higher-scored review of the same country and variety is chosen, `--noise` flips a fraction).
The held-out pairs are made from reviews the training pairs never use."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from gptlab.data import DataConfig
from gptlab.data.instructions import Pair
from gptlab.data.tokenizer import Tokenizer
from gptlab.errors import UserError
from gptlab.model.align import RewardModel
from gptlab.settings import setting
from gptlab.training.align import (
    KIND_REWARD,
    PairsConfig,
    check_out_model,
    encode_response,
    gpt_config,
    load_gpt,
    pairs_for,
    response_rows,
    reward_inputs,
)
from gptlab.training.batches import RowBatches
from gptlab.training.env import Runtime
from gptlab.training.loop import Batch, Task, TrainResult, fit, prepare_out, runtime_for
from gptlab.training.rl import bradley_terry_loss


@dataclass
class RewardConfig(PairsConfig):
    out: str = setting("runs/reward", "output folder for the reward model")
    init: str = setting("model", "model: start from MODEL's weights; scratch: MODEL's shape and tokenizer, random weights",
                        choices=("model", "scratch"))
    lr: float = setting(1e-4, "peak learning rate", min=0)
    val_rows: int = setting(500, "held-out pairs for the pair accuracy", min=0)
    keep_best: bool = setting(True, "end with the weights of the best held-out pair accuracy")


def pair_accuracy(model: RewardModel, seqs: list[tuple[tuple[list[int], int], tuple[list[int], int]]],
                  pad_id: int, device: torch.device) -> float:
    """Fraction of pairs whose chosen response gets the higher reward."""
    if not seqs:
        return float("nan")
    model.eval()
    right = 0
    with torch.no_grad():
        for i in range(0, len(seqs), 64):
            chunk = seqs[i:i + 64]
            r = [model(*(x.to(device) for x in reward_inputs(response_rows([p[k] for p in chunk], pad_id), pad_id)))
                 for k in (0, 1)]
            right += int((r[0] > r[1]).sum())
    return right / len(seqs)


class RewardTask(Task[RewardModel]):
    unit = "pair"
    kind = KIND_REWARD
    best_metric = "val_accuracy"

    def __init__(self, t: RewardConfig, dcfg: DataConfig, tokenizer: Tokenizer | None = None):
        self.t, self.dcfg = t, dcfg
        gpt, tok, _ = load_gpt(t.model)
        self.tokenizer = tokenizer or tok
        torch.manual_seed(t.seed)
        self.model = RewardModel(gpt.cfg)
        if t.init == "model":
            self.model.gpt.load_state_dict(gpt.state_dict(), strict=False)
        self.ctx = gpt.cfg.context_length
        train, val = pairs_for(t, dcfg)
        self.train_seqs, self.dropped = self._encode(train)
        self.val_seqs, _ = self._encode(val)
        if not self.train_seqs:
            raise UserError(f"no preference pair fits the model's context of {self.ctx} tokens: use a model with a "
                            "longer context or shorter texts")
        self.rows = RowBatches([max(len(c[0]), len(r[0])) for c, r in self.train_seqs], t.batch_size, t.seed)

    def _encode(self, pairs: list[Pair]) -> tuple[list, int]:
        tok = self.tokenizer
        seqs = [(encode_response(tok, p.prompt, p.chosen), encode_response(tok, p.prompt, p.rejected)) for p in pairs]
        kept = [s for s in seqs if max(len(s[0][0]), len(s[1][0])) <= self.ctx]
        return kept, len(seqs) - len(kept)

    def steps_per_epoch(self) -> int:
        return self.rows.steps_per_epoch

    def batch(self, step: int) -> Batch:
        chunk = [self.train_seqs[i] for i in self.rows.rows(step)]
        # Chosen and rejected padded alike, to the longest whole sequence (<= the context: _encode keeps no
        # longer one); the reward model reads every id of a row, so no extra column.
        L = max(max(len(c[0]), len(r[0])) for c, r in chunk)
        pad = self.tokenizer.pad_id
        c_ids, c_last = reward_inputs(response_rows([c for c, _ in chunk], pad, L), pad)
        r_ids, r_last = reward_inputs(response_rows([r for _, r in chunk], pad, L), pad)
        return Batch({"c_ids": c_ids, "c_last": c_last, "r_ids": r_ids, "r_last": r_last}, len(chunk))

    def loss_sum(self, model: Any, tensors: dict[str, torch.Tensor]) -> torch.Tensor:
        r_chosen = model(tensors["c_ids"], tensors["c_last"])
        r_rejected = model(tensors["r_ids"], tensors["r_last"])
        return bradley_terry_loss(r_chosen, r_rejected).sum()

    def evaluate(self, model: RewardModel, rt: Runtime) -> dict[str, float]:
        if not self.val_seqs:
            return {}
        return {"val_accuracy": pair_accuracy(model, self.val_seqs, self.tokenizer.pad_id, rt.device)}

    def final_metrics(self, model: RewardModel, rt: Runtime) -> dict[str, Any]:
        return {"train_pairs": len(self.train_seqs), "val_pairs": len(self.val_seqs), "dropped_too_long": self.dropped,
                "train_accuracy": pair_accuracy(model, self.train_seqs[:500], self.tokenizer.pad_id, rt.device)}

    def config(self) -> dict[str, Any]:
        return {"model": self.model.cfg.to_dict(), "data": self.dcfg.to_dict(),
                "align": {"stage": "reward", "from": self.t.model, "init": self.t.init,
                          "pairs": self.t.pairs or f"corpus points, noise {self.t.noise}"}}

    def describe(self) -> str:
        return f"gptlab align reward: {len(self.train_seqs):,} pairs, {len(self.val_seqs):,} held out; "


def train_reward(t: RewardConfig, dcfg: DataConfig | None = None, *, on_eval=None) -> TrainResult[RewardModel]:
    dcfg = dcfg or DataConfig()
    dcfg.validate()
    rt = runtime_for(t)
    check_out_model(t)
    model_cfg = gpt_config(t.model)["model"]
    saved = prepare_out(t, KIND_REWARD, model_cfg, "gptlab align reward")
    return fit(RewardTask(t, dcfg, saved), t, rt, on_eval=on_eval)
