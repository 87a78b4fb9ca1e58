"""Text corpora as streams of token ids: character-level PTB, word-level PTB, text8.

Tokenization (docs/replication.md §2.1-2.3, §6 item 6):
- ptb_char: the space-separated characters of each line (`_`, the word separator, is a symbol of its
  own) plus one end-of-line symbol "\\n" per line: 50 symbols.
- ptb_word: whitespace-separated words plus one `<eos>` per line: 10,000 words.
- text8: one line of a-z and space, the fixed 27-symbol alphabet; split 90% / 5% / 5% in order
  (exactly 90M / 5M / 5M characters for the real 100M-character file).
Vocabularies are sorted (deterministic) and built from the training split only; a symbol of
valid/test outside it is an error. `load_corpus` caches the encoded splits as a .pt file next to the
data, keyed on the checksums of the source files.
"""
from __future__ import annotations

import hashlib
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from zoneout.atomic import atomic_write_bytes
from zoneout.data.download import prepare, verified_digests

END_OF_LINE = "\n"
END_OF_SENTENCE = "<eos>"
TEXT8_ALPHABET = " abcdefghijklmnopqrstuvwxyz"
SPLITS = ("train", "valid", "test")
CACHE_FORMAT = 2  # bump when the tokenization changes, so stale caches are ignored


@dataclass
class Corpus:
    train: torch.Tensor  # 1-D long token ids
    valid: torch.Tensor
    test: torch.Tensor
    vocab: list[str]

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def split(self, name: str) -> torch.Tensor:
        if name not in SPLITS:
            raise ValueError(f"split must be one of {list(SPLITS)}, got {name!r}")
        return getattr(self, name)


def _lines(path: Path) -> list[str]:
    """The lines of a file; PTB files end with a lone space after the last newline, which is not a line."""
    lines = path.read_text(encoding="utf-8").split("\n")
    if not lines[-1].strip():
        lines.pop()
    return lines


def _char_codes(path: Path) -> np.ndarray:
    """Code points of a ptb_char file's symbols, with a newline code after every line."""
    pieces = []
    for number, line in enumerate(_lines(path), start=1):
        symbols = line.split()
        joined = "".join(symbols)
        if len(joined) != len(symbols):
            raise ValueError(f"{path.name} line {number}: a token is longer than one character")
        pieces.append(joined + END_OF_LINE)
    return np.frombuffer("".join(pieces).encode("utf-32-le"), dtype=np.uint32)


def _encode_codes(codes: np.ndarray, vocab_codes: np.ndarray, where: str) -> torch.Tensor:
    """Map code points to their index in the sorted `vocab_codes`; unknown codes are an error."""
    ids = np.searchsorted(vocab_codes, codes).clip(max=len(vocab_codes) - 1)
    unknown = vocab_codes[ids] != codes
    if unknown.any():
        symbol = chr(int(codes[np.flatnonzero(unknown)[0]]))
        raise ValueError(f"{where}: symbol {symbol!r} is not in the training vocabulary")
    return torch.from_numpy(ids.astype(np.int64))


def load_ptb_char(folder) -> Corpus:
    """Character-level PTB from a folder holding ptb.char.{train,valid,test}.txt."""
    folder = Path(folder)
    codes = {split: _char_codes(folder / f"ptb.char.{split}.txt") for split in SPLITS}
    vocab_codes = np.unique(codes["train"])
    encoded = {split: _encode_codes(codes[split], vocab_codes, f"ptb.char.{split}.txt") for split in SPLITS}
    return Corpus(**encoded, vocab=[chr(int(code)) for code in vocab_codes])


def _words(path: Path) -> list[str]:
    words = []
    for line in _lines(path):
        words.extend(line.split())
        words.append(END_OF_SENTENCE)
    return words


def load_ptb_word(folder) -> Corpus:
    """Word-level PTB from a folder holding ptb.{train,valid,test}.txt."""
    folder = Path(folder)
    words = {split: _words(folder / f"ptb.{split}.txt") for split in SPLITS}
    vocab = sorted(set(words["train"]))
    index = {word: position for position, word in enumerate(vocab)}
    encoded = {}
    for split in SPLITS:
        try:
            encoded[split] = torch.tensor([index[word] for word in words[split]], dtype=torch.long)
        except KeyError as error:
            raise ValueError(f"ptb.{split}.txt: word {error.args[0]!r} is not in the training vocabulary") from None
    return Corpus(**encoded, vocab=vocab)


def text8_split_sizes(total: int) -> tuple[int, int, int]:
    """90% / 5% / 5%: exactly 90M / 5M / 5M for the real 100M-character text8."""
    train, valid = total * 90 // 100, total * 5 // 100
    return train, valid, total - train - valid


def load_text8(path) -> Corpus:
    """text8 (one line of a-z and space) split 90/5/5 in order; fixed 27-symbol alphabet."""
    path = Path(path)
    raw = np.fromfile(path, dtype=np.uint8)
    table = np.full(256, 255, dtype=np.uint8)  # byte -> symbol id; 255 = not allowed
    table[np.frombuffer(TEXT8_ALPHABET.encode("ascii"), dtype=np.uint8)] = np.arange(len(TEXT8_ALPHABET))
    ids = table[raw]
    bad = np.flatnonzero(ids == 255)
    if bad.size:
        raise ValueError(f"{path.name}: byte {int(raw[bad[0]])!r} at offset {int(bad[0])} is not a-z or space")
    if raw.size < 3:
        raise ValueError(f"{path.name}: {raw.size} characters, too short to split into train/valid/test")
    train, valid, _ = text8_split_sizes(raw.size)
    pieces = np.split(ids, [train, train + valid])
    return Corpus(*(torch.from_numpy(piece.astype(np.int64)) for piece in pieces), vocab=list(TEXT8_ALPHABET))


def _load_prepared(name: str, folder: Path) -> Corpus:
    if name == "ptb_char":
        return load_ptb_char(folder)
    if name == "ptb_word":
        return load_ptb_word(folder)
    return load_text8(folder / "text8")


TEXT_DATASETS = ("ptb_char", "ptb_word", "text8")


def _compact(ids: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """Smallest integer dtype holding the ids: the text8 cache is 100 MB instead of 800 MB."""
    dtype = torch.uint8 if vocab_size <= 256 else torch.int16 if vocab_size <= 32767 else torch.int32
    return ids.to(dtype)


def _content_digest(state: dict) -> str:
    """SHA-256 of a cache's token ids and vocabulary: a cache overwritten after it was written is caught."""
    digest = hashlib.sha256()
    for split in SPLITS:
        digest.update(state[split].numpy().tobytes())
    digest.update("\0".join(state["vocab"]).encode())
    return digest.hexdigest()


def load_corpus(name: str, data_dir, mirror=None) -> Corpus:
    """prepare() the dataset, then load it, from a .pt cache when the sources are unchanged."""
    if name not in TEXT_DATASETS:
        raise ValueError(f"text dataset must be one of {list(TEXT_DATASETS)}, got {name!r}")
    folder = prepare(name, data_dir, mirror)
    digests = verified_digests(name, data_dir)
    key_text = f"{name} format={CACHE_FORMAT} " + " ".join(f"{k}={v}" for k, v in sorted(digests.items()))
    key = hashlib.sha256(key_text.encode()).hexdigest()[:16]
    cache = folder / f"{name}.corpus-{key}.pt"
    if cache.exists():
        try:
            state = torch.load(cache, weights_only=True)
            if state.get("key") == key and state.get("content") == _content_digest(state):
                return Corpus(*(state[split].long() for split in SPLITS), vocab=list(state["vocab"]))
            print(f"{cache}: its contents do not match the digest it was written with; rebuilt from the verified "
                  "sources", file=sys.stderr)
        except Exception:  # an unreadable cache is rebuilt, never trusted
            pass
    corpus = _load_prepared(name, folder)
    state = {split: _compact(corpus.split(split), corpus.vocab_size) for split in SPLITS}
    state.update(key=key, vocab=corpus.vocab)
    state["content"] = _content_digest(state)
    for stale in folder.glob(f"{name}.corpus-*.pt"):  # caches of older sources or formats
        if stale != cache:
            stale.unlink(missing_ok=True)
    # Temp file + rename: concurrent runs (e.g. a sweep's first epoch) never read a half-written cache.
    atomic_write_bytes(cache, lambda handle: torch.save(state, handle))
    return corpus


__all__ = [
    "Corpus", "load_ptb_char", "load_ptb_word", "load_text8", "load_corpus", "text8_split_sizes",
    "TEXT_DATASETS", "TEXT8_ALPHABET", "END_OF_LINE", "END_OF_SENTENCE",
]
