"""Rule-based attribute detector for pedestrian captions.

CADA's attribute reconstruction (ARA) and UCA's attribute masking both need to
know which words of a caption describe the person's appearance. The official
code asks NLTK for part-of-speech tags (adjectives JJ and nouns NN/NNS). NLTK
models are not available offline and POS tags are noisy on captions anyway
("pants" tagged as a verb, ALL-CAPS sentences tagged as proper nouns), so this
module replaces them with a hand-written lexicon of appearance words (a few
hundred entries: colours, patterns, materials, garments, footwear, bags,
headwear, accessories, hair, body build) and a handful of chunking rules that
group modifiers with the noun they describe:

* ``find_attribute_words``   every attribute word (multi-word nouns such as
  "tank top" or "high heels" and hyphenated compounds such as "knee-length",
  "dark-colored", "black-and-white" are one word);
* ``find_attribute_phrases`` maximal chunks ``(modifier [and|or|,] )* head``,
  e.g. "blue and white striped tank top"; a modifier with no noun after it
  ("his shoes are white") is a phrase on its own;
* ``attribute_char_mask`` / ``token_attribute_flags`` / ``token_phrase_ids``
  to turn those character spans into token-level masks for any tokenizer that
  reports character offsets.

Person nouns ("man", "woman", "lady", "pedestrian", adjectives "male",
"female") are recognised but left out by default (``include_person=False``):
nearly every caption opens with one, so masking them would mostly teach a model
to predict a near-constant token, and in the procedural benchmark the gender is
an attribute of its own that we do not want leaked into the attribute objective.
Pass ``include_person=True`` to mark them like the official noun-tagging does.

All offsets are character offsets into the string that was passed in, so
``text[w.start:w.end] == w.text`` holds for any input (upper case, repeated or
leading spaces, curly apostrophes ...).
"""
from __future__ import annotations

import re
from bisect import bisect_right
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from types import MappingProxyType

__all__ = [
    "AttributePhrase",
    "AttributeWord",
    "LEXICON",
    "attribute_char_mask",
    "find_attribute_phrases",
    "find_attribute_words",
    "token_attribute_flags",
    "token_phrase_ids",
]


@dataclass(frozen=True)
class AttributeWord:
    """One attribute word (or fixed multi-word unit such as "tank top").

    ``category`` is one of: colour, shade, pattern, material, style, fit,
    length, size, shape, hair, body, age, garment, footwear, bag, headwear,
    accessory, person.
    """

    start: int
    end: int
    text: str
    category: str


@dataclass(frozen=True)
class AttributePhrase:
    """A chunk of modifiers plus (usually) the head noun they describe.

    ``category`` is the head noun's region: upper, lower, full, garment, shoes,
    bag, headwear, accessory, hair, pattern, body or person. A phrase without a
    head noun takes the region of the noun it is predicated of ("the shoes are
    white" -> shoes) or, failing that, "body" for build/age words and otherwise
    the category of its last word (e.g. "colour").
    """

    start: int
    end: int
    text: str
    category: str
    words: tuple[AttributeWord, ...]


# --------------------------------------------------------------------------------------
# Lexicon
# --------------------------------------------------------------------------------------
# Modifiers (adjective-like words): category -> comma-separated entries. Entries may be
# several tokens ("navy blue" is two colour words, but "off-white", "short sleeved" and
# "knee length" are single units); hyphens and spaces are interchangeable in entries.
_MODIFIERS: dict[str, str] = {
    "colour": (
        "black, white, gray, red, blue, green, yellow, orange, purple, pink, brown, beige, "
        "khaki, navy, tan, cream, maroon, burgundy, violet, indigo, turquoise, teal, cyan, "
        "magenta, gold, golden, silver, olive, lavender, lilac, coral, peach, salmon, mint, "
        "ivory, charcoal, crimson, scarlet, camel, mustard, rust, wine, plum, aqua, azure, "
        "fuchsia, ochre, bronze, copper, jade, emerald, off-white, "
        "sky blue, royal blue, baby blue, baby pink, hot pink, army green, forest green, "
        "lime green, bottle green, pea green, sea green, brick red, blood red, rose red, "
        "multicolored, multicolor, multi-colored, colorful, colored, color, two-tone, two-toned, "
        "blond, blonde, brunette, auburn, ginger, "
        "blackish, whitish, grayish, reddish, bluish, blueish, greenish, yellowish, "
        "orangish, purplish, pinkish, brownish"
    ),
    "shade": "dark, light, bright, pale, deep, dull, pastel, neon, faded, fair",
    "pattern": (
        "striped, stripy, plaid, checkered, tartan, floral, flowered, flowery, polka-dot, "
        "polka-dotted, dotted, spotted, printed, patterned, camouflage, camo, paisley, "
        "argyle, houndstooth, gingham, tie-dye, tie-dyed, plain, solid, leopard-print"
    ),
    "material": (
        "denim, jean, leather, cotton, wool, woolen, knit, knitted, silk, silky, satin, "
        "velvet, lace, lacy, mesh, nylon, polyester, canvas, suede, fur, furry, fleece, "
        "corduroy, linen, plastic, rubber, straw, chiffon, tweed, cashmere, sheer, "
        "transparent, shiny, glossy, metallic, sequined, quilted, padded, waterproof, "
        "fluffy, puffy, paper"
    ),
    "style": (
        "short-sleeved, long-sleeved, short-sleeve, long-sleeve, half-sleeved, sleeved, "
        "sleeveless, hooded, collared, v-neck, crew-neck, round-neck, high-neck, "
        "button-up, button-down, zip-up, zippered, strapless, off-shoulder, high-top, "
        "low-top, high-heeled, heeled, high-waisted, open-toed, ripped, torn, distressed, "
        "pleated, ruffled, embroidered, casual, formal, sporty, sports, sport, athletic, "
        "business, cargo, capri, puffer, crossbody, cross-body, rimmed, brimmed, "
        "wide-brimmed, frameless"
    ),
    "fit": (
        "baggy, loose, tight, fitted, tight-fitting, loose-fitting, form-fitting, "
        "slim-fit, wide-leg, straight-leg, flared, skin-tight"
    ),
    "length": (
        "long, knee-length, ankle-length, calf-length, shoulder-length, waist-length, "
        "hip-length, thigh-length, floor-length, mid-length, medium-length, full-length, "
        "chin-length, ear-length, neck-length, mid-calf, mini, midi, maxi, cropped"
    ),
    "size": "big, large, small, little, huge, tiny, oversized, giant, medium",
    "shape": "round, square, rectangular, oval, pointed, pointy, flat",
    "hair": "curly, wavy, straight, frizzy, spiky, bald, braided, permed, dyed, balding",
    "body": (
        "thin, fat, tall, slim, slender, skinny, chubby, plump, heavy, heavyset, stocky, "
        "overweight, muscular, petite, thick, short"
    ),
    "age": "young, old, elderly, middle-aged, teenage, teenaged, aged",
    "person": "male, female",
}

# Nouns that can head a phrase: (word category, phrase region, singular forms that get
# regular plurals, invariant forms). Multi-word nouns are single units.
_NOUNS: list[tuple[str, str, str, str]] = [
    (
        "garment", "upper",
        "shirt, t-shirt, tshirt, tee, tee-shirt, tank top, tank, top, blouse, jacket, coat, "
        "sweater, sweatshirt, sweat shirt, hoodie, hoody, vest, cardigan, jumper, pullover, "
        "polo, polo shirt, windbreaker, blazer, parka, tunic, camisole, crop top, "
        "turtleneck, jersey, overcoat, raincoat, rain coat, trench coat, down jacket, "
        "puffer jacket, waistcoat, anorak, poncho, cape, shawl, sleeve, collar, cuff, "
        "undershirt, singlet, halter top, tube top, bra, bikini top",
        "",
    ),
    (
        "garment", "lower",
        "skirt, miniskirt, mini-skirt, capri, legging, jogger, culotte, stocking, hem",
        "pants, trousers, jeans, shorts, leggings, capris, slacks, sweatpants, sweat pants, "
        "khakis, tights, bottoms, capri pants, cargo pants, cargo shorts, track pants, "
        "jogging pants, yoga pants, hot pants, bermudas, chinos, denims",
    ),
    (
        "garment", "full",
        "dress, jumpsuit, romper, suit, tracksuit, track suit, uniform, gown, robe, "
        "kimono, apron, outfit, garment, sundress",
        "overalls, clothes, clothing, attire, sportswear, pajamas, dungarees",
    ),
    ("garment", "garment", "pocket, button, zipper, zip, hemline, neckline", ""),
    (
        "footwear", "shoes",
        "shoe, sneaker, boot, sandal, heel, high heel, slipper, trainer, loafer, pump, "
        "flip flop, flip-flop, clog, moccasin, sock, ankle boot, rain boot, snow boot, "
        "running shoe, tennis shoe, walking shoe, hiking boot, combat boot, plimsoll, "
        "welly, wellington, sole, shoelace, lace-up",
        "flats, footwear, crocs, high heels",
    ),
    (
        "bag", "bag",
        "bag, backpack, back pack, handbag, hand bag, purse, satchel, tote, tote bag, "
        "shoulder bag, messenger bag, duffel bag, duffle bag, sling bag, shopping bag, "
        "school bag, schoolbag, bookbag, book bag, suitcase, briefcase, knapsack, "
        "rucksack, pouch, clutch, waist bag, fanny pack, bum bag",
        "luggage",
    ),
    (
        "headwear", "headwear",
        "hat, cap, baseball cap, beanie, helmet, hood, headband, head band, hairband, "
        "bandana, beret, visor, headscarf, head scarf, turban, hijab, veil, brim, "
        "sun hat, bonnet",
        "",
    ),
    (
        "accessory", "accessory",
        "sunglass, umbrella, scarf, belt, watch, wristwatch, wrist watch, bracelet, "
        "necklace, earring, mask, face mask, glove, mitten, tie, necktie, bow tie, "
        "phone, cell phone, cellphone, mobile phone, smartphone, mobile, bottle, "
        "water bottle, cup, headphone, earphone, earbud, lanyard, badge, book, "
        "notebook, folder, wallet, hair clip, hair tie, hairpin, bicycle, bike, scooter, "
        "stroller, skateboard, cart, trolley, box, tablet, laptop, frame, lens, "
        "jewelry, pendant, chain",
        "glasses, sunglasses, eyeglasses, spectacles, goggles",
    ),
    (
        "hair", "hair",
        "ponytail, pony tail, bun, braid, pigtail, dreadlock, afro, mohawk, beard, "
        "mustache, hairstyle, hairdo, haircut, crew cut, buzz cut, fringe",
        "hair, bangs",
    ),
    (
        "pattern", "pattern",
        "stripe, logo, dot, polka dot, print, pattern, design, graphic, letter, flower, "
        "cartoon, word",
        "lettering, writing, text",
    ),
    ("body", "body", "build, figure, physique, stature, skin, complexion", ""),
    (
        "person", "person",
        "man, woman, person, lady, girl, boy, guy, gentleman, child, kid, pedestrian, "
        "individual, teenager, teen, student, adult, female, male",
        "men, women, people, ladies, children, gentlemen",
    ),
]

# Last part of a hyphenated compound that makes the whole compound one modifier, whatever
# precedes it ("mid-thigh-length", "leopard-print", "wire-rimmed", "rust-colored").
_COMPOUND_SUFFIX: dict[str, str] = {
    "colored": "colour", "color": "colour", "toned": "colour", "tone": "colour",
    "length": "length", "sleeved": "style", "sleeve": "style", "sleeves": "style",
    "print": "pattern", "printed": "pattern", "patterned": "pattern", "striped": "pattern",
    "checkered": "pattern", "dotted": "pattern", "spotted": "pattern", "pattern": "pattern",
    "fitting": "fit", "fit": "fit", "fitted": "fit", "rimmed": "style", "framed": "style",
    "brimmed": "style", "heeled": "style", "toed": "style", "necked": "style",
    "neck": "style", "collared": "style", "waisted": "style", "legged": "style",
}

# Words whose sense depends on what they describe: (sense for a person / body / no noun,
# sense for a garment or anything else). "a short man" vs "short hair".
_AMBIGUOUS: dict[str, tuple[str, str]] = {
    "short": ("body", "length"),
    "thin": ("body", "material"),
    "thick": ("body", "material"),
    "heavy": ("body", "material"),
    "slim": ("body", "fit"),
    "skinny": ("body", "fit"),
    "big": ("body", "size"),
    "large": ("body", "size"),
    "small": ("body", "size"),
    "little": ("body", "size"),
}

# Tokens that may sit between two modifiers of one phrase without being attributes.
_CONNECTORS = frozenset({"and", "or", "n"})
_INTENSIFIERS = frozenset({
    "very", "quite", "fairly", "rather", "slightly", "somewhat", "really", "extremely",
    "mostly", "mainly", "predominantly", "partly", "partially", "all", "completely",
    "entirely", "totally", "fully", "pretty", "almost",
})
_GLUE = _CONNECTORS | _INTENSIFIERS
_COPULAS = frozenset({
    "is", "are", "was", "were", "be", "being", "been", "look", "looks", "looked", "seem",
    "seems", "appear", "appears", "appeared",
})
_RELATIVES = frozenset({"that", "which", "who", "both", "also", "all"})
# Function words that never glue onto a following "colored" ("are colored" is not a colour).
_STOPWORDS = frozenset({
    "a", "an", "the", "is", "are", "was", "were", "be", "been", "his", "her", "their",
    "its", "and", "or", "with", "in", "on", "of", "at", "to", "for", "by", "has", "have",
    "had", "he", "she", "it", "they", "them", "him", "not", "no", "some", "wearing",
    "wears", "wear", "wore", "also", "that", "which", "who", "this", "these", "those",
    "both", "very", "all", "one", "two", "from", "into", "over", "under",
})
# Modifiers too common in other senses to stand alone: a phrase made only of these, with
# no noun and no "X is ..." subject, is dropped ("walking straight ahead", "in the light").
_WEAK = frozenset({
    "straight", "flat", "solid", "plain", "light", "round", "square", "sport", "sports",
    "little", "old", "deep", "fair", "business", "formal", "casual", "tiny", "giant",
    "big", "large", "small", "huge", "heavy", "thick", "cross body", "mini", "color",
    "medium",
})
# Nouns that are not clothing when followed by "of" ("on top of her head").
_NOT_BEFORE_OF = frozenset({"top", "bottom", "front", "pair"})

_TOKEN_RE = re.compile(r"[A-Za-z0-9]+(?:['\u2019][A-Za-z]+)?")
_HYPHENS = frozenset({"-", "\u2010", "\u2011", "\u2012", "\u2013"})
_SOFT_PUNCT = frozenset({",", "/", "&", "+", "-", "\u2013"})

_G_TIGHT, _G_HYPHEN, _G_COMMA, _G_BREAK = 0, 1, 2, 3


# British spellings and variants folded onto one form before lexicon lookup.
_SPELLING = {
    "chequered": "checkered", "checked": "checkered", "checks": "checkered",
    "woollen": "woolen", "moustache": "mustache", "pyjamas": "pajamas",
    "jewellery": "jewelry", "stripey": "stripy",
    "blueish": "bluish", "wellies": "welly",
}


def _normalise(tok: str) -> str:
    """Lower-case, drop a possessive and fold British spellings onto American ones."""
    t = tok.lower().replace("\u2019", "'")
    if t.endswith("'s"):
        t = t[:-2]
    elif "'" in t:
        t = t.replace("'", "")
    if "colour" in t:
        t = t.replace("colour", "color")
    if t.startswith("grey"):
        t = "gray" + t[4:]
    return _SPELLING.get(t, t)


def _plurals(word: str) -> list[str]:
    """Regular English plural(s) of a (possibly multi-word) noun: inflect the last word."""
    head, _, last = word.rpartition(" ")
    prefix = head + " " if head else ""
    if last.endswith(("s", "x", "ch", "sh", "z")):
        forms = [last + "es"]
    elif last.endswith("f"):
        forms = [last[:-1] + "ves", last + "s"]
    elif last.endswith("y") and len(last) > 1 and last[-2] not in "aeiou":
        forms = [last[:-1] + "ies"]
    else:
        forms = [last + "s"]
    return [prefix + f for f in forms]


def _key(entry: str) -> tuple[str, ...]:
    return tuple(_normalise(t) for t in _TOKEN_RE.findall(entry))


def _split(entries: str) -> list[str]:
    return [e.strip() for e in entries.split(",") if e.strip()]


@dataclass(frozen=True)
class _Entry:
    kind: str  # "mod" or "noun"
    category: str  # word category
    region: str | None  # phrase region for nouns


def _build_lexicon() -> dict[tuple[str, ...], _Entry]:
    lex: dict[tuple[str, ...], _Entry] = {}
    for category, entries in _MODIFIERS.items():
        for e in _split(entries):
            lex[_key(e)] = _Entry("mod", category, None)
    for category, region, singulars, invariant in _NOUNS:
        entry = _Entry("noun", category, region)
        for e in _split(singulars):
            for form in [e, *_plurals(e)]:
                lex.setdefault(_key(form), entry)
        for e in _split(invariant):
            lex.setdefault(_key(e), entry)
    # "male"/"female" are mostly adjectives ("a female pedestrian"); as modifiers they still
    # form a phrase of their own when used as nouns ("a female in jeans").
    lex[("male",)] = lex[("female",)] = _Entry("mod", "person", None)
    return lex


_LEX = _build_lexicon()
_MAX_N = max(len(k) for k in _LEX)
# Read-only view for introspection / tests: key (tuple of normalised tokens) -> (kind, category, region)
LEXICON: MappingProxyType[tuple[str, ...], tuple[str, str, str | None]] = MappingProxyType(
    {k: (v.kind, v.category, v.region) for k, v in _LEX.items()}
)


# --------------------------------------------------------------------------------------
# Detection
# --------------------------------------------------------------------------------------
@dataclass
class _Item:
    first: int  # first token index
    last: int  # last token index (inclusive)
    kind: str
    category: str
    region: str | None
    norm: str  # normalised text of the unit (space-joined)


def _gap_class(gap: str) -> int:
    if not gap or gap.isspace():
        return _G_TIGHT
    if gap in _HYPHENS:
        return _G_HYPHEN
    stripped = gap.strip()
    if stripped in _SOFT_PUNCT or stripped == ",,":
        return _G_COMMA
    return _G_BREAK


def _tokenise(text: str) -> tuple[list[tuple[int, int]], list[str], list[int]]:
    spans: list[tuple[int, int]] = []
    norms: list[str] = []
    gaps: list[int] = []  # class of the gap *before* each token
    prev_end = 0
    for m in _TOKEN_RE.finditer(text):
        s, e = m.span()
        spans.append((s, e))
        norms.append(_normalise(m.group()))
        gaps.append(_gap_class(text[prev_end:s]) if len(spans) > 1 else _G_BREAK)
        prev_end = e
    return spans, norms, gaps


def _hyphen_compound(norms: list[str], i: int, k: int) -> _Item | None:
    """Decide whether the hyphen-joined tokens i..k form one modifier."""
    parts = norms[i:k + 1]
    suffix_cat = _COMPOUND_SUFFIX.get(parts[-1])
    if suffix_cat is not None and parts[0] not in _STOPWORDS:
        return _Item(i, k, "mod", suffix_cat, None, " ".join(parts))
    cats: list[str] = []
    for j, p in enumerate(parts):
        if p in _CONNECTORS and 0 < j < len(parts) - 1:
            continue
        entry = _LEX.get((p,))
        if entry is None or entry.kind != "mod":
            return None
        cats.append(entry.category)
    if all(c in ("colour", "shade") for c in cats):
        category = "colour"
    else:
        category = cats[-1]
    return _Item(i, k, "mod", category, None, " ".join(parts))


def _match_items(norms: list[str], gaps: list[int]) -> list[_Item]:
    """Longest-match lexicon lookup over the token sequence, plus compound rules."""
    n = len(norms)
    items: list[_Item] = []
    i = 0
    while i < n:
        # maximal hyphen run starting here
        k = i
        while k + 1 < n and gaps[k + 1] == _G_HYPHEN:
            k += 1
        item: _Item | None = None
        # longest lexicon match starting at i, through tight or hyphen gaps only
        limit = min(_MAX_N, n - i)
        for length in range(limit, 0, -1):
            j = i + length - 1
            if any(gaps[t] > _G_HYPHEN for t in range(i + 1, j + 1)):
                continue
            entry = _LEX.get(tuple(norms[i:j + 1]))
            if entry is not None:
                item = _Item(i, j, entry.kind, entry.category, entry.region, " ".join(norms[i:j + 1]))
                break
        if k > i and (item is None or item.last < k):
            compound = _hyphen_compound(norms, i, k)
            if compound is not None:
                item = compound
        if item is not None and item.kind == "noun" and item.last == item.first:
            # "top of her head", "pair of": not clothing
            if norms[i] in _NOT_BEFORE_OF and i + 1 < n and norms[i + 1] == "of" and gaps[i + 1] == _G_TIGHT:
                item = None
        if item is None:
            i += 1
            continue
        # "<anything> colored" is one colour word ("coffee colored", "dark colored");
        # "<modifier> color" too ("khaki color")
        if item.first == item.last and item.norm in ("colored", "color") and i > 0 \
                and gaps[i] == _G_TIGHT and norms[i - 1] not in _STOPWORDS:
            prev = items[-1] if items and items[-1].last == i - 1 else None
            if prev is not None and (item.norm == "colored" or prev.kind == "mod"):
                items.pop()
                item = _Item(prev.first, item.last, "mod", "colour", None, prev.norm + " " + item.norm)
            elif prev is None and item.norm == "colored" and not norms[i - 1].isdigit():
                item = _Item(i - 1, item.last, "mod", "colour", None, norms[i - 1] + " colored")
        items.append(item)
        i = item.last + 1
    return items


def _linked_region(first_tok: int, norms: list[str], gaps: list[int],
                   noun_by_last: dict[int, _Item]) -> str | None:
    """Region of the noun a predicative phrase describes: "the shoes are | white"."""
    t = first_tok - 1
    while t >= 0 and norms[t] in _INTENSIFIERS and gaps[t + 1] <= _G_COMMA:
        t -= 1
    if t < 0 or norms[t] not in _COPULAS or gaps[t + 1] == _G_BREAK:
        return None
    t -= 1
    while t >= 0 and norms[t] in _RELATIVES and gaps[t + 1] <= _G_COMMA:
        t -= 1
    if t < 0 or gaps[t + 1] == _G_BREAK:
        return None
    noun = noun_by_last.get(t)
    return noun.region if noun is not None else None


def _chunk(items: list[_Item], norms: list[str], gaps: list[int]) -> list[list[_Item]]:
    """Group items into phrases: (mod [glue])* noun*, never across a sentence break."""
    chunks: list[list[_Item]] = []
    cur: list[_Item] = []
    pos = 0  # next token to look at between items
    for item in items:
        if cur:
            # inspect the tokens between the last item and this one
            connected = False
            broken = False
            for t in range(pos, item.first):
                if gaps[t] == _G_BREAK or norms[t] not in _GLUE:
                    broken = True
                    break
                if norms[t] in _CONNECTORS or gaps[t] == _G_COMMA:
                    connected = True
            if gaps[item.first] == _G_BREAK:
                broken = True
            elif gaps[item.first] == _G_COMMA:
                connected = True
            last = cur[-1]
            join = False
            if not broken:
                if last.kind == "noun":
                    join = (item.kind == "noun" and not connected and pos == item.first
                            and last.category != "person" and item.category != "person")
                elif item.kind == "mod":
                    join = True
                else:
                    join = not connected
            if not join:
                chunks.append(cur)
                cur = []
        cur.append(item)
        pos = item.last + 1
    if cur:
        chunks.append(cur)
    return chunks


def _analyse(text: str) -> tuple[list[tuple[int, int]], list[tuple[str, list[tuple[_Item, str]]]]]:
    """Return token spans and, per phrase, its region and (item, resolved category) pairs."""
    spans, norms, gaps = _tokenise(text)
    items = _match_items(norms, gaps)
    noun_by_last = {it.last: it for it in items if it.kind == "noun"}
    out: list[tuple[str, list[tuple[_Item, str]]]] = []
    for chunk in _chunk(items, norms, gaps):
        head = chunk[-1] if chunk[-1].kind == "noun" else None
        if head is not None:
            region = head.region or head.category
            person_like = region in ("person", "body")
        else:
            region = _linked_region(chunk[0].first, norms, gaps, noun_by_last)
            person_like = region is None or region in ("person", "body")
        if head is None and region is None and all(it.norm in _WEAK for it in chunk):
            continue
        resolved: list[tuple[_Item, str]] = []
        for it in chunk:
            cat = it.category
            senses = _AMBIGUOUS.get(it.norm)
            if senses is not None and it.kind == "mod":
                cat = senses[0] if person_like else senses[1]
            resolved.append((it, cat))
        if region is None:
            cats = [c for _, c in resolved]
            if any(c in ("body", "age") for c in cats):
                region = "body"
            elif all(c == "person" for c in cats):
                region = "person"
            else:
                region = cats[-1]
        out.append((region, resolved))
    return spans, out


@lru_cache(maxsize=1 << 18)  # every caption of a dataset (CUHK-PEDES: 80k); filled once per run by warm_collate_extras
def _phrases_cached(text: str, include_person: bool) -> tuple[AttributePhrase, ...]:
    spans, analysed = _analyse(text)
    phrases: list[AttributePhrase] = []
    for region, resolved in analysed:
        words: list[AttributeWord] = []
        for it, cat in resolved:
            if cat == "person" and not include_person:
                continue
            s, e = spans[it.first][0], spans[it.last][1]
            words.append(AttributeWord(s, e, text[s:e], cat))
        if not words:
            continue
        s, e = words[0].start, words[-1].end
        phrases.append(AttributePhrase(s, e, text[s:e], region, tuple(words)))
    return tuple(phrases)


def find_attribute_phrases(text: str, include_person: bool = False) -> list[AttributePhrase]:
    """Maximal attribute chunks of ``text``, in order, for phrase-level masking (CADA ARA).

    Each phrase is ``(modifier [and|or|,|very] )* head-noun(s)`` or a run of modifiers
    with no noun. Person nouns are dropped unless ``include_person`` (see module doc).
    """
    return list(_phrases_cached(text, include_person))


def find_attribute_words(text: str, include_person: bool = False) -> list[AttributeWord]:
    """Every attribute word of ``text`` in order (word-level masking: CADA ARA, UCA)."""
    return [w for p in _phrases_cached(text, include_person) for w in p.words]


def attribute_char_mask(text: str, include_person: bool = False) -> list[tuple[int, int]]:
    """Sorted, merged ``(start, end)`` character spans covering all attribute words."""
    merged: list[tuple[int, int]] = []
    for w in find_attribute_words(text, include_person):
        if merged and w.start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], w.end))
        else:
            merged.append((w.start, w.end))
    return merged


def _overlap_index(offsets: Sequence[Sequence[int]], spans: Sequence[tuple[int, int]]) -> list[int]:
    """For each token, the index of the first span (by start) it overlaps, or -1."""
    order = sorted(range(len(spans)), key=lambda i: (spans[i][0], spans[i][1]))
    starts = [spans[i][0] for i in order]
    # running maximum of span ends, so the backward scan can stop early
    max_end: list[int] = []
    for i in order:
        max_end.append(max(spans[i][1], max_end[-1]) if max_end else spans[i][1])
    result: list[int] = []
    for off in offsets:
        s, e = int(off[0]), int(off[1])
        idx = -1
        if e > s:
            j = bisect_right(starts, e - 1) - 1  # spans starting before the token ends
            while j >= 0 and max_end[j] > s:
                if spans[order[j]][1] > s:
                    idx = order[j]
                j -= 1
        result.append(idx)
    return result


def token_attribute_flags(offsets: Sequence[Sequence[int]], spans: Sequence[tuple[int, int]]) -> list[bool]:
    """Mark tokens whose character offsets overlap any attribute span.

    ``offsets`` are per-token ``(start, end)`` character offsets as returned by a fast
    tokenizer; special tokens carry ``(0, 0)`` and are never marked. A word-piece that
    covers only part of an attribute word is marked, so masking one keeps whole words
    consistent only if the caller masks all flagged pieces.
    """
    return [i >= 0 for i in _overlap_index(offsets, spans)]


def token_phrase_ids(offsets: Sequence[Sequence[int]],
                     phrases: Sequence[AttributePhrase | tuple[int, int]]) -> list[int]:
    """Per token, the index of the phrase it falls in (-1 outside every phrase / special).

    Accepts ``AttributePhrase`` objects or plain ``(start, end)`` spans; phrase indices
    refer to positions in ``phrases``.
    """
    spans = [(p.start, p.end) if isinstance(p, AttributePhrase) else (int(p[0]), int(p[1]))
             for p in phrases]
    return _overlap_index(offsets, spans)
