"""Rule-based attribute detector for pedestrian captions.

CADA's attribute reconstruction (ARA) and UCA's attribute masking both need to
know which words of a caption describe the person's appearance. The official
code asks NLTK for part-of-speech tags (adjectives JJ and nouns NN/NNS). NLTK
models are not available offline and POS tags are noisy on captions anyway
("pants" tagged as a verb, ALL-CAPS sentences tagged as proper nouns), so this
module replaces them with a hand-written lexicon of appearance words (a few
hundred entries in attribute_lexicon.yaml beside this file: colours, patterns,
materials, garments, footwear, bags, headwear, accessories, hair, body build)
and a handful of chunking rules that group modifiers with the noun they describe:

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
from pathlib import Path
from types import MappingProxyType

import yaml

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
# The words themselves live in attribute_lexicon.yaml (package data), read once here.
LEXICON_FILE = Path(__file__).with_name("attribute_lexicon.yaml")


def _split(entries: str) -> list[str]:
    return [e.strip() for e in entries.split(",") if e.strip()]


def _read_lexicon_file(path: Path = LEXICON_FILE) -> dict:
    with open(path, encoding="utf-8") as f:
        return yaml.safe_load(f)


_FILE = _read_lexicon_file()
_MODIFIERS: dict[str, str] = _FILE["modifiers"]  # category -> comma-separated entries
# (word category, phrase region, singular forms that get regular plurals, invariant forms)
_NOUNS: list[tuple[str, str, str, str]] = [(n["category"], n["region"], n["singular"], n["invariant"])
                                           for n in _FILE["nouns"]]
_COMPOUND_SUFFIX: dict[str, str] = _FILE["compound_suffix"]
_AMBIGUOUS: dict[str, tuple[str, str]] = {k: tuple(v) for k, v in _FILE["ambiguous"].items()}
_CONNECTORS = frozenset(_split(_FILE["connectors"]))
_INTENSIFIERS = frozenset(_split(_FILE["intensifiers"]))
_GLUE = _CONNECTORS | _INTENSIFIERS
_COPULAS = frozenset(_split(_FILE["copulas"]))
_RELATIVES = frozenset(_split(_FILE["relatives"]))
_STOPWORDS = frozenset(_split(_FILE["stopwords"]))
_WEAK = frozenset(_split(_FILE["weak"]))
_NOT_BEFORE_OF = frozenset(_split(_FILE["not_before_of"]))
_SPELLING: dict[str, str] = _FILE["spelling"]  # British spellings and variants -> one form

_TOKEN_RE = re.compile(r"[A-Za-z0-9]+(?:['\u2019][A-Za-z]+)?")
_HYPHENS = frozenset({"-", "\u2010", "\u2011", "\u2012", "\u2013"})
_SOFT_PUNCT = frozenset({",", "/", "&", "+", "-", "\u2013"})

_G_TIGHT, _G_HYPHEN, _G_COMMA, _G_BREAK = 0, 1, 2, 3


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
