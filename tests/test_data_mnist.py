"""MNIST: IDX parsing, the 50k/10k/10k split, pixel orders (incl. the original's with-replacement quirk), batches."""
from __future__ import annotations

import gzip
import struct

import numpy as np
import pytest
import torch

from zoneout.data.mnist import load_mnist, mnist_batches, pixel_permutation, read_idx

TRAIN_CLASS_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]  # data README


@pytest.fixture(scope="module")
def mnist(prepared_data_dir):
    return load_mnist(prepared_data_dir / "mnist")


def test_split_sizes_shapes_and_class_counts(mnist):
    assert {name: (tuple(x.shape), tuple(y.shape)) for name, (x, y) in mnist.items()} == {
        "train": ((50_000, 784), (50_000,)), "valid": ((10_000, 784), (10_000,)), "test": ((10_000, 784), (10_000,))}
    assert all(x.dtype == torch.uint8 and y.dtype == torch.long for x, y in mnist.values())
    all_train_labels = torch.cat([mnist["train"][1], mnist["valid"][1]])
    assert torch.bincount(all_train_labels, minlength=10).tolist() == TRAIN_CLASS_COUNTS
    assert mnist["train"][1][:3].tolist() == [5, 0, 4] and mnist["test"][1][:3].tolist() == [7, 2, 1]
    assert mnist["train"][0].max().item() == 255 and mnist["train"][0][0, :28].sum().item() == 0  # blank top row


def test_read_idx_header_handling(tmp_path):
    images = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    plain = tmp_path / "images-idx3-ubyte"
    plain.write_bytes(struct.pack(">iiii", 2051, 2, 3, 4) + images.tobytes())
    zipped = tmp_path / "labels-idx1-ubyte.gz"
    zipped.write_bytes(gzip.compress(struct.pack(">ii", 2049, 3) + bytes([7, 0, 9])))
    assert torch.equal(read_idx(plain), torch.from_numpy(images)) and read_idx(zipped).tolist() == [7, 0, 9]
    bad = tmp_path / "bad.gz"
    bad.write_bytes(gzip.compress(struct.pack(">ii", 2050, 1) + b"\x00"))
    with pytest.raises(ValueError, match=r"bad\.gz: bad IDX magic 2050 \(expected 2051 images or 2049 labels\)"):
        read_idx(bad)
    short = tmp_path / "short"
    short.write_bytes(struct.pack(">ii", 2049, 5) + b"\x01\x02")
    with pytest.raises(ValueError, match=r"short: 2 data bytes, header says \(5,\) = 5"):
        read_idx(short)


def test_true_permutation_is_a_fixed_bijection():
    permutation = pixel_permutation("permutation", seed=1)
    assert permutation.dtype == torch.long and sorted(permutation.tolist()) == list(range(784))
    assert torch.equal(permutation, pixel_permutation()) and not torch.equal(permutation, pixel_permutation(seed=2))
    assert torch.equal(pixel_permutation("identity"), torch.arange(784))
    with pytest.raises(ValueError, match=r"permutation kind must be one of \['permutation', 'with_replacement'"):
        pixel_permutation("shuffle")


def test_with_replacement_reproduces_the_original_numpy_array():
    saved = np.random.get_state()
    try:
        np.random.seed(1)
        original = np.random.randint(0, 784, size=784)  # the original code, on the legacy global generator
    finally:
        np.random.set_state(saved)
    quirk = pixel_permutation("with_replacement", seed=1)
    assert quirk.tolist() == original.tolist() and quirk.dtype == torch.long
    missing = 784 - len(set(quirk.tolist()))
    assert 0.33 < missing / 784 < 0.41  # about 1/e of the pixels are never shown


def test_batches_apply_the_permutation_and_scale_to_unit_interval(mnist):
    images, labels = mnist["test"]
    permutation = pixel_permutation("permutation", seed=1)
    batches = mnist_batches(images, labels, 100, permutation)
    x, y = next(iter(batches))
    assert x.dtype == torch.float32 and x.shape == (100, 784) and torch.equal(y, labels[:100])
    assert x.min().item() >= 0.0 and x.max().item() == 1.0
    position = int((permutation == 14 * 28 + 14).nonzero())  # where the centre pixel is shown
    assert x[0, position].item() == images[0, 14 * 28 + 14].item() / 255.0
    assert torch.equal(x, images[:100][:, permutation].float() / 255)
    assert len(batches) == 100


def test_shuffled_batches_are_a_deterministic_permutation_of_the_examples():
    images = torch.arange(10, dtype=torch.uint8).repeat_interleave(784).view(10, 784)
    labels = torch.arange(10)
    quirk = pixel_permutation("with_replacement")

    def epoch(seed):
        return list(mnist_batches(images, labels, 4, quirk, torch.Generator().manual_seed(seed)))

    batches = epoch(0)
    order = torch.cat([y for _, y in batches])
    assert [y.shape[0] for _, y in batches] == [4, 4, 2] and sorted(order.tolist()) == list(range(10))
    assert order.tolist() != list(range(10))
    assert all(torch.equal(x, y.float()[:, None].expand(-1, 784) / 255) for x, y in batches)  # x still matches y
    assert all(torch.equal(a[1], b[1]) for a, b in zip(batches, epoch(0)))
