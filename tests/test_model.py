"""Invariants of the model package: causality, parameter count, cache == recompute, it can learn."""

import pytest
import torch

from gptlab.model import GPT, IGNORE_INDEX, ModelConfig, book, small, tiny


def test_book_has_the_notebooks_parameter_count():
    assert GPT(book()).num_params() == 5_809_168


def test_small_is_gpt2_shaped():
    cfg = small()
    assert (cfg.norm, cfg.activation, cfg.tie_embeddings, cfg.final_norm) == ("pre", "gelu", True, True)
    m = GPT(cfg)
    assert m.lm_head.weight is m.tok_emb.weight and m.lm_head.bias is None


@pytest.mark.parametrize("make", [book, tiny])
def test_causality_by_gradient(make):
    """The output at position t must not depend on inputs after t."""
    cfg = make(vocab_size=50)
    cfg.dropout = 0.0
    m = GPT(cfg)
    T = 12
    idx = torch.randint(0, 50, (2, T))
    emb = m.tok_emb(idx).detach().requires_grad_(True)
    # Feed embeddings directly so we can differentiate w.r.t. each input position.
    x = emb + m.pos_emb(torch.arange(T))[None]
    for blk in m.blocks:
        x, _, _ = blk(x)
    t = 5
    m.lm_head(m.ln_f(x))[:, t].sum().backward()
    g = emb.grad.abs().sum(dim=(0, 2))
    assert torch.all(g[t + 1:] == 0), g
    assert torch.all(g[: t + 1] > 0)


def test_kv_cache_matches_full_recompute():
    torch.manual_seed(0)
    m = GPT(tiny(vocab_size=40)).eval()
    idx = torch.randint(0, 40, (3, 20))
    full = m(idx).logits
    cache = m.new_cache(3)
    parts = [m(idx[:, :7], cache=cache).logits]
    for t in range(7, 20):
        parts.append(m(idx[:, t:t + 1], cache=cache).logits)
    assert torch.allclose(torch.cat(parts, 1), full, atol=1e-5)


def _plain(cfg):
    cfg.bias, cfg.final_norm, cfg.tie_embeddings = False, False, False
    return cfg


@pytest.mark.parametrize("make,int8,rows", [(book, False, 2), (tiny, False, 2), (tiny, False, 1), (book, True, 1),
                                            (lambda vocab_size: _plain(tiny(vocab_size)), False, 2)])
def test_decode_step_equals_forward_with_cache_and_full_recompute(make, int8, rows):
    """GPT.decoder() (the lean one-token path, its tensors bound once) == forward with the cache ==
    no cache, on a left-padded batch (key mask + positions) and one row (the fused attention
    call), for post-LN/ReLU (book), pre-LN/GELU (tiny), no biases and no final norm, and the int8
    output layer (its own function)."""
    from gptlab.model.layout import column_major_linears
    from gptlab.model.quant import quantize_output_layer
    torch.manual_seed(0)
    cfg = make(vocab_size=40)
    cfg.context_length = 24
    m = GPT(cfg).eval()
    if int8:
        column_major_linears(quantize_output_layer(m))  # as gptlab.load(dtype="int8") holds it
    step = m.decoder()
    idx = torch.randint(3, 40, (2, 16))
    idx[0, :3] = 0                                   # row 0 is left-padded by 3
    key_mask = torch.ones(2, 16, dtype=torch.bool)
    key_mask[0, :3] = False
    pos = torch.arange(16).repeat(2, 1)
    pos[0] = (pos[0] - 3).clamp(min=0)
    full = m(idx, pos_BxT=pos, key_mask_BxS=key_mask).logits
    fwd_cache, dec_cache = m.new_cache(2), m.new_cache(2)
    m(idx[:, :6], pos_BxT=pos[:, :6], key_mask_BxS=key_mask[:, :6], cache=fwd_cache)
    m(idx[:, :6], pos_BxT=pos[:, :6], key_mask_BxS=key_mask[:, :6], cache=dec_cache)
    if rows == 1:  # the unpadded row alone
        idx, pos, key_mask, full = idx[1:], pos[1:], None, full[1:]
        fwd_cache, dec_cache = m.new_cache(1), m.new_cache(1)
        m(idx[:, :6], cache=fwd_cache)
        m(idx[:, :6], cache=dec_cache)
    for t in range(6, 16):
        mask = None if key_mask is None else key_mask[:, :t + 1]
        a = m(idx[:, t:t + 1], pos_BxT=pos[:, t:t + 1], key_mask_BxS=mask, cache=fwd_cache).logits[:, 0]
        b = (m.decode if t == 6 else step)(idx[:, t], pos[:, t], dec_cache, mask)
        torch.testing.assert_close(b, a, atol=1e-5, rtol=0)
        torch.testing.assert_close(b, full[:, t], atol=1e-5, rtol=0)
    assert dec_cache.length == 16


def test_attention_weights_are_causal_rows_summing_to_one():
    m = GPT(tiny(vocab_size=40)).eval()
    out = m(torch.randint(0, 40, (2, 9)), return_attn=True)
    assert len(out.attn) == m.cfg.n_layer
    a = out.attn[0]  # (B, H, T, S)
    assert torch.allclose(a.sum(-1), torch.ones(a.shape[:-1]), atol=1e-6)
    assert torch.all(torch.triu(a, diagonal=1) == 0)


def test_return_attn_path_matches_sdpa_path():
    torch.manual_seed(1)
    m = GPT(tiny(vocab_size=40)).eval()
    idx = torch.randint(0, 40, (2, 11))
    assert torch.allclose(m(idx).logits, m(idx, return_attn=True).logits, atol=1e-5)


def test_loss_skips_padding_and_matches_full_logits():
    torch.manual_seed(2)
    m = GPT(tiny(vocab_size=40)).eval()
    idx = torch.randint(0, 40, (2, 10))
    y = torch.randint(0, 40, (2, 10))
    y[1, 6:] = IGNORE_INDEX
    out = m(idx, y, return_logits=True)
    keep = y != IGNORE_INDEX
    ref = torch.nn.functional.cross_entropy(out.logits[keep], y[keep])
    assert out.n_tokens == int(keep.sum())
    assert torch.allclose(out.loss, ref, atol=1e-6)


def test_overfits_one_batch():
    torch.manual_seed(0)
    cfg = tiny(vocab_size=30)
    m = GPT(cfg)
    idx = torch.randint(0, 30, (4, 16))
    opt = torch.optim.AdamW(m.parameters(), lr=3e-3)
    first = None
    for _ in range(150):
        loss = m(idx[:, :-1], idx[:, 1:]).loss
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert first > 3.0 and loss.item() < 0.1


@pytest.mark.parametrize("bad, msg", [
    (dict(d_model=30, n_head=4), "not divisible"),
    (dict(context_length=1), "context_length"),
    (dict(norm="middle"), "norm"),
    (dict(activation="tanh"), "activation"),
])
def test_impossible_configs_are_refused(bad, msg):
    with pytest.raises(ValueError, match=msg):
        GPT(ModelConfig(**{**tiny().to_dict(), **bad}))


def test_ragged_left_padding_with_positions_matches_unpadded():
    torch.manual_seed(3)
    m = GPT(tiny(vocab_size=40)).eval()
    a = torch.randint(3, 40, (1, 8))
    pad = torch.zeros(1, 3, dtype=torch.long)
    x = torch.cat([pad, a], 1)
    key_mask = torch.cat([torch.zeros(1, 3, dtype=torch.bool), torch.ones(1, 8, dtype=torch.bool)], 1)
    pos = torch.cat([torch.zeros(1, 3, dtype=torch.long), torch.arange(8)[None]], 1)
    out = m(x, pos_BxT=pos, key_mask_BxS=key_mask).logits[:, 3:]
    assert torch.allclose(out, m(a).logits, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_dropout_drops_a_fraction_p_scales_the_rest_and_its_gradient_is_the_mask(dtype):
    from gptlab.model.layers import Dropout, dropout
    torch.manual_seed(0)
    x = torch.ones(200, 500, dtype=dtype, requires_grad=True)
    y = dropout(x, 0.2, True)
    dropped = float((y == 0).float().mean())
    assert abs(dropped - 0.2) < 0.005  # 100k draws: sd 0.0013
    assert torch.allclose(y[y != 0].float(), torch.tensor(1.25))
    (y.float() * 3).sum().backward()
    assert torch.equal(x.grad != 0, y != 0) and torch.allclose(x.grad[y != 0].float(), torch.tensor(3.75))
    m = Dropout(0.2)
    assert torch.equal(m.eval()(x), x) and dropout(x, 0.0, True) is x
    assert y.dtype == dtype
