"""The built-in corpus: synthetic wine reviews, generated offline and deterministic by seed.

Each review samples country -> province -> variety from `WineCatalog` (exactly those
distributions, so a trained model can be scored against the truth), then points, price,
vintage, producer and a description written by a sentence grammar: an opening on the nose, the
palate, structure, winemaking, the finish and a verdict. The words come from the grape's profile
(Riesling: lime, petrol, slate; Cabernet: cassis, cedar, firm tannins) and the wording follows
the score and price, so the text carries real signal about its header.

The header (country, province, variety) is drawn through golden-ratio streams (`WeylStream`):
each draw follows the catalog exactly, and over 20k reviews the empirical P(province | germany)
sits within a few thousandths of the truth, so tests measure the model, not sampling noise.
The text uses an independent `random.Random(seed)`.

`synthetic_reviews(n, seed)[:k] == synthetic_reviews(k, seed)`: reviews are drawn one after the
other.
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Callable, Sequence
from functools import lru_cache

from gptlab.data.catalog import Sampler, WeylStream, WineCatalog
from gptlab.data.config import DataConfig
from gptlab.data.grapes import GrapeProfile, profile_for
from gptlab.data.places import (
    COUNTRY_PRICE,
    DESIGNATIONS,
    GERMAN_SWEETNESS,
    PLACE_POINTS,
    PLACE_PRICE,
    PORT_DESIGNATIONS,
    REGION_CHOICES,
    SPARKLING_DESIGNATIONS,
    WINERY_STYLES,
)
from gptlab.data.records import Corpus, apply_template, template_fields
from gptlab.errors import UserError

MIN_WORDS, MAX_WORDS = 25, 70  # the span of most real WineEnthusiast descriptions

# --- vocabulary ---------------------------------------------------------------------------------

# Quality tier t = 0 (80-84 points), 1 (85-88), 2 (89-92), 3 (93-100).
QUALITY = (
    ("simple", "lean", "rustic", "modest", "straightforward", "basic", "slightly awkward"),
    ("easygoing", "pleasant", "fresh", "approachable", "friendly", "well-made", "attractive", "solid"),
    ("elegant", "polished", "well-balanced", "generous", "expressive", "vibrant", "refined", "stylish",
     "savory", "layered"),
    ("superb", "profound", "complex", "stunning", "gorgeous", "age-worthy", "magnificent",
     "finely crafted", "impressive", "compelling"),
)
FINISH = (
    ("short", "brief", "quick", "slightly bitter", "hot", "abrupt", "dilute"),
    ("clean", "fresh", "dry", "pleasant", "medium-length", "tangy", "juicy", "crisp"),
    ("long", "lingering", "persistent", "spicy", "lasting", "mouthwatering", "savory", "focused"),
    ("long", "endless", "seamless", "persistent", "complex", "resonant", "sustained", "layered"),
)
BODY = {1: ("light-bodied", "light", "delicate", "lithe", "lean"),
        2: ("medium-bodied", "mid-weight", "supple", "round", "medium-weight"),
        3: ("full-bodied", "rich", "dense", "powerful", "concentrated", "broad")}
TANNIN = {1: ("soft tannins", "silky tannins", "supple tannins", "gentle tannins", "light tannins"),
          2: ("fine-grained tannins", "polished tannins", "ripe tannins", "firm tannins", "dusty tannins",
              "velvety tannins", "integrated tannins"),
          3: ("firm tannins", "grippy tannins", "chewy tannins", "muscular tannins", "robust tannins",
              "assertive tannins", "tight-grained tannins", "powerful tannins")}
ACID = {1: ("soft acidity", "gentle acidity", "mellow acidity", "low acidity"),
        2: ("fresh acidity", "moderate acidity", "lively acidity", "bright acidity", "juicy acidity"),
        3: ("racy acidity", "zesty acidity", "mouthwatering acidity", "crisp acidity", "vibrant acidity",
            "tangy acidity", "electric acidity", "bracing acidity")}
TEXTURE = {"red": ("velvety", "supple", "plush", "silky", "smooth", "round", "lush", "taut"),
           "white": ("creamy", "round", "taut", "silky", "supple", "waxy", "lush", "lean"),
           "rose": ("crisp", "light", "silky", "zesty", "refreshing", "delicate"),
           "sparkling": ("creamy", "crisp", "fine", "lively", "elegant", "taut"),
           "sweet": ("unctuous", "luscious", "viscous", "silky", "honeyed", "rich"),
           "fortified": ("rich", "smooth", "velvety", "warming", "viscous", "plush")}
COLOR = {"red": ("Deep purple in color", "Inky black-purple", "Garnet-hued", "Ruby red in the glass",
                 "Dark crimson", "Brick-tinged"),
         "white": ("Pale straw in color", "Light gold in the glass", "Brilliant yellow-gold",
                   "Greenish-straw in hue", "Bright lemon-gold"),
         "rose": ("Pale salmon in color", "Onion-skin pink", "Bright coral in the glass", "Copper-pink",
                  "Blush pink"),
         "sparkling": ("Pale gold and lively", "Bright straw with fine bubbles", "Light yellow with a steady bead"),
         "sweet": ("Deep gold in color", "Amber-gold", "Burnished gold"),
         "fortified": ("Deep tawny in color", "Dark ruby", "Mahogany-hued", "Amber-brown")}
FRUIT_MODS = {"red": ("ripe", "juicy", "crushed", "baked", "tart", "fresh", "dried", "stewed", "candied"),
              "white": ("ripe", "fresh", "juicy", "tart", "candied"),
              "rose": ("fresh", "juicy", "ripe", "tart", "crushed"),
              "sparkling": ("fresh", "ripe", "crisp"),
              "sweet": ("candied", "ripe", "baked", "poached", "dried"),
              "fortified": ("stewed", "candied", "ripe", "baked")}
NO_MOD = {"raisin", "prune", "date", "fig", "citrus", "cassis", "quince paste", "orange marmalade"}
ALREADY_MODIFIED = {"dried", "candied", "baked", "sour", "stewed", "tart", "ripe", "fresh", "juicy"}
# Notes any wine of a style may show, drawn now and then beside the grape's own, as tasters do.
SHARED_NOTES = {
    "red": ("clove", "nutmeg", "cinnamon", "allspice", "star anise", "cardamom", "thyme", "rosemary",
            "bay leaf", "fennel", "wet earth", "truffle", "iris", "lavender", "violet", "graphite",
            "iron", "cured meat", "game", "tobacco", "cocoa powder", "black tea", "potpourri", "sandalwood",
            "licorice root", "tar", "cigar wrapper", "incense", "dark spice", "forest floor", "red licorice"),
    "white": ("chamomile", "acacia", "elderflower", "lemon verbena", "thyme", "fennel", "ginger", "saffron",
              "wet stone", "chalk", "crushed shell", "sea salt", "smoke", "brioche", "almond", "marzipan",
              "honeycomb", "white pepper", "mint", "lemongrass", "jasmine", "orange blossom", "lime zest",
              "crushed stone", "cream", "beeswax", "tarragon"),
    "other": ("orange zest", "rose petal", "herbal tea", "white pepper", "ginger", "honeycomb", "almond",
              "spice cake", "cinnamon", "smoke", "sea salt", "toffee", "vanilla bean", "mineral"),
}
NOTE_MODS = ("savory", "lifted", "delicate", "pronounced", "faint", "warm", "gentle", "sweet", "fragrant")
HINTS = ("a touch of", "a hint of", "a whisper of", "a suggestion of", "a dash of", "a note of", "a trace of",
         "a streak of", "a kiss of", "a lick of", "a wisp of", "a thread of")
ADVERBS = (("rather", "somewhat", "fairly", "a little"),
           ("quite", "nicely", "thoroughly", "very", "reliably"),
           ("beautifully", "nicely", "remarkably", "seriously", "wonderfully", "truly"),
           ("beautifully", "remarkably", "impeccably", "utterly", "gloriously", "exceptionally"))
OAK_TYPES = ("French oak", "new French oak", "American oak", "neutral oak", "large oak casks",
             "a mix of French and American oak", "barrique", "Slavonian oak", "older barrels")
OAK_NOTES = {"red": ("vanilla", "toast", "toasted oak", "cedar", "smoke", "mocha", "coconut", "clove",
                     "sweet spice", "cinnamon", "espresso", "charred wood"),
             "white": ("vanilla", "toast", "butter", "butterscotch", "hazelnut", "sweet spice", "brioche",
                       "toasted nuts", "cream")}
VINES = ("estate-grown fruit", "old vines", "organically farmed grapes", "a single vineyard",
         "hillside vineyards", "dry-farmed vines", "high-elevation vineyards", "40-year-old vines",
         "a cool-climate site", "biodynamically farmed vines", "several top vineyards",
         "the winery's oldest block")
FOOD = {"red": ("grilled steak", "roast lamb", "braised short ribs", "burgers", "barbecue", "hearty stews",
                "game", "mushroom dishes", "aged cheeses", "pizza", "pasta with red sauce", "roast duck",
                "grilled sausages", "lamb chops", "a rack of ribs"),
        "white": ("grilled fish", "shellfish", "oysters", "roast chicken", "salads", "goat cheese", "sushi",
                  "spicy Asian dishes", "creamy pasta", "seafood", "grilled shrimp", "pork tenderloin"),
        "rose": ("salads", "grilled shrimp", "charcuterie", "bouillabaisse", "picnic fare",
                 "light summer dishes", "salmon"),
        "sparkling": ("oysters", "appetizers", "fried foods", "caviar", "brunch", "smoked salmon"),
        "sweet": ("blue cheese", "foie gras", "fruit tarts", "crème brûlée", "almond cake"),
        "fortified": ("chocolate desserts", "blue cheese", "roasted nuts", "Stilton", "pecan pie")}
FLAWS = {"red": ("a bit rustic", "somewhat astringent", "a touch green", "slightly hot", "rather thin",
                 "one-dimensional", "a little raisiny"),
         "white": ("a bit flat", "slightly bitter", "rather dilute", "somewhat soft", "one-dimensional",
                   "a little sharp"),
         "other": ("a bit simple", "somewhat dilute", "one-dimensional", "slightly sweet for its style")}
SWEETNESS = {0: ("dry", "bone dry", "fully dry"), 1: ("off-dry", "just off-dry", "medium-dry", "slightly sweet"),
             2: ("sweet", "lusciously sweet", "richly sweet", "honeyed and sweet")}

# --- sentence grammar -----------------------------------------------------------------------------
# {slot}s are filled per review by `_Review.slot`. A template applies to all styles unless listed
# in a dict by style. Several templates name the nose and the palate at once, so a review may
# open with either kind.

OPENINGS = (
    "Aromas of {notes3} lead the way.",
    "{notes2} aromas open this {qual} {noun}.",
    "This {qual} {noun} opens with aromas of {notes2}.",
    "The nose offers {notes3}.",
    "Scents of {notes2} mingle with {hint} {note} on the nose.",
    "Subtle notes of {notes2} introduce this {noun} from {place}.",
    "A whiff of {note} gives way to {notes2} on the nose.",
    "Hints of {notes2} waft from the glass.",
    "This {noun} from {place} smells of {notes2}, with {hint} {note}.",
    "Made from {vines}, this {noun} offers aromas of {notes2}.",
    "{color}, this {qual} wine shows {notes2} on the nose.",
    "Here's a {qual} {noun} with {notes2} on the nose.",
    "{notes2} dominate the bouquet, with {note} in the background.",
    "The {year} vintage yielded a {qual} {noun} with aromas of {notes2}.",
    "Sourced from {vines} in {place}, this {noun} leads with {notes2}.",
    "Inviting aromas of {notes3} set the stage.",
    "From {place} comes this {qual} {noun}, scented with {notes2}.",
    "{producer_pos} {noun} opens with notes of {notes2}.",
    "Brimming with {notes2}, this {qual} {noun} makes a strong first impression.",
    "There's {hint} {note} on the nose of this {qual} {noun}, along with {notes2}.",
    "Fragrant and {fresh}, it offers {notes3} on the nose.",
    "The bouquet is a mix of {notes3}.",
    "Opening with {notes2}, this {noun} from {producer} is {qual} and true to {place}.",
    "Aromas of {notes2} are {aroma_verb} by {hint} {note}.",
)
VARIETAL_OPENINGS = (
    "{pct}% varietal, this {qual} wine opens with {notes2}.",
    "{pct}% {variety}, it offers aromas of {notes2}.",
)
PALATES = (
    "The palate delivers {flav3} flavors.",
    "On the palate, {flav2} flavors are accented by {note}.",
    "Flavors of {flav2} follow through on the {body} palate.",
    "It's {body} in the mouth, with {flav2} flavors and {hint} {note}.",
    "{flav2} flavors dominate the palate, backed by {note}.",
    "The {body} palate shows {flav2}, with hints of {note}.",
    "In the mouth, it tastes of {flav3}.",
    "The palate brings {flav2} alongside {note}.",
    "It's {texture} and {body}, offering {flav2} flavors.",
    "{flav3} flavors carry through to the palate.",
    "The palate echoes the nose, adding {flav2}.",
    "Expect {flav2} on the palate, layered with {note}.",
    "Flavors of {flav3} fill the {texture} palate.",
    "{flav2} flavors are {aroma_verb} by {hint} {note} on the palate.",
    "Layers of {flav2} unfold on the {body} palate.",
    "The palate is {texture}, packed with {flav3}.",
    "With air it reveals {flav2}, plus {hint} {note}.",
)
STRUCTURES = {
    "red": (
        "{tannin} and {acid} give it structure.",
        "It's {body}, with {tannin} that {tannin_verb}.",
        "The tannins are {tannin_adj}, the acidity {acid_adj}.",
        "{texture} and {body}, it's held together by {tannin}.",
        "This is a {body} wine with {tannin} and {acid}.",
        "{tannin} frame the fruit, while {acid} keeps it {fresh}.",
        "There's a {texture} texture here, supported by {tannin}.",
    ),
    "white": (
        "{acid} keeps it {fresh}.",
        "The texture is {texture}, balanced by {acid}.",
        "It's {body} and {texture}, with {acid}.",
        "A streak of {acid} lifts the fruit.",
        "{texture} in texture, it's kept {fresh} by {acid}.",
        "It's {sweetness} in style, with {acid} for balance.",
        "A {mineral} note adds depth to the {texture} texture.",
    ),
    "rose": (
        "It's {sweetness} and {texture}, with {acid}.",
        "{acid} keeps it {fresh}.",
        "The texture is {texture}, balanced by {acid}.",
        "Light on its feet, it's {fresh} and easy to drink.",
    ),
    "sparkling": (
        "The mousse is {mousse}, and {acid} keeps it {fresh}.",
        "Fine bubbles carry {flav2} flavors.",
        "It's {dosage}, with a {mousse} mousse.",
        "A {mousse} mousse and {acid} make it {fresh}.",
    ),
    "sweet": (
        "Luscious sweetness is balanced by {acid}.",
        "It's {sweetness}, yet {acid} keeps it from cloying.",
        "The texture is {texture}, the sweetness lifted by {acid}.",
    ),
    "fortified": (
        "It's {sweetness} and {texture}, with the spirit well integrated.",
        "{tannin} and a warming finish give it grip.",
        "The texture is {texture}, the alcohol kept in check.",
    ),
}
OAKED = (
    "It was aged {months} months in {oak}, which adds notes of {oaknote} and {oaknote}.",
    "{months} months in {oak} lend hints of {oaknote}.",
    "The oak is {oak_adj}, with {oaknote} showing on the midpalate.",
    "A touch of new oak brings {oaknote} and {oaknote}.",
    "Aging in {oak} gives it a layer of {oaknote}.",
)
UNOAKED = {
    "white": ("Fermented in stainless steel, it preserves the fruit's freshness.",
              "It spent {months} months on its lees, adding a {texture} texture.",
              "The grapes come from {vines}.",
              "Unoaked, it lets the fruit speak."),
    "red": ("The grapes come from {vines}.",
            "Made with native yeasts, it shows the character of {place}.",
            "Whole-cluster fermentation adds {hint} {note}."),
    "sparkling": ("It spent {months} months on its lees, adding a {texture} texture.",
                  "The base wines come from {vines}.",
                  "It shows the character of {place}, in a {fresh} style."),
    "rose": ("Fermented in stainless steel, it preserves the fruit's freshness.",
             "The grapes come from {vines}.",
             "It was made by direct pressing, for a pale color and {fresh} fruit."),
    "sweet": ("Botrytis-affected grapes give it depth and {hint} {note}.",
              "The grapes come from {vines}."),
    "fortified": ("It spent {n_years} years in cask before bottling.",
                  "The grapes come from {vines}."),
}
BLENDS = (
    "This blend is {blend3}.",
    "It's a blend of {blend2}.",
    "A blend of {blend3}, it comes from {vines}.",
)
FINISHES = (
    "The finish is {finish}, with {hint} {note}.",
    "It ends {finish}, with {hint} {note}.",
    "Notes of {note} linger on the {finish} finish.",
    "The {finish} finish brings {notes2}.",
    "A {finish} finish shows hints of {note}.",
    "It finishes {finish} and {finish2}.",
    "The finish is {finish} and {finish2}, echoing the {fruit}.",
    "Look for {note} on the {finish} finish.",
    "{notes2} carry the {finish} finish.",
    "It closes on a {finish} note of {note}.",
    "The finish is {finish}, leaving {hint} {note} behind.",
    "Everything comes together on the {finish}, {finish2} finish.",
)
VERDICTS = (
    # tier 0
    ("Drink up.", "A simple wine for everyday drinking.", "It's {flaw}, but drinkable.",
     "It comes across as {flaw}.", "Drink now, with {food}."),
    # tier 1
    ("Drink now.", "Drink now with {food}.", "An easygoing wine to pair with {food}.",
     "A solid choice for {food}.", "Enjoy it over the next {n_years} years.", "Pair it with {food}.",
     "It's ready to drink."),
    # tier 2
    ("Drink now through {y_late}.", "It will pair beautifully with {food}.", "Drink from {y_early}.",
     "Give it a couple of years to develop.", "A fine match for {food}.", "Try it with {food}.",
     "Drink {y_early}–{y_late}."),
    # tier 3
    ("Cellar this through {y_late}.", "Drink from {y_early} through {y_late}.",
     "This is a wine to age: hold until {y_early}.", "Impressive and age-worthy.",
     "Drink {y_early}–{y_late}.", "Best from {y_early}, it will age well for a decade or more.",
     "A benchmark for the region."),
)
YOUNG_VERDICTS = ("Drink now.", "Drink it young and fresh.", "Enjoy it over the next year or two.",
                  "Drink now with {food}.", "Serve it chilled with {food}.")
TYPICITY = ("It's a textbook example of {place} {variety}.", "A classic {variety} from {place}.",
            "This shows why {place} is prized for {variety}.")
VALUE = ("A great value.", "Best Buy.", "Terrific value at this price.", "It over-delivers for the price.")
PRICEY = ("Pricey for what it delivers.", "Hard to justify the price.")

_SLOT_RE = re.compile(r"\{(\w+)\}")
_ARTICLE_RE = re.compile(r"\b([Aa]) (?=[aeiouAEIOU])")


class _Review:
    """One review under construction: its facts, and the notes already used in its text."""

    def __init__(self, rng: random.Random, country: str, province: str, region: str | None,
                 variety: str, noun: str, profile: GrapeProfile, points: int, vintage: int | None,
                 producer: str, sweet: int):
        self.rng, self.random = rng, rng.random
        self.country, self.province, self.region, self.variety = country, province, region, variety
        self.noun, self.profile, self.style = noun, profile, profile.style
        self.points, self.vintage, self.producer, self.sweet = points, vintage, producer, sweet
        self.tier = 0 if points <= 84 else 1 if points <= 88 else 2 if points <= 92 else 3
        self.used: set[str] = set()  # notes already named, so a review doesn't repeat itself
        self.window: tuple[str, str] | None = None
        self.last_finish = ""

    def pick(self, options):
        return options[int(self.random() * len(options))]

    def fill(self, template: str) -> str:
        pieces = _COMPILED.get(template) or _compile(template)
        return "".join(p if isinstance(p, str) else p(self) for p in pieces)

    def _note_from(self, pool: tuple[str, ...], kind: str) -> str:
        """A note not yet used in this review; fruit and other notes sometimes get a qualifier."""
        used = self.used
        fresh: Sequence[str] = [n for n in pool if n not in used]
        if not fresh:  # the pool is spent: a fruit gives way to another note, others repeat
            if kind == "fruit":
                return self.other()
            fresh = pool
        note = fresh[int(self.random() * len(fresh))]
        used.add(note)
        if kind == "fruit":
            if note not in NO_MOD and note.split()[0] not in ALREADY_MODIFIED and self.random() < 0.35:
                return f"{self.pick(FRUIT_MODS[self.style])} {note}"
        elif kind == "other" and self.random() < 0.2:
            mod = self.pick(NOTE_MODS)
            return note if note.startswith(mod) else f"{mod} {note}"
        return note

    def fruit(self) -> str:
        return self._note_from(self.profile.fruit, "fruit")

    def other(self) -> str:
        if self.random() < 0.3:
            return self._note_from(SHARED_NOTES.get(self.style, SHARED_NOTES["other"]), "other")
        return self._note_from(self.profile.notes, "other")

    def note(self) -> str:
        return self.fruit() if self.random() < 0.45 else self.other()

    def finish(self) -> str:
        self.last_finish = self.pick(FINISH[self.tier])
        return self.last_finish

    def finish2(self) -> str:
        """A second finish adjective, unlike the first ("long and spicy", not "long and long")."""
        return self.pick([f for f in FINISH[self.tier] if f != self.last_finish])

    def place(self) -> str:
        return self.region if self.region and self.random() < 0.6 else self.province

    def drink_window(self) -> tuple[str, str]:
        """(from, until) years, later and longer for better wines; fixed once per review."""
        if self.window is None:
            now = (self.vintage or 2016) + 3
            early = now + (1 + self.tier if self.tier >= 2 else 0) + int(self.random() * 3)
            late = early + 4 + 3 * self.tier + int(self.random() * 6)
            self.window = (str(early), str(late))
        return self.window

    def blend(self, k: int) -> str:
        grapes = list(self.profile.blend_of[:4])
        self.rng.shuffle(grapes)
        grapes = grapes[:k]
        shares = [self.pick((50, 55, 60, 65, 70, 75, 80))]  # the first grape leads the blend
        left = 100 - shares[0]
        for i in range(1, len(grapes)):
            share = left if i == len(grapes) - 1 else (int(left * self.pick((0.5, 0.6, 0.7))) + 4) // 5 * 5
            shares.append(share)
            left -= share
        parts = [f"{s}% {g}" for s, g in zip(shares, grapes)]
        return ", ".join(parts[:-1]) + " and " + parts[-1]


# slot name -> its filler. A KeyError here is a typo in a template above.
_SLOTS = {
    "note": _Review.note,
    "fruit": _Review.fruit,
    "notes2": lambda r: f"{r.fruit()} and {r.note()}",
    "notes3": lambda r: f"{r.fruit()}, {r.fruit()} and {r.other()}",
    "flav2": lambda r: f"{r.fruit()} and {r.fruit() if r.random() < 0.6 else r.other()}",
    "flav3": lambda r: f"{r.fruit()}, {r.fruit()} and {r.other()}",
    "noun": lambda r: r.noun if r.random() < 0.7 else "wine",
    "variety": lambda r: r.variety,
    "qual": lambda r: (f"{r.pick(ADVERBS[r.tier])} {r.pick(QUALITY[r.tier])}" if r.random() < 0.25
                       else r.pick(QUALITY[r.tier])),
    "hint": lambda r: r.pick(HINTS),
    "finish2": _Review.finish2,
    "body": lambda r: r.pick(BODY[r.profile.body]),
    "texture": lambda r: r.pick(TEXTURE[r.style]),
    "tannin": lambda r: r.pick(TANNIN[max(r.profile.tannin, 1)]),
    "tannin_adj": lambda r: r.pick(TANNIN[max(r.profile.tannin, 1)]).split()[0],
    "tannin_verb": lambda r: r.pick(("need time to soften", "frame the fruit", "give it grip",
                                     "carry it to the finish", "keep it in shape", "add a savory edge")),
    "acid": lambda r: r.pick(ACID[r.profile.acid]),
    "acid_adj": lambda r: r.pick(ACID[r.profile.acid]).split()[0],
    "fresh": lambda r: r.pick(("fresh", "lively", "vibrant", "taut", "focused", "poised")),
    "aroma_verb": lambda r: r.pick(("accented", "framed", "lifted", "joined", "underscored", "shadowed",
                                    "brightened", "accompanied")),
    "mineral": lambda r: r.pick(("chalky", "stony", "flinty", "saline", "mineral")),
    "mousse": lambda r: r.pick(("fine", "creamy", "persistent", "vigorous", "delicate", "lively")),
    "dosage": lambda r: r.pick(("bone dry", "brut in style", "dry", "just off-dry", "crisp and dry")),
    "sweetness": lambda r: r.pick(SWEETNESS[r.sweet]),
    "finish": _Review.finish,
    "place": _Review.place,
    "year": lambda r: str(r.vintage),
    "color": lambda r: r.pick(COLOR[r.style]),
    "vines": lambda r: r.pick(VINES),
    "producer": lambda r: r.producer,
    "producer_pos": lambda r: r.producer + ("'" if r.producer.endswith("s") else "'s"),
    "pct": lambda r: r.pick(("100", "100", "95", "90", "85", "78")),
    "months": lambda r: str(r.pick((6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 30))),
    "oak": lambda r: r.pick(OAK_TYPES),
    "oaknote": lambda r: r._note_from(OAK_NOTES["red" if r.style in ("red", "fortified") else "white"], "oak"),
    "oak_adj": lambda r: r.pick(("heavy-handed", "a bit obvious", "somewhat drying") if r.tier == 0 else
                                ("well integrated", "deftly handled", "subtle", "seamlessly woven in")),
    "flaw": lambda r: r.pick(FLAWS.get(r.style, FLAWS["other"])),
    "food": lambda r: r.pick(FOOD[r.style]),
    "n_years": lambda r: r.pick(("two", "three", "four", "five")),
    "y_early": lambda r: r.drink_window()[0],
    "y_late": lambda r: r.drink_window()[1],
    "blend2": lambda r: r.blend(2),
    "blend3": lambda r: r.blend(3),
}


_COMPILED: dict[str, tuple] = {}


def _compile(template: str) -> tuple:
    """Split a template into literal strings and slot fillers, once per template."""
    pieces: list[str | Callable[[_Review], str]] = []
    for i, part in enumerate(_SLOT_RE.split(template)):
        if i % 2:
            pieces.append(_SLOTS[part])
        elif part:
            pieces.append(part)
    _COMPILED[template] = tuple(pieces)
    return _COMPILED[template]


# --- sampling ---------------------------------------------------------------------------------------


@lru_cache(maxsize=1)
def _samplers() -> tuple[Sampler, dict[str, Sampler], dict[tuple[str, str], Sampler]]:
    """(country, province by country, variety by (country, province)) samplers."""
    catalog = WineCatalog()
    countries = catalog.country_names()
    return (
        Sampler(catalog.raw_country()),
        {c: Sampler(catalog.raw_province(c)) for c in countries},
        {(c, p): Sampler(catalog.raw_variety(c, p)) for c in countries for p in catalog.raw_province(c)},
    )


class _Header:
    """Draws (country, province, variety): one Weyl stream per distribution, so every
    conditional's empirical frequencies track the catalog (see `WeylStream`)."""

    def __init__(self, seed: int):
        self.country, self.province, self.variety = _samplers()
        start = random.Random(f"gptlab-header-{seed}")  # its own rng: the text rng stays independent
        self.country_u = WeylStream(start)
        self.province_u = {c: WeylStream(start) for c in self.province}
        self.variety_u = {key: WeylStream(start) for key in self.variety}

    def __call__(self) -> tuple[str, str, str]:
        country = self.country(self.country_u())
        province = self.province[country](self.province_u[country]())
        variety = self.variety[(country, province)](self.variety_u[(country, province)]())
        return country, province, variety


def _producer(rng: random.Random, country: str) -> str:
    patterns, pools = WINERY_STYLES[country]
    pattern = patterns[int(rng.random() * len(patterns))]
    return _SLOT_RE.sub(lambda m: pools[m.group(1)][int(rng.random() * len(pools[m.group(1)]))], pattern)


def _designation(rng: random.Random, country: str, variety: str, profile: GrapeProfile) -> str | None:
    if variety == "Port":
        return PORT_DESIGNATIONS[int(rng.random() * len(PORT_DESIGNATIONS))]
    if profile.style == "sparkling":
        return SPARKLING_DESIGNATIONS[int(rng.random() * len(SPARKLING_DESIGNATIONS))] if rng.random() < 0.6 else None
    if rng.random() < 0.55:
        return None
    options: tuple[str, ...]
    if country == "Germany" and variety != "Riesling":
        options = ("Trocken", "Grosses Gewächs")
    else:
        options = DESIGNATIONS.get(country, DESIGNATIONS["*"])
    return options[int(rng.random() * len(options))]


def _review(rng: random.Random, header: _Header) -> dict:
    country, province, variety = header()
    profile, noun = profile_for(province, variety)

    regions = REGION_CHOICES.get(province, {})
    region_pool = regions.get(variety) or regions.get("*")
    region = region_pool[int(rng.random() * len(region_pool))] if region_pool and rng.random() < 0.8 else None

    points = round(rng.gauss(88.3 + PLACE_POINTS.get(province, 0.0), 2.9))
    points = min(100, max(80, points))
    log_price = (math.log(22) + 0.12 * (points - 88) + COUNTRY_PRICE.get(country, 0.0)
                 + PLACE_PRICE.get(province, 0.0) + PLACE_PRICE.get(region or "", 0.0) + rng.gauss(0, 0.35))
    price = max(5, round(math.exp(log_price)))

    designation = _designation(rng, country, variety, profile)
    non_vintage = (profile.style == "sparkling" and rng.random() < 0.6) or variety in ("Sherry", "Palomino",
                   "Madeira Blend", "Sercial") or (designation or "").endswith("Tawny")
    vintage = None if non_vintage else 2004 + int(rng.random() * 14)
    sweet = GERMAN_SWEETNESS.get(designation or "", profile.sweet) if country == "Germany" else profile.sweet
    if profile.style == "sweet":
        sweet = 2
    producer = _producer(rng, country)

    r = _Review(rng, country, province, region, variety, noun, profile, points, vintage, producer, sweet)
    title = " ".join(x for x in (producer, str(vintage) if vintage else "NV", designation, variety) if x)
    description = _describe(r, price)
    return {
        "country": country,
        "province": province,
        "region_1": region or "",
        "variety": variety,
        "description": description,
        "designation": designation or "",
        "points": points,
        "price": price,
        "title": f"{title} ({region or province})",
        "winery": producer,
    }


def _describe(r: _Review, price: int) -> str:
    rng, p, style = r.rng, r.profile, r.profile.style
    is_blend = bool(p.blend_of) and ("blend" in r.noun or r.noun in ("red", "Champagne", "sparkler"))

    openings: tuple[str, ...] = OPENINGS
    if not is_blend and r.noun == r.variety and rng.random() < 0.15:
        openings = VARIETAL_OPENINGS
    elif r.vintage is None:
        openings = tuple(o for o in OPENINGS if "{year}" not in o)
    # (sentence, optional) in reading order; optional ones go first, from the end, when too long.
    parts: list[tuple[str, bool]] = [(r.fill(r.pick(openings)), False)]
    if is_blend and rng.random() < 0.45:
        parts.append((r.fill(r.pick(BLENDS)), False))
    parts.append((r.fill(r.pick(PALATES)), False))
    if not is_blend and rng.random() < max(p.oak, 0.15):
        table = OAKED if rng.random() < p.oak else UNOAKED[style]
        parts.append((r.fill(r.pick(table)), True))
    if rng.random() < 0.7:
        parts.append((r.fill(r.pick(STRUCTURES[style])), False))
    if rng.random() < 0.75:
        parts.append((r.fill(r.pick(FINISHES)), False))
    if r.tier >= 2 and r.noun == r.variety and rng.random() < 0.12:
        parts.append((r.fill(r.pick(TYPICITY)), True))
    if rng.random() < 0.6:
        # Reds, sweet and fortified wines age; of the rest only high-acid whites (Riesling, Chenin).
        ages = style in ("red", "fortified", "sweet") or (style == "white" and p.acid == 3 and r.tier >= 2)
        pool = VERDICTS[r.tier] if ages or r.tier == 0 else YOUNG_VERDICTS
        parts.append((r.fill(r.pick(pool)), True))
    if price <= 15 and r.points >= 87 and rng.random() < 0.6:
        parts.append((r.pick(VALUE), True))
    elif price >= 80 and r.tier <= 1 and rng.random() < 0.5:
        parts.append((r.pick(PRICEY), True))

    words = sum(len(s.split()) for s, _ in parts)
    while words > MAX_WORDS and any(opt for _, opt in parts):
        i = max(i for i, (_, opt) in enumerate(parts) if opt)
        words -= len(parts.pop(i)[0].split())
    while words > MAX_WORDS and len(parts) > 2:  # rare: long core sentences; keep the first two
        words -= len(parts.pop()[0].split())
    fillers = (FINISHES, STRUCTURES[style], PALATES)
    k = 0
    while words < MIN_WORDS:  # too short: add core sentences before the verdicts
        extra = r.fill(r.pick(fillers[k % len(fillers)]))
        after_core = max(i for i, (_, opt) in enumerate(parts) if not opt) + 1
        parts.insert(after_core, (extra, False))
        words += len(extra.split())
        k += 1
    sentences = [s for s, _ in parts]
    text = " ".join(s[0].upper() + s[1:] for s in sentences)
    return _ARTICLE_RE.sub(r"\1n ", text)


def synthetic_reviews(n: int, seed: int) -> list[dict]:
    """n synthetic reviews as Kaggle-style field dicts (country, province, region_1, variety,
    description, designation, points, price, title, winery), deterministic by seed."""
    if n < 0:
        raise UserError(f"number of synthetic reviews must be >= 0, got {n}")
    rng = random.Random(seed)
    header = _Header(seed)
    return [_review(rng, header) for _ in range(n)]


def builtin_corpus(cfg: DataConfig) -> Corpus:
    """The offline default corpus: cfg.builtin_size reviews rendered with cfg.template."""
    cfg.validate()
    rows = synthetic_reviews(cfg.builtin_size, cfg.seed)
    names = template_fields(cfg.template)
    missing = [n for n in names if n not in rows[0]]
    if missing:
        raise UserError(
            f"the built-in corpus has no field {', '.join(missing)}; fields available: "
            f"{', '.join(rows[0])}"
        )
    records, used, skipped = apply_template(rows, cfg.template, names, cfg)
    return Corpus(
        records=records,
        source=f"built-in synthetic wine reviews (n={cfg.builtin_size}, seed={cfg.seed})",
        skipped=skipped,
        fields=used,
    )
