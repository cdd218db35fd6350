"""What each grape tastes like: the vocabulary the synthetic reviews draw on.

A `GrapeProfile` holds a wine style's fruit and other notes (Riesling: lime, petrol, slate;
Cabernet Sauvignon: blackcurrant, cedar, graphite) and its structure on a 1-3 scale. Every
variety in the catalog maps to one profile, by name, and for a few (province, variety) pairs by
place too: Chardonnay from Champagne is a sparkling wine, Muscat from Victoria is fortified.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class GrapeProfile:
    style: str  # red | white | rose | sparkling | sweet | fortified
    fruit: tuple[str, ...]  # fruit notes; the generator may qualify them ("ripe", "dried")
    notes: tuple[str, ...]  # everything else: spice, earth, flowers, oak, minerals
    body: int = 2  # 1 light .. 3 full
    tannin: int = 2  # 1 soft .. 3 firm (ignored for whites)
    acid: int = 2  # 1 soft .. 3 racy
    sweet: int = 0  # 0 dry, 1 off-dry, 2 sweet
    oak: float = 0.3  # chance a review mentions barrel ageing
    blend_of: tuple[str, ...] = ()  # grapes a blend is made of, for "a blend of 60% ..." sentences


def _p(style: str, fruit: str, notes: str, **kw) -> GrapeProfile:
    return GrapeProfile(style, tuple(fruit.split(", ")), tuple(notes.split(", ")), **kw)


PROFILES: dict[str, GrapeProfile] = {
    # Reds ---------------------------------------------------------------------------------------
    "cabernet": _p("red", "blackcurrant, black cherry, cassis, blackberry, plum, dark berry, red currant",
                   "cedar, graphite, tobacco, mint, cigar box, dark chocolate, espresso, sage, "
                   "pencil shavings, bell pepper, eucalyptus, baking spice, vanilla, crushed gravel",
                   body=3, tannin=3, acid=2, oak=0.6),
    "merlot": _p("red", "plum, black cherry, raspberry, blueberry, blackberry, red cherry",
                 "mocha, cocoa, milk chocolate, vanilla, bay leaf, clove, dried herb, toast, caramel, "
                 "fruitcake", body=2, tannin=2, acid=2, oak=0.5),
    "cabernet franc": _p("red", "raspberry, red cherry, cranberry, red currant, black cherry",
                         "green bell pepper, violet, graphite, dried herb, tobacco leaf, pencil lead, "
                         "crushed rock, sage, white pepper", body=2, tannin=2, acid=3, oak=0.4),
    "bordeaux red": _p("red", "blackcurrant, black cherry, plum, blackberry, red currant, damson",
                       "cedar, graphite, tobacco, toast, earth, cigar box, licorice, wood smoke, "
                       "pencil shavings, mocha", body=3, tannin=3, acid=2, oak=0.6,
                       blend_of=("Cabernet Sauvignon", "Merlot", "Cabernet Franc", "Petit Verdot", "Malbec")),
    "pinot noir": _p("red", "red cherry, raspberry, strawberry, cranberry, pomegranate, black cherry, "
                     "red plum, rhubarb", "forest floor, mushroom, cola, sassafras, rose petal, clove, "
                     "earth, black tea, baking spice, orange peel, beet, dried leaves",
                     body=1, tannin=1, acid=3, oak=0.4),
    "syrah": _p("red", "blackberry, blueberry, black plum, boysenberry, dark cherry, black raspberry",
                "black pepper, smoked meat, bacon fat, black olive, violet, licorice, leather, "
                "charred meat, lavender, roasted coffee", body=3, tannin=2, acid=2, oak=0.4),
    "shiraz": _p("red", "blackberry, plum, blueberry, black cherry, mulberry, blackberry jam",
                 "dark chocolate, eucalyptus, mint, black pepper, licorice, vanilla, mocha, sweet spice, "
                 "leather", body=3, tannin=2, acid=2, oak=0.5),
    "zinfandel": _p("red", "raspberry, blackberry, plum, boysenberry, cherry, strawberry jam, black raspberry",
                    "black pepper, brown sugar, cinnamon, licorice, clove, sweet tobacco, vanilla, anise",
                    body=3, tannin=2, acid=2, oak=0.4),
    "petite sirah": _p("red", "blackberry, blueberry, black plum, black cherry, boysenberry",
                       "black pepper, tar, espresso, licorice, dark chocolate, violet, smoke",
                       body=3, tannin=3, acid=2, oak=0.4),
    "malbec": _p("red", "plum, blackberry, black cherry, boysenberry, blueberry, cassis",
                 "violet, cocoa, mocha, vanilla, tobacco, leather, licorice, baking spice, dried herb",
                 body=3, tannin=2, acid=2, oak=0.5),
    "carmenere": _p("red", "black plum, blackberry, red currant, dark cherry, cassis",
                    "green herb, jalapeño, tobacco, coffee, black olive, spice, smoke, dried oregano",
                    body=2, tannin=2, acid=2, oak=0.4),
    "tempranillo": _p("red", "cherry, plum, strawberry, dried fig, blackberry, red berry",
                      "leather, tobacco, dill, vanilla, coconut, dried herb, earth, clove, cedar, cinnamon",
                      body=2, tannin=2, acid=2, oak=0.7),
    "grenache": _p("red", "raspberry, strawberry, kirsch, red plum, cherry, cranberry",
                   "white pepper, garrigue, licorice, dried herb, orange peel, lavender, cinnamon, rose",
                   body=2, tannin=1, acid=2, oak=0.2),
    "monastrell": _p("red", "blackberry, plum, prune, black cherry, raisin",
                     "leather, game, earth, herb, black olive, licorice, smoke, black pepper",
                     body=3, tannin=2, acid=2, oak=0.3),
    "rhone red": _p("red", "blackberry, raspberry, plum, kirsch, black cherry, cranberry",
                    "garrigue, black pepper, licorice, leather, lavender, smoked meat, dried thyme, olive",
                    body=3, tannin=2, acid=2, oak=0.3, blend_of=("Grenache", "Syrah", "Mourvèdre", "Cinsault")),
    "sangiovese": _p("red", "sour cherry, red cherry, plum, cranberry, red currant, wild strawberry",
                     "dried herb, leather, tobacco, violet, tomato leaf, earth, espresso, underbrush, "
                     "balsamic, clove", body=2, tannin=2, acid=3, oak=0.4),
    "nebbiolo": _p("red", "red cherry, wild strawberry, raspberry, dried cherry, pomegranate, cranberry",
                   "rose petal, tar, licorice, truffle, leather, dried herb, star anise, tobacco, menthol, "
                   "underbrush, cinnamon", body=2, tannin=3, acid=3, oak=0.3),
    "barbera": _p("red", "sour cherry, raspberry, plum, blackberry, red currant",
                  "baking spice, dried herb, vanilla, almond, licorice", body=2, tannin=1, acid=3, oak=0.3),
    "dolcetto": _p("red", "black cherry, plum, blackberry, blueberry", "almond, licorice, violet, cocoa",
                   body=2, tannin=2, acid=2, oak=0.1),
    "amarone": _p("red", "dried cherry, raisin, prune, fig, plum, black cherry, cherry preserves",
                  "chocolate, spice, tobacco, leather, mocha, licorice, dried herb",
                  body=3, tannin=2, acid=2, oak=0.4, blend_of=("Corvina", "Rondinella", "Molinara")),
    "aglianico": _p("red", "black cherry, plum, blackberry, dried cherry",
                    "tar, smoke, leather, licorice, espresso, crushed stone, dried herb, tobacco",
                    body=3, tannin=3, acid=3, oak=0.4),
    "southern red": _p("red", "black cherry, plum, blackberry, prune, mulberry, cherry",
                       "licorice, spice, chocolate, tobacco, earth, Mediterranean herb, clove",
                       body=3, tannin=2, acid=2, oak=0.3),
    "volcanic red": _p("red", "red cherry, raspberry, pomegranate, wild strawberry",
                       "smoke, crushed stone, herb, rose, orange peel, ash", body=1, tannin=2, acid=3, oak=0.2),
    "tannic red": _p("red", "blackberry, black plum, black cherry, cassis",
                     "tar, smoke, espresso, leather, clove, dark chocolate, licorice",
                     body=3, tannin=3, acid=2, oak=0.5),
    "gamay": _p("red", "raspberry, cherry, strawberry, red currant, cranberry, red plum",
                "violet, pepper, earth, granite, peony, baking spice", body=1, tannin=1, acid=3, oak=0.0),
    "pinotage": _p("red", "plum, blackberry, mulberry, black cherry",
                   "smoke, coffee, tar, roasted meat, earth, mocha", body=3, tannin=2, acid=2, oak=0.4),
    "portuguese red": _p("red", "blackberry, plum, black cherry, blueberry, damson",
                         "violet, rockrose, spice, dried herb, chocolate, licorice, bergamot, smoke",
                         body=3, tannin=3, acid=2, oak=0.4,
                         blend_of=("Touriga Nacional", "Touriga Franca", "Tinta Roriz", "Tinto Cão")),
    "blaufrankisch": _p("red", "black cherry, blackberry, blueberry, red cherry, sour cherry",
                        "pepper, spice, earth, graphite, violet, forest floor", body=2, tannin=2, acid=3, oak=0.3),
    "light red": _p("red", "sour cherry, raspberry, plum, red currant, strawberry",
                    "pepper, spice, herb, violet", body=1, tannin=1, acid=3, oak=0.1),
    "mencia": _p("red", "red cherry, raspberry, plum, blackberry, pomegranate",
                 "violet, graphite, herb, pepper, crushed stone", body=2, tannin=2, acid=3, oak=0.3),
    "red blend": _p("red", "cherry, plum, blackberry, raspberry, black cherry, currant",
                    "spice, vanilla, chocolate, earth, cedar, licorice, toast", body=2, tannin=2, acid=2, oak=0.4,
                    blend_of=("Cabernet Sauvignon", "Merlot", "Syrah", "Zinfandel", "Petite Sirah")),
    "dark red": _p("red", "blackberry, black cherry, plum, blueberry, mulberry",
                   "violet, cocoa, earth, licorice, spice, smoke", body=3, tannin=2, acid=2, oak=0.4),
    # Whites -------------------------------------------------------------------------------------
    "chardonnay": _p("white", "apple, pear, lemon, pineapple, peach, golden apple, lemon curd, melon",
                     "butter, vanilla, toast, hazelnut, brioche, flint, cream, butterscotch, baking spice, "
                     "crushed stone", body=3, acid=2, oak=0.7),
    "sauvignon blanc": _p("white", "grapefruit, lime, gooseberry, passion fruit, green apple, lemon, "
                          "white peach, guava", "cut grass, herb, flint, nettle, jalapeño, lemongrass, "
                          "chalk, wet stone", body=1, acid=3, oak=0.1),
    "riesling": _p("white", "lime, green apple, apricot, peach, lemon, tangerine, nectarine",
                   "petrol, slate, honey, wet stone, jasmine, beeswax, orange blossom, ginger, smoke",
                   body=1, acid=3, sweet=1, oak=0.0),
    "pinot gris": _p("white", "pear, apple, lemon, melon, peach, nectarine, quince",
                     "almond, honeysuckle, spice, ginger, smoke, white flower", body=2, acid=2, oak=0.1),
    "pinot grigio": _p("white", "pear, lemon, green apple, lime, melon",
                       "almond, white flower, wet stone, herb", body=1, acid=2, oak=0.0),
    "gewurztraminer": _p("white", "lychee, grapefruit, peach, pineapple, mango",
                         "rose petal, ginger, clove, honeysuckle, Turkish delight, exotic spice",
                         body=3, acid=1, sweet=1, oak=0.0),
    "chenin blanc": _p("white", "quince, apple, pear, lemon, honeydew, yellow plum",
                       "honey, beeswax, chamomile, lanolin, chalk, ginger, almond", body=2, acid=3, sweet=1, oak=0.2),
    "viognier": _p("white", "apricot, peach, tangerine, nectarine, mango",
                   "honeysuckle, orange blossom, spice, ginger, jasmine, vanilla", body=3, acid=1, oak=0.2),
    "gruner veltliner": _p("white", "green apple, lime, lemon, pear, grapefruit",
                           "white pepper, lentil, radish, celery, herb, wet stone", body=2, acid=3, oak=0.0),
    "albarino": _p("white", "peach, lemon, lime, nectarine, melon, grapefruit",
                   "sea spray, white flower, chalk, orange blossom, saline minerality", body=1, acid=3, oak=0.0),
    "crisp white": _p("white", "lemon, green apple, lime, pear, white peach, grapefruit, melon",
                      "almond, white flower, wet stone, fennel, herb, citrus blossom, chalk",
                      body=1, acid=3, oak=0.1),
    "mineral white": _p("white", "lemon, lime, green apple, pear, quince",
                        "flint, crushed stone, smoke, sea spray, chalk, saline minerality", body=2, acid=3, oak=0.1),
    "aromatic white": _p("white", "peach, lychee, grapefruit, orange, apricot",
                         "rose petal, jasmine, orange blossom, spice, elderflower", body=1, acid=2, oak=0.0),
    "rich white": _p("white", "pear, apricot, yellow peach, quince, melon, baked apple",
                     "honey, almond, beeswax, hazelnut, chamomile, vanilla", body=3, acid=2, oak=0.4),
    "semillon": _p("white", "lemon, lime, lemon curd, green apple",
                   "lanolin, honey, toast, beeswax, lemongrass", body=2, acid=3, oak=0.3),
    "white bordeaux": _p("white", "grapefruit, lemon, peach, gooseberry, pear",
                         "wax, toast, herb, vanilla, cut grass, lanolin", body=2, acid=3, oak=0.5,
                         blend_of=("Sauvignon Blanc", "Sémillon", "Muscadelle")),
    "white blend": _p("white", "lemon, apple, pear, melon, peach, apricot",
                      "white flower, honey, almond, herb, spice", body=2, acid=2, oak=0.2,
                      blend_of=("Chardonnay", "Viognier", "Sauvignon Blanc", "Roussanne", "Marsanne")),
    # Rosé, sparkling, sweet, fortified ------------------------------------------------------------
    "rose": _p("rose", "strawberry, watermelon, raspberry, red currant, peach, cherry, pink grapefruit, cranberry",
               "rose petal, herb, orange zest, white pepper, wet stone, garrigue", body=1, acid=3, oak=0.0),
    "sparkling": _p("sparkling", "green apple, lemon, pear, white peach, red apple, citrus",
                    "brioche, toast, yeast, almond, chalk, biscuit, hazelnut, baked bread",
                    body=1, acid=3, oak=0.1, blend_of=("Chardonnay", "Pinot Noir", "Pinot Meunier")),
    "sparkling rose": _p("sparkling", "strawberry, raspberry, red cherry, red currant, blood orange",
                         "brioche, toast, rose petal, chalk, biscuit, spice", body=1, acid=3, oak=0.1),
    "prosecco": _p("sparkling", "pear, green apple, peach, honeydew, lemon, white peach, lime, melon",
                   "white flower, wisteria, acacia, sage", body=1, acid=2, oak=0.0),
    "sweet": _p("sweet", "apricot, orange marmalade, peach, quince paste, candied orange, dried apricot, pineapple",
                "honey, caramel, saffron, ginger, vanilla, beeswax, botrytis spice", body=3, acid=3, sweet=2, oak=0.2),
    "moscato": _p("sweet", "peach, apricot, orange, grape, pear", "orange blossom, honeysuckle, sage, musk",
                  body=1, acid=2, sweet=2, oak=0.0),
    "port": _p("fortified", "blackberry, plum, raisin, black cherry, fig, prune",
               "chocolate, spice, licorice, violet, coffee, walnut", body=3, tannin=3, acid=2, sweet=2, oak=0.3),
    "white port": _p("fortified", "dried apricot, orange peel, golden raisin, quince",
                     "almond, honey, spice, vanilla", body=2, tannin=1, acid=2, sweet=2, oak=0.2),
    "sherry": _p("fortified", "green apple, dried apricot, orange peel, lemon peel",
                 "almond, walnut, saline tang, yeast, toffee, hazelnut, sea air, chamomile",
                 body=2, tannin=1, acid=2, sweet=0, oak=0.4),
    "pedro ximenez": _p("fortified", "raisin, fig, date, prune", "molasses, toffee, coffee, chocolate, licorice",
                        body=3, tannin=1, acid=1, sweet=2, oak=0.3),
    "madeira": _p("fortified", "orange peel, dried apricot, raisin, fig",
                  "caramel, toffee, walnut, smoke, burnt sugar, spice", body=2, tannin=1, acid=3, sweet=1, oak=0.3),
    "rutherglen": _p("fortified", "raisin, fig, dried orange peel, date",
                     "toffee, coffee, rancio, molasses, caramel", body=3, tannin=1, acid=2, sweet=2, oak=0.3),
}

# variety -> (profile, how the review names it). Names left out of NOUNS are used as they are.
_BY_PROFILE = {
    "cabernet": "Cabernet Sauvignon",
    "merlot": "Merlot | Agiorgitiko",
    "cabernet franc": "Cabernet Franc",
    "bordeaux red": "Bordeaux-style Red Blend | Meritage | Malbec-Cabernet Sauvignon",
    "pinot noir": "Pinot Noir | Pinot Nero | Spätburgunder | Frühburgunder",
    "syrah": "Syrah",
    "shiraz": "Shiraz | Shiraz-Viognier",
    "zinfandel": "Zinfandel | Primitivo",
    "petite sirah": "Petite Sirah",
    "malbec": "Malbec",
    "carmenere": "Carmenère",
    "tempranillo": "Tempranillo | Tempranillo Blend | Tinta de Toro",
    "grenache": "Grenache | Garnacha | Cannonau | Garnacha Tintorera",
    "monastrell": "Monastrell | Bobal",
    "rhone red": "Rhône-style Red Blend | Provence red blend | Carignan",
    "sangiovese": "Sangiovese | Sangiovese Grosso | Montepulciano",
    "nebbiolo": "Nebbiolo | Xinomavro | Baga",
    "barbera": "Barbera",
    "dolcetto": "Dolcetto | Bonarda",
    "amarone": "Corvina, Rondinella, Molinara",
    "aglianico": "Aglianico",
    "southern red": "Negroamaro | Nero d'Avola | Plavac Mali | Fetească Neagră | Mavrud | Liatiko",
    "volcanic red": "Nerello Mascalese | Frappato | Kotsifali",
    "tannic red": "Tannat | Sagrantino | Petit Verdot | Saperavi | Teran | Refošk | Refosco",
    "gamay": "Gamay",
    "pinotage": "Pinotage",
    "portuguese red": "Portuguese Red | Touriga Nacional | Alicante Bouschet",
    "blaufrankisch": "Blaufränkisch | Lemberger | Kékfrankos",
    "light red": "Zweigelt | Trollinger | Sankt Laurent | País | Cinsault | Gamza",
    "mencia": "Mencía",
    "red blend": "Red Blend",
    "dark red": "Lagrein | Teroldego | Dornfelder | Marselan",
    "chardonnay": "Chardonnay",
    "sauvignon blanc": "Sauvignon Blanc | Sauvignon",
    "riesling": "Riesling | Welschriesling",
    "pinot gris": "Pinot Gris | Grauburgunder",
    "pinot grigio": "Pinot Grigio",
    "gewurztraminer": "Gewürztraminer",
    "chenin blanc": "Chenin Blanc",
    "viognier": "Viognier",
    "gruner veltliner": "Grüner Veltliner | Roter Veltliner",
    "albarino": "Albariño | Alvarinho",
    "crisp white": "Verdejo | Vermentino | Picpoul | Arneis | Cortese | Verdicchio | Pecorino | Trebbiano "
                   "| Turbiana | Vernaccia | Grillo | Ribolla Gialla | Rebula | Friulano | Godello "
                   "| Treixadura | Macabeo | Viura | Xarel-lo | Airén | Loureiro | Arinto | Colombard "
                   "| Elbling | Pinot Blanc | Pinot Bianco | Weissburgunder | Garganega | Passerina "
                   "| Falanghina | Greco | Rkatsiteli | Mtsvane | Malvazija | Pošip | Vilana | Fernão Pires "
                   "| Fetească Regală | Rotgipfler | Zierfandler",
    "mineral white": "Assyrtiko | Melon | Aligoté | Silvaner | Sylvaner | Furmint | Šipon | Hárslevelű "
                     "| Carricante | Chinuri",
    "aromatic white": "Torrontés | Muscat | Malagousia | Moschofilero | Bacchus | Scheurebe "
                      "| Gelber Muskateller",
    "rich white": "Marsanne | Rhône-style White Blend | Provence white blend | Encruzado | Fiano "
                  "| Antão Vaz | Garnacha Blanca | Vidiano | Malvasia",
    "semillon": "Sémillon",
    "white bordeaux": "Bordeaux-style White Blend | Sauvignon Blanc-Semillon",
    "white blend": "White Blend | Portuguese White",
    "rose": "Rosé",
    "sparkling": "Champagne Blend | Sparkling Blend | Portuguese Sparkling | Pinot Meunier",
    "prosecco": "Glera",
    "sweet": "Tokaji | Vidal Blanc | Petit Manseng | Moscatel",
    "moscato": "Moscato",
    "port": "Port",
    "white port": "White Port",
    "sherry": "Sherry | Palomino",
    "pedro ximenez": "Pedro Ximénez",
    "madeira": "Madeira Blend | Sercial",
}
PROFILE_OF: dict[str, str] = {
    name.strip(): profile for profile, names in _BY_PROFILE.items() for name in names.split(" | ")
}

# (province, variety) -> profile, where place changes the wine: Champagne's grapes are sparkling,
# Rutherglen (Victoria) Muscat is fortified, Constantia's is sweet.
PLACE_PROFILE: dict[tuple[str, str], str] = {
    ("Champagne", "Chardonnay"): "sparkling",
    ("Champagne", "Pinot Noir"): "sparkling",
    ("Champagne", "Rosé"): "sparkling rose",
    ("Victoria", "Muscat"): "rutherglen",
    ("Constantia", "Muscat"): "sweet",
    ("Madeira", "Malvasia"): "madeira",
}

# How a review refers to the wine ("this blend"); other varieties go by their own name.
NOUNS: dict[str, str] = {
    "Bordeaux-style Red Blend": "blend",
    "Bordeaux-style White Blend": "blend",
    "Rhône-style Red Blend": "blend",
    "Rhône-style White Blend": "blend",
    "Provence red blend": "blend",
    "Provence white blend": "blend",
    "Red Blend": "red blend",
    "White Blend": "white blend",
    "Tempranillo Blend": "blend",
    "Malbec-Cabernet Sauvignon": "blend",
    "Sauvignon Blanc-Semillon": "blend",
    "Corvina, Rondinella, Molinara": "blend",
    "Champagne Blend": "Champagne",
    "Sparkling Blend": "sparkler",
    "Portuguese Sparkling": "sparkler",
    "Portuguese Red": "red",
    "Portuguese White": "white",
    "Rosé": "rosé",
    "Madeira Blend": "Madeira",
    "Sangiovese Grosso": "Brunello",
    "Glera": "Prosecco",
}
PLACE_NOUNS: dict[tuple[str, str], str] = {
    ("Champagne", "Chardonnay"): "Blanc de Blancs",
    ("Champagne", "Pinot Noir"): "Blanc de Noirs",
    ("Champagne", "Rosé"): "rosé Champagne",
    ("Ontario", "Vidal Blanc"): "Icewine",
}


def profile_for(province: str, variety: str) -> tuple[GrapeProfile, str]:
    """The profile of a (province, variety) and the noun a review uses for it."""
    key = PLACE_PROFILE.get((province, variety)) or PROFILE_OF[variety]
    noun = PLACE_NOUNS.get((province, variety)) or NOUNS.get(variety, variety)
    return PROFILES[key], noun
