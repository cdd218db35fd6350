"""Bad input to every command: corpora, TOML and config.json files, damaged or mismatched model
folders, prompts that are not text, out-of-range flags. Each case must fail with exit status 2 and
exactly one line on stderr (no traceback), and leave every file it could touch as it was.

Cases run in-process through `gptlab.cli.main` on model folders shared by the module; a
subprocess only where the operating system must hand over the bytes (undecodable argv). The HTTP
API has its own tests (tests/test_serve_*.py)."""

from __future__ import annotations

import gzip
import json
import os
import shlex
import shutil
import struct
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import LINES, tiny_model_dir, wine_lines
from safetensors.torch import save_file

import gptlab.cli
from gptlab.api import load
from gptlab.checkpoint import save_model
from gptlab.cli import main
from gptlab.data.tokenizer import Tokenizer
from gptlab.errors import UserError
from gptlab.model import GPT, Classifier, Encoder, book, tiny
from gptlab.model.seq2seq import Seq2Seq, seq2seq_tiny

ROOT = Path(__file__).resolve().parents[1]
FAMILY_SPECIALS = ("[MASK]", "[CLS]", "<s>")


# -- the files the cases work on ------------------------------------------------------------------
def _edit_config(folder: Path, edit: Any) -> None:
    cfg = json.loads((folder / "config.json").read_text())
    edit(cfg)
    (folder / "config.json").write_text(json.dumps(cfg))


def _variant(base: Path, src: Path, name: str, change: Any) -> str:
    """A copy of the model folder `src`, changed by change(folder)."""
    folder = base / name
    shutil.copytree(src, folder)
    change(folder)
    return str(folder)


def _family_models(base: Path) -> dict[str, str]:
    """An encoder, a classifier, a seq2seq model and a book-preset (not GPT-2 shaped) GPT."""
    tok = Tokenizer.train(LINES, vocab_size=200, extra_specials=FAMILY_SPECIALS)
    cfg = tiny(tok.vocab_size)
    torch.manual_seed(0)
    models: dict[str, tuple[torch.nn.Module, dict]] = {
        "enc": (Encoder(cfg), {"kind": "encoder", "model": cfg.to_dict()}),
        "cls": (Classifier(cfg, 2), {"kind": "classifier", "model": cfg.to_dict(),
                                     "classifier": {"labels": ["red", "white"], "pooling": "mean"}}),
        "s2s": (Seq2Seq(seq2seq_tiny(tok.vocab_size)), {"kind": "seq2seq", "model": seq2seq_tiny(tok.vocab_size).to_dict()}),
        "book": (GPT(book(tok.vocab_size)), {"kind": "gpt", "model": book(tok.vocab_size).to_dict()}),
    }
    for name, (model, config) in models.items():
        save_model(base / name, model.eval(), tok, config)
    return {name: str(base / name) for name in models}


CONFIG_EDITS: dict[str, Any] = {
    "cfg_list": lambda c: c.clear(),  # replaced below by a JSON list
    "cfg_nokind": lambda c: c.pop("kind"),
    "cfg_kind_list": lambda c: c.__setitem__("kind", [1]),
    "cfg_kind_bert": lambda c: c.__setitem__("kind", "bert"),
    "cfg_model_list": lambda c: c.__setitem__("model", [32]),
    "cfg_dmodel_str": lambda c: c["model"].__setitem__("d_model", "32"),
    "cfg_layers_bool": lambda c: c["model"].__setitem__("n_layer", True),
    "cfg_vocab_1e9": lambda c: c["model"].__setitem__("vocab_size", 10**9),
    "cfg_vocab_2e7": lambda c: c["model"].__setitem__("vocab_size", 2 * 10**7),
    "cfg_ctx_huge": lambda c: c["model"].__setitem__("context_length", 2**40),
    "cfg_nhead0": lambda c: c["model"].__setitem__("n_head", 0),
    "cfg_nhead3": lambda c: c["model"].__setitem__("n_head", 3),
    "cfg_unknown_key": lambda c: c["model"].__setitem__("n_experts", 8),
    "cfg_dropout2": lambda c: c["model"].__setitem__("dropout", 2.0),
    "cfg_norm_mid": lambda c: c["model"].__setitem__("norm", "mid"),
    "cfg_version99": lambda c: c.__setitem__("format_version", 99),
    "cfg_vocab_small": lambda c: c["model"].__setitem__("vocab_size", 10),
    "cfg_as_classifier": lambda c: c.__setitem__("kind", "classifier"),
}


def _bad_configs(base: Path, m: Path) -> dict[str, str]:
    out = {name: _variant(base, m, name, lambda d, e=edit: _edit_config(d, e)) for name, edit in CONFIG_EDITS.items()}
    (Path(out["cfg_list"]) / "config.json").write_text("[1, 2, 3]")
    out["cfg_notjson"] = _variant(base, m, "cfg_notjson", lambda d: (d / "config.json").write_text("{ not json"))
    out["cfg_nan"] = _variant(base, m, "cfg_nan", lambda d: (d / "config.json").write_text(
        (d / "config.json").read_text().replace('"dropout": 0.0', '"dropout": NaN')))
    out["cfg_binary"] = _variant(base, m, "cfg_binary", lambda d: (d / "config.json").write_bytes(b"\xff\xfe\x00{"))

    def config_is_a_folder(d: Path) -> None:
        (d / "config.json").unlink()
        (d / "config.json").mkdir()
    out["cfg_is_dir"] = _variant(base, m, "cfg_is_dir", config_is_a_folder)
    out["no_config"] = _variant(base, m, "no_config", lambda d: (d / "config.json").unlink())
    return out


def _bad_checkpoints(base: Path, m: Path, m_big: Path) -> dict[str, str]:
    weights = (m / "model.safetensors").read_bytes()
    vocab = Tokenizer.load(m / "tokenizer.json").vocab_size

    def write(data: bytes):
        return lambda d: (d / "model.safetensors").write_bytes(data)

    header = json.dumps({"tok_emb.weight": {"dtype": "F32", "shape": [10**6, 10**6], "data_offsets": [0, 4 * 10**12]}}).encode()
    tok_small = Tokenizer.train(LINES[:2], vocab_size=20)
    tok_big = Tokenizer.train(LINES + [" ".join(f"w{i}" for i in range(300))], vocab_size=500)
    foreign_tok = {"version": "1.0", "model": {"type": "WordLevel", "vocab": {"a": 0, "b": 1}, "unk_token": "a"}}
    return {
        "w_trunc": _variant(base, m, "w_trunc", write(weights[:len(weights) // 2])),
        "w_head_only": _variant(base, m, "w_head_only", write(weights[:100])),
        "w_empty": _variant(base, m, "w_empty", write(b"")),
        "w_text": _variant(base, m, "w_text", write(b"this is not a safetensors file\n" * 10)),
        "w_huge_header": _variant(base, m, "w_huge_header", write(struct.pack("<Q", len(header)) + header)),
        "w_foreign": _variant(base, m, "w_foreign", lambda d: save_file({"x": torch.zeros(3)}, str(d / "model.safetensors"))),
        "w_ints": _variant(base, m, "w_ints", lambda d: save_file(
            {k: torch.zeros(v.shape, dtype=torch.int32) for k, v in GPT(tiny(vocab)).state_dict().items()
             if k != "lm_head.weight"}, str(d / "model.safetensors"))),
        "w_other_model": _variant(base, m, "w_other_model", lambda d: shutil.copyfile(m_big / "model.safetensors",
                                                                                       d / "model.safetensors")),
        "w_missing": _variant(base, m, "w_missing", lambda d: (d / "model.safetensors").unlink()),
        "tok_missing": _variant(base, m, "tok_missing", lambda d: (d / "tokenizer.json").unlink()),
        "tok_notjson": _variant(base, m, "tok_notjson", lambda d: (d / "tokenizer.json").write_text("{ nope")),
        "tok_small": _variant(base, m, "tok_small", lambda d: tok_small.save(d / "tokenizer.json")),
        "tok_big": _variant(base, m, "tok_big", lambda d: tok_big.save(d / "tokenizer.json")),
        "tok_foreign": _variant(base, m, "tok_foreign", lambda d: (d / "tokenizer.json").write_text(json.dumps(foreign_tok))),
    }


CORPUS_FILES: dict[str, tuple[str, bytes]] = {
    "c_good": ("good.txt", "\n".join(wine_lines(60)).encode()),
    "c_empty": ("empty.txt", b""),
    "c_blank": ("blank.txt", b"\n  \n\n"),
    "c_latin1": ("latin1.txt", "caf\u00e9 wine review\n".encode("latin-1")),
    "c_bad_json": ("bad.json", b'[{"description": 1},'),
    "c_obj": ("obj.json", b'{"description": "a"}'),
    "c_empty_json": ("empty.json", b"[]"),
    "c_bad_jsonl": ("bad.jsonl", b'{"description": "a"}\nnot json\n'),
    "c_list": ("list.jsonl", b"[1, 2]\n"),
    "c_nocol": ("nocol.csv", b"name,score\nriesling,90\n"),
    "c_header": ("header.csv", b"country,province,variety,description\n"),
    "c_text": ("text.xyz", b"wine review\n"),
    "c_gz": ("gz.txt", gzip.compress(b"wine review\n")),
    "c_zip": ("zip.txt", b"PK\x03\x04 the start of a zip archive"),
}
TOMLS: dict[str, bytes] = {
    "toml_bad": b"lr = = 1\n",
    "toml_unknown": b"warp_speed = 9\n",
    "toml_section_unknown": b"[train]\nwarp_speed = 9\n",
    "toml_type": b'lr = "fast"\n',
    "toml_range": b"[train]\nlr = -1.0\n",
    "toml_list": b"seed = [1, 2]\n",
    "toml_utf16": "lr = 1.0\n".encode("utf-16"),
    "toml_gen_range": b"temperature = -1.0\n",
    "toml_gen_seed": b"seed = 100000000000000000000000\n",
}


def _files(base: Path) -> dict[str, str]:
    """The corpora (and folders of them) and TOML files."""
    d = base / "corpora"
    d.mkdir()
    out = {}
    for key, (name, data) in CORPUS_FILES.items():
        (d / name).write_bytes(data)
        out[key] = str(d / name)
    for key, data in TOMLS.items():
        (base / f"{key}.toml").write_bytes(data)
        out[key] = str(base / f"{key}.toml")
    (d / "none").mkdir()
    (d / "none" / "readme.md").write_text("no corpus here")
    (d / "two").mkdir()
    for n in ("a.txt", "b.txt"):
        (d / "two" / n).write_text("wine review\n")
    return {**out, "c_dir_none": str(d / "none"), "c_dir_two": str(d / "two")}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Every path a case names, under one folder (which each case checks is left as it was)."""
    base = tmp_path_factory.mktemp("bad_input")
    m = Path(tiny_model_dir(base / "m"))
    m_big = base / "m_big"
    wide = tiny(Tokenizer.load(m / "tokenizer.json").vocab_size)  # m's vocabulary, another width: weights that do not fit m
    wide.d_model, wide.d_ff = 48, 96
    save_model(m_big, GPT(wide), Tokenizer.load(m / "tokenizer.json"), {"kind": "gpt", "model": wide.to_dict()})
    tiny_model_dir(base / "m2", seed=1)
    (base / "file").write_text("a file, not a folder\n")
    (base / "empty_dir").mkdir()
    (base / "nonempty").mkdir()
    (base / "nonempty" / "keep.txt").write_text("precious\n")
    paths = {"base": str(base), "m": str(m), "m2": str(base / "m2"), "m_big": str(m_big), "file": str(base / "file"),
             "empty_dir": str(base / "empty_dir"), "nonempty": str(base / "nonempty"),
             "missing": str(base / "no_such_thing"), "out": str(base / "new_out")}
    paths.update(_family_models(base))
    paths.update(_bad_configs(base, m))
    paths.update(_bad_checkpoints(base, m, m_big))
    paths.update(_files(base))
    return paths


def snapshot(folder: str) -> dict[str, tuple[int, int] | None]:
    """Every path under `folder`: a file's (size, mtime), None for a folder."""
    out: dict[str, tuple[int, int] | None] = {}
    for dirpath, dirnames, filenames in os.walk(folder):
        for name in dirnames:
            out[os.path.join(dirpath, name)] = None
        for name in filenames:
            st = os.stat(os.path.join(dirpath, name))
            out[os.path.join(dirpath, name)] = (st.st_size, st.st_mtime_ns)
    return out


# -- the cases --------------------------------------------------------------------------------------
TRAIN = ("train --data {c_good} --preset tiny --out {out} --device cpu --no-progress --no-tensorboard "
         "--max-steps 1 --eval-interval 0 --sample-prompt ''")
P = "'wine review : germany'"

TRAIN_FLAGS = [
    "--threads -1", "--log-interval 0", "--beta1 2", "--beta2 1", "--adam-eps -1", "--adam-eps 0",
    "--weight-decay -1", "--seed 100000000000000000000000", "--seed -1", "--lr -1", "--lr nan", "--min-lr inf",
    "--batch-size 0", "--batch-size 32 --grad-accum 3", "--epochs -1", "--max-steps -5", "--time-budget -1",
    "--grad-clip -1", "--ema 1", "--warmup-steps -1", "--eval-batches -1", "--sample-temperature -1",
    "--dropout 1", "--attn-dropout 2", "--ln-eps -1", "--d-model 0", "--d-model 30 --n-head 4", "--n-layer 0",
    "--n-layer 100000", "--d-ff 0", "--head-dim -1", "--context-length 1", "--context-length 1000000000",
    "--vocab-size 1", "--vocab-size 1000000000", "--preset huge", "--tokenizer sentencepiece", "--batching zip",
    "--precision fp8", "--optimizer sgd", "--schedule linear", "--attn-impl flash", "--norm mid",
    "--activation swish", "--device tpu", "--max-steps abc", "--warp-speed 9", "--no-such-flag",
    "--out {file}", "--out {file}/sub", "--out {m}", "--resume", "--val-fraction 1", "--max-records -1", "--data-seed -1",
    "--builtin-size 0 --data builtin", "--builtin-size 1000000000000 --data builtin",
    "--config {toml_bad}", "--config {toml_unknown}", "--config {toml_section_unknown}", "--config {toml_type}",
    "--config {toml_range}", "--config {toml_list}", "--config {toml_utf16}", "--config {missing}",
]
CORPORA = [
    "--data {missing}", "--data {c_empty}", "--data {c_blank}", "--data {c_latin1}", "--data {c_bad_json}",
    "--data {c_obj}", "--data {c_empty_json}", "--data {c_bad_jsonl}", "--data {c_list}", "--data {c_nocol}",
    "--data {c_header}", "--data {c_text}", "--data {c_gz}", "--data {c_zip}",
    "--data {c_dir_none}", "--data {c_dir_two}", "--data {c_good} --format parquet",
    "--data {c_good} --encoding klingon", "--data {c_nocol} --template '{{nope}}'", "--data ''",
    "--data hf:", "--data {c_nocol} --format wine",
    "--data {c_latin1} --encoding utf-16",
]
MODEL_FOLDERS = [
    "missing", "file", "empty_dir", "no_config", "cfg_is_dir", "cfg_notjson", "cfg_binary", "cfg_list",
    "cfg_nokind", "cfg_kind_list", "cfg_kind_bert", "cfg_model_list", "cfg_dmodel_str", "cfg_layers_bool",
    "cfg_vocab_1e9", "cfg_vocab_2e7", "cfg_ctx_huge", "cfg_nhead0", "cfg_nhead3", "cfg_unknown_key",
    "cfg_dropout2", "cfg_nan", "cfg_norm_mid", "cfg_version99", "cfg_vocab_small", "cfg_as_classifier",
    "w_trunc", "w_head_only", "w_empty", "w_text", "w_huge_header", "w_foreign", "w_ints", "w_other_model",
    "w_missing", "tok_missing", "tok_notjson", "tok_small", "tok_big", "tok_foreign", "enc", "s2s",
]
SAMPLING = [
    "-T -1", "-T nan", "-T inf", "--top-p 0", "--top-p 1.5", "--top-k -1", "--top-k 1.5", "--min-p 1",
    "--min-p -0.1", "--repetition-penalty 0", "--repetition-penalty -1", "--max-tokens -1",
    "-T 1e-300", "--seed 100000000000000000000000", "--seed 18446744073709551616", "--seed abc", "-n 0",
    "-n 1000000000",
    "--stream --json", "--dtype int4", "--dtype fp16 --device cpu", "--device cuda:7", "--device nonsense:1",
    "--config {toml_gen_range}", "--config {toml_gen_seed}", "--config {toml_bad}", "--max-params 0",
    "--max-params 1000",
]
COMMANDS = [
    # eval
    "eval {m} --samples -1", "eval {m} --seed 100000000000000000000000", "eval {m} -T -1",
    "eval {m} --country atlantis", "eval {enc}", "eval {missing}", "eval {cfg_kind_list}", "eval {tok_big}",
    "eval {m} --max-params 10", "eval",
    # explain
    f"explain {{m}} {P} --steps 0", f"explain {{m}} {P} --steps 1000000", f"explain {{m}} {P} --top 0",
    f"explain {{m}} {P} --layer 9", f"explain {{m}} {P} --head x", f"explain {{m}} {P} --json {{empty_dir}}",
    f"explain {{m}} {P} --out {{empty_dir}}", f"explain {{m}} {P} --out {{file}}/x.html",
    f"explain {{m}} {P} --out {{base}}/a.html --json {{base}}/a.html", f"explain {{m}} {P} -T -1",
    f"explain {{m}} {P} --seed 100000000000000000000000", "explain --trace {missing}", "explain --trace {c_good}",
    "explain --trace {m}/config.json", f"explain {{m}} {P} --trace {{c_good}}", "explain", f"explain {{s2s}} {P}",
    f"explain {{tok_small}} {P}", f"explain {{w_other_model}} {P}", f"explain {{m}} {P} --max-params 5",
    # temperature
    "temperature --logits 1,abc", "temperature --logits 1,nan", "temperature --logits 1,1e999",
    "temperature --logits ,", "temperature --logits 1,2 --labels a", "temperature --labels a,b", "temperature",
    f"temperature {{m}} {P} -T -1", f"temperature {{m}} {P} -T 1e-320", f"temperature {{m}} {P} --decimals 13",
    f"temperature {{m}} {P} --top 0", f"temperature {{m}} {P} --logits 1,2", f"temperature {{cfg_vocab_1e9}} {P}",
    f"temperature {{tok_big}} {P}", f"temperature {{enc}} {P}", f"temperature {{m}} {P} --max-params 1",
    # seq2seq
    "seq2seq train --out {out} --max-number 5", "seq2seq train --out {out} --val-fraction 0.6",
    "seq2seq train --out {out} --data {missing}", "seq2seq train --out {out} --data {c_empty}",
    "seq2seq train --out {out} --vocab-size 1", "seq2seq train --out {out} --adam-eps 0",
    "seq2seq train --out {file}", "seq2seq train --out {out} --preset huge", "seq2seq train --out {out} --config {toml_bad}",
    "seq2seq translate hello --model {missing}", "seq2seq translate hello --model {m}",
    "seq2seq translate hello --model {cfg_kind_list}", "seq2seq translate hello --model {w_trunc}",
    "seq2seq explain hello --model {missing}", "seq2seq explain hello --model {enc}", "seq2seq bogus",
    "seq2seq translate hello --model {s2s} --beam 1000000000", "seq2seq translate hello --model {s2s} --beam 0",
    "seq2seq explain hello --model {s2s} --beam -2",
    # encoder
    "encoder pretrain --out {out} --mask-prob 0", "encoder pretrain --out {out} --mask-prob 1",
    "encoder pretrain --out {out} --data {missing}", "encoder pretrain --out {file}",
    "encoder pretrain --out {out} --preset huge", "encoder pretrain --out {out} --data {c_good} --init {missing}",
    "encoder classify --out {out} --data {c_nocol} --text-field name --label nope", "encoder classify --out {out} --word-dropout 1",
    "encoder classify --out {out} --top -1", "encoder classify --out {out} --pooling max",
    "encoder classify --out {out} --data {c_good} --model {missing}", "encoder predict hello --model {missing}",
    "encoder predict hello --model {m}", "encoder predict hello --model {cfg_as_classifier}",
    "encoder predict hello --model {cls} --top -5", "encoder predict hello --model {cls} --top 0",
    "encoder explain hello --model {missing}", "encoder explain hello --model {s2s}",
    # scale
    "scale --out {out} --sizes abc", "scale --out {out} --tokens abc", "scale --out {out} --tokens -5",
    "scale --out {out} --d-model 64", "scale --out {out} --max-steps 5", "scale --out {out} --epochs 2",
    "scale --out {out} --sizes 16", "scale --out {out} --sizes 16 32 --tokens 1000",
    "scale --out {out} --data {missing} --sizes 16 32", "scale --out {file} --data {c_good} --sizes 16 32",
    "scale --out {out} --bootstrap -1",
    "scale --out {out} --lr -1", "scale --out {out} --data-sizes ''",
    # export
    "export {m} --out {m2}", "export {m} --out {m}", "export {m} --out {m}/hf", "export {m} --out {base} --overwrite",
    "export {m} --out {file}", "export {m} --out {file}/sub", "export {m} --out {nonempty}",
    "export {book} --out {out}", "export {enc} --out {out}", "export {missing} --out {out}", "export {m}",
    "export {m} --out {out} --max-params 10", "export {cfg_kind_list} --out {out}", "export {w_trunc} --out {out}",
    "export {tok_small} --out {out}", "export {w_other_model} --out {out}",
]
# Prompts and texts that are not text: a lone surrogate is how Python hands over bytes that are
# not UTF-8 from the command line (checked for real in the subprocess test below).
BAD_TEXT = "wine review : \udcff germany"
PROMPTS = [
    ("generate", ["{m}", BAD_TEXT]), ("generate", ["{m}", "\ud800"]), ("explain", ["{m}", BAD_TEXT]),
    ("temperature", ["{m}", BAD_TEXT]), ("seq2seq", ["translate", BAD_TEXT, "--model", "{s2s}"]),
    ("seq2seq", ["explain", BAD_TEXT, "--model", "{s2s}"]), ("encoder", ["predict", BAD_TEXT, "--model", "{cls}"]),
    ("encoder", ["explain", BAD_TEXT, "--model", "{enc}"]),
]
# Known not to pass yet, each with the reason (none today).
XFAIL: dict[str, str] = {}


def _cases() -> list[tuple[str, list[str]]]:
    cases = [(f"train {f}", shlex.split(f"{TRAIN} {f}")) for f in TRAIN_FLAGS]
    cases += [(f"corpus {c}", shlex.split(f"{TRAIN} {c}")) for c in CORPORA]
    cases += [(f"generate {{{name}}}", ["generate", f"{{{name}}}", "wine review", "--max-tokens", "2"]) for name in MODEL_FOLDERS]
    cases += [(f"generate {s}", shlex.split(f"generate {{m}} {P} --max-tokens 2 {s}")) for s in SAMPLING]
    cases += [(c, shlex.split(c)) for c in COMMANDS]
    cases += [(f"{cmd} {' '.join(a)!r}", [cmd, *a]) for cmd, a in PROMPTS]
    return cases


CASES = _cases()


def _param(case_id: str, argv: list[str]) -> Any:
    marks = [pytest.mark.xfail(reason=XFAIL[case_id], strict=True)] if case_id in XFAIL else []
    return pytest.param(argv, id=case_id.encode("ascii", "backslashreplace").decode(), marks=marks)


def test_the_matrix_is_big_enough() -> None:
    assert len(CASES) >= 120 and len({c for c, _ in CASES}) == len(CASES)


@pytest.fixture
def crash_logs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The system temp folder, for the CLI's last-resort handler: a test's own folder."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    return tmp_path


@pytest.mark.parametrize("argv", [_param(c, a) for c, a in CASES])
def test_bad_input_fails_in_one_line_and_changes_nothing(world: dict[str, str], capsys: Any, crash_logs: Path,
                                                         argv: list[str]) -> None:
    before = snapshot(world["base"])
    rc = main([a.format(**world) for a in argv])
    out = capsys.readouterr()
    assert rc == 2, (rc, out.err)
    assert len(out.err.splitlines()) == 1 and "error" in out.err and "Traceback" not in out.err, out.err
    assert snapshot(world["base"]) == before, "files changed"


# -- what needs a process of its own, or the Python API ---------------------------------------------
@pytest.mark.parametrize("argv", [["generate", "{m}", b"wine review : \xff germany"],
                                  ["seq2seq", "translate", b"caf\xe9", "--model", "{s2s}"]],
                         ids=["generate", "seq2seq translate"])
def test_undecodable_bytes_on_the_command_line(world: dict[str, str], argv: list[Any]) -> None:
    before = snapshot(world["base"])
    args = [a.format(**world).encode() if isinstance(a, str) else a for a in argv]
    env = {**os.environ, "LC_ALL": "C.UTF-8", "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable.encode(), b"-m", b"gptlab", *args], cwd=ROOT, capture_output=True,
                       env=env, timeout=120)
    err = r.stderr.decode("utf-8", "replace")
    assert r.returncode == 2 and len(err.splitlines()) == 1 and "not valid text" in err, err
    assert snapshot(world["base"]) == before


API_CASES = {
    "max_params": lambda w: load(w["m"], "cpu", max_params=100),
    "vocab_mismatch": lambda w: load(w["tok_small"], "cpu"),
    "huge_config": lambda w: load(w["cfg_vocab_1e9"], "cpu"),
    "seed_overflow": lambda w: load(w["m"], "cpu").generate("wine review", seed=10**23, max_new_tokens=1),
    "bad_prompt": lambda w: load(w["m"], "cpu").generate(BAD_TEXT, max_new_tokens=1),
    "bad_prompt_stream": lambda w: list(load(w["m"], "cpu").stream(BAD_TEXT, max_new_tokens=1)),
    "bad_prompt_explain": lambda w: load(w["m"], "cpu").explain(BAD_TEXT, steps=1),
    "bad_prompt_table": lambda w: load(w["m"], "cpu").temperature_table(BAD_TEXT, [1.0]),
    "tiny_temperature": lambda w: load(w["m"], "cpu").temperature_table("wine review", [1.0, 1e-300]),
    "nan_temperature": lambda w: load(w["m"], "cpu").generate("wine review", temperature=float("nan")),
}


@pytest.mark.parametrize("name", list(API_CASES))
def test_python_api_refuses_in_one_line(world: dict[str, str], name: str) -> None:
    with pytest.raises(UserError) as e:
        API_CASES[name](world)
    assert "\n" not in str(e.value)


def test_an_unexpected_error_is_one_line_naming_a_log_with_the_traceback(world: dict[str, str], capsys: Any,
                                                                         crash_logs: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(args: Any) -> int:
        raise RuntimeError("something nobody foresaw\nsecond line")

    real = gptlab.cli.build_parser

    def parser() -> Any:
        p = real()
        p.set_defaults(func=broken)
        sub = next(a for a in p._actions if a.dest == "command")
        sub.choices["generate"].set_defaults(func=broken)  # type: ignore[union-attr]
        return p

    monkeypatch.setattr(gptlab.cli, "build_parser", parser)
    rc = main(["generate", world["m"], "wine review"])
    err = capsys.readouterr().err
    assert rc == 1 and len(err.splitlines()) == 1 and "RuntimeError: something nobody foresaw second line" in err
    log = Path(err.split("the traceback is in ")[1].split(";")[0])
    assert log.parent == crash_logs and "Traceback" in log.read_text() and "something nobody foresaw" in log.read_text()


def test_export_replaces_an_old_export_only_with_overwrite(world: dict[str, str], tmp_path: Path, capsys: Any) -> None:
    out = tmp_path / "hf"
    assert main(["export", world["m"], "--out", str(out)]) == 0
    (out / "stale.txt").write_text("left from before")
    assert main(["export", world["m"], "--out", str(out)]) == 2
    assert (out / "stale.txt").exists()
    assert main(["export", world["m"], "--out", str(out), "--overwrite"]) == 0
    assert not (out / "stale.txt").exists() and (out / "config.json").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf"], "no temporary folder left beside it"


def test_a_script_answers_bad_input_in_one_line(capsys: Any) -> None:
    """The benchmarks' entry (`run_script`): a UserError is one line and status 2, as in the CLI."""
    from gptlab.errors import UserError, run_script

    def bad() -> int:
        raise UserError("--lr must be >= 0\n(got -1)")

    assert run_script(bad, "bench.py") == 2
    assert capsys.readouterr().err == "bench.py: error: --lr must be >= 0 (got -1)\n"
    assert run_script(lambda: None, "bench.py") == 0


@pytest.mark.parametrize("script,args", [("alignment.py", ["--skip", "ppo,nonsense"]),
                                         ("alignment.py", ["--seed", "-1"]),
                                         ("text_to_image.py", ["--lr", "-1"])])
def test_benchmarks_refuse_bad_flags_without_a_traceback(tmp_path: Path, script: str, args: list[str]) -> None:
    bench = Path(__file__).resolve().parents[1] / "benchmarks" / script
    p = subprocess.run([sys.executable, str(bench), "--out", str(tmp_path / "out"), *args],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and "Traceback" not in p.stderr, p.stderr
    assert len(p.stderr.strip().splitlines()) == 1 and p.stderr.startswith(f"{script}: error: ")
    assert not (tmp_path / "out").exists(), "nothing written before the check"


def test_time_to_quality_refuses_an_out_folder_that_holds_something(tmp_path: Path) -> None:
    # It trains with overwrite: a user's folder would be replaced, so it is refused before any work.
    out = tmp_path / "mine"
    out.mkdir()
    (out / "model.safetensors").write_text("keep me")
    bench = Path(__file__).resolve().parents[1] / "benchmarks" / "time_to_quality.py"
    p = subprocess.run([sys.executable, str(bench), "--skip-keras", "--out", str(out)],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and "Traceback" not in p.stderr, p.stderr
    assert len(p.stderr.strip().splitlines()) == 1 and "not an empty folder" in p.stderr
    assert [f.name for f in out.iterdir()] == ["model.safetensors"]
