"""Tokenized corpora (char-PTB, word-PTB, text8), their .pt cache, and the batch iterables."""
from __future__ import annotations

import random

import pytest
import torch

import zoneout.data.text as text
from zoneout.data.batching import count_predictions, eval_chunks, random_offset_chunks, stream_batches
from zoneout.data.download import DATASETS, DatasetSpec, FileSpec
from zoneout.data.text import load_corpus, load_ptb_char, load_ptb_word, load_text8, text8_split_sizes


@pytest.fixture(scope="session")
def char_corpus(prepared_data_dir):
    return load_corpus("ptb_char", prepared_data_dir)


@pytest.fixture(scope="session")
def word_corpus(prepared_data_dir):
    return load_corpus("ptb_word", prepared_data_dir)


def _decode(corpus, ids, separator=""):
    return separator.join(corpus.vocab[i] for i in ids.tolist())


def test_char_ptb_counts_and_vocabulary(char_corpus):
    assert (len(char_corpus.train), len(char_corpus.valid), len(char_corpus.test)) == (5_017_482, 393_042, 442_423)
    assert char_corpus.vocab_size == 50 and char_corpus.vocab == sorted(char_corpus.vocab)
    assert "\n" in char_corpus.vocab and "_" in char_corpus.vocab and " " not in char_corpus.vocab
    assert set(char_corpus.train.unique().tolist()) == set(range(50))  # all 49 symbols + "\n" occur in train
    newline = char_corpus.vocab.index("\n")
    assert [(split == newline).sum().item() for split in (char_corpus.train, char_corpus.valid, char_corpus.test)] == [
        42_068, 3_370, 3_761]
    assert char_corpus.train.dtype == torch.long and char_corpus.test.unique().numel() == 48  # 47 symbols + "\n"


def test_char_lines_spell_the_word_lines(char_corpus, word_corpus, shared_data):
    char_lines = _decode(char_corpus, char_corpus.valid[:20_000]).split("\n")[:50]
    word_lines = (shared_data / "ptb_word/ptb.valid.txt").read_text().split("\n")[:50]
    assert [line.replace("_", " ") for line in char_lines] == [line.strip() for line in word_lines]
    assert char_lines[0].startswith("consumers_may_want_to_move")


def test_word_ptb_counts_and_vocabulary(word_corpus, shared_data):
    assert (len(word_corpus.train), len(word_corpus.valid), len(word_corpus.test)) == (929_589, 73_760, 82_430)
    assert word_corpus.vocab_size == 10_000 and word_corpus.vocab == sorted(word_corpus.vocab)
    eos = word_corpus.vocab.index("<eos>")
    assert (word_corpus.train == eos).sum().item() == 42_068 and "<unk>" in word_corpus.vocab
    first_line = (shared_data / "ptb_word/ptb.train.txt").read_text().split("\n")[0].split()
    assert _decode(word_corpus, word_corpus.train[:len(first_line) + 1], " ").split() == first_line + ["<eos>"]


def test_symbols_outside_the_training_vocabulary_are_rejected(tmp_path):
    (tmp_path / "ptb.char.train.txt").write_text("a b _ c\n")
    (tmp_path / "ptb.char.valid.txt").write_text("a b\n")
    (tmp_path / "ptb.char.test.txt").write_text("a z\n")
    with pytest.raises(ValueError, match=r"ptb\.char\.test\.txt: symbol 'z' is not in the training vocabulary"):
        load_ptb_char(tmp_path)
    (tmp_path / "ptb.train.txt").write_text(" the cat \n the dog \n")
    (tmp_path / "ptb.valid.txt").write_text(" the bird \n")
    (tmp_path / "ptb.test.txt").write_text(" the cat \n")
    with pytest.raises(ValueError, match=r"ptb\.valid\.txt: word 'bird' is not in the training vocabulary"):
        load_ptb_word(tmp_path)
    (tmp_path / "ptb.valid.txt").write_text(" dog \n")
    corpus = load_ptb_word(tmp_path)
    assert corpus.vocab == ["<eos>", "cat", "dog", "the"] and corpus.train.tolist() == [3, 1, 0, 3, 2, 0]


def test_corpus_cache_is_used_and_keyed_on_the_source_checksums(prepared_data_dir, char_corpus, monkeypatch):
    caches = list((prepared_data_dir / "ptb_char").glob("ptb_char.corpus-*.pt"))
    assert len(caches) == 1
    state = torch.load(caches[0], weights_only=True)
    assert state["train"].dtype == torch.uint8 and state["vocab"] == char_corpus.vocab

    def must_not_tokenize(folder):
        raise AssertionError("the cache should have been used")

    monkeypatch.setattr(text, "load_ptb_char", must_not_tokenize)
    cached = load_corpus("ptb_char", prepared_data_dir)
    assert cached.train.dtype == torch.long and torch.equal(cached.valid, char_corpus.valid)

    real_digests = text.verified_digests
    monkeypatch.setattr(text, "verified_digests", lambda name, data_dir: {
        path: "0" * 64 for path in real_digests(name, data_dir)})
    with pytest.raises(AssertionError, match="cache should have been used"):
        load_corpus("ptb_char", prepared_data_dir)  # other checksums: the old cache must not be trusted


def _text8_like(length: int, seed: int = 0) -> bytes:
    rng = random.Random(seed)
    letters = "abcdefghijklmnopqrstuvwxyz"
    return "".join(rng.choice(letters + "  ") for _ in range(length)).encode("ascii")


def test_text8_vocabulary_and_90_5_5_split(tmp_path):
    payload = _text8_like(2_000)
    (tmp_path / "text8").write_bytes(payload)
    corpus = load_text8(tmp_path / "text8")
    assert corpus.vocab_size == 27 and corpus.vocab == list(" abcdefghijklmnopqrstuvwxyz")
    assert (len(corpus.train), len(corpus.valid), len(corpus.test)) == (1_800, 100, 100)
    assert "".join(_decode(corpus, split) for split in (corpus.train, corpus.valid, corpus.test)) == payload.decode()
    assert text8_split_sizes(100_000_000) == (90_000_000, 5_000_000, 5_000_000)
    assert text8_split_sizes(1_001) == (900, 50, 51)
    (tmp_path / "text8").write_bytes(payload[:10] + b"\n")
    with pytest.raises(ValueError, match=r"text8: byte 10 at offset 10 is not a-z or space"):
        load_text8(tmp_path / "text8")


def test_text8_through_load_corpus(tmp_path, monkeypatch):
    payload = _text8_like(1_000, seed=1)
    monkeypatch.setitem(DATASETS, "text8", DatasetSpec("text8", (FileSpec("text8/text8", None, len(payload), ()),)))
    (tmp_path / "text8").mkdir()
    (tmp_path / "text8/text8").write_bytes(payload)
    first, second = load_corpus("text8", tmp_path), load_corpus("text8", tmp_path)
    assert len(first.train) == 900 and torch.equal(first.test, second.test) and second.vocab_size == 27
    with pytest.raises(ValueError, match="text dataset must be one of"):
        load_corpus("mnist", tmp_path)


# ---------------------------------------------------------------- batching


def test_random_offset_chunks_cover_the_stream_without_overlap():
    stream = torch.arange(1_000)
    epoch = random_offset_chunks(stream, seq_len=10, batch_size=8, generator=torch.Generator().manual_seed(3))
    batches = list(epoch)
    chunks = torch.cat(batches)
    offset, num_chunks = epoch.offset, (1_000 - epoch.offset) // 10
    assert 0 <= offset < 10 and chunks.shape == (num_chunks, 10) and len(epoch) == len(batches) == -(-num_chunks // 8)
    assert all(b.shape[0] == 8 for b in batches[:-1]) and 1 <= batches[-1].shape[0] <= 8
    assert torch.equal(chunks - chunks[:, :1], torch.arange(10).expand_as(chunks))  # each chunk is contiguous
    starts = chunks[:, 0]
    assert sorted(starts.tolist()) == list(range(offset, offset + 10 * num_chunks, 10))  # no gap, no overlap
    assert starts.tolist() != sorted(starts.tolist())  # shuffled
    assert count_predictions(epoch) == num_chunks * 9


def test_random_offset_chunks_are_deterministic_and_offsets_vary_across_epochs():
    stream = torch.arange(5_000)

    def run(seed):
        generator = torch.Generator().manual_seed(seed)
        epochs = [random_offset_chunks(stream, 100, 32, generator) for _ in range(12)]
        return [e.offset for e in epochs], [torch.cat(list(e)) for e in epochs]

    offsets, chunks = run(0)
    again_offsets, again_chunks = run(0)
    assert offsets == again_offsets and all(torch.equal(a, b) for a, b in zip(chunks, again_chunks))
    assert len(set(offsets)) > 6 and all(0 <= o < 100 for o in offsets)
    assert run(1)[0] != offsets


def test_eval_chunks_cover_every_token_once_in_order():
    stream = torch.arange(1_005)
    batches = list(eval_chunks(stream, seq_len=10, batch_size=4))
    assert [tuple(b.shape) for b in batches] == [(4, 10)] * 25 + [(1, 5)]
    assert torch.equal(torch.cat([b.flatten() for b in batches]), stream)
    assert len(eval_chunks(stream, 10, 4)) == 26
    one_left = list(eval_chunks(torch.arange(1_001), 10, 4))  # a 1-token remainder predicts nothing
    assert len(one_left) == 25 and one_left[-1].shape == (4, 10)


def test_stream_batches_are_contiguous_columns_continued_across_windows():
    stream = torch.arange(103)
    batches = stream_batches(stream, batch_size=4, bptt=7)
    windows = list(batches)
    assert len(batches) == len(windows) == 4 and [x.shape[1] for x, _ in windows] == [7, 7, 7, 3]
    inputs, targets = torch.cat([x for x, _ in windows], 1), torch.cat([y for _, y in windows], 1)
    columns = torch.arange(100).view(4, 25)  # the last 3 tokens do not fill a column
    assert torch.equal(inputs, columns[:, :24]) and torch.equal(targets, columns[:, 1:])
    for (previous, _), (following, _) in zip(windows, windows[1:]):
        assert torch.equal(following[:, 0], previous[:, -1] + 1)


def test_batching_rejects_bad_arguments():
    with pytest.raises(ValueError, match="seq_len must be an integer >= 2"):
        random_offset_chunks(torch.arange(10), 1, 2, torch.Generator())
    with pytest.raises(ValueError, match="batch_size must be an integer >= 1"):
        eval_chunks(torch.arange(10), 5, 0)
    with pytest.raises(ValueError, match="stream must be a 1-D tensor"):
        stream_batches(torch.zeros(2, 5, dtype=torch.long), 2, 3)


def test_real_char_epoch_has_the_expected_shape(char_corpus):
    epoch = random_offset_chunks(char_corpus.train, 100, 32, torch.Generator().manual_seed(0))
    num_chunks = (5_017_482 - epoch.offset) // 100
    assert epoch.num_chunks == num_chunks and len(epoch) == -(-num_chunks // 32)
    assert next(iter(epoch)).shape == (32, 100)
