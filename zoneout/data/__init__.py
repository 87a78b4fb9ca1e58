"""Data layer: verified dataset files, tokenized corpora, minibatch iterables, MNIST.

No torchtext/torchvision: PTB and text8 are plain text, MNIST is IDX parsed here.
"""
from zoneout.data.batching import (
    EvalChunks,
    RandomOffsetChunks,
    StreamBatches,
    count_predictions,
    eval_chunks,
    random_offset_chunks,
    stream_batches,
)
from zoneout.data.download import DATASETS, MIRROR_ENV, DataError, prepare, sha256_file, verified_digests
from zoneout.data.mnist import (
    PERMUTATION_KINDS,
    MnistBatches,
    load_mnist,
    load_pmnist,
    mnist_batches,
    pixel_permutation,
    read_idx,
)
from zoneout.data.text import (
    TEXT_DATASETS,
    Corpus,
    load_corpus,
    load_ptb_char,
    load_ptb_word,
    load_text8,
    text8_split_sizes,
)

__all__ = [
    "DATASETS", "MIRROR_ENV", "DataError", "prepare", "sha256_file", "verified_digests",
    "Corpus", "TEXT_DATASETS", "load_corpus", "load_ptb_char", "load_ptb_word", "load_text8", "text8_split_sizes",
    "RandomOffsetChunks", "EvalChunks", "StreamBatches", "random_offset_chunks", "eval_chunks", "stream_batches",
    "count_predictions",
    "PERMUTATION_KINDS", "MnistBatches", "read_idx", "load_mnist", "load_pmnist", "pixel_permutation", "mnist_batches",
]
