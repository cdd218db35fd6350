"""The encoder-only family: bidirectional attention, BERT masking proportions, pretraining that
learns, a classifier that loads pretrained weights, checkpoints, the CLI and its bad-input errors."""

from __future__ import annotations

import csv
import json

import pytest
import torch

from gptlab.cli import main
from gptlab.data import DataConfig
from gptlab.explain.trace import VERSION
from gptlab.infer.classify import predict
from gptlab.model import IGNORE_INDEX
from gptlab.model.encoder import Classifier, Encoder, bert_tiny
from gptlab.training.tasks.classify import ClassifyConfig, classify, hide_words
from gptlab.training.tasks.masked_lm import EncoderTrainConfig, mask_tokens, pretrain

torch.set_num_threads(1)


def tiny_encoder(seed: int = 0, vocab: int = 60) -> Encoder:
    torch.manual_seed(seed)
    return Encoder(bert_tiny(vocab)).eval()


def test_encoder_attention_is_bidirectional():
    model = tiny_encoder()
    idx = torch.randint(5, 60, (2, 9))
    leaves = []

    def hook(mod, inp, out):
        leaf = out.detach().requires_grad_(True)
        leaves.append(leaf)
        return leaf

    model.tok_emb.register_forward_hook(hook)
    h, _ = model.encode(idx)
    (h[:, 0] * torch.randn(h.shape[-1])).sum().backward()  # random readout: LayerNorm outputs sum to ~0
    g = leaves[0].grad.abs().sum(-1)
    assert (g[:, -1] > 0).all(), "the first output must depend on the last token"
    assert (g > 0).all()


@pytest.mark.parametrize("pooling", ["mean", "meanmax"])
def test_padding_does_not_change_real_tokens_or_pooling(pooling):
    torch.manual_seed(0)
    model = Classifier(bert_tiny(60), n_classes=3, pooling=pooling).eval()
    x = torch.randint(5, 60, (1, 6))
    padded = torch.cat([x, torch.zeros(1, 4, dtype=torch.long)], 1)
    mask = torch.tensor([[True] * 6 + [False] * 4])
    a = model(x).logits
    b = model(padded, key_mask_BxT=mask).logits
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_meanmax_pooling_is_the_mean_and_the_max_over_real_tokens():
    from gptlab.model.encoder import pool
    h = torch.tensor([[[1.0, -2.0], [3.0, -4.0], [99.0, 99.0]]])  # (1, 3, 2); the last position is padding
    out = pool(h, torch.tensor([[True, True, False]]), "meanmax")
    assert out.tolist() == [[2.0, -3.0, 3.0, -2.0]]


def test_masking_proportions():
    V, ns, mask_id = 1000, 5, 4
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(ns, V, (400, 500), generator=g)
    ids[:, :3] = torch.tensor([3, 1, 2])      # [CLS], [UNK], <|endoftext|>: specials
    ids[:, -20:] = 0                          # padding
    inputs, targets = mask_tokens(ids, n_special=ns, mask_id=mask_id, vocab_size=V, generator=g)
    words = ids >= ns
    selected = targets != IGNORE_INDEX
    assert not (selected & ~words).any(), "specials and padding are never selected"
    assert (inputs[~words] == ids[~words]).all(), "specials and padding are never changed"
    n_sel = int(selected.sum())
    assert abs(n_sel / int(words.sum()) - 0.15) < 0.005
    assert (targets[selected] == ids[selected]).all()
    as_mask = (inputs == mask_id) & selected
    kept = (inputs == ids) & selected
    randomised = selected & ~as_mask & ~kept
    assert abs(int(as_mask.sum()) / n_sel - 0.8) < 0.01
    # A random word equals the original one time in V - ns: "kept" absorbs those few.
    assert abs(int(kept.sum()) / n_sel - 0.1) < 0.01
    assert abs(int(randomised.sum()) / n_sel - 0.1) < 0.01
    assert (inputs[randomised] >= ns).all(), "random replacements are words, never specials"


def test_word_dropout_hides_only_words_in_proportion():
    ns, mask_id = 5, 4
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(ns, 1000, (300, 400), generator=g)
    ids[:, :1], ids[:, -30:] = 3, 0                # [CLS] and padding
    out = hide_words(ids, 0.1, first_word=ns, mask_id=mask_id, generator=g)
    words = ids >= ns
    assert (out[~words] == ids[~words]).all(), "specials and padding stay"
    changed = out != ids
    assert (out[changed] == mask_id).all()
    assert abs(int(changed.sum()) / int(words.sum()) - 0.1) < 0.005
    assert hide_words(ids, 0.0, first_word=ns, mask_id=mask_id) is ids


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    out = tmp_path_factory.mktemp("enc") / "mlm"
    t = EncoderTrainConfig(out=str(out), preset="tiny", vocab_size=400, max_steps=60, batch_size=32, lr=3e-3,
                               warmup_steps=10, eval_interval=0, progress=False, device="cpu", seed=0,
                               text_field="description")
    dcfg = DataConfig(builtin_size=400, val_fraction=0.1)
    return pretrain(t, dcfg), out, dcfg


def test_mlm_loss_drops(pretrained):
    import math
    r, _, _ = pretrained
    m = r.config["metrics"]
    # Before training the loss is about ln(vocab); after 60 steps it must be well below.
    assert m["val_loss"] < math.log(r.tokenizer.vocab_size) - 1.0


def test_pretrain_init_continues_from_the_saved_encoder(pretrained, tmp_path):
    """--init: the saved weights, shape and tokenizer are the start (lr 0 keeps them exactly), and
    further masked-LM steps lower the loss from there."""
    r, mlm_dir, dcfg = pretrained
    kw = dict(preset="tiny", max_steps=40, batch_size=32, warmup_steps=5, eval_interval=0, progress=False, device="cpu",
              seed=1, text_field="description", init=str(mlm_dir), vocab_size=50)  # vocab_size: ignored with init
    same = pretrain(EncoderTrainConfig(out="", lr=0.0, min_lr=0.0, **kw), dcfg, save=False)
    assert same.tokenizer.vocab_size == r.tokenizer.vocab_size
    for (k, a), b in zip(r.model.state_dict().items(), same.model.state_dict().values()):
        assert torch.equal(a, b), k
    more = pretrain(EncoderTrainConfig(out="", lr=2e-3, min_lr=2e-4, **kw), dcfg, save=False)
    assert more.config["metrics"]["init_steps"] == r.config["metrics"]["steps"]
    assert more.config["metrics"]["val_loss"] < r.config["metrics"]["val_loss"]


def test_fine_tune_from_pretrained_and_round_trip(pretrained, tmp_path):
    import gptlab
    r, mlm_dir, dcfg = pretrained
    out = tmp_path / "cls"
    t = ClassifyConfig(out=str(out), model=str(mlm_dir), label="country", top=3, max_steps=30, batch_size=32,
                           lr=3e-3, warmup_steps=5, eval_interval=0, progress=False, device="cpu", seed=0)
    res = classify(t, DataConfig(builtin_size=400, val_fraction=0.1))
    m = res.config["metrics"]
    assert m["train_rows"] > 0 and m["val_rows"] > 0 and len(res.config["classifier"]["labels"]) == 3
    loaded = gptlab.load(out, device="cpu")
    assert loaded.kind == "classifier"
    texts = ["Crisp lemon and green apple with a flinty finish.", "Dark cherry, firm tannins, tobacco."]
    assert predict(loaded.model, loaded.tokenizer, loaded.config, texts, top=2) == \
        predict(res.model, res.tokenizer, res.config, texts, top=2)
    # The classifier started from the masked-LM weights: the untouched position table shows it.
    fresh = Classifier(res.model.cfg, 3)
    fresh.encoder.load_state_dict(r.model.state_dict())
    assert set(fresh.encoder.state_dict()) == set(res.model.encoder.state_dict())


def test_cli_pretrain_classify_predict_explain(tmp_path, capsys):
    mlm, cls = tmp_path / "mlm", tmp_path / "cls"
    common = ["--builtin-size", "300", "--no-progress", "--device", "cpu", "--batch-size", "32"]
    assert main(["encoder", "pretrain", "--out", str(mlm), "--preset", "tiny", "--max-steps", "5", "--vocab-size", "300",
                 "--text-field", "description", *common]) == 0
    assert main(["encoder", "classify", "--model", str(mlm), "--out", str(cls), "--label", "variety", "--top", "4",
                 "--max-steps", "5", *common]) == 0
    out = capsys.readouterr().out
    assert "validation accuracy" in out
    assert main(["encoder", "predict", str(cls), "--top", "2", "Ripe plum and cocoa."]) == 0
    labels = json.loads((cls / "config.json").read_text())["classifier"]["labels"]
    line = capsys.readouterr().out.strip()
    assert line.split(" ")[0] in " ".join(labels)
    html, js = tmp_path / "a.html", tmp_path / "a.json"
    assert main(["encoder", "explain", str(cls), "Ripe plum and cocoa.", "--token", "plum",
                 "--html", str(html), "--json", str(js), "--no-color"]) == 0
    trace = json.loads(js.read_text())
    assert (trace["format"], trace["version"], trace["kind"]) == ("gptlab-trace", VERSION, "classifier")
    assert trace["tokens"][:3] == ["[CLS]", "ripe", "plum"] and trace["focus"] == 2
    T = len(trace["tokens"])
    assert len(trace["self_attention"]["layers"][0]) == T and len(trace["self_attention"]["layers"][0][0]) == T
    assert "predicted:" in capsys.readouterr().out
    assert "<table" in html.read_text() and "http" not in html.read_text()
    # A masked-LM encoder fills in [MASK].
    assert main(["encoder", "explain", str(mlm), "aromas of [MASK] and cocoa", "--no-color"]) == 0
    assert "[MASK]@" in capsys.readouterr().out


def test_explain_object_renders_in_a_notebook(pretrained):
    from gptlab.explain.capture import explain_encoder
    r, _, _ = pretrained
    trace = explain_encoder(r.model, r.tokenizer, "black cherry and [MASK] on the finish")
    assert trace.focus == 0 and trace.tokens[0] == "[CLS]"
    assert "<span" in trace._repr_html_()
    assert abs(sum(trace.weights()) - 1) < 1e-2


@pytest.mark.parametrize("action", ["pretrain", "classify", "predict", "explain"])
def test_help(action, capsys):
    with pytest.raises(SystemExit) as e:
        main(["encoder", action, "--help"])
    assert e.value.code == 0
    assert "usage:" in capsys.readouterr().out


def _one_line_error(capsys, rc, words):
    err = capsys.readouterr().err
    assert rc == 2, err
    assert words in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_label_column_absent_is_one_line_error(tmp_path, capsys):
    p = tmp_path / "rows.csv"
    with p.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["description", "colour"])
        for i in range(20):
            w.writerow([f"a wine with notes of plum number {i}", "red" if i % 2 else "white"])
    out = tmp_path / "cls"
    rc = main(["encoder", "classify", "--data", str(p), "--label", "variety", "--out", str(out), "--max-steps", "1",
               "--preset", "tiny", "--no-progress"])
    _one_line_error(capsys, rc, "no column 'variety'")
    assert not (out / "config.json").exists()
    rc = main(["encoder", "classify", "--label", "nosuch", "--builtin-size", "50", "--out", str(out), "--max-steps", "1",
               "--preset", "tiny", "--no-progress"])
    _one_line_error(capsys, rc, "no column 'nosuch'")
    txt = tmp_path / "plain.txt"
    txt.write_text("one line\nanother line\n")
    rc = main(["encoder", "classify", "--data", str(txt), "--text-field", "", "--label", "x", "--out", str(out),
               "--max-steps", "1", "--preset", "tiny", "--no-progress"])
    _one_line_error(capsys, rc, "no columns")
    rc = main(["encoder", "classify", "--builtin-size", "50", "--out", str(out), "--max-steps", "1",
               "--preset", "tiny", "--no-progress", "--word-dropout", "1"])
    _one_line_error(capsys, rc, "--word-dropout must be >= 0 and < 1")


def test_wrong_model_kind_is_one_line_error(tmp_path, capsys):
    d = tmp_path / "gpt"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"kind": "gpt", "model": {}}))
    rc = main(["encoder", "predict", "--model", str(d), "some text"])
    _one_line_error(capsys, rc, "'gpt' model where 'classifier' is needed")



@pytest.mark.parametrize("argv,fix", [
    (["encoder", "pretrain", "--init", "{missing}", "--out", "{out}", "--max-steps", "1"], "`gptlab encoder pretrain --out"),
    (["encoder", "classify", "--model", "{missing}", "--out", "{out}", "--max-steps", "1"], "`gptlab encoder pretrain --out"),
    (["encoder", "predict", "--model", "{missing}", "some text"], "`gptlab encoder classify --out"),
    (["seq2seq", "translate", "--model", "{missing}", "three"], "`gptlab seq2seq train --out"),
])
def test_missing_model_folder_names_the_command_that_makes_one(tmp_path, capsys, argv, fix):
    argv = [a.format(missing=tmp_path / "nothing", out=tmp_path / "out") for a in argv]
    _one_line_error(capsys, main(argv), fix)
