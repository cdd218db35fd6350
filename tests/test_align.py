"""`gptlab align`: instruction data, SFT that stops, the reward model, DPO, PPO, GRPO, best-of-n,
exact resume of every task, and bad input in one line. Tiny models on a tiny Kaggle-layout CSV
(tests/align_fixtures.py); each training here takes seconds."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from align_fixtures import WORDS, base_model, loop_kw, toy_rows, write_csv
from conftest import one_line_error
from test_loop import test_resume_equals_uninterrupted as resumes_exactly

from gptlab.checkpoint import load_checkpoint, save_model
from gptlab.cli import main
from gptlab.data import DataConfig
from gptlab.data.instructions import (
    Pair,
    check_response,
    gold_points,
    instruction_examples,
    preference_pairs,
    reflection_examples,
    tier_points,
    write_pairs,
)
from gptlab.errors import UserError
from gptlab.model import IGNORE_INDEX
from gptlab.training.align import Sampled, Scorer, best_of_n, encode_response, evaluate_policy, response_rows
from gptlab.training.tasks.dpo import DPOConfig, dpo
from gptlab.training.tasks.ppo import PPO, GRPOConfig, PPOConfig, grpo, ppo
from gptlab.training.tasks.reward import RewardConfig, train_reward
from gptlab.training.tasks.sft import SFTConfig, sft


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """A CSV, a tiny base GPT pretrained on it, and its SFT model."""
    d = tmp_path_factory.mktemp("align")
    csv_path = write_csv(d / "reviews.csv", toy_rows())
    base = base_model(d / "base", csv_path)
    result = sft(SFTConfig(model=str(base), **loop_kw(d / "sft", max_steps=300, lr=3e-3)),
                 DataConfig(data=str(csv_path), val_fraction=0.1))
    return {"dir": d, "csv": csv_path, "base": base, "sft": d / "sft", "sft_result": result}


def _data(lab) -> DataConfig:
    return DataConfig(data=str(lab["csv"]), val_fraction=0.2)


def _word_count(lab, word="superb"):
    _, tok, _ = load_checkpoint(lab["sft"])
    w = tok.token_to_id(word)
    assert w is not None
    return lambda prompt_ids, response_ids: float(sum(i == w for i in response_ids))


def _toy_score(lab, model_dir_or_model, fn, prompts):
    model, tok, _ = load_checkpoint(lab["sft"]) if isinstance(model_dir_or_model, Path) else model_dir_or_model
    ref, _, _ = load_checkpoint(lab["sft"])
    return evaluate_policy(model, ref, tok, prompts, Scorer(tok, fn=fn), seed=0, gold=None)["reward"]


def _prompts(lab, n=32):
    rows = toy_rows(200, seed=9)
    return [e.prompt for e in instruction_examples(rows, points_fraction=0.0)][:n]


# -- data -------------------------------------------------------------------------------------------------
def test_instruction_data_holds_the_header_and_the_review():
    rows = toy_rows(10)
    ex = instruction_examples(rows, points_fraction=1.0)[0]
    assert ex.prompt == f"write a review : {rows[0]['country']} : {rows[0]['variety']} : {rows[0]['points']} points :"
    assert ex.response.startswith(f"{rows[0]['country']} : {rows[0]['province']} : {rows[0]['variety']} : ")
    assert not check_response(ex.prompt, ex.response)
    pairs = preference_pairs(rows * 5, 20, seed=1)
    by_text = {(r["country"], r["description"]): r["points"] for r in rows}
    for p in pairs:
        c, r = (by_text[(p.prompt.split(" : ")[1], x.split(" : ", 3)[3])] for x in (p.chosen, p.rejected))
        assert c > r


def test_the_checker_names_a_wrong_province_or_variety_and_reflection_fixes_it():
    prompt = "write a review : germany : riesling :"
    assert check_response(prompt, "germany : mosel : riesling : crisp .") == []
    assert check_response(prompt, "germany : bordeaux : riesling : crisp .") == ["wrong province bordeaux not in germany"]
    assert check_response(prompt, "germany : mosel : merlot : crisp .", ended=False) == ["wrong variety merlot not riesling", "no end"]
    ex = reflection_examples(toy_rows(20))
    assert ex and all("critique : wrong" in e.prompt and e.prompt.startswith("revise : write a review") for e in ex)


def test_the_gold_reward_decodes_the_generators_points_tier():
    from gptlab.data.synthetic import synthetic_reviews
    centres = tier_points()
    assert centres[0] < 84 < centres[1] < 88 < centres[2] < 92 < centres[3]
    rows = synthetic_reviews(1500, seed=5)
    scored = [(gold_points(r["description"]), r["points"]) for r in rows]
    covered = [(g, p) for g, p in scored if g is not None]
    assert len(covered) > 0.6 * len(rows)

    def tier(p):
        return 0 if p <= 84 else 1 if p <= 88 else 2 if p <= 92 else 3
    right = sum(min(range(4), key=lambda t: abs(centres[t] - g)) == tier(p) for g, p in covered)
    assert right / len(covered) > 0.97
    assert gold_points("a superb , profound wine") == pytest.approx(centres[3])
    assert gold_points("no marker here") is None


# -- SFT --------------------------------------------------------------------------------------------------
def test_sft_puts_the_loss_on_the_response_and_its_end_of_text(lab):
    _, tok, _ = load_checkpoint(lab["sft"])
    ids, n_prompt = encode_response(tok, "write a review : us : merlot :", "us : oregon : merlot : a lean wine .")
    rows = response_rows([(ids, n_prompt), (ids[:n_prompt + 2], n_prompt)], tok.pad_id)
    y = rows.y_BxT
    assert (y[0, :n_prompt - 1] == IGNORE_INDEX).all() and y[0, n_prompt - 1] == ids[n_prompt]
    assert y[0, len(ids) - 2] == tok.eot_id  # the end is a target ...
    assert not (y == tok.pad_id).any()  # ... padding never is ([PAD] != <|endoftext|>)
    assert tok.pad_id != tok.eot_id


def test_the_sft_model_emits_end_of_text_and_stops(lab):
    import gptlab
    m = lab["sft_result"].metrics
    assert m["stop_rate"] == 1.0, m
    lm = gptlab.load(lab["sft"], device="cpu")
    outs = lm.generate(["write a review : us : merlot :"] * 8, max_new_tokens=35, temperature=1.0, seed=0)
    assert all(o.finish_reason == "stop" for o in outs), [o.text for o in outs]
    assert all(o.token_ids[-1] == lm.tokenizer.eot_id for o in outs)


# -- reward model -----------------------------------------------------------------------------------------------
def test_the_reward_model_separates_a_separable_toy_set(lab, tmp_path):
    rows = toy_rows(300, seed=4)
    pairs = [Pair(f"write a review : {r['country']} : {r['variety']} :",
                  f"{r['country']} : {r['province']} : {r['variety']} : a superb wine with {f} .",
                  f"{r['country']} : {r['province']} : {r['variety']} : a simple wine with {f} .")
             for r, f in zip(rows, ["apple", "cherry", "plum", "lime", "peach"] * 60)]
    write_pairs(tmp_path / "pairs.jsonl", pairs)
    r = train_reward(RewardConfig(model=str(lab["sft"]), pairs=str(tmp_path / "pairs.jsonl"), val_rows=60,
                                  **loop_kw(tmp_path / "rm", max_steps=60, lr=1e-3)), _data(lab))
    assert r.metrics["val_accuracy"] > 0.95 and r.metrics["val_pairs"] == 60


def test_a_reward_pair_that_fills_the_context_trains(lab, tmp_path):
    """A pair whose longer text is exactly the context's length is kept and trains (its batch was one
    column too wide: 'sequence of 129 tokens exceeds context_length 128' on real reviews)."""
    from gptlab.training.tasks.reward import RewardTask

    model, tok, _ = load_checkpoint(lab["sft"])
    ctx, prompt = model.cfg.context_length, "write a review : us : merlot :"
    head = long = "us : napa : merlot :"
    while len(encode_response(tok, prompt, long)[0]) < ctx:
        long += " wine"
    assert len(encode_response(tok, prompt, long)[0]) == ctx
    write_pairs(tmp_path / "pairs.jsonl", [Pair(prompt, long, head + " wine .")] * 4)
    task = RewardTask(RewardConfig(model=str(lab["sft"]), pairs=str(tmp_path / "pairs.jsonl"), val_rows=0,
                                   **loop_kw(tmp_path / "rm", max_steps=1, batch_size=4)), _data(lab))
    assert task.dropped == 0
    batch = task.batch(0)
    assert batch.tensors["c_ids"].shape[1] == ctx
    assert torch.isfinite(task.loss_sum(task.model, batch.tensors))


# -- policy optimisation on a toy reward (the count of one word) --------------------------------------------------
def test_ppo_ratio_is_1_and_no_clip_is_active_on_the_first_minibatch_of_a_fresh_rollout(lab, tmp_path):
    t = PPOConfig(model=str(lab["sft"]), rollout_size=16, ppo_epochs=2, **loop_kw(tmp_path / "p", batch_size=8))
    task = PPO(t, _data(lab), reward_fn=_word_count(lab))
    tensors = task.batch(0)
    terms = task.terms(task.model, tensors.tensors)
    m = tensors.tensors["response_mask"] > 0
    assert torch.allclose(terms["ratio"][m], torch.ones(int(m.sum())), atol=1e-5)
    assert not terms["clipped"].any()
    assert int(task.model.rollout_index) == 0 and tensors.count == int(m.sum()) > 0


def test_ppo_raises_a_toy_reward(lab, tmp_path):
    fn, prompts = _word_count(lab), _prompts(lab)
    before = _toy_score(lab, lab["sft"], fn, prompts)
    # The toy reward alone (no checker penalty): the test is about PPO raising what it is given.
    r = ppo(PPOConfig(model=str(lab["sft"]), rollout_size=32, ppo_epochs=2, kl_coef=0.01, val_rows=32, checker_penalty=0.0,
                      **loop_kw(tmp_path / "ppo", batch_size=16, max_steps=64, lr=1e-3)),
            _data(lab), reward_fn=fn, prompts=(_prompts(lab, 200)[32:], prompts))
    assert r.metrics["reward"] > before + 0.5, (before, r.metrics)


def test_the_checker_penalty_falls_on_off_instruction_answers_only(lab):
    _, tok, _ = load_checkpoint(lab["sft"])
    prompts = [tok.encode_prompt("write a review : france : riesling :")] * 3 + [tok.encode_prompt("wine review :")]
    texts = ["france : alsace : riesling : a fine wine .", "us : alsace : riesling : a fine wine .",
             "france : alsace : merlot : a fine wine .", "us : alsace : merlot : a fine wine ."]
    responses = [Sampled(tok.encode(t) + [tok.eot_id], True) for t in texts]
    plain = Scorer(tok, fn=lambda p, r: 1.0)(prompts, responses)
    penalised = Scorer(tok, fn=lambda p, r: 1.0, checker_penalty=2.5)(prompts, responses)
    # followed, wrong country, wrong variety, and a prompt that is no instruction (never judged)
    assert (plain - penalised).tolist() == [0.0, 2.5, 2.5, 0.0]


def test_grpo_and_rloo_raise_a_toy_reward(lab, tmp_path):
    fn, prompts = _word_count(lab), _prompts(lab)
    before = _toy_score(lab, lab["sft"], fn, prompts)
    for method in ("grpo", "rloo"):
        r = grpo(GRPOConfig(model=str(lab["sft"]), group_size=4, method=method, kl_coef=0.01, val_rows=32, checker_penalty=0.0,
                            **loop_kw(tmp_path / method, batch_size=32, max_steps=20, lr=1e-3)),
                 _data(lab), reward_fn=fn, prompts=(_prompts(lab, 200)[32:], prompts))
        assert r.metrics["reward"] > before + 0.5, (method, before, r.metrics)


def test_dpo_raises_a_toy_reward(lab, tmp_path):
    fn, prompts = _word_count(lab), _prompts(lab)
    before = _toy_score(lab, lab["sft"], fn, prompts)
    rows = toy_rows(200, seed=7)
    others = [w for tier in WORDS for w in tier if w != "superb"]
    pairs = [Pair(f"write a review : {r['country']} : {r['variety']} :",
                  f"{r['country']} : {r['province']} : {r['variety']} : a superb wine with lime and a superb finish .",
                  f"{r['country']} : {r['province']} : {r['variety']} : a {w} wine with lime and a {w} finish .")
             for r, w in zip(rows, others * 20)]
    r = dpo(DPOConfig(model=str(lab["sft"]), beta=0.5, **loop_kw(tmp_path / "dpo", max_steps=80, lr=1e-3)),
            _data(lab), pairs=(pairs[:180], pairs[180:]))
    after = _toy_score(lab, load_checkpoint(tmp_path / "dpo"), fn, prompts)
    assert r.metrics["val_accuracy"] == 1.0
    assert after > before + 0.5, (before, after)


def test_best_of_n_reward_rises_with_n_at_its_exact_kl(lab):
    model, tok, _ = load_checkpoint(lab["sft"])
    table = best_of_n(model, tok, _prompts(lab, 16), Scorer(tok, fn=_word_count(lab)), 8, seed=0, gold=None)
    assert [row["n"] for row in table] == [1, 2, 4, 8]
    assert table[0]["kl"] == 0 and table[-1]["reward"] > table[0]["reward"]
    assert all(a["reward"] <= b["reward"] for a, b in zip(table, table[1:]))


# -- every task resumes exactly -----------------------------------------------------------------------------------------
def _runs(lab):
    data = _data(lab)
    fn = _word_count(lab)
    prompts = (_prompts(lab, 80)[16:], _prompts(lab, 16))
    return {
        "sft": lambda out, **kw: sft(SFTConfig(model=str(lab["base"]), **loop_kw(out, max_steps=6, **kw)), data),
        "reward": lambda out, **kw: train_reward(RewardConfig(model=str(lab["sft"]), n_pairs=100, val_rows=20,
                                                              **loop_kw(out, max_steps=6, **kw)), data),
        "dpo": lambda out, **kw: dpo(DPOConfig(model=str(lab["sft"]), n_pairs=100, val_rows=0,
                                               **loop_kw(out, max_steps=6, **kw)), data),
        # 2 epochs x 2 minibatches per rollout: the stop at step 3 falls in the middle of a rollout
        "ppo": lambda out, **kw: ppo(PPOConfig(model=str(lab["sft"]), rollout_size=16, ppo_epochs=2, val_rows=8,
                                               **loop_kw(out, max_steps=6, lr=1e-3, **kw)), data, reward_fn=fn, prompts=prompts),
        "grpo": lambda out, **kw: grpo(GRPOConfig(model=str(lab["sft"]), group_size=4, val_rows=8,
                                                  **loop_kw(out, batch_size=8, max_steps=6, lr=1e-3, **kw)),
                                       data, reward_fn=fn, prompts=prompts),
    }


@pytest.mark.parametrize("name", ["sft", "reward", "dpo", "ppo", "grpo"])
def test_each_alignment_task_resumes_exactly(lab, tmp_path, interrupt_at, name):
    """The loop's resume test (tests/test_loop.py) on each alignment task: 6 steps == 3 + 3 resumed."""
    resumes_exactly(tmp_path, interrupt_at, _runs(lab)[name])


# -- bad input: one line, exit status 2 -----------------------------------------------------------------------------
def test_a_pairs_file_missing_a_column(lab, tmp_path, capsys):
    p = tmp_path / "pairs.jsonl"
    p.write_text(json.dumps({"prompt": "write a review : us : merlot :", "chosen": "us : oregon : merlot : a ."}) + "\n")
    one_line_error(capsys, ["align", "reward", str(lab["sft"]), "--pairs", str(p), "--out", str(tmp_path / "rm")],
                    "rejected", "prompt, chosen, rejected")
    assert not (tmp_path / "rm" / "config.json").exists()


def test_a_policy_and_a_reward_model_with_different_tokenizers(lab, tmp_path, capsys):
    # A reward model trained from the base model: its tokenizer lacks the words SFT added ('write', 'points', ...).
    train_reward(RewardConfig(model=str(lab["base"]), n_pairs=20, val_rows=0, **loop_kw(tmp_path / "rm", max_steps=1)),
                 _data(lab))
    capsys.readouterr()
    one_line_error(capsys, ["align", "ppo", str(lab["sft"]), "--reward", str(tmp_path / "rm"), "--data", str(lab["csv"]),
                             "--out", str(tmp_path / "ppo"), "--max-steps", "1"], "another tokenizer")
    one_line_error(capsys, ["align", "bon", str(lab["sft"]), "--reward", str(tmp_path / "rm"), "--data", str(lab["csv"])],
                    "another tokenizer")


def test_a_reference_model_of_another_architecture(lab, tmp_path, capsys):
    from conftest import one_line_error, tiny_model
    other = tiny_model(d_model=16, n_head=2)
    save_model(tmp_path / "other", other.model, other.tokenizer, other.config)
    one_line_error(capsys, ["align", "dpo", str(lab["sft"]), "--ref", str(tmp_path / "other"), "--data", str(lab["csv"]),
                             "--out", str(tmp_path / "dpo"), "--max-steps", "1"], "another architecture")
    with pytest.raises(UserError, match="another architecture"):
        ppo(PPOConfig(model=str(lab["sft"]), ref=str(tmp_path / "other"), **loop_kw(tmp_path / "ppo", max_steps=1)),
            _data(lab), reward_fn=_word_count(lab))


@pytest.mark.parametrize("action", ["ppo", "grpo"])
def test_a_negative_kl_coefficient(lab, tmp_path, capsys, action):
    one_line_error(capsys, ["align", action, str(lab["sft"]), "--reward", str(lab["sft"]), "--kl-coef", "-0.1"],
                    "--kl-coef", ">= 0")


def test_a_reward_model_that_is_not_one(lab, tmp_path, capsys):
    one_line_error(capsys, ["align", "ppo", str(lab["sft"]), "--reward", str(lab["sft"]), "--data", str(lab["csv"]),
                             "--out", str(tmp_path / "ppo")], "reward model")


def test_align_commands_run_end_to_end_from_the_cli(lab, tmp_path, capsys):
    for action in ("sft", "reflect", "reward", "dpo", "ppo", "grpo", "bon"):
        with pytest.raises(SystemExit) as e:
            main(["align", action, "--help"])
        assert e.value.code == 0 and "MODEL" in capsys.readouterr().out
    rm = tmp_path / "rm"
    assert main(["align", "reward", str(lab["sft"]), "--data", str(lab["csv"]), "--out", str(rm), "--max-steps", "5",
                 "--n-pairs", "50", "--val-rows", "20", "--no-progress", "--threads", "1", "--device", "cpu"]) == 0
    assert main(["align", "ppo", "-m", str(lab["sft"]), "--reward", str(rm), "--data", str(lab["csv"]),
                 "--out", str(tmp_path / "ppo"), "--max-steps", "4", "--rollout-size", "8", "--batch-size", "4",
                 "--val-rows", "4", "--no-progress", "--threads", "1", "--device", "cpu"]) == 0
    assert load_checkpoint(tmp_path / "ppo")[2]["kind"] == "gpt-value"
    assert main(["align", "bon", str(lab["sft"]), "--reward", str(rm), "--data", str(lab["csv"]), "--n", "4",
                 "--prompts", "4", "--device", "cpu", "--json", str(tmp_path / "bon.json")]) == 0
    assert [r["n"] for r in json.loads((tmp_path / "bon.json").read_text())["table"]] == [1, 2, 4]


def test_reflection_tuning_learns_to_revise_a_wrong_draft(lab, tmp_path):
    r = sft(SFTConfig(model=str(lab["base"]), reflection=1.0, check_samples=32,
                      **loop_kw(tmp_path / "reflect", max_steps=400, lr=3e-3)), DataConfig(data=str(lab["csv"]), val_fraction=0.1))
    m = r.metrics
    assert m["train_examples"] > 1.5 * lab["sft_result"].metrics["train_examples"]  # instructions + revisions
    assert m["fix_rate"] > 0.25 and m["revision_gold"] > 80, m


def test_explain_compare_shows_where_an_aligned_model_changed_its_mind(lab, tmp_path, capsys):
    from gptlab.explain.compare import compare
    from gptlab.infer.sampling import SamplingConfig
    model, tok, _ = load_checkpoint(lab["sft"])
    same = compare(model, model, tok, "write a review : us : merlot :", SamplingConfig(seed=0), steps=6, top=3)
    assert len(same.steps) == 6 and all(abs(s.kl) < 1e-5 and s.p == pytest.approx(s.ref_p) for s in same.steps)
    other, _, _ = load_checkpoint(lab["sft"])
    with torch.no_grad():
        other.ln_f.weight.mul_(3.0)  # sharper next-token distributions: another mind
    moved = compare(other, model, tok, "write a review : us : merlot :", SamplingConfig(seed=0), steps=6, top=3)
    assert all(s.kl >= 0 for s in moved.steps) and moved.total_kl > 0.01
    assert main(["explain", str(lab["sft"]), "write a review : us : merlot :", "--compare", str(lab["sft"]),
                 "--steps", "3", "--device", "cpu"]) == 0
    assert "KL of the whole continuation: 0.000" in capsys.readouterr().out
    one_line_error(capsys, ["explain", str(lab["sft"]), "write a review :", "--compare", str(lab["base"]), "--device", "cpu"],
                    "--compare")


def test_align_reads_a_toml_config(lab, tmp_path):
    toml = tmp_path / "dpo.toml"
    toml.write_text(f'[align]\nmax_steps = 2\nbeta = 0.3\nn_pairs = 40\nval_rows = 10\nthreads = 1\nprogress = false\n'
                    f'[data]\ndata = "{lab["csv"]}"\n', encoding="utf-8")
    assert main(["align", "dpo", str(lab["sft"]), "--config", str(toml), "--out", str(tmp_path / "dpo"), "--device", "cpu"]) == 0
    cfg = json.loads((tmp_path / "dpo" / "config.json").read_text())
    assert cfg["train"]["max_steps"] == 2 and cfg["align"]["beta"] == 0.3 and cfg["step"] == 2


# -- DDP: 2 processes (gloo, CPU) == 1, as tests/test_loop.py checks for the other families ----------------------
@pytest.mark.parametrize("action", ["sft", "ppo"])
def test_ddp_two_processes_equal_one(lab, tmp_path, action):
    from test_loop import _torchrun
    common = ["align", action, str(lab["sft"]), "--data", str(lab["csv"]), "--max-steps", "3", "--batch-size", "8",
              "--no-progress", "--no-tensorboard", "--eval-interval", "0", "--device", "cpu", "--threads", "1", "--precision", "fp32",
              "--check-samples" if action == "sft" else "--val-rows", "0"]
    if action == "ppo":  # a rollout of 16 prompts, minibatches of 8: the processes must sample the same rollout
        rm = tmp_path / "rm"
        assert main(["align", "reward", str(lab["sft"]), "--data", str(lab["csv"]), "--out", str(rm), "--max-steps", "1",
                     "--n-pairs", "16", "--val-rows", "0", "--no-progress", "--threads", "1", "--device", "cpu"]) == 0
        common += ["--reward", str(rm), "--rollout-size", "16", "--lr", "1e-3"]
    one = _torchrun(common, tmp_path / "one", 1)
    two = _torchrun(common, tmp_path / "two", 2)
    for k in one:
        a, b = one[k], two[k]
        if k.endswith("attn.qkv.bias"):
            # The key bias adds the same score to every key of a query, which softmax ignores: its true
            # gradient is 0, so Adam divides rounding noise by rounding noise and moves it by +-lr in
            # a direction the order of the all-reduce decides. Compare the query and value biases.
            q, _, v = a.chunk(3)
            q2, _, v2 = b.chunk(3)
            a, b = torch.cat([q, v]), torch.cat([q2, v2])
        # 1e-4: Adam divides each gradient by its own size, so an entry whose gradient is near 0
        # carries the all-reduce's rounding into its update (one of 2,048 entries of an AVX2 CPU's
        # run moved 1.3e-5 apart in 3 steps); a real split of the data or of the average would
        # move entries by about lr (1e-3) each step.
        assert torch.allclose(a, b, atol=1e-4), k


def test_a_ppo_policy_folder_with_a_broken_rollout_config(lab, tmp_path, capsys):
    import shutil
    shutil.copytree(lab["sft"], tmp_path / "policy")
    cfg = json.loads((tmp_path / "policy" / "config.json").read_text())
    (tmp_path / "policy" / "config.json").write_text(json.dumps({**cfg, "kind": "gpt-value", "rollout": "big"}))
    one_line_error(capsys, ["generate", str(tmp_path / "policy"), "write a review :", "--device", "cpu"], "rollout")
