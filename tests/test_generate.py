"""Generation: KV cache == full recompute (single, ragged batch, past the context), stops, streaming,
warnings, determinism. Tiny random models (tests/conftest.py)."""

from __future__ import annotations

import warnings

import pytest
import torch
from conftest import LINES, tiny_model, tiny_model_dir  # noqa: E402

from gptlab.checkpoint import save_model
from gptlab.infer.generate import GenerationWarning, TextTracker, generate_steps
from gptlab.infer.sampling import SamplingConfig, apply_repetition_penalty, process_logits


def run_engine(model, prompts, cfg, **kw):
    """(tokens per row, [(row logits per step)]) from the engine."""
    tokens = [[] for _ in prompts]
    logits = [[] for _ in prompts]
    for step in generate_steps(model, prompts, cfg, **kw):
        for b, t in enumerate(step.tokens_B.tolist()):
            if step.active[b]:
                tokens[b].append(t)
                logits[b].append(step.logits_BxV[b].clone())
    return tokens, logits


@pytest.fixture(scope="module")
def lm():
    return tiny_model()


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_kv_cache_equals_full_recompute(lm, temperature):
    prompt = lm.encode("wine review : germany : mosel")
    cfg = SamplingConfig(temperature=temperature, max_new_tokens=12, seed=3)
    cached = run_engine(lm.model, [prompt], cfg)
    full = run_engine(lm.model, [prompt], cfg, use_cache=False)
    assert cached[0] == full[0] and len(cached[0][0]) == 12
    for a, b in zip(cached[1][0], full[1][0]):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


@pytest.mark.parametrize("prompts", [["wine review : germany"], ["wine review", "wine review : germany : mosel"]])
def test_captured_attention_and_streams_of_the_cache_equal_recompute(lm, prompts):
    """capture=True takes each step's attention row and residual streams from the one-token decode
    path after the prompt (explanations ride the fast path); they must be what a full forward pass
    over the window shows, on a left-padded batch too."""
    ids = [lm.encode(p) for p in prompts]
    cfg = SamplingConfig(temperature=1.0, max_new_tokens=6, seed=2)
    kw = dict(pad_id=lm.tokenizer.pad_id, capture=True)
    cached = list(generate_steps(lm.model, ids, cfg, **kw))
    full = list(generate_steps(lm.model, ids, cfg, use_cache=False, **kw))
    assert [s.tokens_B.tolist() for s in cached] == [s.tokens_B.tolist() for s in full]
    for a, b in zip(cached, full):
        assert len(a.attn) == lm.model.cfg.n_layer and len(a.streams) == lm.model.cfg.n_layer + 1
        for x, y in zip(a.streams, b.streams):
            torch.testing.assert_close(x, y, atol=1e-5, rtol=0)
        for x, y in zip(a.attn, b.attn):  # (B, H, S) each
            torch.testing.assert_close(x, y, atol=1e-5, rtol=0)


def test_bf16_inference_stays_close_to_fp32_and_cache_still_equals_recompute(lm, tmp_path):
    """`load(..., dtype="bf16")` halves the bytes read per token; its logits carry bf16 rounding only."""
    from gptlab.api import load
    path = tiny_model_dir(tmp_path / "m")
    fp32, bf16 = load(path, device="cpu"), load(path, device="cpu", dtype="bf16")
    assert next(bf16.model.parameters()).dtype == torch.bfloat16
    prompt = fp32.encode("wine review : germany : mosel")
    cfg = SamplingConfig(temperature=0.0, max_new_tokens=8)
    exact, lowp = run_engine(fp32.model, [prompt], cfg), run_engine(bf16.model, [prompt], cfg)
    assert lowp[1][0][0].dtype == torch.float32  # logits reach the sampler as fp32
    torch.testing.assert_close(lowp[1][0][0], exact[1][0][0], atol=0.05, rtol=0)
    full = run_engine(bf16.model, [prompt], cfg, use_cache=False)
    assert full[0] == lowp[0]
    assert bf16.generate("wine review", max_new_tokens=5, seed=0)[0].token_ids


def test_int8_output_layer_keeps_the_distribution_and_cache_still_equals_recompute(tmp_path):
    """`load(..., dtype="int8")`: fp32 model, int8 output layer; next-token distributions stay close."""
    from gptlab.api import load
    from gptlab.model.quant import Int8Linear
    lm = tiny_model()
    with torch.no_grad():
        lm.model.lm_head.weight.mul_(100)  # logits of several units, so the int8 rounding shows
    save_model(tmp_path / "m", lm.model, lm.tokenizer, lm.config)
    fp32, int8 = load(tmp_path / "m", device="cpu"), load(tmp_path / "m", device="cpu", dtype="int8")
    assert isinstance(int8.model.lm_head, Int8Linear) and int8.model.lm_head.weight_int8.dtype == torch.int8
    assert int8.model.tok_emb.weight.dtype == torch.float32  # the tied embedding keeps its fp32 copy
    prompt = fp32.encode("wine review : germany : mosel")
    cfg = SamplingConfig(temperature=0.0, max_new_tokens=8)
    exact, quant = run_engine(fp32.model, [prompt], cfg), run_engine(int8.model, [prompt], cfg)
    a, b = exact[1][0][0], quant[1][0][0]
    assert b.dtype == torch.float32 and a.abs().max() > 3
    assert (a - b).abs().max() <= 0.03 * a.abs().max()
    assert 0.5 * (a.softmax(-1) - b.softmax(-1)).abs().sum() < 0.02  # total variation
    assert run_engine(int8.model, [prompt], cfg, use_cache=False)[0] == quant[0]


def test_loaded_gpt_stores_linear_weights_transposed_and_samples_the_same(tmp_path):
    """`load` on a CPU keeps each linear weight's values and keys but stores it column-major (the
    fast layout for one row, model/layout.py); a tied output layer keeps the embedding's layout.
    The same seed samples the same tokens, logits equal to rounding, and saving writes it back."""
    from gptlab.api import with_dtype
    from gptlab.checkpoint import load_checkpoint
    for tie in (False, True):
        lm = tiny_model(seed=1, tie_embeddings=tie)
        save_model(tmp_path / f"m{tie}", lm.model, lm.tokenizer, lm.config)
        plain = load_checkpoint(tmp_path / f"m{tie}", "cpu")[0].eval()
        fast = with_dtype(load_checkpoint(tmp_path / f"m{tie}", "cpu")[0].eval(), None)
        qkv = fast.blocks[0].attn.qkv.weight
        assert qkv.shape == plain.blocks[0].attn.qkv.weight.shape and qkv.stride() == (1, qkv.shape[0])
        assert fast.lm_head.weight.is_contiguous() == tie  # tied: the embedding's rows stay rows
        for k, v in plain.state_dict().items():
            assert torch.equal(fast.state_dict()[k], v), k
        prompt = lm.encode("wine review : germany : mosel")
        cfg = SamplingConfig(temperature=1.0, max_new_tokens=12, seed=5)
        a, b = run_engine(plain, [prompt], cfg), run_engine(fast, [prompt], cfg)
        assert a[0] == b[0]
        for x, y in zip(a[1][0], b[1][0]):
            torch.testing.assert_close(x, y, atol=1e-5, rtol=0)
        save_model(tmp_path / f"again{tie}", fast, lm.tokenizer, lm.config)
        again = load_checkpoint(tmp_path / f"again{tie}", "cpu")[0]
        assert all(torch.equal(again.state_dict()[k], v) for k, v in plain.state_dict().items())


def test_int8_linear_matches_linear_and_refuses_widths_the_kernel_gets_wrong():
    from gptlab.model.quant import Int8Linear
    torch.manual_seed(0)
    for n_in, n_out in ((32, 7), (256, 1000), (48, 3)):
        lin = torch.nn.Linear(n_in, n_out)
        x = torch.randn(2, 5, n_in)
        ref, got = lin(x), Int8Linear(lin)(x)
        assert got.shape == ref.shape and got.dtype == torch.float32
        assert (got - ref).abs().max() <= 0.03 * ref.abs().max()
    with pytest.raises(ValueError, match="divisible by 16"):
        Int8Linear(torch.nn.Linear(24, 8))  # torch's kernel returns garbage for this width


def test_ragged_batch_equals_each_prompt_alone(lm):
    prompts = [lm.encode(p) for p in ["wine review", "wine review : us : california : pinot noir", "wine review : italy :"]]
    cfg = SamplingConfig(temperature=0.0, max_new_tokens=10)
    batched = run_engine(lm.model, prompts, cfg)
    for b, p in enumerate(prompts):
        alone = run_engine(lm.model, [p], cfg, use_cache=False)
        assert batched[0][b] == alone[0][0]
        for x, y in zip(batched[1][b], alone[1][0]):
            torch.testing.assert_close(x, y, atol=1e-5, rtol=0)


def test_ragged_batch_sampled_matches_recompute(lm):
    prompts = [lm.encode(p) for p in ["wine review", "wine review : us : california : pinot noir :"]]
    cfg = SamplingConfig(temperature=1.0, top_k=20, max_new_tokens=8, seed=11)
    cached, full = run_engine(lm.model, prompts, cfg), run_engine(lm.model, prompts, cfg, use_cache=False)
    assert cached[0] == full[0]


def test_window_slides_past_the_context(lm):
    C = lm.model.cfg.context_length
    prompt = lm.encode(LINES[0])[:C - 3]
    cfg = SamplingConfig(temperature=0.0, max_new_tokens=10)
    cached = run_engine(lm.model, [prompt], cfg)
    full = run_engine(lm.model, [prompt], cfg, use_cache=False)
    assert cached[0] == full[0] and len(cached[0][0]) == 10
    # After the slide, each step sees exactly the last C tokens.
    seq = prompt + cached[0][0]
    with torch.inference_mode():
        expect = lm.model(torch.tensor([seq[-1 - C:-1]])).logits[0, -1]
    torch.testing.assert_close(cached[1][0][-1], expect, atol=1e-5, rtol=0)


def test_prompt_longer_than_context_warns_once(lm):
    C = lm.model.cfg.context_length
    long_prompt = " ".join(LINES)  # > 32 tokens
    assert len(lm.encode(long_prompt)) > C
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = lm.generate(long_prompt, max_new_tokens=5, temperature=0)
    cut = [w for w in caught if issubclass(w.category, GenerationWarning) and "longer than" in str(w.message)]
    assert len(cut) == 1 and f"last {C}" in str(cut[0].message)
    assert len(out[0].token_ids) == 5


def test_unknown_words_are_listed_in_one_warning(lm):
    with pytest.warns(GenerationWarning, match="zinfandelx.*qwerty|qwerty.*zinfandelx") as rec:
        lm.generate("wine review : zinfandelx : qwerty", max_new_tokens=2, seed=0)
    assert len([w for w in rec if "vocabulary" in str(w.message)]) == 1


def test_stops_at_end_of_text(lm):
    prompt = lm.encode("wine review : us")
    cfg = SamplingConfig(temperature=0.0, max_new_tokens=6)
    first = run_engine(lm.model, [prompt], cfg)[0][0][0]
    steps = list(generate_steps(lm.model, [prompt], cfg, eot_id=first))
    assert len(steps) == 1 and steps[0].finish == ["stop"]


def test_stop_strings_cut_the_text_and_stream_agrees(lm):
    full = lm.generate("wine review : us", max_new_tokens=12, temperature=0)[0]
    words = full.text.split()
    stop = words[3]
    cut = lm.generate("wine review : us", max_new_tokens=12, temperature=0, stop=[stop])[0]
    assert cut.finish_reason == "stop" and stop not in cut.text
    assert full.text.startswith(cut.text) and len(cut.token_ids) <= len(full.token_ids)
    assert "".join(lm.stream("wine review : us", max_new_tokens=12, temperature=0, stop=[stop])) == cut.text


def test_stream_pieces_add_up_to_the_completion(lm):
    kw = dict(max_new_tokens=15, temperature=1.0, seed=5)
    pieces = list(lm.stream("wine review : france", **kw))
    assert len(pieces) > 1 and "".join(pieces) == lm.generate("wine review : france", **kw)[0].text


def test_text_tracker_holds_back_a_possible_stop_string(lm):
    tr = TextTracker(lm.tokenizer, lm.encode("wine review"), stop=["cherry and cola"])
    for w in ["ripe", "cherry", "and"]:
        assert not tr.push(lm.tokenizer.token_to_id(w))
    assert tr.take() == " ripe "  # "cherry and" may be the start of the stop string
    assert tr.push(lm.tokenizer.token_to_id("cola"))
    assert tr.text == " ripe " and tr.take(final=True) == ""


def test_completions_in_order_with_reasons_and_determinism(lm):
    prompts = ["wine review : us", "wine review : italy"]
    a = lm.generate(prompts, n=2, max_new_tokens=6, seed=7)
    assert [c.prompt for c in a] == [prompts[0]] * 2 + [prompts[1]] * 2
    assert all(c.finish_reason in ("stop", "length") and len(c.token_ids) <= 6 for c in a)
    assert all(c.finish_reason == "length" for c in a if c.token_ids[-1] != lm.tokenizer.eot_id)
    assert a == lm.generate(prompts, n=2, max_new_tokens=6, seed=7)
    assert [c.text for c in a] != [c.text for c in lm.generate(prompts, n=2, max_new_tokens=6, seed=8)]
    assert lm.generate("wine review", max_new_tokens=0) == [lm.generate("wine review", max_new_tokens=0)[0]]
    assert lm.generate("wine review", max_new_tokens=0)[0].text == ""


def test_empty_prompt_starts_from_end_of_text(lm):
    out = lm.generate("", max_new_tokens=4, seed=0)[0]
    assert len(out.token_ids) >= 1 and out.prompt == ""


def test_repetition_penalty_sees_prompt_and_generated_tokens(lm):
    prompt = lm.encode("wine review : riesling riesling")
    cfg = SamplingConfig(temperature=1.0, repetition_penalty=3.0, max_new_tokens=5, seed=1)
    seen = set(prompt)
    for step in generate_steps(lm.model, [prompt], cfg):
        mask_1xV = torch.zeros(1, step.logits_BxV.shape[-1], dtype=torch.bool)
        mask_1xV[0, sorted(seen)] = True
        expect = process_logits(apply_repetition_penalty(step.logits_BxV, mask_1xV, 3.0),
                                SamplingConfig(temperature=1.0)).softmax(-1)
        torch.testing.assert_close(step.probs_BxV, expect)
        seen.add(int(step.tokens_B[0]))
