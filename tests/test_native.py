"""The one-call decoding step (gptlab/infer/native.py): the same logits and tokens as torch's path."""

from __future__ import annotations

import dataclasses
import os
import platform
import shutil
from pathlib import Path

import pytest
import torch

from gptlab.api import with_dtype
from gptlab.infer import native
from gptlab.infer.generate import generate_steps
from gptlab.infer.sampling import SamplingConfig
from gptlab.model import GPT, book, small
from gptlab.model.config import ModelConfig
from gptlab.model.layers import SlotCache

if native.status() != "on":  # CI has a C compiler; a machine without one keeps torch's path (tested elsewhere)
    pytest.skip(f"the native step is {native.status()}", allow_module_level=True)

V = 512


def models() -> dict[str, ModelConfig]:
    tiny_book = dataclasses.replace(book(V), d_model=64, head_dim=48, d_ff=80, context_length=24)
    return {
        "book: post-LN, ReLU, own output layer with bias": tiny_book,
        "small: pre-LN, GELU, tied, final norm": dataclasses.replace(small(V), d_model=64, d_ff=96, n_layer=2,
                                                                      context_length=24),
        "no biases, 3 layers, 3 heads": dataclasses.replace(small(V), d_model=48, n_head=3, d_ff=40, n_layer=3,
                                                             bias=False, context_length=24),
    }


def make(cfg: ModelConfig, dtype: str, seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    model = GPT(cfg).eval()
    with torch.no_grad():  # larger weights than the initialisation's, so logits span several units
        for p in model.parameters():
            p.mul_(8.0 if p.dim() > 1 else 1.0).add_(0.1 * torch.randn_like(p))
    return with_dtype(model, dtype)


def steps(model: GPT, decode, n: int) -> list[torch.Tensor]:
    """Logits of n one-token steps after a 3-token prompt run by forward()."""
    cache = model.new_cache(1)
    with torch.inference_mode():
        model(torch.tensor([[3, 4, 5]]), cache=cache, last_only=True)
        return [decode(torch.tensor([7 + 5 * i]), torch.tensor([3 + i]), cache).clone() for i in range(n)]


@pytest.mark.parametrize("dtype", ["fp32", "int8"])
@pytest.mark.parametrize("name", list(models()))
def test_logits_match_torchs_decoder(name, dtype):
    model = make(models()[name], dtype)
    fast = native.decoder(model, 1)
    assert fast is not None
    ours, theirs = steps(model, fast, 20), steps(model, model.decoder(), 20)
    scale = max(float(t.abs().max()) for t in theirs)
    assert scale > 2.0
    for a, b in zip(ours, theirs):
        if dtype == "fp32":
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5 * scale)
        else:  # both round the product to bf16: apart from a rare rounding step, the same value
            close = (a - b).abs() <= 1e-6 + 2.0 ** -7 * b.abs()
            assert bool(close.all())
            assert float((a != b).float().mean()) < 0.02


@pytest.mark.parametrize("rows", [1, 3])
@pytest.mark.parametrize("dtype", ["fp32", "int8"])
def test_generation_gives_the_same_tokens(dtype, rows):
    """One row, or several of the same length (`generate -n 3`: a C call per row)."""
    model = make(models()["small: pre-LN, GELU, tied, final norm"], dtype)
    prompts = [[3, 4, 5], [6, 7, 8], [3, 4, 5]][:rows]
    for seed in range(3):
        cfg = SamplingConfig(max_new_tokens=20, seed=seed)
        assert native.decoder(model, rows) is not None
        with_native = [s.tokens_B.tolist() for s in generate_steps(model, prompts, cfg)]
        with native.off():
            assert native.decoder(model, rows) is None
            without = [s.tokens_B.tolist() for s in generate_steps(model, prompts, cfg)]
        assert with_native == without and len({t[0] for t in with_native}) > 3


def test_cases_it_does_not_cover_go_through_torch():
    cfg = models()["book: post-LN, ReLU, own output layer with bias"]
    assert native.decoder(make(cfg, "fp32"), native.MAX_ROWS + 1) is None  # a larger batch
    assert native.decoder(make(cfg, "bf16"), 1) is None  # bf16 weights
    assert native.decoder(GPT(dataclasses.replace(cfg, n_layer=1)).train(), 1) is None  # training
    model = make(cfg, "fp32")
    fast = native.decoder(model, 1)
    caches = [model.new_cache(1), model.new_cache(1)]
    mask = torch.tensor([[False, True, True, True]])  # left padding: torch's path, call by call
    with torch.inference_mode():
        for c in caches:
            model(torch.tensor([[0, 3, 4]]), cache=c, last_only=True, key_mask_BxS=mask[:, :3],
                  pos_BxT=torch.tensor([[0, 0, 1]]))
        torch.testing.assert_close(fast(torch.tensor([9]), torch.tensor([2]), caches[0], mask),
                                   model.decoder()(torch.tensor([9]), torch.tensor([2]), caches[1], mask))
    # A cache longer than the context, filled past it: torch's path (C's scratch holds a context's scores).
    calls, torch_decoder = [], model.decoder
    model.decoder = lambda: (lambda *a, **k: calls.append(1) or torch_decoder()(*a, **k))
    spied = native.decoder(model, 1)
    long_caches = [model.new_cache(1, max_len=cfg.context_length + 4) for _ in range(2)]
    for c in long_caches:
        c.length = cfg.context_length + 1
    torch.testing.assert_close(spied(torch.tensor([9]), torch.tensor([2]), long_caches[0]),
                               torch_decoder()(torch.tensor([9]), torch.tensor([2]), long_caches[1]))
    assert calls == [1]
    del model.decoder
    # A token outside the vocabulary: torch's error, not a read past the end of a table.
    with pytest.raises(IndexError):
        fast(torch.tensor([V + 5]), torch.tensor([4]), model.new_cache(1))


def captured(model: GPT, decode, n: int) -> list[tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]]:
    """(logits, attention per layer, residual streams) of n steps after a 3-token prompt."""
    cache, out = model.new_cache(1), []
    with torch.inference_mode():
        model(torch.tensor([[3, 4, 5]]), cache=cache, last_only=True)
        for i in range(n):
            attn: list[torch.Tensor] = []
            streams: list[torch.Tensor] = []
            logits = decode(torch.tensor([7 + i]), torch.tensor([3 + i]), cache, attn_out=attn, streams_out=streams)
            out.append((logits, attn, streams))
    return out


@pytest.mark.parametrize("name", list(models()))
def test_an_explanations_capture_matches_torchs(name):
    model = make(models()[name], "fp32")
    ours, theirs = captured(model, native.decoder(model, 1), 4), captured(model, model.decoder(), 4)
    for (logits_a, attn_a, streams_a), (logits_b, attn_b, streams_b) in zip(ours, theirs):
        torch.testing.assert_close(logits_a, logits_b, rtol=1e-5, atol=1e-4)
        assert len(attn_a) == model.cfg.n_layer and len(streams_a) == model.cfg.n_layer + 1
        for a, b in zip(attn_a + streams_a, attn_b + streams_b):
            assert a.shape == b.shape
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_changed_weights_are_packed_again_and_hooks_see_every_step():
    model = make(models()["small: pre-LN, GELU, tied, final norm"], "fp32")
    before = steps(model, native.decoder(model, 1), 2)
    with torch.no_grad():
        model.blocks[0].mlp.up.weight.mul_(-1.0)  # in place: same tensor, new version
    fast = native.decoder(model, 1)
    after = steps(model, fast, 2)
    torch.testing.assert_close(after[1], steps(model, model.decoder(), 2)[1], rtol=1e-5, atol=1e-4)
    assert not torch.allclose(before[1], after[1])
    seen: list[int] = []
    model.tok_emb.register_forward_pre_hook(lambda module, args: seen.append(int(args[0].flatten()[-1])))
    steps(model, fast, 3)
    assert seen == [5, 7, 12, 17]  # the prompt's forward(), then each step


def test_a_fused_adamw_step_is_seen():
    """torch's fused CPU AdamW writes the weights without bumping their version counters: the pack
    must follow anyway (an alignment run samples between optimizer steps)."""
    model = make(models()["small: pre-LN, GELU, tied, final norm"], "fp32")
    steps(model, native.decoder(model, 1), 1)  # packed
    try:
        opt = torch.optim.AdamW(model.parameters(), lr=1e-2, fused=True)
    except (RuntimeError, TypeError):
        pytest.skip("this torch has no fused CPU AdamW")
    model.train()
    model(torch.tensor([[3, 4, 5, 6]]), torch.tensor([[4, 5, 6, 7]])).loss.backward()
    opt.step()
    model.eval()
    ours, theirs = steps(model, native.decoder(model, 1), 3), steps(model, model.decoder(), 3)
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-4)


def test_a_model_made_under_inference_mode():
    with torch.inference_mode():  # its int8 buffers are inference tensors, without a version counter
        model = make(models()["book: post-LN, ReLU, own output layer with bias"], "int8")
        assert native.decoder(model, 1) is not None
    cfg = SamplingConfig(max_new_tokens=8, seed=0)
    tokens = [s.tokens_B.item() for s in generate_steps(model, [[3, 4]], cfg)]
    with native.off():
        assert tokens == [s.tokens_B.item() for s in generate_steps(model, [[3, 4]], cfg)]


def test_without_a_compiler_generation_still_works(monkeypatch, tmp_path):
    model = make(models()["book: post-LN, ReLU, own output layer with bias"], "fp32")
    cfg = SamplingConfig(max_new_tokens=10, seed=1)
    expected = [s.tokens_B.item() for s in generate_steps(model, [[3, 4]], cfg)]
    monkeypatch.setenv("CC", "/bin/false")
    monkeypatch.setenv("GPTLAB_CACHE", str(tmp_path))
    native._library.cache_clear()
    try:
        assert native.status().startswith("off (/bin/false failed")
        assert native.decoder(model, 1) is None
        assert [s.tokens_B.item() for s in generate_steps(model, [[3, 4]], cfg)] == expected
        assert list(tmp_path.rglob("*.so")) == []  # nothing half-written left behind
    finally:
        native._library.cache_clear()


def _has_avx2() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return False
    return "avx2" in flags and "fma" in flags


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="the variants are x86's")
@pytest.mark.parametrize("arch", [["-mavx2", "-mfma", "-fopenmp"], ["-fopenmp-simd"]], ids=["avx2", "plain C"])
def test_the_kernels_other_cpus_get(arch, tmp_path):
    """The AVX2 and plain-C branches of decode.c (this machine builds its own best one)."""
    if "-mavx2" in arch and not _has_avx2():
        pytest.skip("this CPU cannot run AVX2 code")
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    path = tmp_path / "decode.so"
    assert native._build(cc, path, (arch,)) == ""
    lib, why = native._open(path)
    assert lib is not None, why
    for dtype in ("fp32", "int8"):
        model = make(models()["book: post-LN, ReLU, own output layer with bias"], dtype)
        ours, theirs = steps(model, native.decoder(model, 1, lib=lib), 12), steps(model, model.decoder(), 12)
        for a, b in zip(ours, theirs):
            torch.testing.assert_close(a, b, rtol=2.0 ** -7, atol=1e-4)


def test_slot_rows_match_the_batched_step_and_leave_the_others():
    """A serving engine's step (SlotCache): the live rows' logits as torch's batched step gives them,
    keys written at each row's own position, the other rows untouched."""
    model = make(models()["small: pre-LN, GELU, tied, final norm"], "fp32")
    cfg, B = model.cfg, 4
    step = native.slot_decoder(model)
    assert step is not None
    caches = [SlotCache(cfg.n_layer, B, cfg.n_head, cfg.context_length, cfg.head_size) for _ in range(2)]
    seqs = [[3, 4, 5], [9, 8, 7, 6, 5, 4], [11]]
    with torch.inference_mode():
        for b, seq in enumerate(seqs):
            c = model.new_cache(1, len(seq))
            model(torch.tensor([seq]), cache=c)
            for cache in caches:
                cache.fill(b, c)
        ids = [20, 21, 22, 0]
        mask = torch.arange(cfg.context_length)[None] <= caches[1].pos_B[:, None]
        theirs = model.decode(torch.tensor(ids), caches[1].pos_B.clone(), caches[1], mask)
        ours = torch.full((B, V), 7.0)
        step(caches[0], [0, 2, 1], [ids[0], ids[2], ids[1]], [3, 1, 6], ours)
    torch.testing.assert_close(ours[:3], theirs[:3], rtol=1e-5, atol=1e-4)
    assert bool((ours[3] == 7.0).all())  # a free slot: not computed
    torch.testing.assert_close(caches[0].k_LxBxHxSxD[:, :3], caches[1].k_LxBxHxSxD[:, :3], rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="positions"):
        step(caches[0], [0], [20], [cfg.context_length], ours)


def test_a_prompt_fed_in_one_call_has_the_bits_of_one_id_per_call():
    model = make(models()["book: post-LN, ReLU, own output layer with bias"], "fp32")
    cfg, step = model.cfg, native.slot_decoder(model)
    caches = [SlotCache(cfg.n_layer, 2, cfg.n_head, cfg.context_length, cfg.head_size) for _ in range(2)]
    at_once, one_by_one = torch.zeros(2, V), torch.zeros(2, V)
    prompt = [3, 14, 15, 9, 2]
    step(caches[0], [1] * len(prompt), prompt, list(range(len(prompt))), at_once)
    for pos, t in enumerate(prompt):
        step(caches[1], [1], [t], [pos], one_by_one)
    assert torch.equal(at_once, one_by_one) and bool(at_once[1].abs().sum() > 0)
    assert torch.equal(caches[0].k_LxBxHxSxD, caches[1].k_LxBxHxSxD)
