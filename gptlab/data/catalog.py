"""The built-in corpus's world: countries, their real wine provinces, and the grapes grown there.

Weights follow the shape of the Kaggle Wine Reviews corpus (WineEnthusiast): the US, France
and Italy dominate; within a country a few provinces dominate (California, Mosel, Bordeaux);
within a province a few grapes dominate (Mosel is nearly all Riesling). One deliberate
departure: Germany gets about 7% of reviews instead of 2%, so that P(province | germany) is
seen often enough to be learned and measured (its eight-odd provinces are single words after
normalisation, which makes it the cleanest probe of what a model learned).

`WineCatalog` exposes these distributions exactly; the generator in `synthetic.py` samples from
them and nothing else, so a model's predictions can be compared with the truth.
"""

from __future__ import annotations

import bisect
import itertools
import random

from gptlab.data.normalize import normalize_text
from gptlab.errors import UserError

# country: (weight, {province: (weight, "Variety:weight | Variety:weight | ...")})
# Varieties are '|'-separated because some Kaggle variety names contain commas.
WORLD: dict[str, tuple[float, dict[str, tuple[float, str]]]] = {
    "US": (30.0, {
        "California": (72, "Pinot Noir:19 | Cabernet Sauvignon:18 | Chardonnay:16 | Zinfandel:11 "
                       "| Syrah:5 | Sauvignon Blanc:5 | Merlot:4 | Red Blend:4 | Petite Sirah:3 "
                       "| Bordeaux-style Red Blend:3 | Sparkling Blend:2 | Rosé:2 | Grenache:1.5 "
                       "| Viognier:1.5 | Cabernet Franc:1.5 | Rhône-style Red Blend:1.5"),
        "Washington": (12, "Cabernet Sauvignon:18 | Syrah:14 | Chardonnay:10 | Merlot:8 | Riesling:8 "
                       "| Bordeaux-style Red Blend:8 | Red Blend:7 | Sauvignon Blanc:4 "
                       "| Cabernet Franc:3 | Malbec:3 | Viognier:2 | Grenache:2 | Rosé:2"),
        "Oregon": (9, "Pinot Noir:52 | Chardonnay:12 | Pinot Gris:9 | Riesling:5 | Pinot Blanc:3 "
                   "| Syrah:3 | Rosé:3 | Tempranillo:2 | Gamay:2 | Sparkling Blend:2"),
        "New York": (4.6, "Riesling:36 | Chardonnay:15 | Cabernet Franc:9 | Gewürztraminer:6 "
                     "| Pinot Noir:5 | Merlot:5 | Sparkling Blend:4 | Rosé:4 | Grüner Veltliner:2"),
        "Virginia": (1.2, "Chardonnay:26 | Cabernet Franc:14 | Viognier:10 | Petit Verdot:7 "
                     "| Meritage:6 | Merlot:6 | Rosé:6"),
        "Idaho": (0.3, "Riesling:40 | Syrah:30 | Chardonnay:30"),
        "Michigan": (0.3, "Riesling:55 | Pinot Gris:25 | Cabernet Franc:20"),
        "Texas": (0.3, "Tempranillo:40 | Viognier:30 | Red Blend:30"),
    }),
    "France": (16.0, {
        "Bordeaux": (22, "Bordeaux-style Red Blend:72 | Bordeaux-style White Blend:14 | Merlot:4 "
                     "| Cabernet Sauvignon:3 | Sauvignon Blanc:3 | Rosé:3 | Cabernet Franc:1"),
        "Burgundy": (18, "Chardonnay:57 | Pinot Noir:40 | Aligoté:2 | Gamay:1"),
        "Alsace": (12, "Riesling:42 | Pinot Gris:20 | Gewürztraminer:15 | Pinot Blanc:7 "
                   "| Pinot Noir:5 | Sparkling Blend:5 | Muscat:3 | Sylvaner:3"),
        "Loire Valley": (9, "Sauvignon Blanc:42 | Chenin Blanc:18 | Melon:14 | Cabernet Franc:12 "
                         "| Rosé:8 | Pinot Noir:6"),
        "Champagne": (7.5, "Champagne Blend:62 | Chardonnay:25 | Pinot Noir:6 | Rosé:5 | Pinot Meunier:2"),
        "Provence": (7.5, "Rosé:88 | Provence red blend:6 | Provence white blend:6"),
        "Southwest France": (7, "Malbec:35 | Tannat:12 | Bordeaux-style Red Blend:10 | Red Blend:10 "
                             "| White Blend:10 | Petit Manseng:8 | Rosé:8 | Colombard:7"),
        "Beaujolais": (5, "Gamay:96 | Chardonnay:4"),
        "Rhône Valley": (5, "Rhône-style Red Blend:45 | Syrah:18 | Rhône-style White Blend:14 "
                         "| Grenache:8 | Rosé:8 | Viognier:5 | Marsanne:2"),
        "Languedoc-Roussillon": (4, "Rhône-style Red Blend:30 | Red Blend:20 | Rosé:15 | Grenache:10 "
                                 "| Carignan:8 | Syrah:7 | White Blend:6 | Picpoul:4"),
    }),
    "Italy": (12.5, {
        "Tuscany": (28, "Sangiovese:40 | Red Blend:30 | Sangiovese Grosso:14 | Merlot:4 "
                    "| Cabernet Sauvignon:3 | Vernaccia:3 | Syrah:2 | White Blend:2 | Vermentino:2"),
        "Piedmont": (21, "Nebbiolo:78 | Barbera:10 | Dolcetto:4 | Moscato:3 | Arneis:3 | Cortese:2"),
        "Veneto": (12, "Glera:28 | Corvina, Rondinella, Molinara:26 | Red Blend:18 | Garganega:14 "
                   "| Pinot Grigio:6 | White Blend:6 | Merlot:2"),
        "Northeastern Italy": (12, "Pinot Grigio:24 | Sauvignon:10 | Chardonnay:10 | White Blend:10 "
                               "| Pinot Bianco:9 | Friulano:8 | Pinot Nero:6 | Lagrein:5 "
                               "| Gewürztraminer:5 | Ribolla Gialla:5 | Refosco:4 | Teroldego:4"),
        "Sicily & Sardinia": (9, "Nero d'Avola:26 | Red Blend:16 | Grillo:10 | Nerello Mascalese:10 "
                              "| Vermentino:10 | Cannonau:8 | White Blend:8 | Carricante:6 | Frappato:6"),
        "Southern Italy": (8, "Aglianico:28 | Primitivo:20 | Negroamaro:12 | Fiano:10 | Greco:10 "
                           "| Falanghina:10 | Red Blend:10"),
        "Central Italy": (6, "Montepulciano:22 | Sangiovese:16 | Sagrantino:14 | Verdicchio:14 "
                          "| Red Blend:12 | Pecorino:8 | Trebbiano:8 | Passerina:6"),
        "Lombardy": (3, "Sparkling Blend:35 | Chardonnay:20 | Turbiana:15 | Nebbiolo:15 | Pinot Nero:15"),
    }),
    "Spain": (8.0, {
        "Northern Spain": (60, "Tempranillo:38 | Tempranillo Blend:16 | Garnacha:10 | Verdejo:9 "
                           "| Mencía:7 | Red Blend:7 | Tinta de Toro:5 | Rosé:4 | Viura:4"),
        "Catalonia": (15, "Sparkling Blend:34 | Red Blend:28 | Garnacha:10 | White Blend:8 "
                      "| Carignan:6 | Xarel-lo:6 | Garnacha Blanca:4 | Macabeo:4"),
        "Galicia": (8, "Albariño:80 | Godello:10 | Mencía:6 | Treixadura:4"),
        "Levante": (7, "Monastrell:42 | Red Blend:25 | Bobal:15 | Garnacha Tintorera:10 | Rosé:8"),
        "Central Spain": (6, "Tempranillo:50 | Red Blend:15 | Syrah:10 | Garnacha:10 | Verdejo:10 | Airén:5"),
        "Andalucia": (2, "Sherry:60 | Pedro Ximénez:22 | Moscatel:12 | Palomino:6"),
    }),
    "Portugal": (5.0, {
        "Douro": (30, "Portuguese Red:68 | Portuguese White:16 | Touriga Nacional:10 | Rosé:6"),
        "Alentejano": (16, "Portuguese Red:55 | Portuguese White:18 | Rosé:8 | Alicante Bouschet:8 "
                       "| Touriga Nacional:6 | Antão Vaz:5"),
        "Port": (14, "Port:96 | White Port:4"),
        "Vinho Verde": (10, "Portuguese White:48 | Alvarinho:24 | Rosé:18 | Loureiro:10"),
        "Dão": (8, "Portuguese Red:50 | Encruzado:20 | Touriga Nacional:18 | Portuguese White:12"),
        "Tejo": (7, "Portuguese Red:40 | Portuguese White:25 | Fernão Pires:15 | Rosé:10 "
                 "| Touriga Nacional:10"),
        "Lisboa": (7, "Portuguese Red:40 | Portuguese White:20 | Arinto:15 | Touriga Nacional:15 | Rosé:10"),
        "Bairrada": (3, "Baga:50 | Portuguese Red:30 | Portuguese Sparkling:12 | Arinto:8"),
        "Madeira": (2, "Madeira Blend:70 | Malvasia:15 | Sercial:15"),
    }),
    "Germany": (7.0, {
        "Mosel": (50, "Riesling:96 | Elbling:2 | Spätburgunder:2"),
        "Rheingau": (15, "Riesling:92 | Spätburgunder:8"),
        "Rheinhessen": (12, "Riesling:70 | Silvaner:8 | Scheurebe:6 | Spätburgunder:6 "
                        "| Gewürztraminer:5 | Dornfelder:5"),
        "Pfalz": (9, "Riesling:65 | Spätburgunder:12 | Gewürztraminer:6 | Weissburgunder:6 "
                  "| Grauburgunder:6 | Scheurebe:5"),
        "Nahe": (4, "Riesling:90 | Spätburgunder:5 | Scheurebe:5"),
        "Franken": (3.5, "Silvaner:60 | Spätburgunder:18 | Riesling:12 | Bacchus:10"),
        "Baden": (3.5, "Spätburgunder:55 | Grauburgunder:25 | Weissburgunder:15 | Riesling:5"),
        "Württemberg": (1.5, "Lemberger:40 | Trollinger:30 | Riesling:30"),
        "Ahr": (0.75, "Spätburgunder:85 | Frühburgunder:15"),
        "Mittelrhein": (0.75, "Riesling:100"),
    }),
    "Australia": (4.0, {
        "South Australia": (60, "Shiraz:36 | Cabernet Sauvignon:14 | Chardonnay:10 | Riesling:10 "
                            "| Grenache:8 | Rhône-style Red Blend:6 | Red Blend:6 | Shiraz-Viognier:3 "
                            "| Sauvignon Blanc:3 | Sémillon:2 | Tempranillo:2"),
        "Western Australia": (13, "Chardonnay:28 | Cabernet Sauvignon:24 | Sauvignon Blanc-Semillon:14 "
                              "| Shiraz:12 | Riesling:8 | Bordeaux-style Red Blend:8 | Sémillon:6"),
        "Victoria": (11, "Shiraz:25 | Pinot Noir:22 | Chardonnay:20 | Muscat:10 | Riesling:8 "
                     "| Marsanne:5 | Cabernet Sauvignon:5 | Sparkling Blend:5"),
        "New South Wales": (7, "Shiraz:35 | Sémillon:30 | Chardonnay:25 | Cabernet Sauvignon:10"),
        "Tasmania": (5, "Pinot Noir:45 | Sparkling Blend:25 | Riesling:12 | Chardonnay:12 | Pinot Gris:6"),
    }),
    "Chile": (3.5, {
        "Colchagua Valley": (20, "Cabernet Sauvignon:32 | Carmenère:20 | Red Blend:10 | Syrah:8 "
                             "| Malbec:7 | Merlot:7 | Chardonnay:8 | Sauvignon Blanc:4 | Petit Verdot:4"),
        "Maipo Valley": (16, "Cabernet Sauvignon:50 | Carmenère:12 | Red Blend:10 | Merlot:8 "
                         "| Chardonnay:8 | Sauvignon Blanc:6 | Syrah:6"),
        "Casablanca Valley": (15, "Sauvignon Blanc:34 | Chardonnay:32 | Pinot Noir:22 | Syrah:6 "
                              "| Gewürztraminer:3 | Riesling:3"),
        "Maule Valley": (10, "Carignan:20 | Cabernet Sauvignon:18 | Carmenère:18 | País:12 "
                         "| Chardonnay:12 | Merlot:10 | Sauvignon Blanc:10"),
        "Central Valley": (10, "Cabernet Sauvignon:34 | Sauvignon Blanc:20 | Carmenère:12 "
                           "| Chardonnay:12 | Merlot:10 | Pinot Noir:8 | Rosé:4"),
        "Leyda Valley": (7, "Sauvignon Blanc:50 | Chardonnay:25 | Pinot Noir:25"),
        "Curicó Valley": (6, "Cabernet Sauvignon:25 | Sauvignon Blanc:20 | Merlot:18 | Chardonnay:15 "
                          "| Carmenère:12 | Malbec:10"),
        "Cachapoal Valley": (6, "Cabernet Sauvignon:30 | Carmenère:25 | Syrah:20 | Red Blend:15 "
                             "| Cabernet Franc:10"),
        "Aconcagua Valley": (5, "Cabernet Sauvignon:30 | Syrah:25 | Sauvignon Blanc:20 | Carmenère:15 "
                             "| Red Blend:10"),
        "Limarí Valley": (5, "Chardonnay:50 | Syrah:25 | Pinot Noir:15 | Sauvignon Blanc:10"),
    }),
    "Argentina": (3.5, {
        "Mendoza Province": (82, "Malbec:42 | Cabernet Sauvignon:18 | Chardonnay:11 | Red Blend:7 "
                             "| Bonarda:5 | Cabernet Franc:4 | Torrontés:3 | Syrah:3 | Pinot Noir:3 "
                             "| Sauvignon Blanc:2 | Malbec-Cabernet Sauvignon:2"),
        "Salta": (8, "Torrontés:45 | Malbec:30 | Cabernet Sauvignon:15 | Tannat:10"),
        "Patagonia": (6, "Pinot Noir:35 | Malbec:35 | Merlot:15 | Chardonnay:15"),
        "San Juan": (4, "Syrah:40 | Malbec:35 | Bonarda:25"),
    }),
    "Austria": (3.5, {
        "Kamptal": (18, "Grüner Veltliner:50 | Riesling:48 | Zweigelt:2"),
        "Burgenland": (17, "Blaufränkisch:30 | Zweigelt:20 | Red Blend:12 | Welschriesling:10 "
                       "| Chardonnay:8 | Grüner Veltliner:8 | Sankt Laurent:6 | Scheurebe:6"),
        "Wachau": (16, "Riesling:55 | Grüner Veltliner:42 | Gelber Muskateller:3"),
        "Niederösterreich": (14, "Grüner Veltliner:50 | Riesling:20 | Zweigelt:12 | Rosé:8 "
                             "| Pinot Noir:6 | Chardonnay:4"),
        "Kremstal": (13, "Riesling:50 | Grüner Veltliner:48 | Zweigelt:2"),
        "Südsteiermark": (5, "Sauvignon Blanc:70 | Gelber Muskateller:12 | Weissburgunder:10 "
                          "| Chardonnay:8"),
        "Weinviertel": (5, "Grüner Veltliner:92 | Riesling:8"),
        "Thermenregion": (4, "Sankt Laurent:32 | Pinot Noir:26 | Rotgipfler:22 | Zierfandler:20"),
        "Wagram": (4, "Grüner Veltliner:48 | Roter Veltliner:18 | Riesling:18 | Zweigelt:16"),
        "Carnuntum": (2, "Zweigelt:50 | Blaufränkisch:30 | Red Blend:20"),
    }),
    "New Zealand": (2.0, {
        "Marlborough": (57, "Sauvignon Blanc:58 | Pinot Noir:28 | Pinot Gris:5 | Riesling:5 | Chardonnay:4"),
        "Central Otago": (13, "Pinot Noir:70 | Pinot Gris:12 | Riesling:10 | Chardonnay:8"),
        "Hawke's Bay": (11, "Syrah:35 | Bordeaux-style Red Blend:20 | Chardonnay:18 | Merlot:12 "
                        "| Sauvignon Blanc:10 | Rosé:5"),
        "Martinborough": (6, "Pinot Noir:60 | Sauvignon Blanc:25 | Pinot Gris:15"),
        "Nelson": (4, "Sauvignon Blanc:40 | Pinot Noir:35 | Riesling:25"),
        "Waipara Valley": (3, "Pinot Noir:45 | Riesling:40 | Pinot Gris:15"),
        "Gisborne": (3, "Chardonnay:70 | Pinot Gris:20 | Gewürztraminer:10"),
        "Kumeu": (3, "Chardonnay:85 | Pinot Gris:15"),
    }),
    "South Africa": (2.0, {
        "Stellenbosch": (32, "Cabernet Sauvignon:18 | Bordeaux-style Red Blend:16 | Pinotage:14 "
                         "| Chardonnay:14 | Chenin Blanc:12 | Sauvignon Blanc:10 | Shiraz:10 | Merlot:6"),
        "Western Cape": (22, "Sauvignon Blanc:26 | Chenin Blanc:22 | Chardonnay:14 | Pinotage:12 "
                         "| Shiraz:10 | Merlot:8 | Rosé:8"),
        "Coastal Region": (8, "Chenin Blanc:30 | Sauvignon Blanc:20 | Syrah:20 | Pinotage:15 "
                           "| Cabernet Sauvignon:15"),
        "Swartland": (8, "Chenin Blanc:40 | Rhône-style Red Blend:20 | Syrah:20 | White Blend:20"),
        "Paarl": (7, "Pinotage:35 | Bordeaux-style Red Blend:20 | Shiraz:20 | Chenin Blanc:25"),
        "Robertson": (7, "Chardonnay:40 | Sauvignon Blanc:25 | Shiraz:20 | Cabernet Sauvignon:15"),
        "Franschhoek": (5, "Sémillon:30 | Chardonnay:30 | Cabernet Sauvignon:25 | Sparkling Blend:15"),
        "Constantia": (4, "Sauvignon Blanc:45 | Muscat:30 | Chardonnay:25"),
        "Walker Bay": (4, "Pinot Noir:50 | Chardonnay:50"),
        "Elgin": (3, "Chardonnay:40 | Pinot Noir:35 | Sauvignon Blanc:25"),
    }),
    "Israel": (0.8, {
        "Galilee": (62, "Cabernet Sauvignon:36 | Chardonnay:14 | Merlot:12 | Sauvignon Blanc:10 "
                    "| Red Blend:10 | Syrah:10 | Rosé:8"),
        "Judean Hills": (25, "Cabernet Sauvignon:42 | Chardonnay:25 | Red Blend:18 | Merlot:15"),
        "Shomron": (8, "Cabernet Sauvignon:50 | Shiraz:30 | Marselan:20"),
        "Samson": (5, "Cabernet Sauvignon:50 | Tempranillo:50"),
    }),
    "Greece": (0.8, {
        "Santorini": (20, "Assyrtiko:90 | White Blend:10"),
        "Nemea": (16, "Agiorgitiko:100"),
        "Peloponnese": (12, "Moschofilero:40 | Agiorgitiko:30 | Rosé:15 | White Blend:15"),
        "Drama": (12, "Red Blend:35 | Malagousia:25 | Sauvignon Blanc:20 | Assyrtiko:20"),
        "Mantinia": (10, "Moschofilero:100"),
        "Crete": (10, "Vidiano:30 | Kotsifali:25 | Liatiko:20 | Vilana:25"),
        "Naoussa": (8, "Xinomavro:100"),
        "Macedonia": (6, "Xinomavro:40 | Red Blend:35 | Malagousia:25"),
        "Epanomi": (6, "Malagousia:50 | Red Blend:30 | Assyrtiko:20"),
    }),
    "Canada": (0.6, {
        "British Columbia": (70, "Chardonnay:24 | Pinot Noir:18 | Riesling:12 | Merlot:12 "
                             "| Bordeaux-style Red Blend:10 | Cabernet Franc:8 | Syrah:8 | Pinot Gris:8"),
        "Ontario": (30, "Riesling:45 | Vidal Blanc:20 | Cabernet Franc:20 | Chardonnay:15"),
    }),
    "Hungary": (0.5, {
        "Tokaj": (60, "Furmint:50 | Tokaji:35 | Hárslevelű:15"),
        "Villány": (20, "Bordeaux-style Red Blend:50 | Cabernet Franc:30 | Kékfrankos:20"),
        "Eger": (12, "Red Blend:60 | Kékfrankos:40"),
        "Sopron": (8, "Kékfrankos:100"),
    }),
    "Uruguay": (0.4, {
        "Canelones": (70, "Tannat:55 | Red Blend:20 | Albariño:10 | Merlot:8 | Rosé:7"),
        "Maldonado": (20, "Albariño:40 | Tannat:35 | Cabernet Franc:25"),
        "Montevideo": (10, "Tannat:70 | Merlot:30"),
    }),
    "Bulgaria": (0.3, {
        "Thracian Valley": (85, "Cabernet Sauvignon:28 | Merlot:22 | Mavrud:18 | Chardonnay:16 "
                            "| Red Blend:16"),
        "Danube River Plains": (15, "Chardonnay:40 | Gamza:30 | Muscat:30"),
    }),
    "England": (0.3, {
        "Sussex": (55, "Sparkling Blend:75 | Chardonnay:15 | Bacchus:10"),
        "Kent": (30, "Sparkling Blend:70 | Bacchus:20 | Pinot Noir:10"),
        "Hampshire": (15, "Sparkling Blend:90 | Chardonnay:10"),
    }),
    "Romania": (0.3, {
        "Dealu Mare": (50, "Fetească Neagră:45 | Cabernet Sauvignon:30 | Merlot:25"),
        "Recas": (30, "Sauvignon Blanc:40 | Pinot Grigio:35 | Fetească Regală:25"),
        "Murfatlar": (20, "Chardonnay:60 | Pinot Noir:40"),
    }),
    "Georgia": (0.25, {
        "Kakheti": (85, "Saperavi:55 | Rkatsiteli:30 | Mtsvane:15"),
        "Kartli": (15, "Sparkling Blend:50 | Chinuri:50"),
    }),
    "Lebanon": (0.2, {
        "Bekaa Valley": (100, "Red Blend:55 | Cinsault:15 | Rosé:15 | White Blend:15"),
    }),
    "Slovenia": (0.2, {
        "Primorska": (70, "Rebula:40 | White Blend:30 | Refošk:30"),
        "Podravje": (30, "Šipon:50 | Sauvignon Blanc:50"),
    }),
    "Mexico": (0.2, {
        "Valle de Guadalupe": (100, "Red Blend:35 | Nebbiolo:20 | Cabernet Sauvignon:20 "
                                    "| Tempranillo:15 | Chenin Blanc:10"),
    }),
    "Croatia": (0.15, {
        "Istria": (55, "Malvazija:60 | Teran:40"),
        "Dalmatia": (45, "Plavac Mali:65 | Pošip:35"),
    }),
}


def _parse_varieties(spec: str, where: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for item in spec.split("|"):
        name, _, weight = item.strip().rpartition(":")
        if name in out:
            raise ValueError(f"variety {name!r} listed twice in {where}")
        out[name] = float(weight)
    return out


def _normalise(weights: dict[str, float]) -> dict[str, float]:
    total = sum(weights.values())
    return {k: w / total for k, w in weights.items()}


def _key(name: str) -> str:
    """The form a name takes in the normalised text, used to match any spelling of it."""
    return normalize_text(name).strip()


class Sampler:
    """A categorical distribution that maps one uniform number u in [0, 1) to a key."""

    def __init__(self, probs: dict[str, float]):
        self.keys = list(probs)
        self.cumulative = list(itertools.accumulate(probs.values()))

    def __call__(self, u: float) -> str:
        i = bisect.bisect_right(self.cumulative, u * self.cumulative[-1])
        return self.keys[min(i, len(self.keys) - 1)]


_GOLDEN = (5**0.5 - 1) / 2


class WeylStream:
    """Uniform numbers u_k = frac(u_0 + k * golden ratio), u_0 drawn from a seeded rng.

    Each u_k is uniform on its own, so a Sampler fed by it draws from its distribution exactly;
    but the sequence fills [0, 1) evenly, so category frequencies after n draws are within
    about 1/n of the truth instead of the 1/sqrt(n) of independent draws. That keeps the
    built-in corpus's empirical P(province | country) equal to the catalog's, which is what a
    trained model is measured against.
    """

    def __init__(self, rng: random.Random):
        self.u = rng.random()

    def __call__(self) -> float:
        self.u = (self.u + _GOLDEN) % 1.0
        return self.u


class WineCatalog:
    """The true distributions behind the built-in corpus.

    Keys are the lowercase names as written in reviews ("new zealand", "languedoc-roussillon");
    with ``normalized=True`` they are passed through `normalize_text` as the training text has
    them ("languedoc - roussillon"). Lookups accept any of the spellings ("US", "us").
    """

    def __init__(self, world: dict[str, tuple[float, dict[str, tuple[float, str]]]] = WORLD):
        self.display: dict[str, str] = {}  # key -> name as printed in fields, e.g. "US"
        self._country = _normalise({c: w for c, (w, _) in world.items()})
        self._province: dict[str, dict[str, float]] = {}
        self._variety: dict[tuple[str, str], dict[str, float]] = {}
        for country, (_, provinces) in world.items():
            self._province[country] = _normalise({p: w for p, (w, _) in provinces.items()})
            for province, (_, spec) in provinces.items():
                where = f"{country}/{province}"
                self._variety[(country, province)] = _normalise(_parse_varieties(spec, where))
        self._country_of = {_key(c): c for c in self._country}
        self._province_of = {
            (c, _key(p)): p for c, provinces in self._province.items() for p in provinces
        }

    # Distributions ---------------------------------------------------------------------------

    def countries(self, normalized: bool = False) -> dict[str, float]:
        """P(country)."""
        return self._keyed(self._country, normalized)

    def p_province(self, country: str, normalized: bool = False) -> dict[str, float]:
        """P(province | country)."""
        return self._keyed(self._province[self._find_country(country)], normalized)

    def p_variety(self, country: str, province: str, normalized: bool = False) -> dict[str, float]:
        """P(variety | country, province)."""
        c = self._find_country(country)
        return self._keyed(self._variety[(c, self._find_province(c, province))], normalized)

    def varieties(self) -> set[str]:
        """Every variety name used anywhere, as printed in fields."""
        return {v for dist in self._variety.values() for v in dist}

    # Raw (display-name) access for the generator ---------------------------------------------

    def country_names(self) -> list[str]:
        return list(self._country)

    def raw_country(self) -> dict[str, float]:
        return dict(self._country)

    def raw_province(self, country: str) -> dict[str, float]:
        return dict(self._province[country])

    def raw_variety(self, country: str, province: str) -> dict[str, float]:
        return dict(self._variety[(country, province)])

    # -----------------------------------------------------------------------------------------

    def _find_country(self, name: str) -> str:
        try:
            return self._country_of[_key(name)]
        except KeyError:
            known = ", ".join(sorted(k.lower() for k in self._country))
            raise UserError(f"unknown country {name!r} in the built-in catalog; known: {known}") from None

    def _find_province(self, country: str, name: str) -> str:
        try:
            return self._province_of[(country, _key(name))]
        except KeyError:
            known = ", ".join(p.lower() for p in self._province[country])
            raise UserError(f"unknown province {name!r} for {country.lower()}; known: {known}") from None

    @staticmethod
    def _keyed(dist: dict[str, float], normalized: bool) -> dict[str, float]:
        return {(_key(k) if normalized else k.lower()): p for k, p in dist.items()}
