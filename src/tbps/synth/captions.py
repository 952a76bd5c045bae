"""Caption grammar: CUHK-PEDES-like sentences about the attributes visible in one image.

Captions are built from *facts* (one per mentioned attribute group: hair, top, bottom, shoes,
headwear, bag, carried object), each rendered as a noun phrase with random synonyms, then
assembled by one of several sentence plans (one long sentence, several short ones, bag-first,
"dressed in", "with ... walks ..."). Only groups whose slots are visible in the image are used,
so a caption never names what the picture hides. A share of captions is terse (1-2 facts) and
therefore matches many identities, as real queries often do.
"""
from __future__ import annotations

import re
from typing import Any

import numpy as np

from .attributes import ATTRIBUTE_SLOTS

_TOKEN_RE = re.compile(r"[a-z0-9]+(?:[-'][a-z0-9]+)*")

COLOUR_WORDS: dict[str, list[str]] = {
    "grey": ["grey", "gray"],
    "purple": ["purple", "purple", "purple", "purple", "violet"],
}
HAIR_WORDS: dict[str, list[str]] = {
    "black": ["black", "dark"],
    "brown": ["brown"],
    "blonde": ["blonde", "blond", "light blonde"],
    "grey": ["grey", "gray"],
}
NOUNS = {
    "man": ["man", "man", "man", "guy", "male", "young man", "gentleman"],
    "woman": ["woman", "woman", "woman", "lady", "female", "girl", "young woman"],
    "neutral": ["person", "pedestrian", "person", "individual"],
}
PRON = {"man": ("he", "his"), "woman": ("she", "her")}
BUILD_WORDS = {"slim": ["slim", "thin", "skinny"], "heavy": ["heavy", "heavyset", "chubby", "large"]}
UPPER_WORDS = {
    "t-shirt": ["t-shirt", "t-shirt", "tee", "tee shirt", "t shirt"],
    "shirt": ["shirt", "shirt", "button-up shirt", "button down shirt"],
    "sweater": ["sweater", "jumper", "pullover"],
    "jacket": ["jacket", "jacket", "zip-up jacket"],
    "coat": ["coat", "long coat", "overcoat"],
    "dress": ["dress", "dress"],
}
LOWER_WORDS = {
    "trousers": ["trousers", "pants", "pants", "slacks"],
    "jeans": ["jeans", "jeans", "denim jeans"],
    "shorts": ["shorts"],
    "skirt": ["skirt"],
}
SHOE_WORDS = ["shoes", "shoes", "shoes", "sneakers", "trainers"]
PATTERN_WORDS = {
    "striped": ["striped", "stripe", "striped"],
    "checked": ["checked", "plaid", "checkered"],
    "dotted": ["polka dot", "dotted", "spotted"],
}
HEADWEAR_WORDS = {"cap": ["cap", "baseball cap"], "hat": ["hat", "hat"], "beanie": ["beanie", "knit hat"]}
BAG_WORDS = {
    "backpack": ["backpack", "backpack", "backpack", "back pack"],
    "handbag": ["handbag", "handbag", "purse"],
    "shoulder bag": ["shoulder bag", "shoulder bag", "messenger bag", "crossbody bag"],
}
CARRIED_WORDS = {
    "umbrella": ["umbrella", "closed umbrella", "folded umbrella"],
    "phone": ["phone", "cell phone", "mobile phone"],
    "bottle": ["bottle", "water bottle", "bottle of water"],
    "cup": ["cup", "coffee cup", "paper cup"],
}
VIEW_PHRASES = {
    "front": ["walking towards the camera", "facing the camera", "walking toward the camera"],
    "back": ["walking away from the camera", "facing away from the camera", "walking away"],
    "side_left": ["walking to the left", "walking left", "heading to the left"],
    "side_right": ["walking to the right", "walking right", "heading to the right"],
}

#: Attribute groups a caption can mention, with the slots each needs to be visible.
GROUP_SLOTS: dict[str, tuple[str, ...]] = {
    "hair": ("hair_colour", "hair_length"),
    "upper": ("upper_type", "upper_colour"),
    "lower": ("lower_type", "lower_colour"),
    "shoes": ("shoe_colour",),
    "headwear": ("headwear", "headwear_colour"),
    "bag": ("bag", "bag_colour"),
    "carried": ("carried",),
}


def tokenize(caption: str) -> list[str]:
    """Lower-cased word tokens, the `processed_tokens` field of CUHK-PEDES."""
    return _TOKEN_RE.findall(caption.lower())


def _ch(rng: np.random.Generator, options: list[str] | tuple[str, ...]) -> str:
    return options[int(rng.integers(len(options)))]


def _article(phrase: str) -> str:
    return ("an " if phrase[:1] in "aeiou" and not phrase.startswith("uni") else "a ") + phrase


def _join(items: list[str], rng: np.random.Generator) -> str:
    if len(items) <= 1:
        return "".join(items)
    if len(items) == 2:
        return f"{items[0]} and {items[1]}"
    comma = ", and " if rng.random() < 0.35 else " and "
    return ", ".join(items[:-1]) + comma + items[-1]


def _cap(s: str) -> str:
    return s[:1].upper() + s[1:]


class _Phrases:
    """Noun phrases for one identity, with fresh random wording on every call."""

    def __init__(self, a: dict[str, Any], rng: np.random.Generator) -> None:
        self.a, self.rng = a, rng
        g = a["gender"]
        self.he, self.his = PRON[g]
        self.m: set[str] = set()  # slots named by the phrases handed out so far

    def colour(self, name: str) -> str:
        return _ch(self.rng, COLOUR_WORDS.get(name, [name]))

    def noun(self, allow_neutral: bool = True, allow_build: bool = True) -> tuple[str, bool]:
        """('man' / 'slim woman' / 'pedestrian', gendered?)."""
        r = self.rng
        if allow_neutral and r.random() < 0.15:
            return _ch(r, NOUNS["neutral"]), False
        n = _ch(r, NOUNS[self.a["gender"]])
        if allow_build and self.a["build"] in BUILD_WORDS and r.random() < 0.25 and " " not in n:
            n = f"{_ch(r, BUILD_WORDS[self.a['build']])} {n}"
        return n, True

    def hair(self) -> str:
        a, r = self.a, self.rng
        c = _ch(r, HAIR_WORDS[a["hair_colour"]])
        length = a["hair_length"]
        x = r.random()
        if x < 0.75 and x >= 0.55:
            self.m.add("hair_colour")
            return f"{c} hair"
        if x < 0.9 and x >= 0.75:
            self.m.add("hair_length")
            return f"{length} hair"
        self.m.update(("hair_colour", "hair_length"))
        if x < 0.55:
            return f"{length} {c} hair"
        return f"{c} {length} hair" if c != "dark" else f"{length} dark hair"

    def upper(self, terse: bool = False) -> str:
        a, r = self.a, self.rng
        t = a["upper_type"]
        noun = _ch(r, UPPER_WORDS[t])
        self.m.update(("upper_type", "upper_colour"))
        if t in ("t-shirt", "shirt", "sweater") and r.random() < 0.08:
            noun = "top"
            self.m.discard("upper_type")
        c = self.colour(a["upper_colour"])
        pat = a["upper_pattern"]
        pre: list[str] = []
        post = ""
        sleeve = a["sleeve_length"]
        if t in ("shirt", "dress") and not terse and r.random() < 0.35:
            self.m.add("sleeve_length")
            if r.random() < 0.5:
                pre.append(f"{sleeve}-sleeved" if r.random() < 0.7 else f"{sleeve} sleeve")
            else:
                post = f" with {sleeve} sleeves"
        elif t == "t-shirt" and noun != "top" and not terse and r.random() < 0.12:
            pre.append("short-sleeved")
            self.m.add("sleeve_length")
        if pat != "plain" and (not terse or r.random() < 0.5) and r.random() < 0.85:
            pw = _ch(r, PATTERN_WORDS[pat])
            c2 = self.colour(a["pattern_colour"])
            x = r.random()
            self.m.update(("upper_pattern", "pattern_colour") if x < 0.65 else ("upper_pattern",))
            if pat == "dotted" and x < 0.3 and not post:
                return _article(" ".join(pre + [c, noun])) + f" with {c2} dots"
            if pat == "striped" and x < 0.25 and not post:
                return _article(" ".join(pre + [c, noun])) + f" with {c2} stripes"
            if x < 0.65:
                return _article(" ".join(pre + [f"{c} and {c2}", pw, noun])) + post
            return _article(" ".join(pre + [c, pw, noun])) + post
        return _article(" ".join(pre + [c, noun])) + post

    def lower(self) -> str:
        a, r = self.a, self.rng
        t = a["lower_type"]
        self.m.update(("lower_type", "lower_colour"))
        noun = _ch(r, LOWER_WORDS[t])
        c = self.colour(a["lower_colour"])
        if t == "skirt":
            return _article(f"{c} {noun}") if r.random() < 0.8 else _article(f"{c} knee-length skirt")
        if r.random() < 0.35:
            return f"a pair of {c} {noun}"
        return f"{c} {noun}"

    def shoes(self) -> str:
        r = self.rng
        self.m.add("shoe_colour")
        c = self.colour(self.a["shoe_colour"])
        return f"a pair of {c} {_ch(r, SHOE_WORDS)}" if r.random() < 0.35 else f"{c} {_ch(r, SHOE_WORDS)}"

    def headwear(self) -> str:
        a = self.a
        self.m.update(("headwear", "headwear_colour"))
        return _article(f"{self.colour(a['headwear_colour'])} {_ch(self.rng, HEADWEAR_WORDS[a['headwear']])}")

    def bag(self) -> tuple[str, str]:
        """(object phrase, verb phrase) e.g. ('a black backpack', 'carrying a black backpack')."""
        a, r = self.a, self.rng
        b, c = a["bag"], self.colour(a["bag_colour"])
        self.m.update(("bag", "bag_colour"))
        obj = _article(f"{c} {_ch(r, BAG_WORDS[b])}")
        x = r.random()
        if b == "backpack":
            if x < 0.25:
                return obj, f"carrying {_article(c + ' bag')} on {self.his} back"
            return obj, _ch(r, ["carrying", "carrying", "wearing"]) + " " + obj
        if b == "handbag":
            if x < 0.25:
                return obj, f"holding {_article(c + ' bag')} in {self.his} hand"
            return obj, _ch(r, ["carrying", "holding", "carrying"]) + " " + obj
        if x < 0.3:
            return obj, f"carrying {_article(c + ' bag')} over {self.his} shoulder"
        return obj, _ch(r, ["carrying", "carrying", "wearing"]) + " " + obj

    def carried(self) -> tuple[str, str]:
        a, r = self.a, self.rng
        k = a["carried"]
        self.m.add("carried")
        obj = _article(_ch(r, CARRIED_WORDS[k]))
        if k == "phone" and r.random() < 0.4:
            return obj, f"looking at {self.his} {_ch(r, ['phone', 'cell phone'])}"
        return obj, _ch(r, ["holding", "holding", "carrying"]) + " " + obj


# -------------------------------------------------------------------------------- sentence plans
def _visible_groups(a: dict[str, Any], visible: dict[str, bool]) -> list[str]:
    return [g for g, slots in GROUP_SLOTS.items() if all(visible.get(s, False) for s in slots)]


def _view_phrase(view: str, facing: str | None, rng: np.random.Generator) -> str:
    key = view if view != "side" else f"side_{facing}"
    return _ch(rng, VIEW_PHRASES[key])


def _full_caption(a: dict[str, Any], groups: list[str], view: str, facing: str | None,
                  rng: np.random.Generator, mention_prob: float) -> tuple[str, set[str]]:
    ph = _Phrases(a, rng)
    # The garments are almost always described; the rest only sometimes.
    chosen = []
    for g in groups:
        p = {"upper": 0.95, "lower": 0.85}.get(g, mention_prob)
        if g == "hair":
            p *= 0.8
        if rng.random() < p:
            chosen.append(g)
    if not chosen and groups:
        chosen.append(groups[0] if "upper" not in groups else "upper")
    wear_by: dict[str, str] = {g: getattr(ph, g)() for g in ("upper", "lower", "shoes", "headwear") if g in chosen}
    wear = list(wear_by.values())
    if len(wear) > 2 and rng.random() < 0.2:  # real captions do not always go top to bottom
        wear = [wear[-1]] + wear[:-1]
    carry = []
    if "bag" in chosen:
        carry.append(ph.bag())
    if "carried" in chosen:
        carry.append(ph.carried())
    hair = ph.hair() if "hair" in chosen else None
    noun, gendered = ph.noun()
    he = ph.he if gendered else None
    subj2 = _cap(he) if he else _ch(rng, ["The person", "This person", "The pedestrian"])
    view_txt = _view_phrase(view, facing, rng) if rng.random() < 0.18 else None

    plan = int(rng.integers(7))
    s: list[str] = []
    carry_vp = _join([c[1] for c in carry], rng)
    carry_np = _join([c[0] for c in carry], rng)
    wear_txt = _join(wear, rng)
    if plan == 0 or (plan in (3, 4) and not carry) or (plan == 2 and not hair):
        # "A woman with long black hair is wearing X, Y and Z, carrying B."
        head = _article(noun)
        if hair:
            head += f" with {hair}"
        if view_txt and rng.random() < 0.5:
            head += f" {view_txt}"
            view_txt = None
        verb = _ch(rng, ["is wearing", "wearing", "wears", "in", "dressed in", "is dressed in"])
        sent = f"{head} {verb} {wear_txt}" if wear else head
        if carry:
            if not wear:
                sent += f" {carry_vp}"
            elif verb.startswith("is "):
                sent += _ch(rng, [", ", " and ", ", and is "]) + carry_vp
            elif verb == "wears":
                sent += ", " + carry_vp
            else:
                sent += _ch(rng, [", ", " and "]) + carry_vp
        s.append(_cap(sent) + ".")
    elif plan == 1:
        # "This man has short black hair. He is in a grey coat and black pants. He carries a bag."
        first = f"{_ch(rng, ['The', 'This'])} {noun}"
        if hair:
            s.append(f"{first} has {hair}.")
            if wear:
                s.append(f"{subj2} {_ch(rng, ['is wearing', 'wears', 'is in', 'is dressed in'])} {wear_txt}.")
        elif wear:
            s.append(f"{first} {_ch(rng, ['is wearing', 'wears', 'is in'])} {wear_txt}.")
        else:
            s.append(f"{first} is {view_txt or 'walking'}.")
            view_txt = None
        if carry:
            s.append(f"{subj2} is {carry_vp}." if rng.random() < 0.6 else f"{subj2} {_ch(rng, ['has', 'also has'])} {carry_np}.")
    elif plan == 2:
        # "The pedestrian is dressed in X and Y. Her hair is long and brown. She ..."
        first = _ch(rng, ["The pedestrian", "The person", f"The {noun}", f"This {noun}"])
        if wear:
            s.append(f"{first} is dressed in {wear_txt}.")
        else:
            s.append(f"{first} has {hair}.")
            hair = None
        if hair:
            if gendered:
                s.append(f"{_cap(ph.his)} hair is {_hair_pred(a, rng)}.")
                ph.m.update(("hair_colour", "hair_length"))
            else:
                s.append(f"{subj2} has {hair}.")
        if carry:
            s.append(f"{subj2} is {carry_vp}.")
    elif plan == 3:
        # "A person with a brown handbag walks ... in X and Y."
        head = f"{_article(noun)} with {carry_np}"
        if wear:
            verb = _ch(rng, ["walks by in", "is walking in", "is wearing", "wearing", "in"])
            s.append(_cap(f"{head} {verb} {wear_txt}") + ".")
        else:
            s.append(_cap(f"{head} is walking") + ".")
        if hair:
            s.append(f"{subj2} has {hair}.")
    elif plan == 4:
        # "Carrying a black backpack, the woman wears ..."
        lead = _cap(carry_vp)
        tail = f"the {noun} {_ch(rng, ['wears', 'is wearing', 'is dressed in'])} {wear_txt}" if wear \
            else f"the {noun} is walking"
        s.append(f"{lead}, {tail}.")
        if hair:
            s.append(f"{subj2} has {hair}.")
    elif plan == 5:
        # "A man in X. He has short hair and is wearing Y, carrying B."
        first_w = wear[:1]
        rest_w = wear[1:]
        head = _article(noun)
        if first_w:
            s.append(_cap(f"{head} {_ch(rng, ['in', 'wearing', 'dressed in'])} {first_w[0]}") + ".")
        else:
            s.append(_cap(f"{head} {view_txt or 'walking down the street'}") + ".")
            view_txt = None
        parts = []
        if hair:
            parts.append(f"has {hair}")
        if rest_w:
            parts.append(f"{_ch(rng, ['is wearing', 'wears', 'also wears', 'is also wearing'])} {_join(rest_w, rng)}")
        if carry:
            parts.append(f"is {carry_vp}")
        if parts:
            s.append(f"{subj2} {_join(parts, rng)}.")
    else:
        # "The woman is wearing X on top and Y on the bottom. She is holding ..."
        first = _ch(rng, [f"The {noun}", _cap(_article(noun)), f"This {noun}"])
        up, lo = wear_by.get("upper"), wear_by.get("lower")
        other = [wear_by[g] for g in ("shoes", "headwear") if g in wear_by]
        if up and lo:
            s.append(f"{first} is wearing {up} {_ch(rng, ['on top', 'on top', 'on the top'])} and {lo} "
                     f"{_ch(rng, ['on the bottom', 'below', 'on the bottom'])}.")
        elif up or lo:
            s.append(f"{first} is wearing {up or lo}.")
        else:
            s.append(f"{first} is {view_txt or 'walking'}.")
            view_txt = None
        extra = []
        if other:
            extra.append(f"{_ch(rng, ['wears', 'has on'])} {_join(other, rng)}")
        if hair:
            extra.append(f"has {hair}")
        if carry:
            extra.append(f"is {carry_vp}")
        if extra:
            s.append(f"{subj2} {_join(extra, rng)}.")
    if view_txt:
        s.append(f"{subj2} is {view_txt}.")
    text = " ".join(x for x in s if x)
    return _tidy(text), ph.m


def _hair_pred(a: dict[str, Any], rng: np.random.Generator) -> str:
    c = _ch(rng, HAIR_WORDS[a["hair_colour"]])
    return f"{a['hair_length']} and {c}" if rng.random() < 0.6 else f"{c} and {a['hair_length']}"


def _terse_caption(a: dict[str, Any], groups: list[str], rng: np.random.Generator) -> tuple[str, set[str]]:
    """One or two attributes only: 'A man in a red shirt.' / 'A person with a black backpack.'"""
    ph = _Phrases(a, rng)
    pool = [g for g in groups if g != "hair"] or groups
    k = 1 if rng.random() < 0.55 or len(pool) < 2 else 2
    picks = [pool[int(i)] for i in sorted(rng.choice(len(pool), size=min(k, len(pool)), replace=False))]
    noun, _ = ph.noun(allow_build=False)
    if rng.random() < 0.15:
        noun = "person"
    wear = [ph.upper(terse=True) if g == "upper" else getattr(ph, g)() for g in picks
            if g in ("upper", "lower", "shoes", "headwear")]
    carry = [ph.bag() if g == "bag" else ph.carried() for g in picks if g in ("bag", "carried")]
    hair = ph.hair() if "hair" in picks else None
    head = _ch(rng, [_article(noun), _article(noun), f"the {noun}", "someone" if noun != "person" else "a person"])
    parts = []
    if wear:
        verbs = ["in", "wearing", "wearing", "dressed in"] if picks[0] != "shoes" else ["in", "wearing"]
        parts.append(f"{_ch(rng, verbs)} {_join(wear, rng)}")
    if carry:
        if not wear and rng.random() < 0.5:
            parts.append(f"with {_join([c[0] for c in carry], rng)}")
        else:
            parts.append(_join([c[1] for c in carry], rng))
    if hair:
        parts.append(f"with {hair}")
    if not parts:
        return _cap(f"{head} walking") + ".", ph.m
    sep = ", " if len(parts) > 1 and rng.random() < 0.5 else " and " if len(parts) > 1 else ""
    body = parts[0] + (sep + parts[1] if len(parts) > 1 else "")
    if rng.random() < 0.3 and head.startswith(("a ", "an ", "the ")):
        if body.startswith("wearing "):
            return _tidy(_cap(f"{head} is {body}") + "."), ph.m
        if body.startswith(("in ", "dressed ", "carrying ", "holding ")):
            return _tidy(_cap(f"{head} is {body}") + "."), ph.m
        if body.startswith("with "):
            return _tidy(_cap(f"{head} has {body[5:]}") + "."), ph.m
    return _tidy(_cap(f"{head} {body}") + "."), ph.m


def _tidy(text: str) -> str:
    text = re.sub(r"\s+", " ", text).strip()
    text = text.replace(" ,", ",").replace("..", ".")
    return text


_GENDER_TOKENS = {"man", "guy", "male", "gentleman", "he", "his", "him", "woman", "lady", "female", "girl",
                  "she", "her"}
_BUILD_TOKENS = {w for ws in BUILD_WORDS.values() for w in ws}


def make_captions(ident: dict[str, Any], params: dict[str, Any], rng: np.random.Generator, n: int,
                  terse_frac: float, mention_prob: float) -> tuple[list[str], list[bool], list[list[str]]]:
    """`n` distinct captions for one image, which of them are terse, and the slots each one names.

    Only attribute groups whose slots are all visible in the image (``params['visible']``) are
    named, so the visibility record in attributes.json bounds what any caption says.
    """
    a = ident["attributes"]
    groups = _visible_groups(a, params["visible"])
    caps: list[str] = []
    terse: list[bool] = []
    mentions: list[list[str]] = []
    tries = 0
    while len(caps) < n:
        tries += 1
        t = bool(rng.random() < terse_frac)
        c, m = _terse_caption(a, groups, rng) if t else _full_caption(a, groups, params["view"], params["facing"],
                                                                      rng, mention_prob)
        if c in caps and tries < 20:
            continue
        toks = set(tokenize(c))
        if toks & _GENDER_TOKENS:
            m = m | {"gender"}
        if toks & _BUILD_TOKENS:
            m = m | {"build"}
        caps.append(c)
        terse.append(t)
        mentions.append([s for s in ATTRIBUTE_SLOTS if s in m])
    return caps, terse, mentions
