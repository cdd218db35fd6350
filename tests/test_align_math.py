"""The arithmetic of alignment (gptlab/training/rl.py) against closed forms and hand-worked examples."""

from __future__ import annotations

import math

import pytest
import torch

from gptlab.training.rl import (
    best_of_n_kl,
    bradley_terry_loss,
    dpo_loss,
    gae,
    group_advantages,
    kl_k1,
    kl_k3,
    ppo_policy_loss,
    token_logprobs,
    value_loss,
    whiten,
)


def test_dpo_loss_is_its_closed_form_on_fixed_log_probs():
    pc, pr, rc, rr = torch.tensor([-10.0, -3.0]), torch.tensor([-12.0, -2.0]), torch.tensor([-11.0, -3.5]), torch.tensor([-11.5, -2.5])
    beta = 0.1
    got = dpo_loss(pc, pr, rc, rr, beta)
    for i in range(2):
        h = (pc[i] - rc[i]) - (pr[i] - rr[i])
        assert float(got[i]) == pytest.approx(math.log(1 + math.exp(-beta * float(h))), rel=1e-6)
    ipo = dpo_loss(pc, pr, rc, rr, beta, ipo=True)
    h0 = float((pc[0] - rc[0]) - (pr[0] - rr[0]))
    assert float(ipo[0]) == pytest.approx((h0 - 1 / (2 * beta)) ** 2, rel=1e-6)


def test_dpo_loss_is_log_2_when_the_policy_is_the_reference():
    logp = torch.randn(5) * 10
    other = torch.randn(5) * 10
    assert torch.allclose(dpo_loss(logp, other, logp, other, beta=0.3), torch.full((5,), math.log(2)))


def test_bradley_terry_is_the_logistic_nll_of_the_preference():
    rc, rr = torch.tensor([2.0, -1.0]), torch.tensor([0.5, 1.0])
    want = torch.log1p(torch.exp(-(rc - rr)))
    assert torch.allclose(bradley_terry_loss(rc, rr), want)


def test_gae_matches_a_hand_computed_example():
    # One row: a prompt position (mask 0), then three response tokens; gamma 0.9, lambda 0.8.
    r = torch.tensor([[0.0, 0.1, 0.2, 1.0]])
    v = torch.tensor([[9.0, 0.5, 0.4, 0.3]])
    m = torch.tensor([[0.0, 1.0, 1.0, 1.0]])
    g, lam = 0.9, 0.8
    d3 = 1.0 + g * 0 - 0.3
    d2 = 0.2 + g * 0.3 - 0.4
    d1 = 0.1 + g * 0.4 - 0.5
    a3 = d3
    a2 = d2 + g * lam * a3
    a1 = d1 + g * lam * a2
    adv, ret = gae(r, v, m, gamma=g, lam=lam)
    assert adv[0].tolist() == pytest.approx([0.0, a1, a2, a3], rel=1e-6)
    assert ret[0].tolist() == pytest.approx([0.0, a1 + 0.5, a2 + 0.4, a3 + 0.3], rel=1e-6)


def test_gae_with_gamma_and_lambda_1_is_the_reward_to_go_minus_the_value():
    r = torch.tensor([[0.0, 0.0, 2.0]])
    v = torch.tensor([[0.5, 1.0, 1.5]])
    adv, _ = gae(r, v, torch.ones(1, 3), gamma=1.0, lam=1.0)
    assert adv[0].tolist() == pytest.approx([2 - 0.5, 2 - 1.0, 2 - 1.5])


def test_the_k3_kl_estimator_is_never_negative_and_both_estimate_the_kl():
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        logp = torch.randn(1000, generator=g) * 5
        ref = torch.randn(1000, generator=g) * 5
        assert (kl_k3(logp, ref) >= 0).all()
    # Sampled from p, the means of k1 and k3 approach KL(p || q).
    p = torch.tensor([0.7, 0.2, 0.1])
    q = torch.tensor([0.4, 0.4, 0.2])
    x = torch.multinomial(p, 200_000, replacement=True, generator=g)
    kl = float((p * (p / q).log()).sum())
    assert float(kl_k1(p[x].log(), q[x].log()).mean()) == pytest.approx(kl, abs=0.01)
    assert float(kl_k3(p[x].log(), q[x].log()).mean()) == pytest.approx(kl, abs=0.01)


def test_ppo_clipped_loss_is_its_closed_form_and_inactive_at_ratio_1():
    old = torch.zeros(1, 4)
    new = torch.log(torch.tensor([[1.0, 1.5, 0.5, 1.1]]))
    adv = torch.tensor([[1.0, 1.0, -1.0, -2.0]])
    m = torch.ones(1, 4)
    loss, ratio, clipped = ppo_policy_loss(new, old, adv, m, clip=0.2)
    want = -(1.0 * 1.0 + 1.2 * 1.0 + 0.8 * -1.0 + 1.1 * -2.0)
    assert float(loss) == pytest.approx(want, rel=1e-6)
    assert clipped[0].tolist() == [False, True, True, False]
    _, ratio1, clipped1 = ppo_policy_loss(old, old, adv, m, clip=0.2)
    assert torch.equal(ratio1, torch.ones_like(ratio1)) and not clipped1.any()


def test_value_loss_takes_the_larger_of_clipped_and_unclipped_errors():
    v, old, ret = torch.tensor([[1.0]]), torch.tensor([[0.0]]), torch.tensor([[2.0]])
    assert float(value_loss(v, old, ret, torch.ones(1, 1), clip=0.2)) == pytest.approx(0.5 * (2 - 0.2) ** 2)


def test_group_baselines():
    r = torch.tensor([[1.0, 2.0, 3.0, 6.0]])
    a = group_advantages(r, "grpo")
    assert float(a.mean()) == pytest.approx(0, abs=1e-6) and float(a.std(unbiased=False)) == pytest.approx(1, abs=1e-4)
    loo = group_advantages(r, "rloo")
    assert loo[0].tolist() == pytest.approx([1 - 11 / 3, 2 - 10 / 3, 3 - 9 / 3, 6 - 6 / 3])


def test_whiten_and_token_logprobs():
    x = torch.tensor([[1.0, 2.0, 100.0], [3.0, 4.0, 100.0]])
    m = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 0.0]])
    w = whiten(x, m)
    assert float(w[m > 0].mean()) == pytest.approx(0, abs=1e-6) and float(w[0, 2]) == 0
    logits = torch.randn(2, 3, 5)
    y = torch.tensor([[0, 1, 2], [3, 4, -100]])
    lp = token_logprobs(logits, y)
    assert float(lp[0, 1]) == pytest.approx(float(torch.log_softmax(logits[0, 1], -1)[1]))


def test_best_of_n_kl():
    assert best_of_n_kl(1) == 0
    assert best_of_n_kl(2) == pytest.approx(math.log(2) - 0.5)
    assert best_of_n_kl(64) == pytest.approx(math.log(64) - 63 / 64)
