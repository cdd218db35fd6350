"""Instruction and preference data for aligning a wine GPT (`gptlab align ...`), torch-free.

- Instructions: `write a review : germany : riesling : 92 points :` followed by the response
  `germany : mosel : riesling : <description>` (the corpus's own record layout, so the base model
  already knows how a response reads). Half the prompts name the points, half do not: the policy
  stages (PPO, GRPO, DPO, best-of-n) ask without points and let the reward decide.
- Preference pairs: two reviews of the same country and variety with different points; the
  higher-scored one is `chosen`. `noise` flips a fraction of the labels, standing in for
  annotators who disagree.
- The gold reward (`gold_points`): on the built-in corpus, the score that the generator's own
  wording encodes. Its quality words, finish words, adverbs, flaws and verdicts are drawn from a
  table per points tier (synthetic.py: QUALITY, FINISH, ADVERBS, VERDICTS, FLAWS); a phrase that
  only the tier tables produce, and nothing else in the generator, marks its tier(s). The gold
  score of a text is the mean, over its marker occurrences, of E[points | tier] under the
  generator's own points distribution (rounded N(88.3, 2.9) clipped to 80..100). Exact: no model.
- The checker (`check_response`): a response must name the instruction's country and variety and
  a province of that country (the catalog's), and end. Reflection critiques come from it.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import random
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cache, lru_cache
from pathlib import Path

from gptlab.data.config import DataConfig
from gptlab.data.normalize import normalize_text
from gptlab.errors import UserError

PROMPT = "write a review : {country} : {variety} :"
PROMPT_POINTS = "write a review : {country} : {variety} : {points} points :"
RESPONSE = "{country} : {province} : {variety} : {description}"
REVISE = "revise : {prompt} draft : {draft} critique : {critique} :"
NEEDED = ("country", "province", "variety", "description", "points")
PAIR_COLUMNS = ("prompt", "chosen", "rejected")


@dataclass(frozen=True)
class Example:
    prompt: str
    response: str
    points: float | None = None
    instruction: str = ""  # a reflection example's original instruction (its prompt is the revision request)


@dataclass(frozen=True)
class Pair:
    prompt: str
    chosen: str
    rejected: str


def _clean(text: str) -> str:
    return " ".join(normalize_text(text).split())


# -- rows -----------------------------------------------------------------------------------------
def review_rows(cfg: DataConfig) -> list[dict]:
    """The reviews of the corpus `cfg` names, as field dicts with points: the built-in corpus, or any
    Kaggle-layout CSV/JSON (country, province, variety, description, points)."""
    cfg.validate()
    if cfg.data == "builtin":
        from gptlab.data.synthetic import synthetic_reviews  # big; on demand

        rows = synthetic_reviews(cfg.builtin_size, cfg.seed)
        return rows[: cfg.max_records] if cfg.max_records else rows
    from gptlab.data.corpora import load_corpus

    corpus = load_corpus(DataConfig(**{**cfg.to_dict(), "template": "{country} : {province} : {variety} : {description}"}))
    rows = corpus.fields or []
    missing = [c for c in NEEDED if rows and c not in rows[0]]
    if not rows or missing:
        raise UserError(f"{cfg.data}: alignment data needs the columns {', '.join(NEEDED)} (Kaggle wine layout); "
                        f"missing {', '.join(missing) or 'all'}: pass a wine-review CSV or --data builtin")
    out = []
    for r in rows:
        try:
            out.append({**r, "points": float(r["points"])})
        except (TypeError, ValueError):
            continue  # a row without a usable score cannot be ranked
    if not out:
        raise UserError(f"{cfg.data}: no row has a numeric 'points' value: pass a wine-review CSV with scores")
    return out


def prompt_of(row: dict, with_points: bool = False) -> str:
    fields = {k: _clean(str(row[k])) for k in ("country", "variety")}
    points = row.get("points")
    if with_points and points is not None:
        return PROMPT_POINTS.format(points=int(round(float(points))), **fields)
    return PROMPT.format(**fields)


def response_of(row: dict) -> str:
    return _clean(RESPONSE.format(**{k: str(row[k]) for k in ("country", "province", "variety", "description")}))


def instruction_examples(rows: Sequence[dict], seed: int = 0, points_fraction: float = 0.5) -> list[Example]:
    """One (prompt, response) per review; `points_fraction` of the prompts name the points."""
    rng = random.Random(seed)
    return [Example(prompt_of(r, rng.random() < points_fraction), response_of(r), float(r["points"])) for r in rows]


def preference_pairs(rows: Sequence[dict], n: int, seed: int = 0, noise: float = 0.0) -> list[Pair]:
    """n pairs of reviews of the same country and variety with different points, the higher one
    chosen; a fraction `noise` of the pairs have their labels flipped."""
    if not 0.0 <= noise <= 0.5:
        raise UserError(f"--noise must be in [0, 0.5] (got {noise}): it is the fraction of flipped labels")
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in rows:
        groups.setdefault((_clean(str(r["country"])), _clean(str(r["variety"]))), []).append(r)
    keys = [k for k, g in groups.items() if len({x["points"] for x in g}) > 1]
    if not keys:
        raise UserError("no two reviews of the same country and variety differ in points: give a bigger corpus")
    weights = [len(groups[k]) for k in keys]
    rng = random.Random(seed)
    pairs: list[Pair] = []
    while len(pairs) < n:
        g = groups[rng.choices(keys, weights)[0]]
        a, b = rng.sample(g, 2)
        if a["points"] == b["points"]:
            continue
        hi, lo = (a, b) if a["points"] > b["points"] else (b, a)
        if rng.random() < noise:
            hi, lo = lo, hi
        pairs.append(Pair(prompt_of(hi), response_of(hi), response_of(lo)))
    return pairs


# -- pairs files ------------------------------------------------------------------------------------
def read_pairs(path: str | os.PathLike) -> list[Pair]:
    """Pairs from a .jsonl or .csv file with the columns prompt, chosen, rejected."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"cannot read the pairs file {p} ({getattr(e, 'strerror', None) or e}): pass a UTF-8 .jsonl or .csv file") from None
    rows: list[dict]
    if p.suffix.lower() == ".csv":
        rows = list(csv.DictReader(io.StringIO(text)))
    else:
        rows = []
        for i, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError:
                    raise UserError(f"{p} line {i} is not JSON: write one object per line with {', '.join(PAIR_COLUMNS)}") from None
    if not rows:
        raise UserError(f"{p} holds no pairs: write one per line with {', '.join(PAIR_COLUMNS)}")
    for i, r in enumerate(rows, 1):
        missing = [c for c in PAIR_COLUMNS if not isinstance(r, dict) or not isinstance(r.get(c), str)]
        if missing:
            raise UserError(f"{p} row {i} has no {', '.join(missing)} column: every pair needs {', '.join(PAIR_COLUMNS)} (text)")
    return [Pair(_clean(r["prompt"]), _clean(r["chosen"]), _clean(r["rejected"])) for r in rows]


def write_pairs(path: str | os.PathLike, pairs: Iterable[Pair]) -> None:
    p = Path(path)
    tmp = p.with_name(p.name + ".tmp")
    try:
        tmp.write_text("".join(json.dumps(vars(x)) + "\n" for x in pairs), encoding="utf-8")
        os.replace(tmp, p)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


# -- the gold reward of the built-in corpus ----------------------------------------------------------
TIER_POINTS = ((80, 84), (85, 88), (89, 92), (93, 100))
POINTS_MEAN, POINTS_SD = 88.3, 2.9  # synthetic._review: round(gauss(88.3 + place, 2.9)), clipped


def _points_pmf() -> dict[int, float]:
    """P(points) of the generator (place offsets aside): a rounded normal, clipped to 80..100."""
    def cdf(x: float) -> float:
        return 0.5 * (1 + math.erf((x - POINTS_MEAN) / (POINTS_SD * math.sqrt(2))))
    pmf = {p: cdf(p + 0.5) - cdf(p - 0.5) for p in range(81, 100)}
    pmf[80], pmf[100] = cdf(80.5), 1 - cdf(99.5)
    return pmf


def tier_points() -> tuple[float, ...]:
    """E[points | tier] for each tier, exactly, under the generator's points distribution."""
    pmf = _points_pmf()
    return tuple(sum(p * pmf[p] for p in range(lo, hi + 1)) / sum(pmf[p] for p in range(lo, hi + 1))
                 for lo, hi in TIER_POINTS)


def _literals(value: object) -> Iterable[str]:
    """Every string inside a constant (tuples, dicts) or a function's constants, slots cut out."""
    if isinstance(value, str):
        yield from (s for s in re.split(r"\{\w+\}", value) if s.strip())
    elif isinstance(value, dict):
        for v in value.values():
            yield from _literals(v)
    elif isinstance(value, (tuple, list, set, frozenset)):
        for v in value:
            yield from _literals(v)
    elif hasattr(value, "__code__"):
        yield from _literals(value.__code__.co_consts)
    elif hasattr(value, "fruit") and hasattr(value, "notes"):  # a GrapeProfile
        yield from _literals((value.fruit, value.notes))


def _words(text: str) -> tuple[str, ...]:
    return tuple(normalize_text(text).split())


@lru_cache(maxsize=1)
def tier_markers() -> dict[tuple[str, ...], float]:
    """Phrase (normalised words) -> the points it encodes: phrases only the tier tables write."""
    from gptlab.data import grapes, places, synthetic

    tiered = {"QUALITY": synthetic.QUALITY, "FINISH": synthetic.FINISH, "ADVERBS": synthetic.ADVERBS,
              "VERDICTS": synthetic.VERDICTS}
    tiers: dict[tuple[str, ...], set[int]] = {}
    for table in tiered.values():
        for t, pool in enumerate(table):
            for s in _literals(pool):
                tiers.setdefault(_words(s), set()).add(t)
    for s in _literals(synthetic.FLAWS):  # only tier 0's verdicts name a flaw
        tiers.setdefault(_words(s), set()).add(0)
    tier_slots = {"qual", "finish", "finish2", "flaw", "oak_adj"}
    others: list[str] = []
    for mod in (synthetic, grapes, places):
        for name, value in vars(mod).items():
            # _COMPILED is a cache of the templates met so far: what it holds depends on history.
            if name.isupper() and name not in tiered and name not in ("FLAWS", "_COMPILED", "_SLOTS"):
                others += _literals(value)
    for slot, fill in synthetic._SLOTS.items():
        if slot not in tier_slots:
            others += _literals(fill)
    other_text = " | ".join(" ".join(_words(s)) for s in others)
    centres = tier_points()
    markers = {}
    for phrase, ts in tiers.items():
        if phrase and f" {' '.join(phrase)} " not in f" {other_text} ":
            markers[phrase] = sum(centres[t] for t in ts) / len(ts)
    return markers


def gold_points(text: str) -> float | None:
    """The points the text's tier phrases encode (the mean over marker occurrences, longest
    phrase first at each word); None when it holds no marker."""
    markers = tier_markers()
    longest = max(len(m) for m in markers)
    words = _words(text)
    found: list[float] = []
    i = 0
    while i < len(words):
        for n in range(min(longest, len(words) - i), 0, -1):
            v = markers.get(words[i:i + n])
            if v is not None:
                found.append(v)
                i += n
                break
        else:
            i += 1
    return sum(found) / len(found) if found else None


# -- the checker ----------------------------------------------------------------------------------------
def parse_prompt(prompt: str) -> dict[str, str]:
    """{country, variety} (and points when named) of an instruction."""
    parts = [p.strip() for p in _clean(prompt).rstrip(" :").split(" : ")]
    if len(parts) < 3 or parts[0] != "write a review":
        raise UserError(f"not an instruction: {prompt!r}; write it as {PROMPT.format(country='france', variety='merlot')!r}")
    out = {"country": parts[1], "variety": parts[2]}
    if len(parts) > 3 and parts[3].endswith(" points"):
        out["points"] = parts[3][:-len(" points")]
    return out


@cache
def _catalog_provinces(country: str) -> frozenset[str]:
    """The built-in catalog's provinces of a country (empty when it does not know the country); the
    catalog takes ~20 ms to build, and the checker runs once per sampled response."""
    from gptlab.data.catalog import WineCatalog  # its tables load on demand

    try:
        return frozenset(WineCatalog().p_province(country, normalized=True))
    except UserError:
        return frozenset()


def check_response(prompt: str, response: str, ended: bool = True) -> list[str]:
    """What is wrong with a response to an instruction (empty when nothing): a country, province or
    variety other than asked (the province must be one of the country's in the built-in catalog,
    when the catalog knows the country), or no end."""
    asked = parse_prompt(prompt)
    parts = [p.strip() for p in _clean(response).split(" : ")]
    problems = []
    if len(parts) < 4:
        return ["not a review"]
    country, province, variety = parts[:3]
    if country != asked["country"]:
        problems.append(f"wrong country {country} not {asked['country']}")
    provinces = _catalog_provinces(asked["country"])
    if provinces and province not in provinces:
        problems.append(f"wrong province {province} not in {asked['country']}")
    if variety != asked["variety"]:
        problems.append(f"wrong variety {variety} not {asked['variety']}")
    if not ended:
        problems.append("no end")
    return problems


CHECKER_PENALTY = 3.0  # default --checker-penalty of PPO, GRPO and best-of-n: reward-model SDs once normalised


def names_the_ask(problems: Sequence[str]) -> bool:
    """Whether a response with these `check_response` problems names the asked country and variety
    (a review, the instruction's country and variety; a province outside the country or a missing
    end are counted apart): what "follows the instruction" means in the issue's SFT target."""
    return not any(p.startswith(("wrong country", "wrong variety", "not a review")) for p in problems)


def follow_rates(prompts: Sequence[str], responses: Sequence[str], ended: Sequence[bool]) -> dict[str, float]:
    """Of responses to instructions: the share the checker accepts in every respect (follow_rate)
    and the share that name the asked country and variety (asked_rate, see `names_the_ask`)."""
    problems = [check_response(p, r, e) for p, r, e in zip(prompts, responses, ended)]
    n = max(len(problems), 1)
    return {"follow_rate": sum(not p for p in problems) / n, "asked_rate": sum(map(names_the_ask, problems)) / n}


def gold_reward(prompt: str, response: str, ended: bool = True) -> float:
    """The gold reward of a response: its gold points if it follows the instruction, else the
    floor (80): a review of the wrong wine is worth nothing, however it is worded. A valid review
    with no tier phrase gets the generator's mean."""
    if check_response(prompt, response, ended):
        return float(TIER_POINTS[0][0])
    g = gold_points(response)
    return POINTS_MEAN if g is None else g


# -- reflection ---------------------------------------------------------------------------------------------
def corrupt(row: dict, rows: Sequence[dict], rng: random.Random) -> dict:
    """The row with a wrong province or variety (taken from another country's or variety's review):
    a draft the checker rejects."""
    key, field = ("province", "country") if rng.random() < 0.5 else ("variety", "variety")
    mine = _clean(row[field])
    # Draw until another country's (variety's) review comes up: a few draws on any real corpus, where
    # listing every other row for every row would be quadratic (hours for 19,000 reviews).
    for _ in range(64):
        other = rng.choice(rows)
        if _clean(other[field]) != mine:
            return {**row, key: other[key]}
    rest = [r for r in rows if _clean(r[field]) != mine]  # nearly every row shares it
    return {**row, key: rng.choice(rest)[key]} if rest else row


def reflection_examples(rows: Sequence[dict], seed: int = 0, header_only: bool = True) -> list[Example]:
    """(draft + critique -> revision) examples: the draft is a review made wrong on purpose, the
    critique is the checker's, the revision the true review. header_only: the draft shows its
    header (country : province : variety) alone, so draft and revision fit a small context."""
    rng = random.Random(seed)
    out = []
    for row in rows:
        bad = corrupt(row, rows, rng)
        prompt = prompt_of(row)
        draft = response_of(bad)
        problems = check_response(prompt, draft)
        if not problems:
            continue
        shown = " : ".join(draft.split(" : ")[:3]) if header_only else draft
        out.append(Example(revise_prompt(prompt, shown, problems), response_of(row), float(row["points"]), prompt))
    return out


def revise_prompt(prompt: str, draft: str, problems: Sequence[str]) -> str:
    return _clean(REVISE.format(prompt=prompt, draft=draft, critique=" ; ".join(problems)))
