"""Alt-text-like captions for the pretraining corpus, and a held-out caption style for testing.

The benchmark grammar (`captions.py`) writes careful CUHK-PEDES sentences. Web image-text pairs,
on which CLIP and BLIP are pretrained, are broader and noisier; `make_web_captions` imitates that:
fragments and lists as well as sentences, any word order, a random subset of what is visible
(sometimes a single item), words the grammar never uses (`WEB_SYNONYMS`), content that says
nothing about the person's attributes (pose, scene, camera), and a small share of wrong
attributes (`wrong_prob`, a colour or garment swapped for another).

`make_style_shift_caption` writes a third style, used by neither the grammar nor the corpus: a
form-like record ("subject: ...; upper body garment: ...") and relative clauses ("someone whose
..."). Its captions of the benchmark's test split test whether a model generalises beyond the
styles it was trained on; `STYLE_SHIFT_MARKERS` are its words, which no web caption contains.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from .attributes import COLOURS
from .captions import _visible_groups

#: Words the benchmark grammar does not use, per attribute value (plus the plain name, for mixing).
WEB_SYNONYMS: dict[str, list[str]] = {
    "black": ["black", "jet black", "ebony", "charcoal"], "white": ["white", "ivory", "snow white", "cream"],
    "grey": ["grey", "ash", "slate", "silver"], "red": ["red", "crimson", "scarlet", "maroon"],
    "blue": ["blue", "navy", "azure", "cobalt"], "green": ["green", "olive", "emerald", "khaki green"],
    "yellow": ["yellow", "mustard", "lemon", "golden"], "brown": ["brown", "tan", "chocolate", "camel"],
    "pink": ["pink", "rose", "salmon", "blush"], "purple": ["purple", "lilac", "plum", "lavender"],
    "orange": ["orange", "amber", "tangerine", "rust"], "blonde": ["blonde", "fair", "golden", "sandy"],
    "t-shirt": ["tshirt", "tee", "top", "crewneck"], "shirt": ["shirt", "blouse", "polo", "collared top"],
    "sweater": ["sweater", "hoodie", "cardigan", "knitwear"], "jacket": ["jacket", "windbreaker", "blazer", "parka"],
    "coat": ["coat", "trench", "raincoat", "outerwear"], "dress": ["dress", "frock", "gown", "sundress"],
    "trousers": ["trousers", "chinos", "joggers", "bottoms"], "jeans": ["jeans", "denims", "denim"],
    "shorts": ["shorts", "bermudas", "cutoffs"], "skirt": ["skirt", "miniskirt", "midi skirt"],
    "shoes": ["shoes", "footwear", "boots", "loafers", "kicks"],
    "backpack": ["backpack", "rucksack", "knapsack", "daypack"], "handbag": ["handbag", "tote", "clutch"],
    "shoulder bag": ["shoulder bag", "satchel", "sling bag"],
    "cap": ["cap", "snapback", "ball cap"], "hat": ["hat", "fedora", "sun hat"], "beanie": ["beanie", "woolly hat"],
    "umbrella": ["umbrella", "brolly"], "phone": ["phone", "smartphone", "mobile"],
    "bottle": ["bottle", "flask", "drink"], "cup": ["cup", "coffee", "takeaway cup"],
    "man": ["man", "guy", "adult male", "commuter", "dude"], "woman": ["woman", "lady", "adult female", "shopper"],
    "long": ["long", "shoulder-length", "flowing"], "short": ["short", "cropped", "buzzed"],
    "striped": ["striped", "pinstriped", "banded"], "checked": ["checked", "tartan", "gingham"],
    "dotted": ["dotted", "polka-dot", "speckled"],
}
PERSON_WORDS = ["person", "someone", "pedestrian", "passerby", "figure", "individual", "people"]
#: Content that is not an attribute of the person: pose, scene, camera, photo jargon.
IRRELEVANT = ["mid-stride", "standing still", "arms by the sides", "hands in pockets", "looking down",
              "city street", "on the sidewalk", "near a shop window", "at a crosswalk", "outside a mall",
              "cctv still", "security camera footage", "surveillance frame", "overcast day", "sunny afternoon",
              "stock photo", "candid shot", "low resolution", "blurry image", "urban scene", "downtown",
              "full body shot", "street style", "image", "photo", "pic"]
LEADS = ["photo of", "image of", "picture of", "a shot of", "", "", "", "", "cctv image of", "street photo:"]
#: Words of the held-out style (never in a web caption or a grammar caption).
STYLE_SHIFT_MARKERS = ("subject", "garment", "attire", "whose", "upper body", "lower body", "footwear colour")
WRONG_PROB = 0.05  # share of captions with one wrong attribute
IRRELEVANT_PROB = 0.4  # share of captions with content unrelated to the person's attributes
# Corpus v2 (the shipped foundations' corpus). v1 named a uniform 1..n of the visible items (39% of
# captions were 6 words or fewer), picked the plain word for a value only 1 time in 4-5, and wrote a
# quarter of the captions as glued hashtags ("#ebonyshorthair"), which CLIP BPE cuts into fragments
# shared with nothing else. Contrastive pretraining on it learned a collapsed embedding (effective
# rank 3 of 128, README "Foundation models"). Web alt-text is noisy but mostly says what is there
# in common words, so v2 keeps every kind of noise at a smaller share:
PARTIAL_PROB = 0.35  # share of captions naming a random strict subset of the visible items
PLAIN_WORD_PROB = 0.5  # a value is said with its plain word (the grammar's) this often, else a synonym
FORM_WEIGHTS = (0.3, 0.3, 0.25, 0.15)  # list, "photo of a guy in ...", attributes first, hashtags


def _w(rng: np.random.Generator, value: str) -> str:
    """The plain word with probability PLAIN_WORD_PROB, else one of its synonyms."""
    opts = [o for o in WEB_SYNONYMS.get(value, [value]) if o != value]
    if not opts or rng.random() < PLAIN_WORD_PROB:
        return value
    return opts[int(rng.integers(len(opts)))]


def _pick(rng: np.random.Generator, options: list[str]) -> str:
    return options[int(rng.integers(len(options)))]


def _facts(a: dict[str, Any], groups: list[str], rng: np.random.Generator) -> list[tuple[str, str]]:
    """(group, phrase) per visible group, in web wording: 'crimson windbreaker', 'rucksack'."""
    out = []
    for g in groups:
        if g == "hair":
            parts = [_w(rng, a["hair_length"]), _w(rng, a["hair_colour"])]
            rng.shuffle(parts)
            out.append((g, f"{' '.join(parts[: 1 + int(rng.integers(2))])} hair"))
        elif g == "upper":
            pat = a["upper_pattern"]
            pre = f"{_w(rng, pat)} " if pat != "plain" and rng.random() < 0.5 else ""
            out.append((g, f"{_w(rng, a['upper_colour'])} {pre}{_w(rng, a['upper_type'])}"))
        elif g == "lower":
            out.append((g, f"{_w(rng, a['lower_colour'])} {_w(rng, a['lower_type'])}"))
        elif g == "shoes":
            out.append((g, f"{_w(rng, a['shoe_colour'])} {_w(rng, 'shoes')}"))
        elif g in ("headwear", "bag"):
            colour = _w(rng, a[f"{g}_colour"]) + " " if rng.random() < 0.7 else ""
            out.append((g, colour + _w(rng, a[g])))
        elif g == "carried":
            out.append((g, _w(rng, a["carried"])))
    return out


_COLOUR_SLOT = {"upper": "upper_colour", "lower": "lower_colour", "shoes": "shoe_colour"}


def _wrong(a: dict[str, Any], groups: list[str], rng: np.random.Generator) -> tuple[dict[str, Any], str | None]:
    """(a copy of the attributes with the colour of one visible garment replaced by another, its group);
    (the attributes, None) when no garment colour is visible."""
    candidates = [g for g in groups if g in _COLOUR_SLOT]
    if not candidates:
        return a, None
    group = _pick(rng, candidates)
    slot = _COLOUR_SLOT[group]
    return {**a, slot: _pick(rng, [c for c in COLOURS if c != a[slot]])}, group


def make_web_captions(ident: dict[str, Any], params: dict[str, Any], rng: np.random.Generator,
                      n: int) -> tuple[list[str], list[dict[str, bool]]]:
    """`n` alt-text-like captions of one image and, per caption, which noise it carries
    (`wrong`: one attribute is false, `irrelevant`: pose/scene content, `partial`: not every
    visible item is named). Only visible groups are named; a wrong caption names one visible
    garment in a wrong colour."""
    a = ident["attributes"]
    groups = _visible_groups(a, params["visible"])
    caps: list[str] = []
    notes: list[dict[str, bool]] = []
    for _ in range(n):
        attrs, wrong_group = _wrong(a, groups, rng) if rng.random() < WRONG_PROB else (a, None)
        facts = _facts(attrs, groups, rng)
        partial = len(facts) > 1 and rng.random() < PARTIAL_PROB
        k = int(rng.integers(1, len(facts))) if partial else len(facts)
        order = [int(i) for i in rng.permutation(len(facts))[:k]]
        if wrong_group is not None and groups.index(wrong_group) not in order:  # the wrong fact is said
            order[-1] = groups.index(wrong_group)
        chosen = [facts[i][1] for i in order]
        wrong = wrong_group is not None
        noun = _w(rng, a["gender"]) if rng.random() < 0.7 else _pick(rng, PERSON_WORDS)
        extra = [_pick(rng, IRRELEVANT) for _ in range(int(rng.integers(1, 3)))] \
            if rng.random() < IRRELEVANT_PROB else []
        form = int(rng.choice(len(FORM_WEIGHTS), p=FORM_WEIGHTS))
        if form == 0:  # a list, comma separated: "woman, navy denims, rucksack, city street"
            items = [noun, *chosen, *extra]
            text = ", ".join(items)
        elif form == 1:  # "photo of a guy in crimson windbreaker with rucksack"
            lead = _pick(rng, LEADS)
            body = noun + (" in " + " and ".join(chosen[:2]) if chosen else "")
            if len(chosen) > 2:
                body += " with " + " ".join(chosen[2:])
            text = " ".join(x for x in (lead, body, " ".join(extra)) if x)
        elif form == 2:  # attributes first: "crimson windbreaker and navy denims - commuter"
            text = " ".join(x for x in (" and ".join(chosen), "-", noun, ", ".join(extra)) if x)
        else:  # hashtags
            text = " ".join("#" + w.replace(" ", "") for w in [noun, *chosen, *extra])
        if rng.random() < 0.3:
            text = text.capitalize()
        if rng.random() < 0.2:
            text += _pick(rng, [".", "!", " ...", ""])
        caps.append(" ".join(text.split()))
        notes.append({"wrong": wrong, "irrelevant": bool(extra), "partial": k < len(facts)})
    return caps, notes


def make_style_shift_caption(ident: dict[str, Any], params: dict[str, Any], rng: np.random.Generator) -> str:
    """One caption in the held-out style: a form-like record or relative clauses (grammar words only,
    so that the style, not the vocabulary, is what changes)."""
    a = ident["attributes"]
    groups = _visible_groups(a, params["visible"])
    fields = {"hair": ("hair", f"{a['hair_length']}, {a['hair_colour']}"),
              "upper": ("upper body garment", f"{a['upper_colour']} {a['upper_type']}"),
              "lower": ("lower body garment", f"{a['lower_colour']} {a['lower_type']}"),
              "shoes": ("footwear colour", a["shoe_colour"]),
              "headwear": ("headwear", f"{a['headwear_colour']} {a['headwear']}"),
              "bag": ("bag", f"{a['bag_colour']} {a['bag']}"),
              "carried": ("carried item", str(a["carried"]))}
    if rng.random() < 0.5:
        rows = [f"subject: {a['gender']}"] + [f"{fields[g][0]}: {fields[g][1]}" for g in groups]
        return "; ".join(rows) + "."
    clauses = [f"whose {fields[g][0]} is {fields[g][1].replace(',', ' and')}" for g in groups]
    return f"someone {', and '.join(clauses) if clauses else 'whose attire is not visible'}."


