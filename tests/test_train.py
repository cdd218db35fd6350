"""The training loop's invariants and the `gptlab train` command, on tiny models."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import COUNTRIES, wine_lines
from safetensors.torch import load_file

import gptlab
from gptlab.cli import main
from gptlab.data import Corpus
from gptlab.training.config import RUN_PRESETS
from gptlab.training.tasks.causal_lm import train

REPO = Path(__file__).resolve().parents[1]



def tiny_cfg(out, **train):
    cfg = RUN_PRESETS["tiny"]()
    cfg.model.context_length = 24
    cfg.model.dropout = 0.0
    t = cfg.train
    t.out, t.precision, t.progress, t.tensorboard = str(out), "fp32", False, False
    t.eval_interval, t.save_interval, t.log_interval, t.sample_prompt = 0, 0, 1, ""
    t.batch_size, t.max_steps, t.warmup_steps, t.lr = 32, 6, 2, 3e-3
    for k, v in train.items():
        setattr(t, k, v)
    return cfg


def corpus():
    return Corpus(records=wine_lines(), source="fixture", skipped=0)


def losses(result):
    return [h["loss"] for h in result.history if "loss" in h]


def weights(out):
    return load_file(str(Path(out) / "model.safetensors"))


def test_grad_accumulation_4x8_equals_1x32(tmp_path):
    a = train(tiny_cfg(tmp_path / "a", grad_accum=1, max_steps=3), corpus())
    b = train(tiny_cfg(tmp_path / "b", grad_accum=4, max_steps=3), corpus())
    assert losses(a) == pytest.approx(losses(b), abs=1e-5)
    wa, wb = weights(tmp_path / "a"), weights(tmp_path / "b")
    for k in wa:
        assert torch.allclose(wa[k], wb[k], atol=1e-5), k


@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_resume_equals_uninterrupted(tmp_path, interrupt_at, optimizer):
    full = train(tiny_cfg(tmp_path / "full", optimizer=optimizer), corpus())
    interrupt_at(3)
    part = train(tiny_cfg(tmp_path / "part", optimizer=optimizer), corpus())
    assert part.interrupted and part.step == 3
    interrupt_at(None)
    rest = train(tiny_cfg(tmp_path / "part", resume=True, optimizer=optimizer), corpus())
    assert rest.step == 6
    assert losses(part) + losses(rest) == pytest.approx(losses(full), abs=1e-6)
    wf, wr = weights(tmp_path / "full"), weights(tmp_path / "part")
    for k in wf:
        assert torch.allclose(wf[k], wr[k], atol=1e-6), k


def test_resume_with_another_optimizer_is_refused_in_one_line(tmp_path, interrupt_at):
    # An AdamW state does not fit Muon's groups: before this check, a ValueError from torch. The
    # image denoiser's default became Muon, so runs saved before that meet this on --resume.
    interrupt_at(3)
    train(tiny_cfg(tmp_path / "run", optimizer="adamw"), corpus())
    interrupt_at(None)
    from gptlab.errors import UserError
    with pytest.raises(UserError, match="trained with --optimizer adamw, not muon"):
        train(tiny_cfg(tmp_path / "run", resume=True, optimizer="muon"), corpus())


def test_muon_adamw_is_torch_muon_on_the_blocks_and_torch_adamw_elsewhere():
    """`--optimizer muon`: the blocks' matrices take torch.optim.Muon's step (with Moonshot's
    learning-rate match), everything else torch's AdamW step; fp32 Newton-Schulz (used where a CPU
    is slow at bf16) differs from the bf16 one only by bf16's rounding."""
    from gptlab.model import GPT, tiny
    from gptlab.training.optim import MuonAdamW, build_optimizer, is_hidden_matrix
    torch.manual_seed(0)
    model = GPT(tiny(50))
    names = {id(p): n for n, p in model.named_parameters()}
    t = tiny_cfg("", optimizer="muon", weight_decay=0.1, lr=0.02).train
    ours = build_optimizer(model, t, torch.device("cpu"))
    assert isinstance(ours, MuonAdamW)
    hidden = [p for p in model.parameters() if is_hidden_matrix(names[id(p)], p)]
    assert hidden and all(names[id(p)].startswith("blocks.") and p.dim() == 2 for p in hidden)
    assert not any(is_hidden_matrix(n, p) for n, p in model.named_parameters() if "emb" in n or "lm_head" in n)

    def grads(step):
        g = torch.Generator().manual_seed(step)
        for p in model.parameters():
            p.grad = torch.randn(p.shape, generator=g)

    rest = [p for p in model.parameters() if not is_hidden_matrix(names[id(p)], p)]
    copies = {id(p): p.detach().clone() for p in model.parameters()}
    ref_model = [torch.nn.Parameter(copies[id(p)].clone()) for p in model.parameters()]
    ref = {id(p): r for p, r in zip(model.parameters(), ref_model)}
    muon = torch.optim.Muon([ref[id(p)] for p in hidden], lr=0.02, weight_decay=0.1, adjust_lr_fn="match_rms_adamw")
    adamw = torch.optim.AdamW([{"params": [ref[id(p)] for p in rest if p.dim() >= 2], "weight_decay": 0.1},
                               {"params": [ref[id(p)] for p in rest if p.dim() < 2], "weight_decay": 0.0}],
                              lr=0.02, betas=(t.beta1, t.beta2), eps=t.adam_eps)
    ours.ns_dtype = torch.bfloat16  # torch's Muon orthogonalises in bf16
    for step in range(3):
        grads(step)
        for p in model.parameters():
            ref[id(p)].grad = p.grad.clone()
        ours.step()
        muon.step()
        adamw.step()
    for p in model.parameters():
        assert torch.allclose(p, ref[id(p)], atol=1e-6), names[id(p)]
        assert not torch.equal(p, copies[id(p)]), names[id(p)]  # every parameter moved
    # fp32 Newton-Schulz: the same update up to bf16's ~3 significant digits.
    from gptlab.training.optim import newton_schulz
    g = torch.randn(32, 96, generator=torch.Generator().manual_seed(5))
    a, b = newton_schulz(g, dtype=torch.float32), newton_schulz(g, dtype=torch.bfloat16).float()
    assert (a - b).norm() / a.norm() < 0.02
    s = torch.linalg.svdvals(a)
    assert float(s.min()) > 0.5 and float(s.max()) < 1.5  # orthogonal up to Muon's loose S'


def test_ddp_two_processes_equal_one(tmp_path, corpus_file):
    common = ["--data", str(corpus_file), "--preset", "tiny", "--context-length", "24", "--dropout", "0",
              "--precision", "fp32", "--no-progress", "--no-tensorboard", "--eval-interval", "0",
              "--sample-prompt", "", "--max-steps", "3", "--batch-size", "16", "--log-interval", "1",
              "--device", "cpu", "--threads", "1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    one = subprocess.run([sys.executable, "-m", "gptlab", "train", *common, "--out", str(tmp_path / "one")],
                         capture_output=True, text=True, env=env, timeout=300)
    assert one.returncode == 0, one.stderr
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          "-m", "gptlab", "train", *common, "--out", str(tmp_path / "two")],
                         capture_output=True, text=True, env=env, timeout=300)
    assert two.returncode == 0, two.stderr[-3000:]
    assert two.stdout.count("trained 3 steps") == 1, two.stdout  # rank 0 reports, not every worker
    w1, w2 = weights(tmp_path / "one"), weights(tmp_path / "two")
    for k in w1:
        assert torch.allclose(w1[k], w2[k], atol=1e-5), k
    h1 = json.loads((tmp_path / "one" / "train_state.json").read_text())["history"]
    h2 = json.loads((tmp_path / "two" / "train_state.json").read_text())["history"]
    assert [h["loss"] for h in h1 if "loss" in h] == pytest.approx([h["loss"] for h in h2 if "loss" in h], abs=1e-5)


def test_end_to_end_cli_train_then_load(tmp_path, corpus_file, capsys):
    out = tmp_path / "model"
    rc = main(["train", "--data", str(corpus_file), "--preset", "tiny", "--context-length", "24",
               "--max-steps", "30", "--eval-interval", "15", "--out", str(out), "--no-progress"])
    assert rc == 0
    # OUT holds the model (and the run's step and history); the resume state is in checkpoint units.
    for name in ("model.safetensors", "config.json", "tokenizer.json", "train_state.json"):
        assert (out / name).exists(), name
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["step-000030"]
    for name in ("model.safetensors", "config.json", "tokenizer.json", "train_state.json", "train_state.safetensors",
                 "manifest.json"):
        assert (out / "checkpoints" / "step-000030" / name).exists(), name
    assert list((out / "tb").iterdir()), "TensorBoard events written"
    assert not list(out.rglob("*.tmp")), "no temporary files left"
    lm = gptlab.load(out, device="cpu")
    assert lm.kind == "gpt" and lm.config["step"] == 30
    ids = lm.encode("wine review : germany :")
    assert lm.tokenizer.unk_id not in ids
    logits = lm.model(torch.tensor([ids])).logits
    assert logits.shape == (1, len(ids), lm.tokenizer.vocab_size)
    err = capsys.readouterr().err
    assert "val loss" in err and "sample:" in err


def test_learns_the_fixture_template(tmp_path):
    """After a short run the model knows which provinces follow `wine review : germany :`."""
    res = train(tiny_cfg(tmp_path / "m", max_steps=300, lr=5e-3, warmup_steps=10), corpus())
    lm = gptlab.load(tmp_path / "m", device="cpu")
    ids = lm.encode("wine review : germany :")
    p = torch.softmax(lm.model(torch.tensor([ids])).logits[0, -1].detach(), -1)
    german = sum(float(p[lm.tokenizer.token_to_id(w)]) for w in COUNTRIES["germany"])
    assert german > 0.9, german
    assert res.val_loss < res.history[0]["loss"]


def test_toml_config_and_flag_precedence(tmp_path, corpus_file):
    toml = tmp_path / "run.toml"
    toml.write_text('preset = "tiny"\nmax_steps = 2\n[model]\nd_model = 16\nn_head = 2\n[train]\nbatch_size = 8\n')
    out = tmp_path / "m"
    rc = main(["train", "--config", str(toml), "--data", str(corpus_file), "--batch-size", "4", "--out", str(out),
               "--no-progress", "--no-tensorboard"])
    assert rc == 0
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["model"]["d_model"] == 16 and cfg["train"]["batch_size"] == 4 and cfg["train"]["max_steps"] == 2


def test_help_lists_every_field_with_defaults(capsys):
    with pytest.raises(SystemExit) as e:
        main(["train", "--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    for flag in ("--d-model", "--n-head", "--batch-size", "--grad-accum", "--batching", "--precision",
                 "--compile", "--resume", "--data", "--template", "--val-fraction", "--data-seed", "--config"):
        assert flag in text, flag
    assert "(default: 32)" in text


def run_cli(args):
    proc = subprocess.run([sys.executable, "-m", "gptlab", *args], capture_output=True, text=True, timeout=120)
    return proc.returncode, proc.stdout, proc.stderr


BAD = [
    (["--d-model", "30", "--n-head", "4"], "not divisible"),
    (["--context-length", "1"], "context_length"),
    (["--batch-size", "0"], "--batch-size"),
    (["--preset", "huge"], "unknown preset"),
    (["--batching", "zip"], "batching"),
]


@pytest.mark.parametrize("extra, msg", BAD)
def test_impossible_sizes_get_one_line_errors(tmp_path, corpus_file, extra, msg):
    rc, _, err = run_cli(["train", "--data", str(corpus_file), "--out", str(tmp_path / "m"), "--preset", "tiny", *extra])
    assert rc == 2
    assert msg in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "m").exists(), "nothing written"


def test_bad_corpora_get_one_line_errors(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    binary = tmp_path / "latin.txt"
    binary.write_bytes("caf\xe9 cr\xe8me\n".encode("latin-1"))
    csv = tmp_path / "t.csv"
    csv.write_text("title,body\nA,b\n")
    cases = [
        (["--data", str(empty)], "empty"),
        (["--data", str(tmp_path / "missing.txt")], "no such"),
        (["--data", str(binary)], "UTF-8"),
        (["--data", str(csv), "--template", "{title} : {text}"], "text"),
        (["--data", str(csv)], "country"),
    ]
    for extra, msg in cases:
        rc, _, err = run_cli(["train", *extra, "--out", str(tmp_path / "m"), "--preset", "tiny"])
        assert rc == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1, (extra, err)
        assert msg.lower() in err.lower(), (extra, err)
    assert not (tmp_path / "m").exists()


def test_out_folder_with_another_model_is_refused_then_resumable(tmp_path, corpus_file):
    out = tmp_path / "m"
    base = ["train", "--data", str(corpus_file), "--preset", "tiny", "--out", str(out), "--max-steps", "2",
            "--no-progress", "--no-tensorboard", "--sample-prompt", ""]
    assert main(base) == 0
    rc, _, err = run_cli(base[:] + ["--d-model", "64"])
    assert rc == 2 and "another config" in err and "--overwrite" in err
    rc, _, err = run_cli(base)
    assert rc == 2 and "--resume" in err
    rc, _, err = run_cli(base + ["--resume", "--d-model", "64"])
    assert rc == 2 and "another config" in err
    assert main(base[:-6] + ["--max-steps", "4", "--resume", "--no-progress"]) == 0
    assert json.loads((out / "config.json").read_text())["step"] == 4


def test_truncated_and_foreign_checkpoints_are_refused(tmp_path, corpus_file):
    out = tmp_path / "m"
    assert main(["train", "--data", str(corpus_file), "--preset", "tiny", "--out", str(out), "--max-steps", "1",
                 "--no-progress", "--no-tensorboard"]) == 0
    w = out / "model.safetensors"
    data = w.read_bytes()
    w.write_bytes(data[: len(data) // 2])
    with pytest.raises(gptlab.errors.UserError, match="truncated"):
        gptlab.load(out)
    w.write_bytes(b"\x00" * 64)
    with pytest.raises(gptlab.errors.UserError, match="safetensors"):
        gptlab.load(out)
    # A safetensors file of another model.
    from safetensors.torch import save_file
    save_file({"foo": torch.zeros(3)}, str(w))
    with pytest.raises(gptlab.errors.UserError, match="another model"):
        gptlab.load(out)
    (out / "config.json").write_text("{not json")
    with pytest.raises(gptlab.errors.UserError, match="JSON"):
        gptlab.load(out)
    with pytest.raises(gptlab.errors.UserError, match="does not exist"):
        gptlab.load(tmp_path / "nowhere")


def test_gptlab_help_runs_as_module():
    rc, out, _ = run_cli(["--help"])
    assert rc == 0 and "train" in out


def _rare_name_csv(path: Path) -> Path:
    """A Kaggle-layout table in which one province ('mittelrhein') and one variety ('kerner') are
    rarer than a small vocabulary's cap."""
    rows = ["country,province,variety,description"]
    lines = wine_lines(200)
    for i, line in enumerate(lines):
        _, c, p, v, desc = [s.strip() for s in line.split(" : ")]
        if i in (5, 77):
            c, p, v = "germany", "mittelrhein", "kerner"
        rows.append(f'{c},{p},{v},"{desc.replace(",", ";")}"')
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return path


@pytest.mark.parametrize("preset, kept", [("tiny", True), ("book", False)])
def test_a_rare_name_keeps_its_word_where_the_recipe_keeps_label_words(tmp_path, preset, kept):
    from gptlab.data import load_corpus
    from gptlab.data.records import label_values, template_fields
    from gptlab.training.tasks.causal_lm import CausalLM
    cfg = RUN_PRESETS[preset]()
    cfg.data.data, cfg.data.val_fraction = str(_rare_name_csv(tmp_path / "w.csv")), 0.0
    cfg.model.vocab_size = 30  # far below the fixture's ~60 words: rare words become [UNK]
    corpus = load_corpus(cfg.data)
    # The label fields are the repeated ones: country, province, variety, not the description.
    labels = label_values(corpus.fields, template_fields(cfg.data.template))
    assert "mittelrhein" in labels and "kerner" in labels and "riesling" in labels
    assert not any(" wine with " in v for v in labels)
    tok = CausalLM(cfg, corpus).tokenizer
    names = "wine review : germany : mittelrhein : kerner :"
    assert (tok.unk_id not in tok.encode(names)) == kept
    assert tok.unknown_words("a crisp zzz wine") == ["zzz"]  # description words are still capped
    assert tok.vocab_size > 30 if kept else tok.vocab_size == 30


def test_a_column_of_many_names_adds_a_bounded_number_of_words():
    from gptlab.training.tasks.causal_lm import gpt_tokenizer
    cfg = RUN_PRESETS["tiny"]()
    cfg.model.vocab_size, cfg.data.template = 30, "{name} : {text}"
    rows = [{"name": f"n{i % 300}", "text": "a b c"} for i in range(6000)]  # 300 names, each 20 times
    corpus = Corpus(records=[f"{r['name']} : {r['text']}" for r in rows], source="fixture", skipped=0, fields=rows)
    tok = gpt_tokenizer(cfg, corpus, list(range(6000)))
    assert tok.vocab_size == 30 + 100  # at least 100 may be added, not all 300
