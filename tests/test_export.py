"""Export parity: the Hugging Face GPT-2 built from an export gives gptlab's logits and greedy tokens."""

import pytest
import torch

from gptlab.checkpoint import save_model
from gptlab.cli import main
from gptlab.data.tokenizer import Tokenizer
from gptlab.model import GPT, book, fast, tiny

transformers = pytest.importorskip("transformers")

LINES = ["wine review : germany : mosel : riesling : crisp , dry and long .",
         "wine review : us : california : zinfandel : jammy , ripe and bold ."] * 4


def make_model(tmp_path, cfg_fn):
    torch.manual_seed(0)
    tok = Tokenizer.train(LINES, vocab_size=64)
    model = GPT(cfg_fn(tok.vocab_size)).eval()
    save_model(tmp_path / "m", model, tok, {"kind": "gpt", "model": model.cfg.to_dict()})
    return model, tok


@pytest.mark.parametrize("cfg_fn", [tiny, fast], ids=["tied", "untied"])
def test_export_parity_with_transformers(tmp_path, cfg_fn):
    """`tiny` ties its output layer to the embedding, as GPT-2; `fast` has its own, without a bias,
    which GPT2LMHeadModel holds as lm_head with tie_word_embeddings false."""
    model, tok = make_model(tmp_path, cfg_fn)
    assert main(["export", str(tmp_path / "m"), "--out", str(tmp_path / "hf")]) == 0
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "hf")).eval()
    ids = torch.tensor([tok.encode(LINES[0])[:12]])
    with torch.no_grad():
        ours = model(ids).logits
        theirs = hf(ids).logits
    assert torch.allclose(ours, theirs, atol=1e-4), (ours - theirs).abs().max()
    greedy_hf = hf.generate(ids[:, :4], max_new_tokens=8, do_sample=False, pad_token_id=tok.pad_id)[0, 4:]
    x = ids[:, :4]
    for _ in range(8):
        x = torch.cat([x, model(x).logits[:, -1:].argmax(-1)], 1)
    assert x[0, 4:4 + len(greedy_hf)].tolist() == greedy_hf.tolist()
    hf_tok = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "hf"))
    assert hf_tok(LINES[0])["input_ids"] == tok.encode(LINES[0])


def test_book_preset_is_refused_with_a_reason(tmp_path, capsys):
    make_model(tmp_path, book)
    assert main(["export", str(tmp_path / "m"), "--out", str(tmp_path / "hf")]) == 2
    err = capsys.readouterr().err
    assert "not GPT-2 shaped" in err and "post" in err and "bias on the untied output layer" in err
    assert not (tmp_path / "hf").exists()


def test_pipeline_reproduces_greedy_text_and_files_are_readable(tmp_path, kind="word"):
    """transformers.pipeline on the export gives the prompt + gptlab's greedy completion, spaces and
    start token included, and the folder's files get the normal mode (the umask's), not 0600.
    (Word-level: an untrained byte-level model's greedy tokens are broken UTF-8, which gptlab holds
    back and transformers shows as U+FFFD, so its text would differ for that reason alone.)"""
    import os

    import gptlab
    torch.manual_seed(0)
    tok = Tokenizer.train(LINES, kind=kind, vocab_size=300 if kind == "bpe" else 64, start_with_eot=True)
    model = GPT(tiny(tok.vocab_size)).eval()
    save_model(tmp_path / "m", model, tok, {"kind": "gpt", "model": model.cfg.to_dict()})
    assert main(["export", str(tmp_path / "m"), "--out", str(tmp_path / "hf")]) == 0
    prompt = "wine review : germany :"
    ours = gptlab.load(tmp_path / "m", device="cpu").generate(prompt, max_new_tokens=10, temperature=0)[0].text
    pipe = transformers.pipeline("text-generation", model=str(tmp_path / "hf"), device="cpu")
    theirs = pipe(prompt, max_new_tokens=10, do_sample=False)[0]["generated_text"]
    assert theirs == prompt + ours
    mask = os.umask(0o022)
    os.umask(mask)
    for f in (tmp_path / "hf").iterdir():
        assert f.stat().st_mode & 0o777 == 0o666 & ~mask, f
