"""Import parity: a Hugging Face GPT-2 folder loads as a gptlab GPT with transformers' logits."""

import json

import pytest
import torch
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, pre_tokenizers, trainers

import gptlab
from gptlab.checkpoint import save_model
from gptlab.cli import main
from gptlab.data.tokenizer import EOT, Tokenizer
from gptlab.errors import UserError
from gptlab.model import GPT, small

transformers = pytest.importorskip("transformers")

TEXTS = ["The model reads the text one token at a time and predicts the next one.",
         "Attention lets every token look back at the tokens before it.",
         "A student can look inside GPT-2 small with the explainer."] * 20
PROMPT = "The model reads the"


def _bpe(vocab_size: int = 300) -> HFTokenizer:
    """A tiny GPT-2-style byte-level BPE: <|endoftext|> its only special token."""
    hf = HFTokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.decoder = decoders.ByteLevel()
    hf.train_from_iterator(TEXTS, trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOT],
                                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return hf


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory):
    """A random tiny GPT2LMHeadModel saved as safetensors with its tokenizer.json."""
    d = tmp_path_factory.mktemp("gpt2")
    tok = _bpe()
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(vocab_size=tok.get_vocab_size(), n_positions=64, n_embd=32, n_layer=2, n_head=2,
                                  eos_token_id=tok.token_to_id(EOT), bos_token_id=tok.token_to_id(EOT))
    model = transformers.GPT2LMHeadModel(cfg).eval()
    model.save_pretrained(str(d), safe_serialization=True)
    tok.save(str(d / "tokenizer.json"))
    return d, model, tok


def _greedy_hf(model, ids_1xT, n):
    return model.generate(ids_1xT, max_new_tokens=n, do_sample=False, pad_token_id=model.config.eos_token_id,
                          attention_mask=torch.ones_like(ids_1xT))[0, ids_1xT.shape[1]:].tolist()


def test_logits_and_greedy_equal_transformers(hf_folder):
    d, hf_model, tok = hf_folder
    lm = gptlab.load(d, device="cpu")
    assert lm.kind == "gpt" and lm.model.cfg.context_length == 64 and lm.model.cfg.d_ff == 128
    ids = lm.encode(PROMPT)
    assert ids == tok.encode(PROMPT).ids
    ids_1xT = torch.tensor([ids])
    with torch.no_grad():
        ours, theirs = lm.model(ids_1xT).logits, hf_model(ids_1xT).logits
    assert torch.allclose(ours, theirs, atol=1e-4), (ours - theirs).abs().max()
    expected = _greedy_hf(hf_model, ids_1xT, 8)
    x_1xT = ids_1xT
    with torch.no_grad():
        for _ in range(len(expected)):
            x_1xT = torch.cat([x_1xT, lm.model(x_1xT).logits[:, -1:].argmax(-1)], 1)
    assert x_1xT[0, len(ids):].tolist() == expected
    eot = tok.token_to_id(EOT)
    upto_eot = expected[:expected.index(eot)] if eot in expected else expected
    assert lm.generate(PROMPT, max_new_tokens=8, temperature=0)[0].text == tok.decode(upto_eot)


def test_vocab_and_merges_tokenizer(hf_folder, tmp_path):
    d, hf_model, tok = hf_folder
    for f in ("config.json", "model.safetensors"):
        (tmp_path / f).write_bytes((d / f).read_bytes())
    tok.model.save(str(tmp_path))  # vocab.json + merges.txt
    lm = gptlab.load(tmp_path, device="cpu")
    assert lm.encode(PROMPT) == tok.encode(PROMPT).ids
    assert lm.encode("end" + EOT) == tok.encode("end" + EOT).ids  # <|endoftext|> in text is the token
    assert lm.tokenizer.pad_id == lm.tokenizer.unk_id == lm.tokenizer.eot_id == tok.token_to_id(EOT)
    with torch.no_grad():
        ids_1xT = torch.tensor([lm.encode(PROMPT)])
        assert torch.allclose(lm.model(ids_1xT).logits, hf_model(ids_1xT).logits, atol=1e-4)


@pytest.mark.parametrize("tied", [True, False])
def test_export_import_round_trip(tmp_path, tied):
    torch.manual_seed(0)
    tok = Tokenizer.train(TEXTS, kind="bpe", vocab_size=300)
    cfg = small(tok.vocab_size)
    cfg.n_layer, cfg.context_length = 2, 32  # `small`'s shape, fewer blocks: the test stays fast
    cfg.tie_embeddings = cfg.head_bias = tied  # untied: `fast`'s own output layer, without a bias
    model = GPT(cfg).eval()
    save_model(tmp_path / "m", model, tok, {"kind": "gpt", "model": cfg.to_dict()})
    assert main(["export", str(tmp_path / "m"), "--out", str(tmp_path / "hf")]) == 0
    back = gptlab.load(tmp_path / "hf", device="cpu")
    assert back.tokenizer.pad_id == tok.pad_id and back.tokenizer.unk_id == tok.unk_id  # gptlab's specials kept
    ids_1xT = torch.tensor([tok.encode(PROMPT)])
    with torch.no_grad():
        assert torch.allclose(back.model(ids_1xT).logits, model(ids_1xT).logits, atol=1e-5)


def test_generate_command_on_an_hf_folder(hf_folder, capsys):
    d, _, _ = hf_folder
    assert main(["generate", str(d), PROMPT, "--max-new-tokens", "5", "--temperature", "0"]) == 0
    assert capsys.readouterr().out.strip()


def _one_line_error(folder, capsys) -> str:
    assert main(["generate", str(folder), "hi"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err
    return err


def test_pickle_weights_are_refused(hf_folder, tmp_path, capsys):
    d, _, _ = hf_folder
    (tmp_path / "config.json").write_bytes((d / "config.json").read_bytes())
    (tmp_path / "tokenizer.json").write_bytes((d / "tokenizer.json").read_bytes())
    (tmp_path / "pytorch_model.bin").write_bytes(b"not loaded")
    err = _one_line_error(tmp_path, capsys)
    assert "pickle" in err and "safetensors" in err


def test_wrong_model_type_is_refused(hf_folder, tmp_path, capsys):
    d, _, _ = hf_folder
    cfg = json.loads((d / "config.json").read_text())
    cfg.update(model_type="llama", architectures=["LlamaForCausalLM"])
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    err = _one_line_error(tmp_path, capsys)
    assert "llama" in err and "gpt2" in err


@pytest.mark.parametrize("change, words", [
    ({"n_embd": 64}, "shape"),                      # weights of another width
    ({"activation_function": "gelu"}, "activation_function"),  # exact GELU: logits would differ
])
def test_mismatched_hf_folders_are_one_line_errors(hf_folder, tmp_path, capsys, change, words):
    d, _, _ = hf_folder
    for f in ("model.safetensors", "tokenizer.json"):
        (tmp_path / f).write_bytes((d / f).read_bytes())
    cfg = {**json.loads((d / "config.json").read_text()), **change}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    assert words in _one_line_error(tmp_path, capsys)
    with pytest.raises(UserError):
        gptlab.load(tmp_path, device="cpu")


def test_missing_tokenizer_is_one_line_error(hf_folder, tmp_path, capsys):
    d, _, _ = hf_folder
    for f in ("config.json", "model.safetensors"):
        (tmp_path / f).write_bytes((d / f).read_bytes())
    assert "merges.txt" in _one_line_error(tmp_path, capsys)
