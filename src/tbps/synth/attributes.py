"""Identity attributes of the synthetic benchmark: vocabulary, priors and confusable variants.

An identity is a plain JSON-able dict ``{"attributes": {slot: value}, "appearance": {...}}``.
``attributes`` holds what captions talk about (the ground truth anyone can caption from);
``appearance`` holds rendering details no caption mentions (skin tone, exact shades, which
hand holds what), so two identities that differ only in ``appearance`` are meant to be
near-duplicates.

Confusability is built in on purpose: identities come in *families* — a prototype drawn from
realistic priors plus variants that differ from it in exactly one attribute (or that swap the
colours of the top and the bottom garment). Retrieval can only separate them by binding each
colour to the right garment and by reading every attribute.
"""
from __future__ import annotations

from typing import Any

import numpy as np

#: Clothing colours: name -> base sRGB. Names are the ones captions use (grey also as "gray").
COLOUR_RGB: dict[str, tuple[int, int, int]] = {
    "black": (28, 28, 32),
    "white": (236, 236, 232),
    "grey": (128, 128, 130),
    "red": (200, 32, 38),
    "blue": (38, 74, 192),
    "green": (38, 138, 58),
    "yellow": (236, 204, 40),
    "brown": (118, 74, 40),
    "pink": (240, 150, 186),
    "purple": (118, 50, 150),
    "orange": (240, 128, 30),
}
COLOURS: list[str] = list(COLOUR_RGB)

#: Hair colours (a separate, smaller palette; "blonde" is never a garment colour).
HAIR_RGB: dict[str, tuple[int, int, int]] = {
    "black": (22, 20, 20),
    "brown": (96, 60, 34),
    "blonde": (214, 184, 108),
    "grey": (165, 165, 165),
}
HAIR_COLOURS: list[str] = list(HAIR_RGB)

SKIN_RGB: list[tuple[int, int, int]] = [
    (245, 208, 180), (228, 184, 150), (200, 150, 110), (160, 110, 75), (110, 75, 50),
]

UPPER_TYPES = ["t-shirt", "shirt", "sweater", "jacket", "coat", "dress"]
LOWER_TYPES = ["trousers", "jeans", "shorts", "skirt", "none"]  # "none": the dress covers it
PATTERNS = ["plain", "striped", "checked", "dotted"]
BAGS = ["none", "backpack", "handbag", "shoulder bag"]
HEADWEAR = ["none", "cap", "hat", "beanie"]
CARRIED = ["none", "umbrella", "phone", "bottle", "cup"]

#: Every attribute slot and its possible values (None = not applicable, e.g. no bag colour).
ATTRIBUTE_SLOTS: dict[str, list[str]] = {
    "gender": ["man", "woman"],
    "build": ["slim", "average", "heavy"],
    "hair_length": ["short", "long"],
    "hair_colour": HAIR_COLOURS,
    "headwear": HEADWEAR,
    "headwear_colour": COLOURS,
    "upper_type": UPPER_TYPES,
    "upper_colour": COLOURS,
    "upper_pattern": PATTERNS,
    "pattern_colour": COLOURS,
    "sleeve_length": ["short", "long"],
    "lower_type": LOWER_TYPES,
    "lower_colour": COLOURS,
    "shoe_colour": COLOURS,
    "bag": BAGS,
    "bag_colour": COLOURS,
    "carried": CARRIED,
}

# --------------------------------------------------------------------------------------------
# Priors (rough street statistics: dark and neutral colours dominate, as in CUHK-PEDES).
# --------------------------------------------------------------------------------------------
_UPPER_COLOUR_P = {"black": 16, "white": 13, "grey": 9, "blue": 10, "red": 9, "green": 7,
                   "yellow": 6, "brown": 6, "pink": 8, "purple": 7, "orange": 6}
_LOWER_COLOUR_P = {"black": 24, "white": 6, "grey": 12, "blue": 14, "red": 6, "green": 6,
                   "yellow": 4, "brown": 10, "pink": 5, "purple": 5, "orange": 4}
_JEANS_COLOUR_P = {"blue": 60, "black": 20, "grey": 14, "white": 6}
_SHOE_COLOUR_P = {"black": 30, "white": 24, "grey": 10, "brown": 12, "red": 5, "blue": 6,
                  "green": 3, "yellow": 3, "pink": 3, "purple": 2, "orange": 2}
_ACCESSORY_COLOUR_P = {"black": 26, "white": 8, "grey": 12, "blue": 9, "red": 9, "green": 6,
                       "yellow": 5, "brown": 12, "pink": 6, "purple": 4, "orange": 3}
_UPPER_TYPE_P = {
    "man": {"t-shirt": 30, "shirt": 24, "sweater": 14, "jacket": 20, "coat": 12},
    "woman": {"t-shirt": 24, "shirt": 18, "sweater": 12, "jacket": 14, "coat": 12, "dress": 20},
}
_LOWER_TYPE_P = {
    "man": {"trousers": 45, "jeans": 38, "shorts": 17},
    "woman": {"trousers": 30, "jeans": 30, "shorts": 14, "skirt": 26},
}
_PATTERN_P = {"plain": 58, "striped": 17, "checked": 13, "dotted": 12}
_BAG_P = {"man": {"none": 40, "backpack": 35, "handbag": 5, "shoulder bag": 20},
          "woman": {"none": 30, "backpack": 25, "handbag": 25, "shoulder bag": 20}}
_HEADWEAR_P = {"none": 72, "cap": 12, "hat": 9, "beanie": 7}
_CARRIED_P = {"none": 64, "umbrella": 10, "phone": 12, "bottle": 8, "cup": 6}

#: Slots a variant may change, with weights: clothing colours dominate (colour binding is the
#: hard part of the task), then garment types, then accessories.
VARIANT_CHANGES: dict[str, float] = {
    "upper_colour": 5.0, "lower_colour": 4.0, "swap_colours": 4.0, "shoe_colour": 2.0,
    "upper_type": 2.0, "upper_pattern": 2.0, "lower_type": 2.0, "bag": 2.0, "bag_colour": 2.0,
    "hair_colour": 1.0, "hair_length": 1.0, "headwear": 1.0, "carried": 1.0, "gender": 0.5,
}


def _pick(rng: np.random.Generator, table: dict[str, float], exclude: Any = None) -> str:
    """Draw one key of a weight table (optionally never `exclude`)."""
    keys = [k for k in table if k != exclude]
    w = np.array([table[k] for k in keys], dtype=float)
    return keys[int(rng.choice(len(keys), p=w / w.sum()))]


def _shade(rng: np.random.Generator) -> list[int]:
    """Per-identity jitter of a base colour, so two 'red' shirts are not pixel-identical."""
    return [int(v) for v in rng.integers(-14, 15, size=3)]


def _sleeve_for(upper_type: str, rng: np.random.Generator) -> str:
    if upper_type == "t-shirt":
        return "short"
    if upper_type in ("sweater", "jacket", "coat"):
        return "long"
    return "short" if rng.random() < (0.55 if upper_type == "dress" else 0.4) else "long"


def _pattern_for(upper_type: str, rng: np.random.Generator) -> str:
    table = dict(_PATTERN_P)
    if upper_type in ("coat", "jacket"):
        table = {"plain": 80, "checked": 20}
    return _pick(rng, table)


def _second_colour(rng: np.random.Generator, main: str) -> str:
    """Pattern colour: contrasting with the main colour (white/black most often)."""
    table = {c: 2.0 for c in COLOURS}
    table["white"] = 10.0
    table["black"] = 8.0
    return _pick(rng, table, exclude=main)


def _lower_colour_for(lower_type: str, rng: np.random.Generator) -> str:
    return _pick(rng, _JEANS_COLOUR_P if lower_type == "jeans" else _LOWER_COLOUR_P)


def sample_identity(rng: np.random.Generator) -> dict[str, Any]:
    """Draw a prototype identity from the priors."""
    a: dict[str, Any] = {}
    g = "man" if rng.random() < 0.5 else "woman"
    a["gender"] = g
    a["build"] = _pick(rng, {"slim": 30, "average": 50, "heavy": 20})
    a["hair_length"] = ("long" if rng.random() < 0.75 else "short") if g == "woman" else \
        ("long" if rng.random() < 0.08 else "short")
    a["hair_colour"] = _pick(rng, {"black": 55, "brown": 28, "blonde": 10, "grey": 7})
    a["headwear"] = _pick(rng, _HEADWEAR_P)
    a["headwear_colour"] = None if a["headwear"] == "none" else _pick(rng, _ACCESSORY_COLOUR_P)
    a["upper_type"] = _pick(rng, _UPPER_TYPE_P[g])
    a["upper_colour"] = _pick(rng, _UPPER_COLOUR_P)
    a["upper_pattern"] = _pattern_for(a["upper_type"], rng)
    a["pattern_colour"] = None if a["upper_pattern"] == "plain" else _second_colour(rng, a["upper_colour"])
    a["sleeve_length"] = _sleeve_for(a["upper_type"], rng)
    if a["upper_type"] == "dress":
        a["lower_type"], a["lower_colour"] = "none", None
    else:
        a["lower_type"] = _pick(rng, _LOWER_TYPE_P[g])
        a["lower_colour"] = _lower_colour_for(a["lower_type"], rng)
    a["shoe_colour"] = _pick(rng, _SHOE_COLOUR_P)
    a["bag"] = _pick(rng, _BAG_P[g])
    a["bag_colour"] = None if a["bag"] == "none" else _pick(rng, _ACCESSORY_COLOUR_P)
    a["carried"] = _pick(rng, _CARRIED_P)
    return {"attributes": a, "appearance": sample_appearance(a, rng)}


def sample_appearance(a: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
    """Rendering details that captions never mention."""
    side = "right" if rng.random() < 0.5 else "left"
    return {
        "skin": int(rng.integers(len(SKIN_RGB))),
        "bag_side": side,  # the person's own side (not the image's)
        "carry_side": "left" if side == "right" else "right",
        "shade": {k: _shade(rng) for k in ("upper", "pattern", "lower", "shoe", "bag", "headwear", "hair")},
        "umbrella_colour": _pick(rng, _ACCESSORY_COLOUR_P),
        "bottle_colour": _pick(rng, {"blue": 3, "green": 2, "white": 3, "red": 1}),
        "height": round(float(rng.uniform(0.94, 1.0)), 4),  # relative body height
        "hair_style": int(rng.integers(2)),
    }


def _valid(a: dict[str, Any]) -> bool:
    """Internal consistency of an attribute dict (after a variant edit)."""
    if a["upper_type"] == "dress":
        if a["gender"] != "woman" or a["lower_type"] != "none" or a["lower_colour"] is not None:
            return False
    elif a["lower_type"] == "none" or a["lower_colour"] is None:
        return False
    if a["lower_type"] == "skirt" and a["gender"] != "woman":
        return False
    if a["lower_type"] == "jeans" and a["lower_colour"] not in _JEANS_COLOUR_P:
        return False
    if a["upper_type"] == "t-shirt" and a["sleeve_length"] != "short":
        return False
    if a["upper_type"] in ("sweater", "jacket", "coat") and a["sleeve_length"] != "long":
        return False
    if (a["upper_pattern"] == "plain") != (a["pattern_colour"] is None):
        return False
    if a["pattern_colour"] is not None and a["pattern_colour"] == a["upper_colour"]:
        return False
    if (a["bag"] == "none") != (a["bag_colour"] is None):
        return False
    if (a["headwear"] == "none") != (a["headwear_colour"] is None):
        return False
    return True


def _edit(a: dict[str, Any], change: str, rng: np.random.Generator) -> dict[str, Any] | None:
    """Return a copy of `a` changed in exactly one attribute (`change`), or None if impossible."""
    b = dict(a)
    if change == "swap_colours":
        if a["lower_colour"] is None or a["upper_colour"] == a["lower_colour"]:
            return None
        b["upper_colour"], b["lower_colour"] = a["lower_colour"], a["upper_colour"]
        if b["pattern_colour"] == b["upper_colour"]:
            return None
    elif change in ("upper_colour", "lower_colour", "shoe_colour", "bag_colour"):
        if a[change] is None:
            return None
        b[change] = _pick(rng, {c: 1.0 for c in COLOURS}, exclude=a[change])
    elif change == "hair_colour":
        b[change] = _pick(rng, {c: 1.0 for c in HAIR_COLOURS}, exclude=a[change])
    elif change == "hair_length":
        b[change] = "long" if a[change] == "short" else "short"
    elif change == "upper_type":
        if a["upper_type"] == "dress":
            return None
        b["upper_type"] = _pick(rng, {t: 1.0 for t in UPPER_TYPES if t != "dress"}, exclude=a["upper_type"])
        b["sleeve_length"] = _sleeve_for(b["upper_type"], rng) if b["upper_type"] != "shirt" else a["sleeve_length"]
        if b["upper_type"] in ("coat", "jacket") and b["upper_pattern"] in ("striped", "dotted"):
            return None
    elif change == "upper_pattern":
        options = [p for p in PATTERNS if p != a["upper_pattern"]]
        if a["upper_type"] in ("coat", "jacket"):
            options = [p for p in options if p in ("plain", "checked")]
        b["upper_pattern"] = options[int(rng.integers(len(options)))]
        if b["upper_pattern"] == "plain":
            b["pattern_colour"] = None
        elif b["pattern_colour"] is None:
            b["pattern_colour"] = _second_colour(rng, b["upper_colour"])
    elif change == "lower_type":
        if a["lower_type"] == "none":
            return None
        table = {t: 1.0 for t in _LOWER_TYPE_P[a["gender"]]}
        b["lower_type"] = _pick(rng, table, exclude=a["lower_type"])
    elif change == "bag":
        if a["bag"] == "none":
            b["bag"] = _pick(rng, {"backpack": 1.0, "handbag": 1.0, "shoulder bag": 1.0})
            b["bag_colour"] = _pick(rng, _ACCESSORY_COLOUR_P)
        elif rng.random() < 0.4:
            b["bag"], b["bag_colour"] = "none", None
        else:
            b["bag"] = _pick(rng, {"backpack": 1.0, "handbag": 1.0, "shoulder bag": 1.0}, exclude=a["bag"])
    elif change == "headwear":
        if a["headwear"] == "none":
            b["headwear"] = _pick(rng, {"cap": 1.0, "hat": 1.0, "beanie": 1.0})
            b["headwear_colour"] = _pick(rng, _ACCESSORY_COLOUR_P)
        else:
            b["headwear"], b["headwear_colour"] = "none", None
    elif change == "carried":
        b["carried"] = _pick(rng, {c: 1.0 for c in CARRIED}, exclude=a["carried"])
    elif change == "gender":
        if a["upper_type"] == "dress" or a["lower_type"] == "skirt":
            return None
        b["gender"] = "woman" if a["gender"] == "man" else "man"
    else:
        raise ValueError(f"unknown variant change {change!r}")
    return b if _valid(b) else None


def make_variant(proto: dict[str, Any], rng: np.random.Generator) -> tuple[dict[str, Any], str]:
    """A confusable identity: the prototype with one attribute changed (or top/bottom colours swapped).

    The appearance (skin, shades, bag side) is copied, so only the named change tells them apart.
    """
    for _ in range(50):
        change = _pick(rng, VARIANT_CHANGES)
        b = _edit(proto["attributes"], change, rng)
        if b is not None and b != proto["attributes"]:
            app = {**proto["appearance"], "shade": {k: list(v) for k, v in proto["appearance"]["shade"].items()}}
            return {"attributes": b, "appearance": app}, change
    # Practically unreachable: every prototype admits a colour change.
    b = dict(proto["attributes"])
    b["shoe_colour"] = _pick(rng, {c: 1.0 for c in COLOURS}, exclude=b["shoe_colour"])
    return {"attributes": b, "appearance": dict(proto["appearance"])}, "shoe_colour"


def sample_split_identities(rng: np.random.Generator, n: int, variant_frac: float,
                            max_variants: int = 3) -> list[dict[str, Any]]:
    """Draw `n` identities as families (prototype + 0..max_variants one-attribute variants).

    Returned dicts carry ``variant_of`` (index into the returned list, or None) and
    ``variant_change``; families never straddle splits because each split is drawn separately.
    """
    out: list[dict[str, Any]] = []
    seen: set[str] = set()
    # Expected variants per prototype v gives a variant fraction v / (1 + v).
    f = min(max(variant_frac, 0.0), 0.95)
    mean_var = f / (1.0 - f)
    p = min(mean_var / max(max_variants, 1), 1.0)
    while len(out) < n:
        proto = sample_identity(rng)
        key = repr(sorted(proto["attributes"].items()))
        if key in seen:  # exact duplicates would be unanswerable queries: redraw
            continue
        seen.add(key)
        proto.update(variant_of=None, variant_change=None)
        base = len(out)
        out.append(proto)
        k = int(rng.binomial(max_variants, p)) if max_variants > 0 else 0
        for _ in range(k):
            if len(out) >= n:
                break
            var, change = make_variant(proto, rng)
            vkey = repr(sorted(var["attributes"].items()))
            if vkey in seen:
                continue
            seen.add(vkey)
            var.update(variant_of=base, variant_change=change)
            out.append(var)
    return out
