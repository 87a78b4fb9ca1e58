"""The fused kernels' CPU buffer pool (zoneout/nn/fused/buffers.py): a block is handed out again only once
nothing else holds it, and the fused layers that use it give the reference loop's results however their
graphs interleave."""
from __future__ import annotations

import pytest
import torch

import zoneout.nn.fused as fused
from zoneout.nn import reference
from zoneout.nn.csrc import cpu_ext
from zoneout.nn.fused import buffers
from zoneout.nn.fused.gru_rnn_function import gru_layer
from zoneout.nn.noise import RecurrentNoise

needs_cpp = pytest.mark.skipif(cpu_ext.load() is None, reason=f"C++ kernels unavailable: {cpu_ext.error()}")


@pytest.fixture(autouse=True)
def empty_pool(monkeypatch):
    """An empty pool that takes blocks of any size (the tests' tensors are small)."""
    monkeypatch.setattr(buffers, "MIN_POOLED_BYTES", 0)
    buffers.release()
    yield
    buffers.release()


def test_small_tensors_are_not_pooled(monkeypatch):
    monkeypatch.setattr(buffers, "MIN_POOLED_BYTES", 1 << 20)
    small = buffers.take((255, 1024), torch.float32)  # 1 KiB short of the threshold
    assert buffers.held_bytes() == 0 and small.is_contiguous() and small.shape == (255, 1024)
    buffers.take((256, 1024), torch.float32)
    assert buffers.held_bytes() == 1 << 20


def test_take_gives_a_contiguous_tensor_that_is_not_an_autograd_view():
    tensor = buffers.take((3, 4), torch.float32)
    assert tensor.shape == (3, 4) and tensor.dtype == torch.float32 and tensor.is_contiguous()
    assert not tensor._is_view()  # a caller may edit it in place as it could a fresh tensor
    tensor.mul_(2)


def test_a_held_block_is_never_handed_out_again_and_a_dropped_one_is_reused():
    first = buffers.take((10, 10), torch.float32)
    first.fill_(1.0)
    second = buffers.take((10, 10), torch.float32)
    assert second.data_ptr() != first.data_ptr()
    second.fill_(2.0)
    assert torch.all(first == 1.0)
    address = first.data_ptr()
    del first
    assert buffers.take((10, 10), torch.float32).data_ptr() == address
    assert buffers.held_bytes() == 2 * 100 * 4  # two blocks, no third


@pytest.mark.parametrize("keep", ["slice", "detach", "view", "numpy"])
def test_anything_sharing_the_storage_keeps_the_block_held(keep):
    tensor = buffers.take((4, 5), torch.float32)
    address = tensor.data_ptr()
    kept = {"slice": lambda: tensor[1], "detach": tensor.detach, "view": lambda: tensor.view(20),  # noqa: F821 - called before the del
            "numpy": tensor.numpy}[keep]()
    del tensor
    assert buffers.take((4, 5), torch.float32).data_ptr() != address
    del kept
    assert buffers.take((4, 5), torch.float32).data_ptr() == address


def test_a_smaller_shape_reuses_a_larger_free_block_and_dtypes_never_share():
    address = buffers.take((100,), torch.float32).data_ptr()
    assert buffers.take((7, 3), torch.float32).data_ptr() == address
    assert buffers.take((7, 3), torch.float64).data_ptr() != address


def test_a_free_block_too_small_is_replaced_not_kept_beside_the_new_one():
    buffers.take((10,), torch.float32)
    buffers.take((1000,), torch.float32)
    assert buffers.held_bytes() == 1000 * 4


def test_release_leaves_handed_out_tensors_valid():
    tensor = buffers.take((50,), torch.float64)
    tensor.fill_(3.0)
    buffers.release()
    assert buffers.held_bytes() == 0
    assert torch.all(buffers.take((50,), torch.float64).fill_(0.0) == 0.0) and torch.all(tensor == 3.0)


def lstm_args(seed):
    gen = torch.Generator().manual_seed(seed)
    make = lambda *shape: torch.randn(*shape, generator=gen, dtype=torch.float64).requires_grad_()  # noqa: E731
    T, B, I, H = 6, 3, 4, 5
    return [make(T, B, I), make(B, H), make(B, H), make(4 * H, I), make(4 * H, H), make(4 * H), make(4 * H)]


def lstm_noise(seed):
    gen = torch.Generator().manual_seed(seed)
    masks = [torch.rand(6, 3, 5, generator=gen) < p for p in (0.5, 0.05)]
    return RecurrentNoise(keep_cell=masks[0], keep_hidden=masks[1])


def grads(layer, args, noise):
    output, h_last, c_last = layer(*args, noise)
    loss = (output * output).sum() + h_last.sum() + 2 * c_last.sum()
    return [output.detach().clone(), *torch.autograd.grad(loss, [a for a in args])]


@needs_cpp
def test_fused_lstm_graphs_that_interleave_match_the_reference(monkeypatch):
    """Two forwards before either backward, backwards in reverse order, an output kept across steps:
    the second call must not reuse the first's saved tensors, nor a later step the kept output."""
    monkeypatch.setitem(fused.options, "cpu_kernels", "cpp")
    args, noise = [lstm_args(0), lstm_args(1)], [lstm_noise(2), lstm_noise(3)]
    outputs = [fused.lstm_layer(*args[k], noise[k]) for k in (0, 1)]
    kept = outputs[0][0]
    kept_values = kept.detach().clone()
    losses = [(o * o).sum() + h.sum() + 2 * c.sum() for o, h, c in outputs]
    got = [torch.autograd.grad(losses[k], args[k]) for k in (1, 0)][::-1]
    for k in (0, 1):
        want = grads(reference.lstm_layer, args[k], noise[k])
        torch.testing.assert_close(outputs[k][0], want[0], atol=1e-10, rtol=1e-10)
        for g, w in zip(got[k], want[1:]):
            torch.testing.assert_close(g, w, atol=1e-10, rtol=1e-10)
    for step in range(3):  # later steps run while `kept` is alive: its values stay
        grads(fused.lstm_layer, lstm_args(10 + step), lstm_noise(20 + step))
    torch.testing.assert_close(kept.detach(), kept_values, atol=0, rtol=0)


@needs_cpp
def test_fused_lstm_reuses_its_blocks_from_one_training_step_to_the_next(monkeypatch):
    monkeypatch.setitem(fused.options, "cpu_kernels", "cpp")
    grads(fused.lstm_layer, lstm_args(0), lstm_noise(1))
    held = buffers.held_bytes()
    assert held > 0
    for seed in range(3):
        grads(fused.lstm_layer, lstm_args(seed), lstm_noise(seed))
    assert buffers.held_bytes() == held


@needs_cpp
def test_fused_gru_backward_buffers_match_the_reference_across_interleaved_graphs():
    gen = torch.Generator().manual_seed(0)
    T, B, I, H = 5, 2, 3, 4
    make = lambda *shape: torch.randn(*shape, generator=gen, dtype=torch.float64).requires_grad_()  # noqa: E731
    runs = []
    for _ in range(2):
        args = [make(T, B, I), make(B, H), make(3 * H, I), make(3 * H, H), make(3 * H), make(3 * H)]
        noise = RecurrentNoise(keep_hidden=torch.rand(T, B, H, generator=gen) < 0.3)
        runs.append((args, noise, gru_layer(*args, noise)))
    for args, noise, (output, h_last) in reversed(runs):
        got = torch.autograd.grad((output * output).sum() + h_last.sum(), args)
        want_output, want_h = reference.gru_layer(*args, noise)
        want = torch.autograd.grad((want_output * want_output).sum() + want_h.sum(), args)
        for g, w in zip(got, want):
            torch.testing.assert_close(g, w, atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("bias", [True, False])
def test_the_input_projection_goes_into_a_pooled_block_and_equals_addmm(bias, monkeypatch):
    from zoneout.nn.fused.lstm_function import project

    gen = torch.Generator().manual_seed(0)
    x, w = torch.randn(5, 3, 7, generator=gen, dtype=torch.float64), torch.randn(8, 7, generator=gen, dtype=torch.float64)
    b = torch.randn(8, generator=gen, dtype=torch.float64) if bias else None
    want = (x.reshape(15, 7) @ w.t() + (b if bias else 0)).view(5, 3, 8)
    got = project(x, w, b)
    torch.testing.assert_close(got, want, atol=1e-12, rtol=1e-12)
    assert buffers.held_bytes() == 5 * 3 * 8 * 8  # it went into a pooled block
    monkeypatch.setitem(fused.options, "reuse_buffers", False)
    buffers.release()
    torch.testing.assert_close(project(x, w, b), want, atol=1e-12, rtol=1e-12)
    assert buffers.held_bytes() == 0


@pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="no oneDNN in this torch")
def test_a_onednn_layer_projects_wide_inputs_through_onednn_and_narrow_ones_into_the_pool():
    from zoneout.nn.fused import cpu_gemm
    from zoneout.nn.fused.lstm_function import project

    for width in (8, 1024):
        buffers.release()
        x, w = torch.randn(4, 2, width), torch.randn(16, width)
        torch.testing.assert_close(project(x, w, None, onednn=True), (x.reshape(8, width) @ w.t()).view(4, 2, 16),
                                   atol=1e-4, rtol=1e-4)
        assert (buffers.held_bytes() == 0) == cpu_gemm.onednn_projects(width)
