"""The encoder-decoder family: attention directions, cache and beam invariants, an overfit run,
checkpoints, the CLI and its bad-input errors. Tiny models and few steps: the file runs in seconds."""

from __future__ import annotations

import json

import pytest
import torch

from gptlab.cli import main
from gptlab.data.pairs import english_number, number_pairs, read_pairs, spanish_number
from gptlab.explain.trace import VERSION
from gptlab.infer.translate import beam_search, greedy_decode, translate
from gptlab.model.seq2seq import Seq2Seq, Seq2SeqConfig, seq2seq_tiny
from gptlab.training.tasks.seq2seq import Seq2SeqTrainConfig, train

torch.set_num_threads(1)  # tiny models: threads cost more than they give


def tiny_model(seed: int = 0, vocab: int = 50, **kw) -> Seq2Seq:
    torch.manual_seed(seed)
    cfg = seq2seq_tiny(vocab)
    for k, v in kw.items():
        setattr(cfg, k, v)
    return Seq2Seq(cfg).eval()


class EmbeddingTap:
    """Makes the token-embedding output of chosen calls a leaf tensor, to take gradients w.r.t. it."""

    def __init__(self, module: torch.nn.Module, calls: set[int]):
        self.calls, self.n, self.leaves = calls, 0, []
        self.handle = module.register_forward_hook(self.hook)

    def hook(self, mod, inp, out):
        i, self.n = self.n, self.n + 1
        if i in self.calls:
            leaf = out.detach().requires_grad_(True)
            self.leaves.append(leaf)
            return leaf
        return out


# -- attention directions -------------------------------------------------------------------------
def test_encoder_is_bidirectional():
    model = tiny_model()
    src = torch.randint(3, 50, (2, 7))
    tap = EmbeddingTap(model.tok_emb, {0})
    memory, _ = model.encode(src)
    # A random readout: a plain sum of LayerNorm outputs is constant, its gradient zero.
    (memory[:, 0] * torch.randn(memory.shape[-1])).sum().backward()
    g = tap.leaves[0].grad  # (B, S, C)
    assert (g[:, -1].abs().sum(-1) > 0).all(), "a later source token must reach the first position's output"


def test_decoder_self_attention_is_causal():
    model = tiny_model()
    src = torch.randint(3, 50, (2, 5))
    tgt = torch.randint(3, 50, (2, 8))
    memory, _ = model.encode(src)
    tap = EmbeddingTap(model.tok_emb, {0})
    logits = model.decode(tgt, memory.detach()).logits
    t = 3
    (logits[:, t] * torch.randn(logits.shape[-1])).sum().backward()
    g = tap.leaves[0].grad.abs().sum(-1)  # (B, T)
    assert (g[:, t + 1:] == 0).all(), "position t must not see later target tokens"
    assert (g[:, : t + 1] > 0).all(), "position t must see itself and earlier target tokens"


def test_cross_attention_shapes_and_source_padding():
    model = tiny_model()
    B, S, T = 3, 6, 4
    src = torch.randint(3, 50, (B, S))
    mask = torch.ones(B, S, dtype=torch.bool)
    mask[1, 3:] = False  # row 1 has a 3-token source
    with torch.no_grad():
        out = model(src, torch.randint(3, 50, (B, T)), src_mask_BxS=mask, return_attn=True)
    H = model.cfg.n_head
    assert len(out.cross_attn) == model.cfg.n_decoder_layer
    for a in out.cross_attn:
        assert a.shape == (B, H, T, S)
        torch.testing.assert_close(a.sum(-1), torch.ones(B, H, T))
    for a in out.encoder_attn:
        assert a.shape == (B, H, S, S)
    for a in out.self_attn:
        assert a.shape == (B, H, T, T)
    # Query 0 sees none of row 1's padded source positions.
    for a in out.cross_attn:
        assert float(a[1, :, 0, 3:].abs().max()) == 0.0


def test_cross_attention_never_reads_padded_source():
    model = tiny_model()
    src = torch.randint(3, 50, (1, 6))
    mask = torch.tensor([[True, True, False, False, False, False]])
    with torch.no_grad():
        out = model(src, torch.randint(3, 50, (1, 5)), src_mask_BxS=mask, return_attn=True)
    for a in out.cross_attn:
        assert float(a[0, :, :, 2:].abs().max()) == 0.0


def test_padding_does_not_change_an_unpadded_row_encoding():
    model = tiny_model()
    src = torch.randint(3, 50, (1, 4))
    padded = torch.cat([src, torch.zeros(1, 3, dtype=torch.long)], 1)
    mask = torch.tensor([[True] * 4 + [False] * 3])
    a, _ = model.encode(src)
    b, _ = model.encode(padded, mask)
    torch.testing.assert_close(a, b[:, :4], rtol=1e-5, atol=1e-5)


def test_kv_cache_decoding_equals_full_recompute():
    model = tiny_model()
    src = torch.randint(3, 50, (2, 5))
    tgt = torch.randint(3, 50, (2, 7))
    memory, _ = model.encode(src)
    full = model.decode(tgt, memory).logits
    cache = model.new_cache(2)
    steps = [model.decode(tgt[:, i:i + 1], memory, cache=cache).logits for i in range(tgt.shape[1])]
    torch.testing.assert_close(torch.cat(steps, 1), full, rtol=1e-4, atol=1e-5)
    assert set(cache.cross) == set(range(model.cfg.n_decoder_layer)), "cross-attention K/V are cached per layer"


def test_beam_size_one_is_greedy_and_beams_are_consistent():
    model = tiny_model(seed=3)
    srcs = [[5, 6, 7], [8, 9], [10, 11, 12, 13, 14]]
    greedy = greedy_decode(model, srcs, bos_id=3, eos_id=2, max_len=12)
    beam1 = beam_search(model, srcs, bos_id=3, eos_id=2, beam_size=1, max_len=12)
    assert greedy == beam1
    # Padding a source in a batch changes nothing: each sentence decodes as it does alone.
    assert greedy == [greedy_decode(model, [s], bos_id=3, eos_id=2, max_len=12)[0] for s in srcs]
    # Batched beam search gives each sentence what it gets alone.
    batched = beam_search(model, srcs, bos_id=3, eos_id=2, beam_size=3, max_len=12)
    alone = [beam_search(model, [s], bos_id=3, eos_id=2, beam_size=3, max_len=12)[0] for s in srcs]
    assert batched == alone


# -- data -----------------------------------------------------------------------------------------
def test_number_words_and_split_by_number():
    pytest.importorskip("num2words")
    assert english_number(342) == "three hundred forty-two"
    assert spanish_number(342) == "trescientos cuarenta y dos"
    splits = number_pairs(max_number=999, seed=0, val_fraction=0.1, test_fraction=0.1)
    sources = {k: {s for s, _ in v} for k, v in splits.items()}
    assert len(sources["test"]) == 100 and len(sources["val"]) == 100 and len(sources["train"]) == 800
    assert not sources["test"] & sources["train"] and not sources["val"] & sources["train"]
    assert splits == number_pairs(max_number=999, seed=0), "the split is fixed by its seed"


def test_read_pairs_takes_two_columns(tmp_path):
    p = tmp_path / "spa-eng.txt"
    p.write_text("Go.\tVe.\tCC-BY 2.0 (France) Attribution: tatoeba.org #2877272 (CM)\n\nHi.\tHola.\n",
                 encoding="utf-8")
    assert read_pairs(p) == [("Go.", "Ve."), ("Hi.", "Hola.")]
    assert read_pairs(p, reverse=True) == [("Ve.", "Go."), ("Hola.", "Hi.")]


# -- training, checkpoints, CLI -------------------------------------------------------------------
PAIRS = [("one two", "uno dos"), ("two three", "dos tres"), ("three", "tres"), ("four one", "cuatro uno"),
         ("five", "cinco"), ("six two one", "seis dos uno"), ("seven", "siete"), ("eight four", "ocho cuatro"),
         ("nine", "nueve"), ("ten three", "diez tres"), ("one", "uno"), ("two", "dos"), ("four", "cuatro"),
         ("five six", "cinco seis"), ("seven eight", "siete ocho"), ("nine ten", "nueve diez"),
         ("ten", "diez"), ("three four five", "tres cuatro cinco"), ("six", "seis"), ("eight", "ocho")]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("s2s") / "model"
    t = Seq2SeqTrainConfig(out=str(out), max_steps=250, batch_size=20, lr=3e-3, warmup_steps=20,
                               eval_interval=0, eval_pairs=20, progress=False, device="cpu", seed=0)
    cfg = seq2seq_tiny()
    cfg.d_model, cfg.d_ff = 48, 96
    r = train(t, cfg, splits={"train": PAIRS, "val": PAIRS, "test": []})
    return r, out


def test_overfits_twenty_pairs_to_exact_match(trained):
    r, _ = trained
    assert r.config["metrics"]["val_exact_match"] == 1.0
    assert translate(r.model, r.tokenizer, [s for s, _ in PAIRS], beam=3) == [t for _, t in PAIRS]


def test_save_load_round_trip(trained):
    import gptlab
    r, out = trained
    loaded = gptlab.load(out, device="cpu")
    assert loaded.kind == "seq2seq"
    src = torch.tensor([[5, 6, 7]])
    tgt = torch.tensor([[3, 8, 9]])
    torch.testing.assert_close(loaded.model(src, tgt).logits, r.model(src, tgt).logits)
    assert json.loads((out / "config.json").read_text())["kind"] == "seq2seq"


def test_cli_translate_and_explain(trained, tmp_path, capsys):
    _, out = trained
    assert main(["seq2seq", "translate", str(out), "--beam", "2", "six two one", "five"]) == 0
    assert capsys.readouterr().out.splitlines() == ["seis dos uno", "cinco"]
    html, js = tmp_path / "x.html", tmp_path / "x.json"
    assert main(["seq2seq", "explain", str(out), "six two one", "--html", str(html),
                 "--json", str(js), "--no-color"]) == 0
    text = capsys.readouterr().out
    assert "seis" in text and "six" in text
    trace = json.loads(js.read_text())
    assert (trace["format"], trace["version"], trace["kind"]) == ("gptlab-trace", VERSION, "seq2seq")
    assert trace["source_tokens"] == ["six", "two", "one"]
    assert trace["target_tokens"] == ["seis", "dos", "uno", "<|endoftext|>"]
    layers = trace["cross_attention"]["layers"]
    assert len(layers) == 2 and len(layers[0]) == 4 and len(layers[0][0]) == 3
    assert all(abs(sum(row) - 1) < 1e-2 for row in layers[0])
    page = html.read_text()
    assert page.startswith("<!DOCTYPE html>") and "<table" in page and "http" not in page


def test_explain_object_renders_in_a_notebook(trained):
    from gptlab.explain.capture import explain_translation
    r, _ = trained
    trace = explain_translation(r.model, r.tokenizer, "ten three")
    assert "<table" in trace._repr_html_()
    assert trace.translation == "diez tres"
    assert "diez" in trace.terminal(color=False)


@pytest.mark.parametrize("argv", [["seq2seq", "--help"], ["seq2seq", "train", "--help"],
                                  ["seq2seq", "translate", "--help"], ["seq2seq", "explain", "--help"]])
def test_help(argv, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 0
    assert "usage:" in capsys.readouterr().out


@pytest.mark.parametrize("content, words", [
    ("one\tuno\ntwo dos\n", "line 2 has no tab"),
    ("one\tuno\n\t dos\n", "line 2 has an empty source"),
    ("one\t \n", "line 1 has an empty target"),
    ("\n\n", "holds no pairs"),
])
def test_bad_pairs_file_is_one_line_error(tmp_path, capsys, content, words):
    p = tmp_path / "pairs.tsv"
    p.write_text(content, encoding="utf-8")
    out = tmp_path / "model"
    rc = main(["seq2seq", "train", "--data", str(p), "--out", str(out), "--max-steps", "1", "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2
    assert words in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not (out / "config.json").exists()


def test_bad_model_folder_and_kind(tmp_path, capsys, trained):
    assert main(["seq2seq", "translate", "--model", str(tmp_path / "nope"), "hi"]) == 2
    assert "does not exist" in capsys.readouterr().err
    cfg = seq2seq_tiny()
    assert isinstance(cfg, Seq2SeqConfig)
    gpt_dir = tmp_path / "gpt"
    gpt_dir.mkdir()
    (gpt_dir / "config.json").write_text(json.dumps({"kind": "gpt", "model": {}}))
    assert main(["seq2seq", "translate", "--model", str(gpt_dir), "hi"]) == 2
    err = capsys.readouterr().err
    assert "not a translation model" in err and len(err.strip().splitlines()) == 1
