"""Tests for tbps.data.tokenizers: CLIP ids, padding/truncation, offsets, persistence, training."""
from __future__ import annotations

import gzip
import json
import os
import pickle
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tbps.data.tokenizers import (
    BertWordPieceTokenizer,
    ClipBpeTokenizer,
    TextTokenizer,
    TokenBatch,
    TrainedTokenizer,
    default_clip_bpe_path,
    load_tokenizer,
)

# Ids produced by OpenAI's own simple_tokenizer (clip/simple_tokenizer.py) for these texts.
KNOWN_CLIP_IDS = {
    "a photo of a cat": [320, 1125, 539, 320, 2368],
    "a photo of a dog": [320, 1125, 539, 320, 1929],
    "The man wears a black jacket, blue jeans and white shoes.":
        [518, 786, 11869, 320, 1449, 6164, 267, 1746, 10157, 537, 1579, 4079, 269],
    "woman": [2308],
    'Hello!! 123 "quoted" it\'s': [3306, 748, 272, 273, 274, 257, 27706, 257, 585, 568],
}

PLAIN_CAPTIONS = [
    "A young Woman wearing a red coat and   black trousers",
    "the man carries a blue backpack over his left shoulder",
    "She has long hair and wears white sneakers",
]


def synthetic_captions(n: int, seed: int = 0) -> list[str]:
    """Person-description-like captions with a controlled vocabulary."""
    rng = random.Random(seed)
    colours = "black white red blue green yellow grey brown pink purple orange dark light".split()
    items = ("jacket coat shirt t-shirt jeans trousers pants skirt dress shoes sneakers boots "
             "backpack bag hat cap scarf glasses umbrella").split()
    subjects = "man woman person boy girl pedestrian lady gentleman".split()
    out = []
    for _ in range(n):
        s = f"A {rng.choice(subjects)} wearing a {rng.choice(colours)} {rng.choice(items)}"
        for _ in range(rng.randint(1, 4)):
            s += f", and {rng.choice(colours)} {rng.choice(items)}"
        out.append(s + ".")
    return out


@pytest.fixture(scope="module")
def clip() -> ClipBpeTokenizer:
    return ClipBpeTokenizer()


@pytest.fixture(scope="module")
def trained() -> TrainedTokenizer:
    return TrainedTokenizer.train(synthetic_captions(3000), vocab_size=300,
                                  extra_special=["[ENC]", "[DEC]"])


@pytest.fixture()
def bert_vocab(tmp_path: Path) -> Path:
    tokens = (["[PAD]"] + [f"[unused{i}]" for i in range(3)] + ["[UNK]", "[CLS]", "[SEP]", "[MASK]"]
              + list("abcdefghijklmnopqrstuvwxyz.,!-'") + ["##" + c for c in "abcdefghijklmnopqrstuvwxyz"]
              + ["the", "man", "wear", "##ing", "black", "jacket", "and", "blue", "jean",
                 "cafe", "with", "bag"])
    assert len(set(tokens)) == len(tokens)
    path = tmp_path / "vocab.txt"
    path.write_text("\n".join(tokens) + "\n", encoding="utf-8")
    return path


def real_positions(batch: TokenBatch, row: int) -> range:
    """Positions of text tokens (between bos and eos) of one row."""
    return range(1, int(batch.eot_index[row]))


# ---------------------------------------------------------------- CLIP


def test_clip_known_ids(clip: ClipBpeTokenizer) -> None:
    assert clip.vocab_size == 49408
    assert (clip.bos_id, clip.eos_id, clip.pad_id, clip.mask_id) == (49406, 49407, 0, 49405)
    texts = list(KNOWN_CLIP_IDS)
    batch = clip.encode(texts, 77)
    for row, text in enumerate(texts):
        n = int(batch.eot_index[row]) + 1
        assert batch.ids[row, :n].tolist() == [49406, *KNOWN_CLIP_IDS[text], 49407], text
    assert batch.ids[0, :7].tolist() == [49406, 320, 1125, 539, 320, 2368, 49407]


def test_clip_mask_modes() -> None:
    appended = ClipBpeTokenizer(mask_mode="append")
    assert appended.vocab_size == 49409 and appended.mask_id == 49408
    # With an appended mask the last merge survives: "jekyll" is one token as in OpenAI CLIP.
    assert appended.encode(["jekyll"], 5).ids[0, :3].tolist() == [49406, 49405, 49407]
    irra = ClipBpeTokenizer(mask_mode="irra")
    ids = irra.encode(["jekyll"], 8).ids[0].tolist()
    assert 49405 not in ids and irra.decode(ids) == "jekyll"
    assert irra.special_ids == {49405, 49406, 49407}
    with pytest.raises(ValueError, match="mask_mode"):
        ClipBpeTokenizer(mask_mode="nope")  # type: ignore[arg-type]


def test_clip_missing_and_broken_vocab(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "bpe.txt.gz"
    with pytest.raises(FileNotFoundError, match=str(missing)):
        ClipBpeTokenizer(missing)
    broken = tmp_path / "broken.txt.gz"
    broken.write_bytes(gzip.compress(b"#version: 0.2\ni n\nt h\n"))
    with pytest.raises(ValueError, match="merges"):
        ClipBpeTokenizer(broken)
    # A user-supplied copy of the real file works.
    copy = tmp_path / "copy.txt.gz"
    copy.write_bytes(default_clip_bpe_path().read_bytes())
    assert ClipBpeTokenizer(copy).encode(["a photo of a cat"], 8).ids[0, 5].item() == 2368


def test_clip_padding_and_truncation(clip: ClipBpeTokenizer) -> None:
    long_text = " ".join(["red"] * 100)
    batch = clip.encode(["a cat", long_text, ""], 10)
    assert batch.ids.shape == (3, 10) and batch.ids.dtype == torch.long
    assert batch.attention_mask.dtype == torch.bool and batch.eot_index.dtype == torch.long
    # short: bos, a, cat, eos, then pad id 0 with a False mask
    assert batch.ids[0].tolist() == [49406, 320, 2368, 49407] + [0] * 6
    assert batch.attention_mask[0].tolist() == [True] * 4 + [False] * 6
    # long: cut before the end, EOT kept in the last position
    assert batch.ids[1, -1].item() == 49407 and batch.ids[1, 0].item() == 49406
    assert batch.attention_mask[1].all()
    assert batch.eot_index.tolist() == [3, 9, 1]
    assert batch.ids[2, :2].tolist() == [49406, 49407]
    # eot_index always points at the eos id
    rows = torch.arange(3)
    assert (batch.ids[rows, batch.eot_index] == clip.eos_id).all()
    assert len(batch.offsets) == 3 and all(len(o) == 10 for o in batch.offsets)
    assert batch.offsets[0][0] == (0, 0) and batch.offsets[0][3:] == [(0, 0)] * 7


def test_clip_offsets_point_into_original_text(clip: ClipBpeTokenizer) -> None:
    batch = clip.encode(PLAIN_CAPTIONS, 40)
    for row, text in enumerate(PLAIN_CAPTIONS):
        for pos in real_positions(batch, row):
            s, e = batch.offsets[row][pos]
            assert text[s:e].lower() == clip.token_surface(int(batch.ids[row, pos]))
        # whole words are single tokens here: the spans are the words of the original text
        spans = [text[s:e] for s, e in batch.offsets[row][1:int(batch.eot_index[row])]]
        assert spans == text.split()


def test_clip_offsets_for_subwords_and_punctuation(clip: ClipBpeTokenizer) -> None:
    text = "Jekyll's UNBELIEVABLY-long, hair!"
    batch = clip.encode([text], 30)
    pieces = []
    for pos in real_positions(batch, 0):
        s, e = batch.offsets[0][pos]
        assert 0 <= s < e <= len(text)
        pieces.append(text[s:e].lower())
        assert text[s:e].lower() == clip.token_surface(int(batch.ids[0, pos]))
    assert "".join(pieces) == "".join(text.lower().split())


def test_clip_decode_round_trip(clip: ClipBpeTokenizer) -> None:
    batch = clip.encode(PLAIN_CAPTIONS, 40)
    for row, text in enumerate(PLAIN_CAPTIONS):
        assert clip.decode(batch.ids[row].tolist()) == " ".join(text.lower().split())
    assert clip.decode_batch(batch) == [" ".join(t.lower().split()) for t in PLAIN_CAPTIONS]
    ids = [49406, 320, clip.mask_id, 2368, 49407]
    assert clip.decode(ids) == "a <|mask|> cat"
    assert clip.decode(ids, skip_special=False) == "<|startoftext|> a <|mask|> cat <|endoftext|>"


def test_clip_special_text_is_plain_text(clip: ClipBpeTokenizer) -> None:
    batch = clip.encode(["a <|endoftext|> b <|mask|>"], 30)
    body = batch.ids[0, 1:int(batch.eot_index[0])].tolist()
    assert not set(body) & clip.special_ids
    # ... also after pickling (DataLoader workers receive a pickled tokenizer)
    clone = pickle.loads(pickle.dumps(clip))
    assert torch.equal(clone.encode(["a <|endoftext|> b"], 20).ids, clip.encode(["a <|endoftext|> b"], 20).ids)


def test_encode_argument_checks(clip: ClipBpeTokenizer) -> None:
    with pytest.raises(TypeError):
        clip.encode("a single string", 10)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        clip.encode(["x"], 1)
    empty = clip.encode([], 7)
    assert empty.ids.shape == (0, 7) and empty.eot_index.shape == (0,) and len(empty) == 0


def test_protocol(clip: ClipBpeTokenizer, trained: TrainedTokenizer, bert_vocab: Path) -> None:
    for tok in (clip, trained, BertWordPieceTokenizer.from_vocab(bert_vocab)):
        assert isinstance(tok, TextTokenizer)


# ---------------------------------------------------------------- save / load


def test_save_load_round_trip(tmp_path: Path, clip: ClipBpeTokenizer, trained: TrainedTokenizer,
                              bert_vocab: Path) -> None:
    texts = PLAIN_CAPTIONS + ["Café — naïve Ünïcödé <|mask|> [MASK] 12,5 !!", ""]
    tokenizers = {"clip": clip, "clip_append": ClipBpeTokenizer(mask_mode="append"),
                  "trained": trained, "bert": BertWordPieceTokenizer.from_vocab(bert_vocab)}
    for name, tok in tokenizers.items():
        folder = tmp_path / name
        tok.save(folder)
        assert (folder / "tokenizer.json").is_file()
        meta = json.loads((folder / "tbps_tokenizer.json").read_text())
        assert meta["kind"] == type(tok).kind
        loaded = load_tokenizer(folder)
        assert type(loaded) is type(tok)
        a, b = tok.encode(texts, 24), loaded.encode(texts, 24)
        assert torch.equal(a.ids, b.ids) and torch.equal(a.attention_mask, b.attention_mask)
        assert a.offsets == b.offsets and torch.equal(a.eot_index, b.eot_index)
        for attr in ("vocab_size", "pad_id", "mask_id", "bos_id", "eos_id", "special_ids"):
            assert getattr(loaded, attr) == getattr(tok, attr), (name, attr)
        assert loaded.decode(a.ids[0].tolist()) == tok.decode(a.ids[0].tolist())


def test_load_errors(tmp_path: Path, trained: TrainedTokenizer) -> None:
    with pytest.raises(FileNotFoundError, match="tbps_tokenizer.json"):
        load_tokenizer(tmp_path / "missing")
    trained.save(tmp_path / "t")
    meta_path = tmp_path / "t" / "tbps_tokenizer.json"
    meta = json.loads(meta_path.read_text())
    meta["kind"] = "martian"
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="martian"):
        load_tokenizer(tmp_path / "t")


# ---------------------------------------------------------------- trained WordPiece


def test_trained_layout_and_encoding(trained: TrainedTokenizer) -> None:
    assert (trained.pad_id, trained.bos_id, trained.eos_id, trained.mask_id) == (0, 2, 3, 4)
    assert trained.token_id("[UNK]") == 1
    assert trained.token_id("[ENC]") == 5 and trained.token_id("[DEC]") == 6
    assert trained.special_ids == set(range(7))
    with pytest.raises(KeyError):
        trained.token_id("[NOPE]")
    assert trained.vocab_size <= 300
    text = "A WOMAN wearing a pink  scarf, and grey boots."
    batch = trained.encode([text, "x" * 5], 32)
    assert batch.ids[0, 0].item() == 2 and batch.ids[0, int(batch.eot_index[0])].item() == 3
    assert batch.ids[0, int(batch.eot_index[0]) + 1:].eq(0).all()
    assert trained.decode(batch.ids[0].tolist()) == "a woman wearing a pink scarf, and grey boots."
    assert 1 not in batch.ids[0].tolist()  # every word of the training vocabulary is known
    for pos in real_positions(batch, 0):
        s, e = batch.offsets[0][pos]
        assert text[s:e].lower() == trained.token_surface(int(batch.ids[0, pos]))
    assert trained.encode(["a 😀 man"], 8).ids[0, :5].tolist() == [2, trained.encode(["a"], 3).ids[0, 1].item(),
                                                                   1, trained.encode(["man"], 3).ids[0, 1].item(), 3]


def test_trained_truncation_keeps_sep(trained: TrainedTokenizer) -> None:
    batch = trained.encode([" ".join(["red coat"] * 50)], 12)
    assert batch.ids[0, -1].item() == trained.eos_id and batch.attention_mask[0].all()
    assert batch.eot_index.tolist() == [11]


def test_trained_is_deterministic_and_order_free() -> None:
    caps = synthetic_captions(2000, seed=3)
    a = TrainedTokenizer.train(caps, vocab_size=250)
    shuffled = list(caps)
    random.Random(1).shuffle(shuffled)
    b = TrainedTokenizer.train(iter(shuffled), vocab_size=250)
    assert a._tok.get_vocab() == b._tok.get_vocab()


def test_trained_is_deterministic_across_processes(tmp_path: Path) -> None:
    # Rust's hash maps are seeded per process; the vocabulary must not depend on that.
    script = (
        "import sys, json; sys.path.insert(0, %r)\n"
        "from test_tokenizers import synthetic_captions\n"
        "from tbps.data.tokenizers import TrainedTokenizer\n"
        "tok = TrainedTokenizer.train(synthetic_captions(2000, seed=5), vocab_size=400)\n"
        "print(json.dumps(sorted(tok._tok.get_vocab().items(), key=lambda kv: kv[1])))\n"
    ) % str(Path(__file__).parent)
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         env=dict(os.environ, PYTHONHASHSEED="1"), check=True, timeout=300)
    in_process = TrainedTokenizer.train(synthetic_captions(2000, seed=5), vocab_size=400)
    assert json.loads(res.stdout) == [list(kv) for kv in
                                      sorted(in_process._tok.get_vocab().items(), key=lambda kv: kv[1])]


def test_trained_argument_checks() -> None:
    with pytest.raises(ValueError, match="wordpiece"):
        TrainedTokenizer.train(["a b"], kind="unigram")
    with pytest.raises(ValueError):
        TrainedTokenizer.train(["a b"], vocab_size=5)
    with pytest.raises(ValueError):
        TrainedTokenizer.train(["", "   "])


# ---------------------------------------------------------------- BERT WordPiece


def test_bert_from_vocab(bert_vocab: Path) -> None:
    from tokenizers.implementations import BertWordPieceTokenizer as Reference

    tok = BertWordPieceTokenizer.from_vocab(bert_vocab)
    n = len(bert_vocab.read_text().splitlines())
    # BLIP adds [DEC] (as bos_token) first, then [ENC]
    assert tok.token_id("[DEC]") == n and tok.token_id("[ENC]") == n + 1 and tok.vocab_size == n + 2
    assert (tok.pad_id, tok.bos_id, tok.eos_id, tok.mask_id) == (0, 5, 6, 7)
    reference = Reference(str(bert_vocab), lowercase=True)
    texts = ["The man wears a black jacket, and blue jeans!", "Café  with BAG-xyz's", "unknownword ##"]
    batch = tok.encode(texts, 40)
    for row, text in enumerate(texts):
        length = int(batch.eot_index[row]) + 1
        assert batch.ids[row, :length].tolist() == reference.encode(text).ids
    assert tok.decode(batch.ids[0].tolist()) == "the man wears a black jacket, and blue jeans!"


def test_bert_vocab_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="vocab.txt"):
        BertWordPieceTokenizer.from_vocab(tmp_path / "vocab.txt")
    bad = tmp_path / "bad.txt"
    bad.write_text("a\nb\n")
    with pytest.raises(ValueError, match="special"):
        BertWordPieceTokenizer.from_vocab(bad)
