"""The fused output layer + cross-entropy equals the plain expression, loss and gradients."""

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from gptlab.model import IGNORE_INDEX, linear_ce, token_nll, token_nlls


def reference(h, head, t, w=None):
    nll = F.cross_entropy(head(h).float(), t, reduction="none", ignore_index=IGNORE_INDEX)
    return (nll if w is None else nll * w).sum()


def grads_of(loss, tensors):
    return torch.autograd.grad(loss * 0.37, tensors)  # a scale, as the trainer's 1/token-count is


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("ignore", [False, True])
@pytest.mark.parametrize("whole", [True, False])  # False: weight gradient per chunk, as on a GPU
@pytest.mark.parametrize("sub_rows", [32, 5])  # 5: each chunk of 16 rows in passes of 5, 5, 5, 1
@pytest.mark.parametrize("weighted", [False, True])  # each row's loss counted w times (--label-weight)
def test_fused_loss_and_gradients_equal_plain_cross_entropy(bias, ignore, whole, sub_rows, weighted, monkeypatch):
    if not whole:
        monkeypatch.setattr(linear_ce, "_MAX_WORKSPACE", 0)
    monkeypatch.setattr(linear_ce, "_SUB_ROWS", sub_rows)
    torch.manual_seed(0)
    head = nn.Linear(24, 97, bias=bias)
    h = torch.randn(70, 24, requires_grad=True)
    t = torch.randint(0, 97, (70,))
    if ignore:
        t[::5] = IGNORE_INDEX
    w = torch.rand(70) * 3 if weighted else None
    params = [h, head.weight] + ([head.bias] if bias else [])
    ref = reference(h, head, t, w)
    # With ignore_index the rows stay in and are masked (the GPU path); without, all rows count.
    fused, plain = token_nlls(h, head, t, chunk=16, ignore_index=IGNORE_INDEX if ignore else None, weights_N=w)
    assert torch.allclose(fused, ref, rtol=1e-5)
    assert torch.allclose(plain, reference(h, head, t, None), rtol=1e-5) and not plain.requires_grad  # each row once
    for a, b in zip(grads_of(fused, params), grads_of(ref, params)):
        assert torch.allclose(a, b, atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize("sub_rows", [32, 5])
def test_bf16_autocast_matches_plain_within_bf16_rounding(sub_rows, monkeypatch):
    monkeypatch.setattr(linear_ce, "_SUB_ROWS", sub_rows)
    torch.manual_seed(1)
    head = nn.Linear(32, 200)
    h = torch.randn(50, 32, requires_grad=True)
    t = torch.randint(0, 200, (50,))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ref = reference(h, head, t)
        fused = token_nll(h, head, t, chunk=16)
    assert fused.dtype == torch.float32
    assert torch.allclose(fused, ref, rtol=1e-4)
    for a, b in zip(grads_of(fused, [h, head.weight, head.bias]), grads_of(ref, [h, head.weight, head.bias])):
        assert (a - b).abs().max() <= 1e-2 * b.abs().max()


def test_no_grad_gives_the_loss_alone():
    torch.manual_seed(2)
    head = nn.Linear(8, 30)
    h, t = torch.randn(20, 8), torch.randint(0, 30, (20,))
    with torch.no_grad():
        assert torch.allclose(token_nll(h, head, t), reference(h, head, t), rtol=1e-5)
