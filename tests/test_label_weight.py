"""`--label-weight`: the header's targets (the template through its last label field) count more
in the training loss, and nothing else changes."""

import pytest
import torch
import torch.nn.functional as F
from test_label_head import cfg, fields_corpus

from gptlab.data import Corpus
from gptlab.data.records import header_template
from gptlab.model import IGNORE_INDEX
from gptlab.training.tasks.causal_lm import CausalLM

WINE = "wine review : {country} : {province} : {variety} : {description}"


def test_the_header_is_the_template_through_its_last_label_field_and_the_text_after_it():
    labels = ["country", "province", "variety"]
    assert header_template(WINE, labels) == "wine review : {country} : {province} : {variety} : "
    assert header_template("{variety} wine from {country}. {description}", labels) == "{variety} wine from {country}. "
    assert header_template("{country} {{note}} {description}", labels) == "{country} {{note}} "  # escaped braces stay escaped
    assert header_template("{country}", labels) == "{country}"
    assert header_template("{description}", labels) is None


def weighted_tokens(task: CausalLM, row: int) -> list[tuple[str, float]]:
    b = task.batch(0)
    y, w = b.tensors["y"][row], b.tensors["w"][row]
    return [(task.tokenizer.id_to_token(int(t)), float(x)) for t, x in zip(y, w) if t != IGNORE_INDEX]


def test_the_headers_targets_and_only_they_are_weighted():
    task = CausalLM(cfg("", label_weight=3.0), fields_corpus())
    for row in range(4):
        tokens = weighted_tokens(task, row)
        words = [t for t, _ in tokens]
        end = [i for i, t in enumerate(words) if t == ":"][3] + 1  # `wine review : c : p : v :`
        assert [w for _, w in tokens] == [3.0] * end + [1.0] * (len(tokens) - end), tokens
        assert words[:3] == ["wine", "review", ":"]


def test_plain_cross_entropy_at_weight_1_in_book_and_without_label_fields():
    from gptlab.training.config import RUN_PRESETS
    assert "w" not in CausalLM(cfg("", label_weight=1.0), fields_corpus()).batch(0).tensors
    assert RUN_PRESETS["book"]().train.label_weight == 1.0 and RUN_PRESETS["fast"]().train.label_weight > 1.0
    c = fields_corpus()
    plain = Corpus(records=c.records, source="fixture", skipped=0)
    assert "w" not in CausalLM(cfg("", label_weight=3.0), plain).batch(0).tensors


def test_the_weighted_loss_is_each_targets_cross_entropy_times_its_weight():
    task = CausalLM(cfg("", label_weight=2.5), fields_corpus())
    t = task.batch(0).tensors
    model = task.model.eval()
    logits = model(t["x"]).logits
    nll = F.cross_entropy(logits.flatten(0, 1), t["y"].flatten(), reduction="none", ignore_index=IGNORE_INDEX)
    expected = (nll * t["w"].flatten()).sum()
    got = task.loss_sum(model, t)
    assert torch.allclose(got, expected, rtol=1e-5)
    assert not torch.allclose(got, nll.sum(), rtol=1e-3)  # the weights did something


@pytest.mark.parametrize("weight", [1.0, 3.0])
def test_a_run_trains_and_its_saved_model_is_a_plain_gpt(tmp_path, weight):
    from gptlab.checkpoint import load_checkpoint
    from gptlab.training.tasks.causal_lm import train
    res = train(cfg(tmp_path / "run", label_weight=weight), fields_corpus())
    assert res.step == 6
    model, _, _ = load_checkpoint(tmp_path / "run", "cpu")
    assert type(model).__name__ == "GPT"


def test_a_weighted_run_shows_the_plain_loss_and_logs_the_objective_beside_it(tmp_path):
    from gptlab.training.tasks.causal_lm import train
    runs = {w: train(cfg(tmp_path / str(w), label_weight=w), fields_corpus()) for w in (1.0, 3.0)}
    plain, weighted = ([h for h in runs[w].history if "loss" in h] for w in (1.0, 3.0))
    # The first step's loss is the first batch's under the same initial weights: the weight does
    # not change what is shown, only what is trained (log_interval 1).
    assert weighted[0]["loss"] == pytest.approx(plain[0]["loss"], rel=1e-5)
    assert all(h["objective"] > h["loss"] for h in weighted)  # header targets counted 3 times
    assert not any("objective" in h for h in plain)
