"""Shared label directions in the output layer (`--label-directions`): what a run trains with, what
it saves, and that it resumes exactly."""

from pathlib import Path

import pytest
import torch
from conftest import wine_lines
from safetensors.torch import load_file

from gptlab.checkpoint import load_checkpoint
from gptlab.data import Corpus
from gptlab.errors import UserError
from gptlab.infer.quality import parse_template
from gptlab.model import GPT, tiny
from gptlab.model.label_head import computed_state_dict, fold, raw_state, saved_params, share_directions
from gptlab.training.config import RUN_PRESETS
from gptlab.training.tasks.causal_lm import CausalLM, train


def fields_corpus() -> Corpus:
    """wine_lines(), a third of them of a two-word variety, with the rows they came from, as a CSV
    source gives them."""
    lines = [x.replace(": riesling :", ": pinot noir :") if i % 3 == 0 else x for i, x in enumerate(wine_lines())]
    rows = [dict(zip(("country", "province", "variety", "description"), parse_template(x))) for x in lines]
    return Corpus(records=lines, source="fixture", skipped=0, fields=rows)


def cfg(out, **train):
    c = RUN_PRESETS["tiny"]()
    c.model.context_length, c.model.dropout, c.model.tie_embeddings = 24, 0.0, False
    t = c.train
    t.out, t.precision, t.progress, t.tensorboard = str(out), "fp32", False, False
    t.eval_interval, t.save_interval, t.log_interval, t.sample_prompt = 0, 0, 1, ""
    t.batch_size, t.max_steps, t.warmup_steps, t.lr, t.optimizer = 32, 6, 2, 1e-2, "muon"
    for k, v in train.items():
        setattr(t, k, v)
    return c


def test_each_label_field_is_a_group_of_its_words_and_no_description_word_is_in_one():
    task = CausalLM(cfg(""), fields_corpus())
    head = task.model.lm_head
    groups_VxG = head.parametrizations.weight[0].groups_VxG
    tok = task.tokenizer
    # country, province, variety (the description is no label): each name's first word, then the
    # others; then per country, the provinces and the varieties seen with it.
    assert groups_VxG.shape == (tok.vocab_size, 12)
    members = [{tok.id_to_token(i) for i in torch.nonzero(groups_VxG[:, g]).flatten().tolist()} for g in range(12)]
    assert members[:6] == [{"germany", "france", "us"}, set(),
                           {"mosel", "pfalz", "baden", "bordeaux", "alsace", "california", "oregon"}, set(),
                           {"riesling", "pinot"}, {"noir"}]
    assert sorted(map(sorted, members[6:9])) == [["alsace", "bordeaux"], ["baden", "mosel", "pfalz"], ["california", "oregon"]]
    assert members[9:] == [{"riesling", "pinot", "noir"}] * 3
    # Starting at zero, the directions change nothing: the run begins from the plain model's weights.
    torch.manual_seed(cfg("").train.seed)
    plain = GPT(task.cfg.model)
    assert torch.equal(head.weight, plain.lm_head.weight)
    assert saved_params(task.model) == plain.num_params()  # what a run prints: the saved model's count


@pytest.mark.parametrize("tied", [False, True])
def test_off_for_a_tied_output_layer_a_corpus_without_fields_and_the_book_preset(tied):
    c = cfg("")
    c.model.tie_embeddings = tied
    task = CausalLM(c, fields_corpus())
    assert bool(raw_state(task.model)) is not tied  # a tied layer's rows are the input embedding's
    assert not raw_state(CausalLM(cfg(""), Corpus(wine_lines(), "fixture", 0)).model)
    assert RUN_PRESETS["book"]().train.label_directions is False


def test_a_run_saves_a_plain_output_layer_that_computes_what_the_trained_one_did(tmp_path):
    on = train(cfg(tmp_path / "on"), fields_corpus())
    train(cfg(tmp_path / "off", label_directions=False), fields_corpus())
    saved, plain = load_file(str(tmp_path / "on" / "model.safetensors")), load_file(str(tmp_path / "off" / "model.safetensors"))
    assert {k: v.shape for k, v in saved.items()} == {k: v.shape for k, v in plain.items()}  # a standard GPT's tensors
    assert not raw_state(on.model)  # the model handed back is folded too
    loaded, tok, _ = load_checkpoint(tmp_path / "on", "cpu")
    x = torch.tensor([tok.encode("wine review : germany : mosel :")])
    with torch.no_grad():
        assert torch.allclose(loaded(x).logits, on.model.eval()(x).logits, atol=1e-6)
    # The directions were trained: the same seed and batches without them end elsewhere.
    assert not torch.allclose(saved["lm_head.weight"], plain["lm_head.weight"])


def test_resume_equals_uninterrupted(tmp_path, interrupt_at):
    full = train(cfg(tmp_path / "full", ema=0.9), fields_corpus())
    interrupt_at(3)
    part = train(cfg(tmp_path / "part", ema=0.9), fields_corpus())
    assert part.interrupted and part.step == 3
    interrupt_at(None)
    rest = train(cfg(tmp_path / "part", ema=0.9, resume=True), fields_corpus())
    losses = [h["loss"] for r in (part, rest) for h in r.history if "loss" in h]
    assert losses == pytest.approx([h["loss"] for h in full.history if "loss" in h], abs=1e-6)
    wf, wr = load_file(str(tmp_path / "full" / "model.safetensors")), load_file(str(tmp_path / "part" / "model.safetensors"))
    for k in wf:
        assert torch.allclose(wf[k], wr[k], atol=1e-6), k


def test_resume_with_the_setting_flipped_is_refused_in_one_line(tmp_path, interrupt_at):
    interrupt_at(3)
    train(cfg(tmp_path / "run"), fields_corpus())
    interrupt_at(None)
    with pytest.raises(UserError, match="trained with --label-directions: resume with --label-directions"):
        train(cfg(tmp_path / "run", resume=True, label_directions=False), fields_corpus())
    assert Path(tmp_path / "run" / "model.safetensors").is_file()


def test_share_directions_computed_state_and_fold():
    torch.manual_seed(0)
    model = GPT(tiny(20)).eval()
    model.lm_head = torch.nn.Linear(32, 20, bias=False)  # untied
    x = torch.randint(0, 20, (2, 5))
    before = model(x).logits
    groups = torch.zeros(20, 2)
    groups[[1, 2, 3], 0] = groups[[3, 4], 1] = 1
    share_directions(model.lm_head, groups)
    assert torch.equal(model(x).logits, before)
    with torch.no_grad():
        model.lm_head.parametrizations.weight[0].directions_GxC.normal_()
    after = model(x).logits
    w = model.lm_head.weight.detach().clone()
    original = model.lm_head.parametrizations.weight.original
    moved = (w - original).abs().sum(1) > 0
    assert torch.allclose(w, original + groups @ model.lm_head.parametrizations.weight[0].directions_GxC)  # W + F U
    assert moved.tolist() == [i in (1, 2, 3, 4) for i in range(20)]
    sd = computed_state_dict(model)
    assert torch.equal(sd["lm_head.weight"], w) and not any("parametrizations" in k for k in sd)
    fold(model)
    assert not raw_state(model) and torch.equal(model.lm_head.weight, w)
    assert torch.allclose(model(x).logits, after)
    with pytest.raises(ValueError, match="groups must be"):
        share_directions(model.lm_head, torch.zeros(19, 2))


def test_resume_with_other_groups_is_refused_in_one_line(tmp_path, interrupt_at, monkeypatch):
    from gptlab.training.tasks import causal_lm
    interrupt_at(3)
    train(cfg(tmp_path / "run"), fields_corpus())
    interrupt_at(None)
    monkeypatch.setattr(causal_lm, "_CONDITIONS", 1)  # as a run begun by a gptlab with other groups
    with pytest.raises(UserError, match="label directions have other groups"):
        train(cfg(tmp_path / "run", resume=True), fields_corpus())
