"""The arithmetic of alignment as small pure functions over tensors, each tested against its
closed form (tests/test_align_math.py): Bradley-Terry, DPO/IPO, log-probabilities of responses,
KL estimators, GAE, PPO's clipped losses, group baselines (GRPO, RLOO), best-of-n's KL.

Shapes: B rows, T tokens, V vocabulary, G responses per prompt. Masks are float 0/1 over the
response tokens (prompt and padding 0)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def bradley_terry_loss(r_chosen_B: torch.Tensor, r_rejected_B: torch.Tensor) -> torch.Tensor:
    """-log sigmoid(r_c - r_r) per pair: the NLL of the observed preference under Bradley-Terry."""
    return -F.logsigmoid(r_chosen_B - r_rejected_B)


def dpo_loss(pi_chosen_B: torch.Tensor, pi_rejected_B: torch.Tensor, ref_chosen_B: torch.Tensor,
             ref_rejected_B: torch.Tensor, beta: float, ipo: bool = False) -> torch.Tensor:
    """Per pair, from summed response log-probs under the policy and the reference.

    DPO (Rafailov et al. 2023): -log sigmoid(beta * h), h = (pi_c - ref_c) - (pi_r - ref_r);
    log 2 when policy == reference. IPO (Azar et al. 2023): (h - 1 / (2 beta))^2.
    """
    h_B = (pi_chosen_B - ref_chosen_B) - (pi_rejected_B - ref_rejected_B)
    if ipo:
        return (h_B - 1.0 / (2.0 * beta)) ** 2
    return -F.logsigmoid(beta * h_B)


def token_logprobs(logits_BxTxV: torch.Tensor, targets_BxT: torch.Tensor) -> torch.Tensor:
    """log p(target_t | prefix) for each position (B, T), in fp32."""
    logp = torch.log_softmax(logits_BxTxV.float(), dim=-1)
    return logp.gather(-1, targets_BxT.clamp(min=0).unsqueeze(-1)).squeeze(-1)


def kl_k1(logp_BxT: torch.Tensor, ref_logp_BxT: torch.Tensor) -> torch.Tensor:
    """log pi - log ref per sampled token: unbiased for KL(pi || ref), but any one may be < 0."""
    return logp_BxT - ref_logp_BxT


def kl_k3(logp_BxT: torch.Tensor, ref_logp_BxT: torch.Tensor) -> torch.Tensor:
    """(r - 1) - log r with r = ref / pi per sampled token (Schulman's k3): unbiased for
    KL(pi || ref) and never negative, since log r <= r - 1."""
    log_r = (ref_logp_BxT - logp_BxT).clamp(-20, 20)
    return (torch.expm1(log_r) - log_r).clamp(min=0)


def gae(rewards_BxT: torch.Tensor, values_BxT: torch.Tensor, mask_BxT: torch.Tensor,
        gamma: float = 1.0, lam: float = 0.95) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation over the masked (response) positions of each row.

    delta_t = r_t + gamma V_{t+1} - V_t (V after the last response token is 0),
    A_t = delta_t + gamma lam A_{t+1}. Returns (advantages, returns = A + V), 0 off the mask.
    Positions off the mask are skipped: the next response token is the next masked one.
    """
    B, T = rewards_BxT.shape
    adv = torch.zeros(B, T, dtype=torch.float32, device=rewards_BxT.device)
    next_value = torch.zeros(B, device=rewards_BxT.device)
    next_adv = torch.zeros(B, device=rewards_BxT.device)
    for t in range(T - 1, -1, -1):
        m = mask_BxT[:, t].float()
        delta = rewards_BxT[:, t] + gamma * next_value - values_BxT[:, t]
        a = delta + gamma * lam * next_adv
        adv[:, t] = a * m
        next_value = torch.where(m > 0, values_BxT[:, t].float(), next_value)
        next_adv = torch.where(m > 0, a, next_adv)
    return adv, (adv + values_BxT.float()) * mask_BxT.float()


def whiten(x_BxT: torch.Tensor, mask_BxT: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """(x - mean) / std over the masked entries (advantages of a rollout)."""
    m = mask_BxT.float()
    n = m.sum().clamp(min=1)
    mean = (x_BxT * m).sum() / n
    var = (((x_BxT - mean) * m) ** 2).sum() / n
    return (x_BxT - mean) * torch.rsqrt(var + eps) * m


def ppo_policy_loss(logp_BxT: torch.Tensor, old_logp_BxT: torch.Tensor, adv_BxT: torch.Tensor,
                    mask_BxT: torch.Tensor, clip: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """PPO's clipped surrogate, summed over masked tokens: -min(rho A, clip(rho, 1-e, 1+e) A).

    Returns (loss_sum, ratio rho (B, T), clipped (B, T) bool: where the clip is the active term).
    """
    ratio = torch.exp(logp_BxT - old_logp_BxT)
    unclipped = ratio * adv_BxT
    clipped = ratio.clamp(1 - clip, 1 + clip) * adv_BxT
    m = mask_BxT.float()
    active = (clipped < unclipped) & (m > 0)
    return (-torch.minimum(unclipped, clipped) * m).sum(), ratio, active


def value_loss(values_BxT: torch.Tensor, old_values_BxT: torch.Tensor, returns_BxT: torch.Tensor,
               mask_BxT: torch.Tensor, clip: float) -> torch.Tensor:
    """Clipped value loss summed over masked tokens: 0.5 max((V - R)^2, (V_clip - R)^2)."""
    v_clip = old_values_BxT + (values_BxT - old_values_BxT).clamp(-clip, clip)
    err = torch.maximum((values_BxT - returns_BxT) ** 2, (v_clip - returns_BxT) ** 2)
    return 0.5 * (err * mask_BxT.float()).sum()


def group_advantages(rewards_BxG: torch.Tensor, method: str = "grpo", eps: float = 1e-6) -> torch.Tensor:
    """One advantage per response from its group of G responses to the same prompt (no critic).

    grpo (Shao et al. 2024): (r - mean) / (std + eps); rloo (Ahmadian et al. 2024): r minus the
    mean of the other G - 1 responses.
    """
    G = rewards_BxG.shape[1]
    mean = rewards_BxG.mean(dim=1, keepdim=True)
    if method == "rloo":
        return (rewards_BxG - mean) * G / max(G - 1, 1)
    return (rewards_BxG - mean) / (rewards_BxG.std(dim=1, keepdim=True, unbiased=False) + eps)


def best_of_n_kl(n: int) -> float:
    """KL(best-of-n || base) = log n - (n - 1) / n (Stiennon et al. 2020; Gao et al. 2022)."""
    return math.log(n) - (n - 1) / n
