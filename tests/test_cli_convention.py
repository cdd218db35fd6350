"""One CLI convention for every command: a positional MODEL (with -m/--model as its alias) for the
commands that use a model, --max-steps for the training ones, one device default, -p/--prompt
beside the positional prompt, and usage errors that name the subcommand and show its usage."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import LINES, tiny_model_dir

from gptlab.api import default_device
from gptlab.checkpoint import save_model
from gptlab.cli import build_parser, main
from gptlab.cli.common import UsageError, settle
from gptlab.data.tokenizer import Tokenizer
from gptlab.model import Classifier, tiny
from gptlab.model.seq2seq import Seq2Seq, seq2seq_tiny

# command -> the positionals after MODEL it is tried with (each command's usage)
USE = {
    ("generate",): ["wine review"],
    ("explain",): ["wine review"],
    ("temperature",): ["wine review"],
    ("eval",): [],
    ("export",): [],
    ("seq2seq", "translate"): ["one two", "three"],
    ("seq2seq", "explain"): ["one two"],
    ("encoder", "predict"): ["ripe plum", "crisp"],
    ("encoder", "explain"): ["ripe plum"],
}
TEXT = {"generate": "prompt", "explain": "prompt", "temperature": "prompt", "translate": "text", "predict": "text"}
TRAIN = [("train",), ("seq2seq", "train"), ("encoder", "pretrain"), ("encoder", "classify")]
ALL = [("train",), ("eval",), ("generate",), ("explain",), ("temperature",), ("serve",), ("scale",), ("export",),
       ("seq2seq",), *[("seq2seq", a) for a in ("train", "translate", "explain")],
       ("encoder",), *[("encoder", a) for a in ("pretrain", "classify", "predict", "explain")]]


def parse(argv: list[str]) -> Any:
    args, extra = build_parser().parse_known_args(argv)
    settle(args, extra)
    return args


@pytest.mark.parametrize("cmd", list(USE), ids=" ".join)
def test_every_use_command_takes_a_positional_model_and_the_flag_alike(cmd: tuple[str, ...]) -> None:
    rest = USE[cmd]
    pos = parse([*cmd, "runs/m", *rest])
    flag = parse([*cmd, "-m", "runs/m", *rest])
    long = parse([*cmd, *rest, "--model", "runs/m"])
    same = parse([*cmd, "runs/m", *rest, "--model", "runs/m"])  # the same folder both ways is fine
    for args in (pos, flag, long, same):
        assert args.model == "runs/m"
        key = TEXT.get(cmd[-1])
        if cmd[-1] == "explain" and len(cmd) == 2:
            assert args.text == rest[0]
        elif key:
            got = getattr(args, key)
            assert (got if isinstance(got, list) else [got]) == rest, (cmd, got)


def test_texts_may_come_after_options() -> None:
    args = parse(["seq2seq", "translate", "runs/m", "--beam", "2", "one", "--device", "cpu", "two"])
    assert (args.model, args.text, args.beam, args.device) == ("runs/m", ["one", "two"], 2, "cpu")
    args = parse(["encoder", "explain", "runs/m", "--layer", "0", "the text"])
    assert (args.model, args.text, args.layer) == ("runs/m", "the text", "0")


@pytest.mark.parametrize("cmd", ["generate", "explain", "temperature"])
def test_prompt_flag(cmd: str) -> None:
    for argv in (["runs/m", "-p", "hi"], ["-m", "runs/m", "--prompt", "hi"], ["--prompt", "hi", "runs/m"]):
        args = parse([cmd, *argv])
        assert (args.model, args.prompt) == ("runs/m", "hi"), argv
    with pytest.raises(UsageError, match="unrecognized arguments: other"):
        parse([cmd, "runs/m", "other", "-p", "hi"])


def test_two_different_models_are_refused(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    for d in (a, b):
        d.mkdir()
        (d / "config.json").write_text("{}")
    with pytest.raises(UsageError, match="two models given"):
        parse(["generate", str(a), "-m", str(b)])
    with pytest.raises(UsageError, match="two models given"):
        parse(["seq2seq", "translate", "-m", str(b), str(a), "text"])


@pytest.mark.parametrize("cmd", list(USE), ids=" ".join)
def test_no_model_is_a_usage_error(capsys: Any, cmd: tuple[str, ...]) -> None:
    if cmd in (("explain",), ("temperature",)):
        return  # these also run without one (--trace, --logits) and say so themselves
    assert main(list(cmd)) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "MODEL" in err and f"usage: gptlab {' '.join(cmd)} [options] MODEL" in err


@pytest.mark.parametrize("cmd", TRAIN, ids=" ".join)
def test_every_training_command_takes_max_steps(cmd: tuple[str, ...]) -> None:
    args = parse([*cmd, "--max-steps", "7"])
    assert args.opt__train__max_steps == 7


@pytest.mark.parametrize("cmd", ALL, ids=" ".join)
def test_an_unknown_flag_shows_the_subcommands_usage(capsys: Any, cmd: tuple[str, ...]) -> None:
    prog = "gptlab " + " ".join(cmd)
    groups = cmd in (("seq2seq",), ("encoder",))  # there a word after the flag is read as the ACTION
    for bad in (["--no-such-flag"], *([] if groups else [["--no-such-flag", "value"]])):
        assert main([*cmd, *bad]) == 2
        err = capsys.readouterr().err
        assert len(err.splitlines()) == 1 and "Traceback" not in err, err
        assert err.startswith(f"{prog}: error: unrecognized arguments: --no-such-flag"), err
        assert f"usage: {prog} [options]" in err and f"`{prog} --help`" in err, err


def test_a_bad_value_shows_the_subcommands_usage(capsys: Any) -> None:
    assert main(["seq2seq", "translate", "runs/m", "--beam", "abc"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("gptlab seq2seq translate: error: argument --beam")
    assert "usage: gptlab seq2seq translate [options] MODEL [TEXT ...]" in err and len(err.splitlines()) == 1


@pytest.mark.parametrize("cmd", [c for c in USE if c not in (("export",),)], ids=" ".join)
def test_one_device_default(cmd: tuple[str, ...]) -> None:
    args = parse([*cmd, "runs/m", *USE[cmd]])
    assert args.device is None  # resolved by common.resolve_device: cuda when available, else cpu
    from gptlab.cli.common import resolve_device
    assert resolve_device(None) == default_device() and resolve_device("cpu") == "cpu"


def test_classify_model_flag_is_the_encoder_to_start_from(capsys: Any) -> None:
    with pytest.raises(SystemExit):
        main(["encoder", "classify", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "--model PRETRAINED is not a model to use" in out
    assert parse(["encoder", "classify", "--model", "runs/mlm"]).opt__train__model == "runs/mlm"


# -- end to end, on small untrained models --------------------------------------------------------
@pytest.fixture(scope="module")
def models(tmp_path_factory: Any) -> dict[str, str]:
    base = tmp_path_factory.mktemp("convention")
    tok = Tokenizer.train(LINES, vocab_size=200, extra_specials=("[MASK]", "[CLS]", "<s>"))
    cfg = tiny(tok.vocab_size)
    torch.manual_seed(0)
    save_model(base / "cls", Classifier(cfg, 2).eval(), tok,
               {"kind": "classifier", "model": cfg.to_dict(), "classifier": {"labels": ["red", "white"], "pooling": "mean"}})
    s2s = seq2seq_tiny(tok.vocab_size)
    save_model(base / "s2s", Seq2Seq(s2s).eval(), tok, {"kind": "seq2seq", "model": s2s.to_dict()})
    return {"gpt": str(tiny_model_dir(base / "gpt")), "cls": str(base / "cls"), "s2s": str(base / "s2s")}


def test_end_to_end_positional_model(capsys: Any, models: dict[str, str]) -> None:
    runs = [
        ["generate", models["gpt"], "wine review", "--max-tokens", "2", "--device", "cpu"],
        ["generate", "-m", models["gpt"], "-p", "wine review", "--max-tokens", "2"],
        ["explain", models["gpt"], "-p", "wine review", "--steps", "1", "--device", "cpu"],
        ["temperature", models["gpt"], "wine review", "--device", "cpu"],
        ["seq2seq", "translate", models["s2s"], "one two", "--device", "cpu", "three"],
        ["seq2seq", "explain", models["s2s"], "one two", "--no-color"],
        ["encoder", "predict", models["cls"], "ripe plum", "--top", "1", "crisp"],
        ["encoder", "explain", "-m", models["cls"], "ripe plum", "--no-color"],
    ]
    for argv in runs:
        assert main(argv) == 0, (argv, capsys.readouterr().err)
    out = capsys.readouterr().out
    assert "red" in out or "white" in out


def test_many_samples_warn_that_n_counts_samples(capsys: Any, models: dict[str, str]) -> None:
    assert main(["generate", models["gpt"], "wine review", "-n", "40", "--max-tokens", "1", "--device", "cpu"]) == 0
    err = capsys.readouterr().err
    assert "warning" in err and "-n counts samples" in err
