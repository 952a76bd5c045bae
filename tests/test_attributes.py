"""Attribute detector: phrases on caption-style sentences, offsets, token-level masks."""
from __future__ import annotations

import time

import pytest

from tbps.data.attributes import (
    LEXICON,
    AttributePhrase,
    attribute_char_mask,
    find_attribute_phrases,
    find_attribute_words,
    token_attribute_flags,
    token_phrase_ids,
)

EX1 = "A man wearing a blue and white striped tank top, a pair of green pants and a pair of pink shoes."
EX2 = "The woman has long black hair, carries a brown purse and wears a knee-length floral skirt."

# (sentence, expected phrase texts in order)
CASES: list[tuple[str, list[str]]] = [
    (EX1, ["blue and white striped tank top", "green pants", "pink shoes"]),
    (EX2, ["long black hair", "brown purse", "knee-length floral skirt"]),
    (
        "A WOMAN WEARING A GREY HOODIE, BLACK LEGGINGS AND WHITE TRAINERS.",
        ["GREY HOODIE", "BLACK LEGGINGS", "WHITE TRAINERS"],
    ),
    (
        "  The man  with short black hair is wearing a black down jacket, a pair of black "
        "trousers and a pair of black shoes. ",
        ["short black hair", "black down jacket", "black trousers", "black shoes"],
    ),
    (
        "She is wearing a light grey coat over a black top and dark-colored sneakers. "
        "She is carrying a white plastic bag in her left hand.",
        ["light grey coat", "black top", "dark-colored sneakers", "white plastic bag"],
    ),
    (
        "A short man in a short-sleeved T-shirt, black-and-white sneakers and a baseball cap.",
        ["short", "short-sleeved T-shirt", "black-and-white sneakers", "baseball cap"],
    ),
    (
        "A young lady in a beige colour jacket, a red scarf and sunglasses, holding an "
        "umbrella and a cell phone.",
        ["young", "beige colour jacket", "red scarf", "sunglasses", "umbrella", "cell phone"],
    ),
    (
        "The girl wears her hair in a ponytail and has on a pink polka-dot dress with high heels.",
        ["hair", "ponytail", "pink polka-dot dress", "high heels"],
    ),
    (
        "A female pedestrian in a dark blue denim jacket and light blue jeans carries a black "
        "leather shoulder bag.",
        ["dark blue denim jacket", "light blue jeans", "black leather shoulder bag"],
    ),
    (
        "The man is wearing a long sleeve white shirt with a black logo on the front and khaki shorts.",
        ["long sleeve white shirt", "black logo", "khaki shorts"],
    ),
    (
        "The woman is wearing a coffee colored knee length skirt and a white short sleeved blouse.",
        ["coffee colored knee length skirt", "white short sleeved blouse"],
    ),
    (
        "A man with a black backpack on his back wearing glasses and a white t shirt with short sleeves.",
        ["black backpack", "glasses", "white t shirt", "short sleeves"],
    ),
    (
        "A lady with shoulder-length brown hair wears a white sweater with gray stripes and "
        "a navy and beige checked skirt.",
        ["shoulder-length brown hair", "white sweater", "gray stripes", "navy and beige checked skirt"],
    ),
    (
        "He has very short, dark hair and wears an oversized navy hoodie, a wide-brimmed straw "
        "hat and brown ankle boots.",
        ["short, dark hair", "oversized navy hoodie", "wide-brimmed straw hat", "brown ankle boots"],
    ),
    (
        "A tall thin man with curly hair. His shoes are white and his backpack is navy blue.",
        ["tall thin", "curly hair", "shoes", "white", "backpack", "navy blue"],
    ),
]


def _texts(text: str, **kw: bool) -> list[str]:
    return [p.text for p in find_attribute_phrases(text, **kw)]


@pytest.mark.parametrize(("text", "expected"), CASES)
def test_expected_phrases(text: str, expected: list[str]) -> None:
    assert _texts(text) == expected


@pytest.mark.parametrize("text", [c[0] for c in CASES])
def test_offsets_point_into_original(text: str) -> None:
    phrases = find_attribute_phrases(text)
    prev_end = -1
    for p in phrases:
        assert text[p.start:p.end] == p.text
        assert p.start >= prev_end  # ordered, non-overlapping
        prev_end = p.end
        assert p.words and p.words[0].start == p.start and p.words[-1].end == p.end
        for w in p.words:
            assert text[w.start:w.end] == w.text
            assert p.start <= w.start < w.end <= p.end
    assert find_attribute_words(text) == [w for p in phrases for w in p.words]


def test_example_one_words_and_categories() -> None:
    phrases = find_attribute_phrases(EX1)
    assert [p.category for p in phrases] == ["upper", "lower", "shoes"]
    words = find_attribute_words(EX1)
    assert [(w.text, w.category) for w in words] == [
        ("blue", "colour"), ("white", "colour"), ("striped", "pattern"), ("tank top", "garment"),
        ("green", "colour"), ("pants", "garment"), ("pink", "colour"), ("shoes", "footwear"),
    ]


def test_example_two_words_and_categories() -> None:
    phrases = find_attribute_phrases(EX2)
    assert [p.category for p in phrases] == ["hair", "bag", "lower"]
    assert [(w.text, w.category) for w in find_attribute_words(EX2)] == [
        ("long", "length"), ("black", "colour"), ("hair", "hair"), ("brown", "colour"),
        ("purse", "bag"), ("knee-length", "length"), ("floral", "pattern"), ("skirt", "garment"),
    ]


def test_all_caps_matches_lower_case() -> None:
    lower = EX2
    upper = EX2.upper()
    assert [p.text.lower() for p in find_attribute_phrases(upper)] == _texts(lower)
    assert [p.category for p in find_attribute_phrases(upper)] == ["hair", "bag", "lower"]


def test_extra_spaces_keep_offsets() -> None:
    text = "   a man   in a  light  blue   shirt  and   black  jeans   "
    phrases = find_attribute_phrases(text)
    assert [p.text for p in phrases] == ["light  blue   shirt", "black  jeans"]
    words = find_attribute_words(text)
    assert [w.text for w in words] == ["light", "blue", "shirt", "black", "jeans"]
    assert all(text[w.start:w.end] == w.text for w in words)
    # multi-word heads keep the original spacing
    assert _texts("a  black tank    top") == ["black tank    top"]


def test_british_and_american_spellings() -> None:
    assert _texts("a grey coat") == ["grey coat"]
    assert _texts("a gray coat") == ["gray coat"]
    assert _texts("a greyish jumper with colourful trainers") == ["greyish jumper", "colourful trainers"]
    assert [w.category for w in find_attribute_words("a dark-coloured rucksack")] == ["colour", "bag"]
    assert _texts("a woollen jumper and chequered trousers") == ["woollen jumper", "chequered trousers"]


def test_plurals_and_hyphens() -> None:
    assert _texts("two t-shirts, tshirts, tees and tank tops") == ["t-shirts", "tshirts", "tees", "tank tops"]
    assert _texts("blue dresses and scarves") == ["blue dresses", "scarves"]
    words = find_attribute_words("a knee-length, short-sleeved, navy-blue dress")
    assert [(w.text, w.category) for w in words] == [
        ("knee-length", "length"), ("short-sleeved", "style"), ("navy-blue", "colour"), ("dress", "garment"),
    ]
    # compounds ending in a known suffix are one word even when the first part is unknown
    assert [w.text for w in find_attribute_words("a mid-thigh-length rust-colored coat")] == [
        "mid-thigh-length", "rust-colored", "coat",
    ]


def test_multi_word_heads_are_one_word() -> None:
    cases = {
        "a tank top": "tank top",
        "a brown shoulder bag": "shoulder bag",
        "a white t shirt": "t shirt",
        "red high heels": "high heels",
        "a baseball cap": "baseball cap",
        "flip flops": "flip flops",
    }
    for text, head in cases.items():
        words = find_attribute_words(text)
        assert words[-1].text == head, text


def test_no_false_positives_on_function_words_and_verbs() -> None:
    for text in [
        "The man is walking and carrying something.",
        "She walks toward the camera while looking at a pair of something.",
        "He is walking straight ahead with nothing on top of his head.",
        "A person is standing next to another person in the picture.",
        "",
        "   ",
        "...",
    ]:
        assert find_attribute_words(text) == [], text
    words = {w.text.lower() for w in find_attribute_words(EX1 + " " + EX2)}
    for non_attr in ["a", "the", "wearing", "carries", "wears", "has", "pair", "of", "and", "man", "woman"]:
        assert non_attr not in words


def test_lone_adjective_is_a_phrase() -> None:
    phrases = find_attribute_phrases("His shoes are white.")
    assert [(p.text, p.category) for p in phrases] == [("shoes", "shoes"), ("white", "shoes")]
    phrases = find_attribute_phrases("Her hair is short. The man is short and fat.")
    assert [(p.text, p.category) for p in phrases] == [
        ("hair", "hair"), ("short", "hair"), ("short and fat", "person"),
    ]
    # "short" is a length for hair and garments, a body attribute for a person
    assert [w.category for w in find_attribute_phrases("Her hair is short.")[1].words] == ["length"]
    assert [w.category for w in find_attribute_phrases("a short woman")[0].words] == ["body"]
    assert [w.category for w in find_attribute_phrases("a short skirt")[0].words] == ["length", "garment"]


def test_include_person_flag() -> None:
    text = "A tall man and a young woman in a dress"
    assert _texts(text) == ["tall", "young", "dress"]
    assert _texts(text, include_person=True) == ["tall man", "young woman", "dress"]
    assert [p.category for p in find_attribute_phrases(text)] == ["person", "person", "full"]
    assert _texts("A female pedestrian in jeans") == ["jeans"]
    assert _texts("A female pedestrian in jeans", include_person=True) == ["female pedestrian", "jeans"]


def test_char_mask_is_merged_word_spans() -> None:
    text = "a light-blue shirt"
    assert attribute_char_mask(text) == [(2, 12), (13, 18)]
    spans = attribute_char_mask(EX1)
    assert [EX1[s:e] for s, e in spans] == [
        "blue", "white", "striped", "tank top", "green", "pants", "pink", "shoes",
    ]
    assert attribute_char_mask("nothing here") == []


def test_token_flags_hand_written_offsets() -> None:
    text = "a red t-shirt"
    # [CLS] a red t - shirt [SEP]
    offsets = [(0, 0), (0, 1), (2, 5), (6, 7), (7, 8), (8, 13), (0, 0)]
    flags = token_attribute_flags(offsets, attribute_char_mask(text))
    assert flags == [False, False, True, True, True, True, False]
    ids = token_phrase_ids(offsets, find_attribute_phrases(text))
    assert ids == [-1, -1, 0, 0, 0, 0, -1]
    # plain (start, end) spans are accepted too
    assert token_phrase_ids(offsets, [(2, 5)]) == [-1, -1, 0, -1, -1, -1, -1]


def _tiny_wordpiece():
    tokenizers = pytest.importorskip("tokenizers")
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    trainer = trainers.WordPieceTrainer(vocab_size=120, special_tokens=["[UNK]", "[CLS]", "[SEP]"])
    corpus = [c[0] for c in CASES] * 3
    tok.train_from_iterator(corpus, trainer=trainer)
    cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)]
    )
    assert tokenizers is not None
    return tok


def test_token_flags_with_real_tokenizer() -> None:
    tok = _tiny_wordpiece()
    enc = tok.encode(EX1)
    flags = token_attribute_flags(enc.offsets, attribute_char_mask(EX1))
    assert not flags[0] and not flags[-1]  # [CLS], [SEP]
    marked = "".join(EX1[s:e] for (s, e), f in zip(enc.offsets, flags) if f)
    assert marked == "bluewhitestripedtanktopgreenpantspinkshoes"
    unmarked = {EX1[s:e].lower() for (s, e), f in zip(enc.offsets, flags) if not f and e > s}
    assert {"wearing", "pair", "of", "and"} <= unmarked

    ids = token_phrase_ids(enc.offsets, find_attribute_phrases(EX1))
    by_phrase: dict[int, str] = {}
    for (s, e), i in zip(enc.offsets, ids):
        if i >= 0:
            by_phrase[i] = by_phrase.get(i, "") + EX1[s:e]
    assert by_phrase == {0: "blueandwhitestripedtanktop", 1: "greenpants", 2: "pinkshoes"}

    # upper case and extra spaces: offsets still line up with the original string
    text = "  A WOMAN  IN A  KNEE-LENGTH FLORAL SKIRT "
    enc = tok.encode(text)
    flags = token_attribute_flags(enc.offsets, attribute_char_mask(text))
    assert "".join(text[s:e] for (s, e), f in zip(enc.offsets, flags) if f) == "KNEE-LENGTHFLORALSKIRT"


def test_phrase_dataclass_is_frozen() -> None:
    p = find_attribute_phrases(EX1)[0]
    assert isinstance(p, AttributePhrase)
    with pytest.raises(AttributeError):
        p.start = 3  # type: ignore[misc]


def test_lexicon_size() -> None:
    assert len(LEXICON) > 300
    categories = {v[1] for v in LEXICON.values()}
    assert {"colour", "pattern", "material", "garment", "footwear", "bag", "headwear",
            "accessory", "hair", "body", "length"} <= categories


def test_speed_well_under_a_millisecond() -> None:
    base = [c[0] for c in CASES]
    texts = [f"{t} {i}" for i in range(20) for t in base]  # distinct strings: no cache hits
    t0 = time.perf_counter()
    for t in texts:
        find_attribute_phrases(t)
    per_caption = (time.perf_counter() - t0) / len(texts)
    assert per_caption < 1e-3
