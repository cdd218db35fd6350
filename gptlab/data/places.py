"""Sub-regions, producers and price levels for the synthetic reviews.

These only colour the text and the extra fields (title, winery, region_1, points, price); the
distributions a model is tested against (country, province, variety) live in `catalog.py`.
"""

from __future__ import annotations

# province -> {variety or "*": "Region | Region"}: the appellation printed in titles and text.
# Cabernet comes from Napa, Pinot Noir from the Russian River; a missing entry means no region.
REGIONS: dict[str, dict[str, str]] = {
    "California": {
        "*": "Napa Valley | Sonoma County | Paso Robles | Central Coast | Santa Barbara County | Lodi "
             "| Mendocino County | Santa Cruz Mountains",
        "Cabernet Sauvignon": "Napa Valley | Alexander Valley | Paso Robles | Oakville | Rutherford "
                              "| Sonoma County | Napa Valley",
        "Pinot Noir": "Russian River Valley | Sonoma Coast | Santa Lucia Highlands | Sta. Rita Hills "
                      "| Anderson Valley | Carneros",
        "Zinfandel": "Lodi | Dry Creek Valley | Paso Robles | Amador County | Sonoma County",
        "Chardonnay": "Russian River Valley | Sonoma Coast | Carneros | Napa Valley | Santa Maria Valley "
                      "| Monterey",
    },
    "Washington": {"*": "Columbia Valley | Walla Walla Valley | Yakima Valley | Red Mountain "
                        "| Horse Heaven Hills | Wahluke Slope"},
    "Oregon": {"*": "Willamette Valley | Dundee Hills | Eola-Amity Hills | Ribbon Ridge "
                    "| Chehalem Mountains | Rogue Valley"},
    "New York": {"*": "Finger Lakes | Seneca Lake | North Fork of Long Island | Hudson River Region"},
    "Bordeaux": {
        "*": "Pauillac | Saint-Émilion | Pomerol | Margaux | Saint-Julien | Pessac-Léognan | Médoc "
             "| Haut-Médoc | Côtes de Bourg | Bordeaux Supérieur",
        "Bordeaux-style White Blend": "Pessac-Léognan | Graves | Entre-Deux-Mers | Bordeaux Blanc",
        "Sauvignon Blanc": "Entre-Deux-Mers | Graves | Bordeaux Blanc",
        "Rosé": "Bordeaux Rosé",
    },
    "Burgundy": {
        "Chardonnay": "Chablis | Meursault | Puligny-Montrachet | Mâcon-Villages | Pouilly-Fuissé "
                      "| Chassagne-Montrachet | Bourgogne",
        "Pinot Noir": "Gevrey-Chambertin | Vosne-Romanée | Pommard | Volnay | Nuits-St.-Georges "
                      "| Chambolle-Musigny | Bourgogne",
        "*": "Bourgogne",
    },
    "Loire Valley": {
        "Sauvignon Blanc": "Sancerre | Pouilly-Fumé | Touraine | Menetou-Salon",
        "Chenin Blanc": "Vouvray | Savennières | Montlouis-sur-Loire | Saumur",
        "Melon": "Muscadet Sèvre et Maine",
        "Cabernet Franc": "Chinon | Bourgueil | Saumur-Champigny",
        "*": "Sancerre | Touraine | Anjou",
    },
    "Rhône Valley": {
        "*": "Châteauneuf-du-Pape | Côtes du Rhône | Gigondas | Vacqueyras | Côtes du Rhône Villages",
        "Syrah": "Crozes-Hermitage | Saint-Joseph | Côte Rôtie | Hermitage | Cornas",
        "Viognier": "Condrieu",
        "Rosé": "Tavel | Côtes du Rhône",
    },
    "Tuscany": {
        "Sangiovese": "Chianti Classico | Chianti | Vino Nobile di Montepulciano | Rosso di Montalcino",
        "Sangiovese Grosso": "Brunello di Montalcino",
        "Vernaccia": "Vernaccia di San Gimignano",
        "*": "Toscana | Bolgheri | Maremma Toscana",
    },
    "Piedmont": {
        "Nebbiolo": "Barolo | Barbaresco | Langhe | Roero | Gattinara",
        "Barbera": "Barbera d'Asti | Barbera d'Alba",
        "Dolcetto": "Dolcetto d'Alba",
        "Moscato": "Moscato d'Asti",
        "Arneis": "Roero",
        "Cortese": "Gavi",
    },
    "Veneto": {
        "Corvina, Rondinella, Molinara": "Amarone della Valpolicella Classico | Valpolicella Ripasso "
                                         "| Valpolicella Classico",
        "Glera": "Prosecco Superiore | Prosecco | Valdobbiadene Prosecco Superiore",
        "Garganega": "Soave Classico | Soave",
    },
    "Northern Spain": {
        "Tempranillo": "Rioja | Ribera del Duero | Toro | Rioja",
        "Tempranillo Blend": "Rioja",
        "Verdejo": "Rueda",
        "Garnacha": "Campo de Borja | Calatayud | Navarra",
        "Mencía": "Bierzo",
        "Tinta de Toro": "Toro",
        "Viura": "Rioja",
        "*": "Rioja | Navarra | Ribera del Duero",
    },
    "Catalonia": {"Sparkling Blend": "Cava", "*": "Priorat | Montsant | Penedès | Empordà"},
    "Galicia": {"*": "Rías Baixas", "Godello": "Valdeorras", "Mencía": "Ribeira Sacra"},
    "Mendoza Province": {"*": "Mendoza | Luján de Cuyo | Uco Valley | Tupungato | Maipú"},
    "South Australia": {
        "*": "Barossa Valley | McLaren Vale | Clare Valley | Eden Valley | Coonawarra | Adelaide Hills",
        "Riesling": "Clare Valley | Eden Valley",
        "Cabernet Sauvignon": "Coonawarra | Barossa Valley | McLaren Vale",
        "Shiraz": "Barossa Valley | McLaren Vale | Barossa",
    },
    "Western Australia": {"*": "Margaret River | Great Southern"},
    "Victoria": {"Muscat": "Rutherglen", "*": "Yarra Valley | Mornington Peninsula | Heathcote | Geelong"},
    "New South Wales": {"*": "Hunter Valley"},
}
REGION_CHOICES: dict[str, dict[str, tuple[str, ...]]] = {
    province: {k: tuple(r.strip() for r in v.split("|")) for k, v in table.items()}
    for province, table in REGIONS.items()
}

# Log-price offsets: Burgundy and Champagne cost more than the Central Valley at equal points.
COUNTRY_PRICE = {
    "US": 0.25, "France": 0.2, "Italy": 0.15, "Germany": 0.1, "Spain": -0.2, "Portugal": -0.3,
    "Chile": -0.45, "Argentina": -0.35, "Australia": -0.05, "South Africa": -0.35, "Bulgaria": -0.8,
    "Romania": -0.8, "Hungary": 0.1, "Israel": 0.2, "Greece": -0.1, "Canada": 0.15, "England": 0.5,
    "Georgia": -0.3, "Lebanon": 0.1, "Slovenia": -0.1, "Mexico": 0.2, "Uruguay": -0.2,
}
PLACE_PRICE = {
    "Burgundy": 0.6, "Champagne": 0.9, "Bordeaux": 0.2, "Piedmont": 0.3, "Tuscany": 0.2,
    "Napa Valley": 0.5, "Oakville": 0.7, "Rutherford": 0.6, "Barolo": 0.6, "Barbaresco": 0.5,
    "Brunello di Montalcino": 0.7, "Amarone della Valpolicella Classico": 0.5, "Pauillac": 0.7,
    "Pomerol": 0.7, "Margaux": 0.6, "Saint-Julien": 0.6, "Châteauneuf-du-Pape": 0.4,
    "Hermitage": 0.6, "Côte Rôtie": 0.6, "Vosne-Romanée": 0.9, "Gevrey-Chambertin": 0.6,
    "Meursault": 0.6, "Puligny-Montrachet": 0.7, "Chassagne-Montrachet": 0.6, "Sancerre": 0.1,
    "Priorat": 0.4, "Ribera del Duero": 0.2, "Condrieu": 0.5,
}
# Points offsets: some places are reviewed higher on average.
PLACE_POINTS = {
    "Burgundy": 1.0, "Champagne": 1.0, "Piedmont": 1.0, "Mosel": 1.0, "Wachau": 1.2, "Bordeaux": 0.5,
    "Tuscany": 0.5, "Rheingau": 0.8, "Kamptal": 0.8, "Kremstal": 0.6, "Port": 1.0, "Rhône Valley": 0.5,
    "Central Otago": 0.5, "Santorini": 0.5, "Tokaj": 0.8, "Washington": 0.5, "Oregon": 0.3,
    "Provence": -0.5, "Central Valley": -1.5, "Central Spain": -1.0, "Levante": -0.8, "Tejo": -0.8,
    "Languedoc-Roussillon": -0.5, "Sicily & Sardinia": -0.5, "Western Cape": -0.8,
    "Thracian Valley": -1.0, "Alentejano": -0.3,
}

# Producer names, built from parts so that hundreds of wineries exist in each country.
_FR_PLACES = ("Bellevue", "la Croix", "Belair", "Haut-Peyrac", "les Tourelles", "la Rivière", "Grand Village",
              "Roche Noire", "Beaulieu", "des Vignes", "la Garenne", "du Moulin", "Saint-Ange", "Pierrefeu",
              "Champ Rouge", "la Colline", "Haut-Bois", "Clairefont", "Mont-Rond", "des Sablons")
_FR_NAMES = ("Moreau", "Dubois", "Lefèvre", "Girard", "Rousseau", "Mercier", "Bonnet", "Lambert", "Marchand",
             "Fabre", "Roux", "Chevalier", "Garnier", "Faure", "Blanc", "Guérin", "Martin", "Bernard",
             "Morel", "Lemaire")
_IT_PLACES = ("San Lorenzo", "Montebello", "Le Colline", "Poggio Alto", "Villa Rosa", "Ca' Bianca",
              "Vallombrosa", "Santa Lucia", "Monteverde", "Le Querce", "Casalone", "Poggio ai Venti",
              "Borgo Antico", "Colle Verde", "Ripa Bassa")
_IT_NAMES = ("Rossi", "Bianchi", "Colombo", "Ricci", "Marino", "Greco", "Bruno", "Conti", "Esposito", "Vitale",
             "Lombardi", "Moretti", "Barbieri", "Fontana", "Santoro", "Mariani", "Rinaldi", "Caruso",
             "Ferraro", "Galli")
_ES_PLACES = ("Los Olivos", "La Cruz", "El Castro", "Monte Alto", "Las Piedras", "Vallecillo", "La Encina",
              "Peñaflor", "Altamira", "Río Seco", "Los Robles", "La Ermita", "Cerro Negro", "Las Lomas")
_ES_NAMES = ("García", "Fernández", "López", "Martínez", "Sánchez", "Pérez", "Gómez", "Ruiz", "Díaz", "Moreno",
             "Álvarez", "Romero", "Navarro", "Domínguez", "Vázquez", "Gil", "Serrano", "Blanco", "Molina",
             "Castillo")
_PT_PLACES = ("do Vale", "do Monte", "do Outeiro", "do Castelo", "do Pinhal", "da Fonte", "da Serra",
              "da Pedra", "da Costa", "da Ribeira", "da Lagoa", "do Carvalhal", "do Sobral")
_PT_NAMES = ("Silva", "Santos", "Ferreira", "Pereira", "Oliveira", "Costa", "Rodrigues", "Martins", "Sousa",
             "Fernandes", "Gonçalves", "Carvalho", "Almeida", "Lopes", "Marques")
_DE_PLACES = ("Rheinstein", "Lindenberg", "Eichenau", "Sonnenhof", "Bergheim", "Hohenfels", "Adlerberg",
              "Steinbach", "Rosenau", "Falkenberg")
_DE_NAMES = ("Müller", "Schmidt", "Weber", "Becker", "Hoffmann", "Wagner", "Schäfer", "Koch", "Bauer",
             "Richter", "Klein", "Wolf", "Neumann", "Schwarz", "Braun", "Hofmann", "Zimmermann", "Krüger",
             "Hartmann", "Lange", "Huber", "Gruber", "Steiner", "Mayer")
_EN_FEATURES = ("Oak", "Stone", "Eagle", "Silver", "Willow", "Cedar", "Iron", "Fox", "Raven", "Golden",
                "Quail", "Black Bear", "Twin", "Wild", "Copper", "Lone", "Sunset", "Bluebird", "Crescent",
                "Red Tail")
_EN_LANDFORMS = ("Ridge", "Creek", "Hill", "Canyon", "Bend", "Bluff", "Valley", "Crest", "Hollow", "Springs",
                 "Mesa", "Point", "Peak", "Meadow", "Cove")
_EN_NAMES = ("Anderson", "Miller", "Hughes", "Carter", "Bennett", "Sullivan", "Harper", "Morgan", "Fletcher",
             "Collins", "Walsh", "Hayes", "Porter", "Reed", "Brooks", "Ellis", "Hart", "Quinn", "Palmer",
             "Whitfield", "McAllister", "Thornton", "Ashby", "Donnelly")

# country -> (patterns, {slot: choices}); {a} and {b} are filled from the named pools.
WineryStyle = tuple[tuple[str, ...], dict[str, tuple[str, ...]]]
_FR: WineryStyle = (("Château {p}", "Domaine {n}", "Maison {n}", "Clos {p}", "Domaine {n} et Fils"),
                    {"p": _FR_PLACES, "n": _FR_NAMES})
_IT: WineryStyle = (("Tenuta {p}", "Cantina {n}", "Fattoria {p}", "Castello di {p}", "Poderi {n}", "{n}"),
                    {"p": _IT_PLACES, "n": _IT_NAMES})
_ES: WineryStyle = (("Bodegas {n}", "Viña {p}", "Celler {p}", "Pago de {p}", "Bodegas {p}"),
                    {"p": _ES_PLACES, "n": _ES_NAMES})
_ES_NEW: WineryStyle = (("Viña {p}", "Bodega {n}", "Finca {p}", "{n} Family Wines", "Bodega {p}"),
                        {"p": _ES_PLACES, "n": _ES_NAMES})
_PT: WineryStyle = (("Quinta {p}", "Herdade {p}", "Casa {n}", "Adega {n}", "Quinta {p}"),
                    {"p": _PT_PLACES, "n": _PT_NAMES})
_DE: WineryStyle = (("Weingut {n}", "Schloss {p}", "Weingut Dr. {n}", "{n}", "Weingut {n}-{m}"),
                    {"p": _DE_PLACES, "n": _DE_NAMES, "m": _DE_NAMES})
_EN: WineryStyle = (("{n} Estate", "{n} Vineyards", "{n} Family Wines", "{f} {l}", "{f} {l} Cellars",
                     "{f} {l} Vineyards", "{n} Cellars", "{n} & Sons"),
                    {"n": _EN_NAMES, "f": _EN_FEATURES, "l": _EN_LANDFORMS})


def _local(patterns: tuple[str, ...], names: str) -> WineryStyle:
    return patterns, {"n": tuple(names.split(", "))}


WINERY_STYLES: dict[str, WineryStyle] = {
    "France": _FR, "Italy": _IT, "Spain": _ES, "Portugal": _PT, "Germany": _DE, "Austria": _DE,
    "Chile": _ES_NEW, "Argentina": _ES_NEW, "Uruguay": _ES_NEW, "Mexico": _ES_NEW,
    "US": _EN, "Australia": _EN, "New Zealand": _EN, "South Africa": _EN, "Canada": _EN, "England": _EN,
    "Israel": _local(("{n} Winery", "{n} Estate", "{n} Cellars"),
                     "Cohen, Levi, Mizrahi, Peretz, Ben-Ami, Golan, Shapira, Katz"),
    "Greece": _local(("Ktima {n}", "Domaine {n}", "{n} Winery"),
                     "Papadakis, Nikolaou, Georgiou, Alexiou, Karalis, Dimitriou, Vlachos, Manolis"),
    "Hungary": _local(("{n} Pincészet", "{n} Winery", "{n} Estate"),
                      "Nagy, Kovács, Tóth, Szabó, Horváth, Varga, Kiss, Molnár"),
    "Bulgaria": _local(("{n} Estate", "{n} Winery"), "Ivanov, Petrov, Georgiev, Dimitrov, Stoyanov"),
    "Romania": _local(("Crama {n}", "{n} Estate"), "Popescu, Ionescu, Stan, Dumitru, Radu"),
    "Georgia": _local(("{n} Marani", "{n} Winery"), "Beridze, Kapanadze, Gelashvili, Lomidze, Tsereteli"),
    "Lebanon": _local(("Château {n}", "Domaine {n}"), "Haddad, Khoury, Nassar, Saade, Karam"),
    "Slovenia": _local(("Vina {n}", "Klet {n}"), "Novak, Horvat, Kralj, Zupan, Kos"),
    "Croatia": _local(("Vina {n}", "{n} Winery"), "Babić, Jurić, Kovačević, Matić, Radić"),
}

# Label designations by country; None stands for "no designation" and is the common case.
DESIGNATIONS: dict[str, tuple[str, ...]] = {
    "Germany": ("Kabinett", "Spätlese", "Auslese", "Trocken", "Feinherb", "Grosses Gewächs"),
    "Austria": ("Smaragd", "Federspiel", "Reserve", "Alte Reben"),
    "Spain": ("Crianza", "Reserva", "Gran Reserva", "Roble", "Viñas Viejas"),
    "Italy": ("Riserva", "Classico", "Superiore", "Vigna Vecchia"),
    "France": ("Réserve", "Vieilles Vignes", "Cuvée Prestige", "Tradition", "Les Terrasses"),
    "Portugal": ("Reserva", "Grande Reserva", "Colheita", "Tinto"),
    "*": ("Reserve", "Estate", "Estate Grown", "Old Vine", "Barrel Select", "Single Vineyard",
          "Founder's Reserve", "Limited Release", "Private Selection", "Hillside"),
}
PORT_DESIGNATIONS = ("Vintage", "Late Bottled Vintage", "10 Year Old Tawny", "20 Year Old Tawny", "Ruby Reserve")
SPARKLING_DESIGNATIONS = ("Brut", "Extra Brut", "Brut Réserve", "Brut Nature", "Demi-Sec")
GERMAN_SWEETNESS = {"Kabinett": 1, "Spätlese": 2, "Auslese": 2, "Trocken": 0, "Feinherb": 1, "Grosses Gewächs": 0}
