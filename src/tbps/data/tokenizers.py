"""Text tokenizers behind one interface, so every text encoder consumes the same `TokenBatch`.

Three implementations, all built on the Rust `tokenizers` library (fast, and it tracks character
offsets into the original caption, which attribute-level methods need):

* `ClipBpeTokenizer`: OpenAI CLIP's lower-cased byte-level BPE (IRRA, UCA and other CLIP-based
  methods). Built from the packaged `bpe_simple_vocab_16e6.txt.gz` (MIT, OpenAI).
* `TrainedTokenizer`: a small WordPiece vocabulary trained on the training captions, for models
  trained from scratch.
* `BertWordPieceTokenizer`: `bert-base-uncased`'s vocabulary plus BLIP's `[DEC]` / `[ENC]` tokens.

Every tokenizer writes `[bos] text [eos]` then pads with `pad_id` to exactly `max_len`; a text that
is too long is cut *before* the `eos`, which is always kept because CLIP-style encoders read the
sentence feature at the `eos` position (`TokenBatch.eot_index`).
"""
from __future__ import annotations

import gzip
import heapq
import json
import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, ClassVar, Literal, Protocol, runtime_checkable

import numpy as np
import torch
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers

__all__ = [
    "TokenBatch",
    "TextTokenizer",
    "ClipBpeTokenizer",
    "WordPieceTokenizer",
    "TrainedTokenizer",
    "BertWordPieceTokenizer",
    "load_tokenizer",
    "tokenizer_from_files",
    "find_clip_bpe",
    "default_clip_bpe_path",
]

TOKENIZER_FILE = "tokenizer.json"
META_FILE = "tbps_tokenizer.json"
_META_FORMAT = 1
_MAX_WORD_CHARS = 100  # longer words become [UNK] in WordPiece (as in BERT)


@dataclass
class TokenBatch:
    """Encoded captions, padded to one length, plus what encoders and MLM heads need around them."""

    ids: torch.Tensor  # LongTensor [B, L], padded with pad_id to exactly max_len
    attention_mask: torch.Tensor  # BoolTensor [B, L], True for real tokens (specials included)
    offsets: list[list[tuple[int, int]]]  # per text, per position: char span in the original text
    eot_index: torch.Tensor  # LongTensor [B], position of the eos / EOT / [SEP] token

    def __len__(self) -> int:
        return int(self.ids.shape[0])

    def to(self, device: torch.device | str) -> TokenBatch:
        """Move the tensors (not the offsets, which are plain Python) to `device`."""
        return TokenBatch(
            ids=self.ids.to(device),
            attention_mask=self.attention_mask.to(device),
            offsets=self.offsets,
            eot_index=self.eot_index.to(device),
        )


@runtime_checkable
class TextTokenizer(Protocol):
    """What every text encoder and data pipeline may rely on."""

    vocab_size: int
    pad_id: int
    mask_id: int
    bos_id: int  # SOT / [CLS]
    eos_id: int  # EOT / [SEP]
    special_ids: set[int]

    def encode(self, texts: list[str], max_len: int) -> TokenBatch: ...

    def decode(self, ids: list[int]) -> str: ...

    def save(self, folder: str | Path) -> None: ...

    def token_id(self, name: str) -> int: ...


_SURROGATE = re.compile("[\ud800-\udfff]")


def check_text(text: str) -> str:
    """`text` itself, or ValueError if it holds a lone surrogate ("\\ud800", or command-line bytes
    that were not UTF-8): not Unicode text, which the Rust tokenizers would refuse with a TypeError."""
    bad = _SURROGATE.search(text)
    if bad:
        raise ValueError(f"text {ascii(text[:80])} holds a character that is not valid Unicode "
                         f"({ascii(bad.group())} at position {bad.start()})")
    return text


class _HFBackedTokenizer:
    """Shared encode/save logic around a `tokenizers.Tokenizer` without a post-processor.

    The special tokens are added here rather than by the Rust post-processor so that truncation
    (keep the eos) and padding (always exactly `max_len`) are explicit and identical for all kinds.
    """

    kind: ClassVar[str] = ""

    def __init__(self, tok: Tokenizer, specials: dict[str, int], *, pad_id: int, mask: str,
                 bos: str, eos: str, options: dict[str, Any] | None = None) -> None:
        self._tok = tok
        # Caption text must never turn into special ids (a caption containing "[SEP]" or
        # "<|endoftext|>" is just text); special ids only come from `encode` itself.
        self._tok.encode_special_tokens = True
        self._specials = dict(specials)
        self._options = dict(options or {})
        for name, idx in self._specials.items():
            found = tok.token_to_id(name)
            if found != idx:
                raise ValueError(f"special token {name!r} should have id {idx}, tokenizer has {found}")
        self.vocab_size: int = tok.get_vocab_size(with_added_tokens=True)
        if not 0 <= pad_id < self.vocab_size:
            raise ValueError(f"pad id {pad_id} outside the vocabulary")
        self.pad_id: int = int(pad_id)
        self.mask_id: int = self._specials[mask]
        self.bos_id: int = self._specials[bos]
        self.eos_id: int = self._specials[eos]
        self._role_names = {"mask": mask, "bos": bos, "eos": eos}
        self.special_ids: set[int] = set(self._specials.values())

    def __setstate__(self, state: dict[str, Any]) -> None:
        # `encode_special_tokens` is not part of the Rust tokenizer's pickled state: restore it,
        # or a tokenizer shipped to a DataLoader worker would read "<|endoftext|>" in a caption
        # as a real EOT.
        self.__dict__.update(state)
        self._tok.encode_special_tokens = True

    # ------------------------------------------------------------------ encoding
    def encode(self, texts: Sequence[str], max_len: int) -> TokenBatch:
        """Tokenize `texts` to `[bos] tokens [eos] pad...` of exactly `max_len` positions."""
        if isinstance(texts, str):
            raise TypeError("encode expects a list of texts, not a single string")
        if max_len < 2:
            raise ValueError(f"max_len must be at least 2 (bos + eos), got {max_len}")
        texts = list(texts)
        for t in texts:
            if not isinstance(t, str):
                raise TypeError(f"texts must be str, got {type(t).__name__}")
            check_text(t)
        n = len(texts)
        ids = np.full((n, max_len), self.pad_id, dtype=np.int64)
        mask = np.zeros((n, max_len), dtype=bool)
        eot = np.zeros(n, dtype=np.int64)
        offsets: list[list[tuple[int, int]]] = []
        keep = max_len - 2
        encodings = self._tok.encode_batch(texts, add_special_tokens=False) if n else []
        for row, enc in enumerate(encodings):
            body = enc.ids[:keep]
            length = len(body) + 2
            ids[row, 0] = self.bos_id
            ids[row, 1:length - 1] = body
            ids[row, length - 1] = self.eos_id
            mask[row, :length] = True
            eot[row] = length - 1
            offs = [(0, 0)]
            offs.extend(enc.offsets[:keep])
            offs.extend([(0, 0)] * (max_len - len(offs)))
            offsets.append(offs)
        return TokenBatch(
            ids=torch.from_numpy(ids),
            attention_mask=torch.from_numpy(mask),
            offsets=offsets,
            eot_index=torch.from_numpy(eot),
        )

    def tokenize(self, text: str) -> list[str]:
        """Token strings of `text` without specials; handy for debugging and tests."""
        return self._tok.encode(text, add_special_tokens=False).tokens

    def id_to_token(self, idx: int) -> str | None:
        """The vocabulary string of one id (None if out of range)."""
        return self._tok.id_to_token(int(idx))

    def token_id(self, name: str) -> int:
        """Id of a special token by name (e.g. '[ENC]', '<|mask|>'); KeyError if it is not one."""
        try:
            return self._specials[name]
        except KeyError:
            raise KeyError(f"{name!r} is not a special token of this tokenizer; "
                           f"known: {sorted(self._specials)}") from None

    # ------------------------------------------------------------------ decoding
    def _content_ids(self, ids: Iterable[int], skip_special: bool) -> list[int]:
        """Ids to render: with `skip_special`, drop bos/pad and stop at the first eos."""
        out: list[int] = []
        for i in ids:
            i = int(i)
            if skip_special:
                if i == self.eos_id:
                    break
                if i == self.bos_id or (i == self.pad_id and self.pad_id in self.special_ids):
                    continue
            out.append(i)
        return out

    def decode_batch(self, batch: TokenBatch) -> list[str]:
        """Decode every row of a batch, reading only the real (attention-masked) positions."""
        out = []
        for row, m in zip(batch.ids.tolist(), batch.attention_mask.tolist()):
            out.append(self.decode([i for i, keep in zip(row, m) if keep]))
        return out

    # ------------------------------------------------------------------ persistence
    def _meta(self) -> dict[str, Any]:
        return {
            "format": _META_FORMAT,
            "kind": self.kind,
            "vocab_size": self.vocab_size,
            "pad_id": self.pad_id,
            "mask_id": self.mask_id,
            "bos_id": self.bos_id,
            "eos_id": self.eos_id,
            "roles": self._role_names,
            "special_tokens": self._specials,
            "options": self._options,
        }

    def save(self, folder: str | Path) -> None:
        """Write tokenizer.json + tbps_tokenizer.json so `load_tokenizer(folder)` rebuilds this."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self._tok.save(str(folder / TOKENIZER_FILE))
        (folder / META_FILE).write_text(json.dumps(self._meta(), indent=2, sort_keys=True) + "\n")

    @classmethod
    def _from_saved(cls, tok: Tokenizer, meta: dict[str, Any]) -> _HFBackedTokenizer:
        roles = meta["roles"]
        obj = cls.__new__(cls)
        _HFBackedTokenizer.__init__(
            obj, tok, {k: int(v) for k, v in meta["special_tokens"].items()},
            pad_id=int(meta["pad_id"]), mask=roles["mask"], bos=roles["bos"], eos=roles["eos"],
            options=meta.get("options", {}),
        )
        obj._after_load("saved tokenizer")
        return obj

    def _after_load(self, source: str) -> None:
        """Hook for subclasses that check or derive extra state from the vocabulary."""

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(vocab_size={self.vocab_size}, pad={self.pad_id}, "
                f"bos={self.bos_id}, eos={self.eos_id}, mask={self.mask_id})")


# ====================================================================== CLIP BPE
CLIP_SOT = "<|startoftext|>"
CLIP_EOT = "<|endoftext|>"
CLIP_MASK = "<|mask|>"
_CLIP_NUM_MERGES = 49152 - 256 - 2  # merges OpenAI CLIP reads from the file (48,894)
_CLIP_VOCAB_SIZE = 49408
# OpenAI CLIP's pre-tokenizer regex; whitespace between matches is dropped.
_CLIP_SPLIT = r"""'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""
# Reference encodings from OpenAI's own simple_tokenizer, used as a load-time self-check.
_CLIP_SELF_CHECK = ("a photo of a cat", [320, 1125, 539, 320, 2368])


def default_clip_bpe_path() -> Path:
    """Path of the packaged CLIP BPE vocabulary (tbps/assets/bpe_simple_vocab_16e6.txt.gz)."""
    return Path(str(resources.files("tbps") / "assets" / "bpe_simple_vocab_16e6.txt.gz"))


def _byte_alphabet() -> list[tuple[int, str]]:
    """(byte, printable char) pairs in CLIP/GPT-2 order: printable bytes map to themselves.

    The order matters: it fixes the ids of the 512 single-character tokens.
    """
    keep = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
            + list(range(ord("®"), ord("ÿ") + 1)))
    kept = set(keep)
    rest = [b for b in range(256) if b not in kept]
    return [(b, chr(b)) for b in keep] + [(b, chr(256 + n)) for n, b in enumerate(rest)]


def _read_bpe_merges(path: Path) -> list[tuple[str, str]]:
    """Read the merge list (gzip or plain text), skipping the '#version' header line."""
    if not path.is_file():
        raise FileNotFoundError(f"CLIP BPE vocabulary not found: {path}")
    raw = path.read_bytes()
    try:
        text = gzip.decompress(raw).decode("utf-8") if raw[:2] == b"\x1f\x8b" else raw.decode("utf-8")
    except (OSError, UnicodeDecodeError, EOFError) as e:
        raise ValueError(f"cannot read CLIP BPE vocabulary {path}: {e}") from e
    lines = text.split("\n")
    merges: list[tuple[str, str]] = []
    for line in lines[1:_CLIP_NUM_MERGES + 1]:
        parts = line.split()
        if len(parts) != 2:
            raise ValueError(f"{path} is not a CLIP BPE merges file (bad line {line!r})")
        merges.append((parts[0], parts[1]))
    if len(merges) != _CLIP_NUM_MERGES:
        raise ValueError(f"{path} holds {len(merges)} merges; CLIP's vocabulary needs "
                         f"{_CLIP_NUM_MERGES} (is it bpe_simple_vocab_16e6.txt.gz?)")
    return merges


class ClipBpeTokenizer(_HFBackedTokenizer):
    """OpenAI CLIP's tokenizer (49,408 ids, SOT 49406, EOT 49407, pad 0), with a mask token.

    CLIP has no mask token. `mask_mode` chooses how to add one:

    * ``"irra"`` (default): as IRRA does, ``<|mask|>`` takes id 49405, the slot of the last BPE
      merge ("jekyll</w>"), so the vocabulary stays 49,408 and CLIP's pretrained embedding matrix
      fits unchanged. That one merge is dropped, so the word "jekyll" is split into sub-words
      (OpenAI CLIP gives 49405 for it; IRRA would crash on it).
    * ``"append"``: ``<|mask|>`` gets the new id 49408 and `vocab_size` is 49,409 (the text
      embedding must then be resized by one row).

    Differences from OpenAI's Python tokenizer: no `ftfy.fix_text`/`html.unescape` (we need exact
    offsets into the original caption; NFC normalisation is applied instead), and caption text that
    spells a special token is tokenized as plain text. Pad id 0 is also the id of "!" (as in OpenAI
    CLIP): use `attention_mask`, not `ids == pad_id`, to find padding.
    """

    kind = "clip_bpe"

    def __init__(self, bpe_path: str | Path | None = None,
                 mask_mode: Literal["irra", "append"] = "irra") -> None:
        if mask_mode not in ("irra", "append"):
            raise ValueError(f"mask_mode must be 'irra' or 'append', got {mask_mode!r}")
        path = Path(bpe_path).expanduser() if bpe_path is not None else default_clip_bpe_path()
        merges = _read_bpe_merges(path)
        alphabet = [c for _, c in _byte_alphabet()]
        vocab_list = alphabet + [c + "</w>" for c in alphabet] + ["".join(m) for m in merges]
        if mask_mode == "irra":
            vocab_list.pop()  # the mask takes the last merge's id, as in IRRA
            merges = merges[:-1]
            vocab_list += [CLIP_MASK, CLIP_SOT, CLIP_EOT]
        else:
            vocab_list += [CLIP_SOT, CLIP_EOT, CLIP_MASK]
        vocab = {tok: i for i, tok in enumerate(vocab_list)}
        if len(vocab) != len(vocab_list):
            raise ValueError(f"{path}: duplicate entries in the BPE vocabulary")
        tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, continuing_subword_prefix="",
                                   end_of_word_suffix="</w>", fuse_unk=False))
        tok.normalizer = normalizers.Sequence([normalizers.NFC(), normalizers.Lowercase()])
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(_CLIP_SPLIT), behavior="removed", invert=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ])
        tok.decoder = decoders.ByteLevel()
        tok.add_special_tokens([CLIP_SOT, CLIP_EOT, CLIP_MASK])
        specials = {name: vocab[name] for name in (CLIP_SOT, CLIP_EOT, CLIP_MASK)}
        # Pad is id 0 ("!") as in OpenAI CLIP; it is a real token, so it is not in special_ids.
        super().__init__(tok, specials, pad_id=0, mask=CLIP_MASK, bos=CLIP_SOT, eos=CLIP_EOT,
                         options={"mask_mode": mask_mode, "source": path.name})
        self._after_load(str(path))

    def _after_load(self, source: str) -> None:
        """Build the byte decoder and refuse a vocabulary that does not reproduce OpenAI's ids."""
        self._byte_decoder = {c: b for b, c in _byte_alphabet()}
        expected = _CLIP_VOCAB_SIZE + (1 if self._options.get("mask_mode") == "append" else 0)
        if self.vocab_size != expected:
            raise ValueError(f"{source}: CLIP tokenizer has {self.vocab_size} ids, expected {expected}")
        if (self.bos_id, self.eos_id) != (49406, 49407):
            raise ValueError(f"{source}: CLIP SOT/EOT ids are {self.bos_id}/{self.eos_id}, "
                             "expected 49406/49407")
        text, want = _CLIP_SELF_CHECK
        got = self._tok.encode(text, add_special_tokens=False).ids
        if got != want:
            raise ValueError(f"{source}: CLIP tokenizer self-check failed: {text!r} -> {got}, "
                             f"expected {want}")

    def decode(self, ids: Sequence[int], skip_special: bool = True) -> str:
        """Text of `ids`, lower-cased as CLIP saw it; with `skip_special`, stops at the first EOT."""
        words: list[str] = []
        pending: list[str] = []

        def flush() -> None:
            if pending:
                data = bytes(self._byte_decoder[c] for c in "".join(pending))
                words.append(data.decode("utf-8", errors="replace").replace("</w>", " ").strip())
                pending.clear()

        for i in self._content_ids(ids, skip_special):
            token = self._tok.id_to_token(i)
            if token is None:
                raise ValueError(f"id {i} is outside the vocabulary (size {self.vocab_size})")
            if i in self.special_ids:
                flush()
                words.append(token)
            else:
                pending.append(token)
        flush()
        return " ".join(w for w in words if w)

    def token_surface(self, idx: int) -> str:
        """The characters one id stands for (no '</w>'), e.g. to compare with caption offsets."""
        token = self._tok.id_to_token(int(idx)) or ""
        if int(idx) in self.special_ids:
            return token
        token = token.removesuffix("</w>")
        return bytes(self._byte_decoder[c] for c in token).decode("utf-8", errors="replace")


# ====================================================================== WordPiece
class WordPieceTokenizer(_HFBackedTokenizer):
    """BERT-style WordPiece: `[CLS] text [SEP] [PAD]...`, with [PAD]=0 for trained vocabularies."""

    def decode(self, ids: Sequence[int], skip_special: bool = True) -> str:
        """Text of `ids`; with `skip_special`, drops [CLS]/[PAD] and stops at the first [SEP]."""
        content = self._content_ids(ids, skip_special)
        for i in content:
            if not 0 <= i < self.vocab_size:
                raise ValueError(f"id {i} is outside the vocabulary (size {self.vocab_size})")
        return self._tok.decode(content, skip_special_tokens=False)

    def token_surface(self, idx: int) -> str:
        """The characters one id stands for (no '##' prefix)."""
        token = self._tok.id_to_token(int(idx)) or ""
        return token if int(idx) in self.special_ids else token.removeprefix("##")


_WP_SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


class TrainedTokenizer(WordPieceTokenizer):
    """A small WordPiece vocabulary learnt from the training captions (for from-scratch models)."""

    kind = "trained_wordpiece"

    @classmethod
    def train(cls, captions: Iterable[str], vocab_size: int = 4000, kind: str = "wordpiece",
              extra_special: Sequence[str] = (), min_frequency: int = 2) -> TrainedTokenizer:
        """Learn a vocabulary; the same captions (in any order) always give the same vocabulary.

        Special tokens come first: [PAD]=0, [UNK]=1, [CLS]=2, [SEP]=3, [MASK]=4, then
        `extra_special` in order (e.g. ["[ENC]", "[DEC]"] for BLIP-style heads). Pairs seen
        fewer than `min_frequency` times are not merged, so the vocabulary may end up smaller than
        `vocab_size` on a small corpus (it is never smaller than the character alphabet).
        """
        if kind != "wordpiece":
            raise ValueError(f"only kind='wordpiece' is supported, got {kind!r}")
        extra = [s for s in extra_special if s not in _WP_SPECIALS]
        if len(set(extra)) != len(extra):
            raise ValueError(f"duplicate extra special tokens: {list(extra_special)}")
        specials = _WP_SPECIALS + extra
        if vocab_size <= len(specials):
            raise ValueError(f"vocab_size {vocab_size} leaves no room beyond {len(specials)} specials")
        normalizer = _trained_normalizer()
        pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        # Count whitespace-separated chunks first (fast, in C), then normalise and split only the
        # distinct chunks with the same Rust components that `encode` uses.
        chunks: Counter[str] = Counter()
        n_texts = 0
        for caption in captions:
            if not isinstance(caption, str):
                raise TypeError(f"captions must be str, got {type(caption).__name__}")
            chunks.update(caption.split())
            n_texts += 1
        word_counts: Counter[str] = Counter()
        for chunk, n in chunks.items():
            for word, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(chunk)):
                word_counts[word] += n
        if not word_counts:
            raise ValueError("cannot train a tokenizer on no (or only empty) captions")
        vocab_list = _learn_wordpiece_vocab(word_counts, vocab_size, specials, min_frequency)
        vocab = {t: i for i, t in enumerate(vocab_list)}
        tok = Tokenizer(models.WordPiece(vocab=vocab, unk_token="[UNK]",
                                         continuing_subword_prefix="##",
                                         max_input_chars_per_word=_MAX_WORD_CHARS))
        tok.normalizer = normalizer
        tok.pre_tokenizer = pre_tokenizer
        tok.decoder = decoders.WordPiece(prefix="##")
        tok.add_special_tokens(specials)
        ids = {s: tok.token_to_id(s) for s in specials}
        if [ids[s] for s in specials] != list(range(len(specials))):
            raise RuntimeError(f"unexpected special token ids after training: {ids}")
        return cls(tok, ids, pad_id=ids["[PAD]"], mask="[MASK]", bos="[CLS]", eos="[SEP]",
                   options={"trained_on": n_texts, "requested_vocab_size": vocab_size,
                            "min_frequency": min_frequency})



def _trained_normalizer() -> normalizers.Normalizer:
    """NFKC (full-width letters, ligatures) then BERT's clean-up, accent stripping and lowercasing."""
    return normalizers.Sequence([
        normalizers.NFKC(),
        normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True,
                                   strip_accents=True, lowercase=True),
    ])


def _learn_wordpiece_vocab(word_counts: dict[str, int], vocab_size: int, specials: list[str],
                           min_frequency: int) -> list[str]:
    """Learn a WordPiece vocabulary by BPE-style merges, with fully deterministic tie-breaking.

    Written in Python because the Rust WordPiece trainer numbers tokens in hash-map order, so two
    runs on the same captions give different vocabularies. Ties between equally frequent pairs go
    to the lexicographically smallest pair; the result depends only on the word counts.
    Vocabulary order: specials, word-initial characters, '##' characters, then merges in order.
    The full character alphabet is always kept, even if that exceeds `vocab_size`.
    """
    words: list[list[str]] = []
    counts: list[int] = []
    initial: set[str] = set()
    inner: set[str] = set()
    for word in sorted(word_counts):
        if len(word) > _MAX_WORD_CHARS:
            continue  # encoded as [UNK] anyway
        symbols = [word[0]] + ["##" + c for c in word[1:]]
        initial.add(symbols[0])
        inner.update(symbols[1:])
        words.append(symbols)
        counts.append(word_counts[word])
    vocab: list[str] = list(specials)
    known = set(vocab)
    for token in sorted(initial) + sorted(inner):
        if token not in known:
            vocab.append(token)
            known.add(token)

    pair_counts: dict[tuple[str, str], int] = defaultdict(int)
    where: dict[tuple[str, str], set[int]] = defaultdict(set)
    for wi, symbols in enumerate(words):
        for pair in zip(symbols, symbols[1:]):
            pair_counts[pair] += counts[wi]
            where[pair].add(wi)
    heap = [(-c, a, b) for (a, b), c in pair_counts.items()]
    heapq.heapify(heap)
    while len(vocab) < vocab_size and heap:
        neg, a, b = heapq.heappop(heap)
        current = pair_counts.get((a, b), 0)
        if current != -neg:
            continue  # stale entry; the up-to-date one is also in the heap
        if current < max(min_frequency, 1):
            break
        merged = a + b[2:]  # b is never word-initial, so it always starts with '##'
        if merged not in known:
            vocab.append(merged)
            known.add(merged)
        touched: set[tuple[str, str]] = set()
        for wi in sorted(where.pop((a, b), ())):
            old = words[wi]
            c = counts[wi]
            new: list[str] = []
            i = 0
            while i < len(old):
                if i + 1 < len(old) and old[i] == a and old[i + 1] == b:
                    new.append(merged)
                    i += 2
                else:
                    new.append(old[i])
                    i += 1
            for pair in zip(old, old[1:]):
                pair_counts[pair] -= c
                touched.add(pair)
                if pair != (a, b):
                    where[pair].discard(wi)
            for pair in zip(new, new[1:]):
                pair_counts[pair] += c
                touched.add(pair)
                where[pair].add(wi)
            words[wi] = new
        for pair in touched:
            c = pair_counts[pair]
            if c > 0:
                heapq.heappush(heap, (-c, pair[0], pair[1]))
            else:
                pair_counts.pop(pair, None)
                where.pop(pair, None)
    return vocab


class BertWordPieceTokenizer(WordPieceTokenizer):
    """`bert-base-uncased` WordPiece plus BLIP's [DEC] (bos of the decoder) and [ENC] tokens."""

    kind = "bert_wordpiece"

    @classmethod
    def from_vocab(cls, vocab_txt_path: str | Path, lowercase: bool = True) -> BertWordPieceTokenizer:
        """Build from a BERT vocab.txt; [DEC] and [ENC] get the next two ids, in BLIP's order."""
        path = Path(vocab_txt_path).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"BERT vocab.txt not found: {path}")
        # As in BERT's own loader: one token per "\n"-separated line, id = line number.
        lines = path.read_text(encoding="utf-8").split("\n")
        if lines and lines[-1] == "":
            lines.pop()
        vocab: dict[str, int] = {}
        for idx, token in enumerate(lines):
            if not token or token in vocab:
                raise ValueError(f"{path}: line {idx + 1} is empty or repeats a token ({token!r}); "
                                 "ids would not match the pretrained embedding")
            vocab[token] = idx
        missing = [s for s in _WP_SPECIALS if s not in vocab]
        if missing:
            raise ValueError(f"{path} lacks the special tokens {missing}")
        tok = Tokenizer(models.WordPiece(vocab=vocab, unk_token="[UNK]",
                                         continuing_subword_prefix="##",
                                         max_input_chars_per_word=_MAX_WORD_CHARS))
        tok.normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True,
                                                    strip_accents=None, lowercase=lowercase)
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tok.decoder = decoders.WordPiece(prefix="##")
        # BLIP: add_special_tokens({'bos_token': '[DEC]'}) then additional ['[ENC]'].
        tok.add_special_tokens(_WP_SPECIALS)
        for extra in ("[DEC]", "[ENC]"):
            tok.add_special_tokens([extra])
        ids = {s: tok.token_to_id(s) for s in _WP_SPECIALS + ["[DEC]", "[ENC]"]}
        return cls(tok, ids, pad_id=ids["[PAD]"], mask="[MASK]", bos="[CLS]", eos="[SEP]",
                   options={"source": path.name, "lowercase": lowercase})


# ====================================================================== loading
_KINDS: dict[str, type[_HFBackedTokenizer]] = {
    ClipBpeTokenizer.kind: ClipBpeTokenizer,
    TrainedTokenizer.kind: TrainedTokenizer,
    BertWordPieceTokenizer.kind: BertWordPieceTokenizer,
}


def load_tokenizer(folder: str | Path) -> TextTokenizer:
    """Rebuild a tokenizer written by `save(folder)`; checks that its ids are what was saved.

    Also reads the tokenizer files of a pretrained checkpoint: a folder (or file) with BERT's
    `vocab.txt` gives `BertWordPieceTokenizer` (+ [DEC]/[ENC]), one with CLIP's `merges.txt` or
    `bpe_simple_vocab_16e6.txt.gz` gives `ClipBpeTokenizer`.
    """
    folder = Path(folder).expanduser()
    if not (folder / META_FILE).is_file():
        external = tokenizer_from_files(folder)
        if external is not None:
            return external
    meta_path, tok_path = folder / META_FILE, folder / TOKENIZER_FILE
    for p in (meta_path, tok_path):
        if not p.is_file():
            raise FileNotFoundError(f"tokenizer file not found: {p} (a tokenizer folder holds {META_FILE} + "
                                    f"{TOKENIZER_FILE} saved by tbps, BERT's {BERT_VOCAB_FILE} or CLIP's "
                                    f"{' / '.join(CLIP_BPE_FILES)})")
    meta = json.loads(meta_path.read_text())
    if meta.get("format") != _META_FORMAT:
        raise ValueError(f"{meta_path}: unsupported format {meta.get('format')!r}")
    kind = meta.get("kind")
    if kind not in _KINDS:
        raise ValueError(f"{meta_path}: unknown tokenizer kind {kind!r}; known: {sorted(_KINDS)}")
    tok = Tokenizer.from_file(str(tok_path))
    obj = _KINDS[kind]._from_saved(tok, meta)
    for role in ("vocab_size", "pad_id", "mask_id", "bos_id", "eos_id"):
        if getattr(obj, role) != meta[role]:
            raise ValueError(f"{folder}: saved {role}={meta[role]} but the loaded tokenizer has "
                             f"{getattr(obj, role)}")
    return obj  # type: ignore[return-value]


# ====================================================================== pretrained checkpoints' files
BERT_VOCAB_FILE = "vocab.txt"
CLIP_BPE_FILES = ("bpe_simple_vocab_16e6.txt.gz", "merges.txt")


def tokenizer_from_files(path: str | Path) -> TextTokenizer | None:
    """The tokenizer of a pretrained checkpoint's files, or None if `path` holds none.

    `path` is a folder (a Hugging Face model folder, a `bert-base-uncased` folder, ...) or one file:
    `vocab.txt` -> `BertWordPieceTokenizer.from_vocab` (lower-casing as `tokenizer_config.json`
    says, default on); `merges.txt` / `bpe_simple_vocab_16e6.txt.gz` -> `ClipBpeTokenizer`, checked
    against a `vocab.json` beside it when there is one.
    """
    p = Path(path).expanduser()
    if p.is_file():
        folder, names = p.parent, [p.name]
    elif p.is_dir():
        folder, names = p, [BERT_VOCAB_FILE, *CLIP_BPE_FILES]
    else:
        return None
    for name in names:
        f = folder / name
        if not f.is_file():
            continue
        if name == BERT_VOCAB_FILE:
            return BertWordPieceTokenizer.from_vocab(f, lowercase=_hf_lowercase(folder))
        if name in CLIP_BPE_FILES or name.endswith((".txt.gz", "merges.txt")):
            tok = ClipBpeTokenizer(f)
            _check_clip_vocab_json(tok, folder / "vocab.json")
            return tok
    if p.is_file():
        raise ValueError(f"{p}: not a tokenizer file (expected {BERT_VOCAB_FILE} or {' / '.join(CLIP_BPE_FILES)})")
    return None


def _hf_lowercase(folder: Path) -> bool:
    cfg = folder / "tokenizer_config.json"
    if cfg.is_file():
        try:
            return bool(json.loads(cfg.read_text()).get("do_lower_case", True))
        except (ValueError, OSError):
            pass
    return True


def _check_clip_vocab_json(tok: ClipBpeTokenizer, vocab_json: Path) -> None:
    """A Hugging Face CLIP folder's vocab.json must give every token our id (the mask slot aside)."""
    if not vocab_json.is_file():
        return
    theirs = json.loads(vocab_json.read_text(encoding="utf-8"))
    ours = tok._tok.get_vocab(with_added_tokens=True)
    skip = {tok.mask_id}
    wrong = [t for t, i in theirs.items() if i not in skip and ours.get(t) != i]
    if wrong:
        raise ValueError(f"{vocab_json}: {len(wrong)} tokens have other ids than the BPE merges give "
                         f"(e.g. {wrong[:3]}); the vocab.json and merges.txt do not belong together")


def find_clip_bpe(user_path: str | Path | None = None, checkpoint_folder: str | Path | None = None) -> Path:
    """The CLIP BPE vocabulary to use: `user_path` (a file, or a folder holding one), else the
    checkpoint folder's, else the copy shipped in tbps, else one in an installed `clip` /
    `open_clip` package. Raises FileNotFoundError naming every place looked at."""
    tried: list[str] = []

    def in_folder(folder: Path) -> Path | None:
        for name in CLIP_BPE_FILES:
            if (folder / name).is_file():
                return folder / name
        tried.append(f"{folder}/{{{','.join(CLIP_BPE_FILES)}}}")
        return None

    if user_path:
        p = Path(user_path).expanduser()
        if p.is_file():
            return p
        found = in_folder(p) if p.is_dir() else None
        if found is None:
            raise FileNotFoundError(f"data.tokenizer_path: CLIP BPE vocabulary not found at {p} "
                                    f"(expected a file or a folder with {' or '.join(CLIP_BPE_FILES)})")
        return found
    if checkpoint_folder and Path(checkpoint_folder).is_dir():
        found = in_folder(Path(checkpoint_folder))
        if found is not None:
            return found
    packaged = default_clip_bpe_path()
    if packaged.is_file():
        return packaged
    tried.append(str(packaged))
    import importlib.util

    for pkg in ("clip", "open_clip"):
        spec = importlib.util.find_spec(pkg)
        if spec is not None and spec.origin:
            cand = Path(spec.origin).parent / CLIP_BPE_FILES[0]
            if cand.is_file():
                return cand
            tried.append(str(cand))
    raise FileNotFoundError("CLIP BPE vocabulary (bpe_simple_vocab_16e6.txt.gz) not found; looked at "
                            + ", ".join(tried) + ". Set data.tokenizer_path to the file.")
