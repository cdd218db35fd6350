"""Sampling invariants on hand-made logits: greedy = argmax, the filters keep what they promise,
seeded draws repeat, validation rejects impossible settings, the slide's temperature numbers."""

from __future__ import annotations

import math
from dataclasses import fields

import pytest
import torch

from gptlab.errors import UserError
from gptlab.infer.sampling import (
    FILTERS,
    SamplingConfig,
    apply_repetition_penalty,
    draw,
    make_generator,
    min_p_filter,
    process_logits,
    round_column,
    sample,
    temperature_table,
    top_k_filter,
    top_p_filter,
)

PROBS = [0.5, 0.3, 0.15, 0.05]


def logits_of(probs):
    return torch.tensor([probs]).log()


def kept(logits_1xV):
    return torch.isfinite(logits_1xV[0]).nonzero().flatten().tolist()


def test_every_field_has_help_and_filters_name_fields():
    names = {f.name for f in fields(SamplingConfig)}
    assert all(f.metadata.get("help") for f in fields(SamplingConfig))
    assert {name for name, _, _ in FILTERS} <= names


def test_greedy_and_top_k_1_are_argmax():
    g = make_generator(0)
    logits = torch.randn(64, 300, generator=g)
    for cfg in (SamplingConfig(temperature=0.0), SamplingConfig(temperature=1.3, top_k=1)):
        tokens, probs = sample(logits, cfg, g)
        assert torch.equal(tokens, logits.argmax(-1))
        torch.testing.assert_close(probs.max(-1).values, torch.ones(64))


def test_top_k_keeps_k():
    assert kept(top_k_filter(logits_of(PROBS), 2)) == [0, 1]
    assert kept(top_k_filter(logits_of(PROBS), 10)) == [0, 1, 2, 3]


@pytest.mark.parametrize("p, expect", [(0.4, [0]), (0.75, [0, 1]), (0.85, [0, 1, 2]), (0.97, [0, 1, 2, 3]), (1.0, [0, 1, 2, 3])])
def test_top_p_keeps_the_smallest_set_reaching_p(p, expect):
    assert kept(top_p_filter(logits_of(PROBS), p)) == expect


def test_top_p_matches_a_full_sort_even_past_the_fast_path():
    g = make_generator(1)
    logits = torch.randn(8, 2000, generator=g) * torch.tensor([[0.1], [3.0], [0.5], [1], [2], [0.05], [5], [1]])
    for p in (0.1, 0.5, 0.9, 0.99):
        probs = logits.softmax(-1)
        sorted_p, idx = probs.sort(-1, descending=True)
        n_keep = ((sorted_p.cumsum(-1) - sorted_p) < p).sum(-1)  # the tokens ranked before haven't reached p
        got = torch.isfinite(top_p_filter(logits, p)).sum(-1)
        assert torch.equal(got, n_keep), p


def test_min_p_drops_tokens_below_a_fraction_of_the_top():
    assert kept(min_p_filter(logits_of(PROBS), 0.2)) == [0, 1, 2]  # floor 0.1
    assert kept(min_p_filter(logits_of(PROBS), 0.7)) == [0]        # floor 0.35


def test_repetition_penalty_ctrl_rule():
    logits = torch.tensor([[2.0, -1.0, 0.5, 3.0]])
    seen = torch.tensor([[True, True, False, False]])
    torch.testing.assert_close(apply_repetition_penalty(logits, seen, 2.0), torch.tensor([[1.0, -2.0, 0.5, 3.0]]))
    assert torch.equal(apply_repetition_penalty(logits, seen, 1.0), logits)


def test_temperature_scales_logits():
    logits = torch.tensor([[4.1, 3.9, 2.7]])
    torch.testing.assert_close(process_logits(logits, SamplingConfig(temperature=0.5)), logits / 0.5)


def test_seeded_draws_repeat_and_follow_the_distribution():
    probs = torch.tensor([PROBS])
    a = [int(draw(probs, make_generator(42))) for _ in range(3)]
    assert len(set(a)) == 1
    g1, g2 = make_generator(3), make_generator(3)
    many = probs.expand(20000, 4)
    x, y = draw(many, g1), draw(many, g2)
    assert torch.equal(x, y)
    freq = torch.bincount(x, minlength=4).float() / len(x)
    torch.testing.assert_close(freq, torch.tensor(PROBS), atol=0.015, rtol=0)
    assert not torch.equal(x, draw(many, make_generator(4)))


def test_draw_never_picks_a_filtered_token():
    g = make_generator(0)
    logits = torch.randn(256, 50, generator=g)
    cfg = SamplingConfig(top_k=3)
    tokens, _ = sample(logits, cfg, g)
    top3 = logits.topk(3, dim=-1).indices
    assert (top3 == tokens[:, None]).any(-1).all()


@pytest.mark.parametrize("bad", [
    dict(temperature=-0.1), dict(top_p=0.0), dict(top_p=1.5), dict(top_k=-1), dict(min_p=1.0),
    dict(min_p=-0.1), dict(repetition_penalty=0.0), dict(max_new_tokens=-1), dict(temperature=float("nan")),
])
def test_validation_rejects_impossible_settings(bad):
    with pytest.raises(UserError) as e:
        SamplingConfig(**bad).validate()
    assert "\n" not in str(e.value)


def test_slide_temperature_example():
    table = temperature_table([4.1, 3.9, 2.7], [1.0, 0.5, 1.5], label=["pfalz", "mosel", "rhein"].__getitem__)
    at_1 = [row[0] for row in table.probs]
    # Exact softmax values, and the slide's rounding (the column adds up to 1.000).
    assert [round(p, 4) for p in at_1] == [0.4842, 0.3964, 0.1194]
    assert round_column(at_1, 3) == [0.484, 0.397, 0.119]
    assert table.tokens == ["pfalz", "mosel", "rhein"]
    text = table.format()
    assert "0.484" in text and "0.397" in text and "0.119" in text
    # T=0.5 sharpens (top token likelier, entropy lower); T=1.5 flattens.
    assert table.probs[0][1] > at_1[0] > table.probs[0][2]
    assert table.entropy[1] < table.entropy[0] < table.entropy[2]
    assert math.isclose(table.entropy[0], -sum(p * math.log2(p) for p in at_1), rel_tol=1e-9)


def test_temperature_zero_column_is_greedy_and_bad_temperatures_fail():
    table = temperature_table([1.0, 2.0, 0.5], [0.0], label=str)
    assert [row[0] for row in table.probs] == [1.0, 0.0, 0.0] and table.entropy == [0.0]
    with pytest.raises(UserError):
        temperature_table([1.0, 2.0], [-1.0])


def test_round_column_keeps_the_rounded_total():
    values = [0.1234, 0.2345, 0.3456, 0.0711]
    r = round_column(values, 2)
    assert math.isclose(sum(r), round(sum(values), 2)) and all(abs(a - b) < 0.01 for a, b in zip(r, values))
