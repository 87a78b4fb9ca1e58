"""MNIST from the original IDX files, and the pixel orders of (permuted) sequential MNIST.

Split (docs/replication.md §2.4): train = first 50,000 of the MNIST training set, valid = its last 10,000,
test = the 10,000 test images. Pixel orders (§6 item 12): a true permutation (torch.randperm with a
fixed seed; this project's default), the original code's `np.random.randint(0, 784, 784)` sampled
with replacement (about 37% of the pixels never shown, others repeated), or identity (sequential MNIST).
"""
from __future__ import annotations

import gzip
import struct
from pathlib import Path
from typing import Iterator, Optional

import numpy as np
import torch

from zoneout.data.download import prepare

IMAGES_MAGIC, LABELS_MAGIC = 2051, 2049
NUM_PIXELS = 28 * 28
TRAIN_SIZE = 50_000
FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
PERMUTATION_KINDS = ("permutation", "with_replacement", "identity")


def read_idx(path) -> torch.Tensor:
    """An unsigned-byte IDX file (gzipped or not): (N, rows, cols) uint8 images or (N,) uint8 labels."""
    path = Path(path)
    with open(path, "rb") as handle:
        is_gzip = handle.read(2) == b"\x1f\x8b"
    opener = gzip.open if is_gzip else open
    with opener(path, "rb") as handle:
        payload = handle.read()
    if len(payload) < 8:
        raise ValueError(f"{path.name}: {len(payload)} bytes, too short for an IDX header")
    (magic,) = struct.unpack(">i", payload[:4])
    if magic not in (IMAGES_MAGIC, LABELS_MAGIC):
        raise ValueError(
            f"{path.name}: bad IDX magic {magic} (expected {IMAGES_MAGIC} images or {LABELS_MAGIC} labels)")
    ndim = magic & 0xFF  # 3 for images, 1 for labels; byte 3 (0x08) says unsigned bytes
    header_len = 4 + 4 * ndim
    shape = struct.unpack(f">{ndim}i", payload[4:header_len])
    expected = int(np.prod(shape))
    if len(payload) - header_len != expected:
        raise ValueError(f"{path.name}: {len(payload) - header_len} data bytes, header says {shape} = {expected}")
    array = np.frombuffer(payload, dtype=np.uint8, offset=header_len).reshape(shape)
    return torch.from_numpy(array.copy())


def _read_pair(folder: Path, images_name: str, labels_name: str) -> tuple[torch.Tensor, torch.Tensor]:
    images, labels = read_idx(folder / images_name), read_idx(folder / labels_name)
    if images.dim() != 3 or labels.dim() != 1 or len(images) != len(labels):
        raise ValueError(
            f"{images_name}/{labels_name}: shapes {tuple(images.shape)} and {tuple(labels.shape)} do not pair")
    return images.reshape(len(images), -1), labels.long()


def load_mnist(folder) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """{'train', 'valid', 'test'} -> (images uint8 (N, 784), labels long (N,))."""
    folder = Path(folder)
    train_images, train_labels = _read_pair(folder, *FILES["train"])
    return {
        "train": (train_images[:TRAIN_SIZE], train_labels[:TRAIN_SIZE]),
        "valid": (train_images[TRAIN_SIZE:], train_labels[TRAIN_SIZE:]),
        "test": _read_pair(folder, *FILES["test"]),
    }


def load_pmnist(data_dir, mirror=None) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    return load_mnist(prepare("mnist", data_dir, mirror))


def pixel_permutation(kind: str = "permutation", seed: int = 1) -> torch.Tensor:
    """The order in which the 784 pixels are fed, as a long tensor of pixel indices."""
    if kind == "permutation":
        return torch.randperm(NUM_PIXELS, generator=torch.Generator().manual_seed(seed))
    if kind == "with_replacement":
        # Same stream as the original `np.random.seed(seed); np.random.randint(0, 784, size=784)`.
        return torch.from_numpy(np.random.RandomState(seed).randint(0, NUM_PIXELS, size=NUM_PIXELS).astype(np.int64))
    if kind == "identity":
        return torch.arange(NUM_PIXELS)
    raise ValueError(f"permutation kind must be one of {list(PERMUTATION_KINDS)}, got {kind!r}")


class MnistBatches:
    """(x float (B, 784) in [0, 1], pixels in `permutation` order; y long (B,)), last batch may be smaller."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, batch_size: int, permutation: torch.Tensor,
                 generator: Optional[torch.Generator] = None):
        if images.dim() != 2 or len(images) != len(labels):
            raise ValueError(
                f"images must be (N, pixels) with N labels, got {tuple(images.shape)} and {tuple(labels.shape)}")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
        self.images, self.labels, self.batch_size = images, labels, batch_size
        self.permutation = permutation.to(images.device)
        # Drawn at construction so one object is one epoch, like the text iterables.
        self.order = torch.randperm(len(images), generator=generator) if generator is not None else None

    def __len__(self) -> int:
        return -(-len(self.images) // self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for start in range(0, len(self.images), self.batch_size):
            if self.order is None:
                index = slice(start, start + self.batch_size)
            else:
                index = self.order[start:start + self.batch_size].to(self.images.device)
            images = self.images[index][:, self.permutation]
            yield images.float().div_(255.0), self.labels[index]


def mnist_batches(images: torch.Tensor, labels: torch.Tensor, batch_size: int, permutation: torch.Tensor,
                  generator: Optional[torch.Generator] = None) -> MnistBatches:
    """One epoch of batches; shuffled when a generator is given, in order otherwise."""
    return MnistBatches(images, labels, batch_size, permutation, generator)
