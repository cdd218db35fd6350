"""The demo's recipe learns its corpus (issue 18), and a record's start is learned too, so an empty
prompt samples a whole review (issue 19). A smaller run than `make demo`'s: the thresholds are
looser than the demo's targets, and an untrained model of the same shape fails every one of them."""

import pytest
import torch

from gptlab.api import LoadedModel
from gptlab.data import WineCatalog, normalize_text
from gptlab.infer.quality import province_tv, template_mass, template_valid
from gptlab.model import GPT
from gptlab.training.config import preset_fast
from gptlab.training.tasks.causal_lm import train

RECORDS, STEPS, BATCH = 4000, 300, 64


def run_config(out):
    cfg = preset_fast()
    cfg.data.builtin_size = RECORDS
    t = cfg.train
    t.out, t.max_steps, t.batch_size = str(out), STEPS, BATCH
    t.progress = t.tensorboard = False
    t.eval_interval, t.save_interval, t.sample_prompt = 0, 0, ""
    return cfg


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("recipe") / "m"
    res = train(run_config(out))
    return LoadedModel(res.model.eval(), res.tokenizer, {"kind": "gpt"})


def truth() -> tuple[dict[str, set[str]], set[str]]:
    catalog = WineCatalog()
    provinces = {c: set(catalog.p_province(c, normalized=True)) for c in catalog.countries(normalized=True)}
    return provinces, {normalize_text(v).strip() for v in catalog.varieties()}


def measure(lm: LoadedModel, prompt: str) -> tuple[float, float]:
    """(TV of P(province | germany) from the truth, share of 100 samples at T=1 keeping the template)."""
    tv, _, _ = province_tv(lm, WineCatalog())
    provinces, varieties = truth()
    done = lm.generate(prompt, n=100, temperature=1.0, seed=0)
    ok = sum(template_valid(f"{prompt} {c.text.strip()}".strip(), provinces, varieties) for c in done)
    return tv, ok / len(done)


def test_the_recipe_learns_the_corpus(trained):
    tv, ok = measure(trained, "wine review :")
    assert tv < 0.1 and ok >= 0.7, (tv, ok)  # measured 0.041 and 0.96 with Muon (AdamW: 0.03-0.06 and 0.79-0.9)


def test_an_empty_prompt_starts_a_whole_record(trained):
    """Records begin with <|endoftext|>, so after it alone the model writes `wine review :` and a
    review as good as one prompted with the template's start."""
    with torch.no_grad():
        first = torch.softmax(trained.model(torch.tensor([trained.encode("")])).logits[0, -1], -1)
    assert float(first[trained.tokenizer.token_to_id("wine")]) > 0.99
    _, ok_empty = measure(trained, "")
    _, ok_prompted = measure(trained, "wine review :")
    assert ok_empty >= ok_prompted - 0.08 and ok_empty >= 0.7, (ok_empty, ok_prompted)


def test_an_untrained_model_fails_the_same_check(trained):
    torch.manual_seed(0)
    blank = LoadedModel(GPT(trained.model.cfg).eval(), trained.tokenizer, {"kind": "gpt"})
    tv, ok = measure(blank, "wine review :")
    assert tv > 0.5 and ok < 0.1, (tv, ok)
    provinces, varieties = truth()
    assert template_mass(blank, provinces, varieties).kept < 0.01


def test_the_exact_template_mass_is_what_samples_estimate(trained):
    """`template_mass` sums the model's probability over every country, province and variety: its
    parts add up to 1, and 600 samples keep the template at its rate within their sampling error."""
    provinces, varieties = truth()
    m = template_mass(trained, provinces, varieties, min_mass=0.0)
    assert abs(m.kept + m.lost_country + m.lost_province + m.lost_variety + m.pruned - 1) < 1e-4, m
    done = trained.generate("wine review :", n=600, temperature=1.0, seed=3, max_new_tokens=24)
    rate = sum(template_valid(f"wine review : {c.text.strip()}", provinces, varieties) for c in done) / len(done)
    assert 0.5 < m.kept < 1 and abs(rate - m.kept) < 4 * (m.kept * (1 - m.kept) / len(done)) ** 0.5 + 0.01, (rate, m)
    hot = template_mass(trained, provinces, varieties, temperature=2.0)
    assert hot.kept < m.kept - 0.05, (hot, m)  # a hotter sampler strays from the template more often
