"""The GPU path of the fused layer (Triton pointwise kernels + torch GEMMs), checked on the CPU with
TRITON_INTERPRET=1 at small sizes against the reference loop; on a CUDA machine also on the GPU."""
from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():  # must be set before the kernels are decorated (imported)
    os.environ.setdefault("TRITON_INTERPRET", "1")
pytest.importorskip("triton", reason="triton is not installed (pip install triton); the GPU kernels are untested")

import zoneout.nn.fused as fused  # noqa: E402
from zoneout.nn import reference  # noqa: E402
from zoneout.nn.fused.cuda_graphs import EagerCapture, GraphRunner  # noqa: E402
from zoneout.nn.fused.function import FusedLSTMFunction, run_inference  # noqa: E402
from zoneout.nn.fused.masks import compact_noise  # noqa: E402
from zoneout.nn.fused.triton_backend import TritonKernels  # noqa: E402
from zoneout.nn.noise import RecurrentNoise  # noqa: E402

T, B, I, H = 5, 3, 4, 6
TOL = dict(atol=1e-10, rtol=1e-10)
DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
if DEVICE.type == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("no GPU and TRITON_INTERPRET is not 1", allow_module_level=True)


def bools(shape, p, seed):
    return (torch.rand(shape, generator=torch.Generator().manual_seed(seed)) < p).to(DEVICE)


def make_args(dtype=torch.float64, seed=0, bias=True):
    gen = torch.Generator().manual_seed(seed)
    make = lambda *s: torch.randn(*s, generator=gen, dtype=dtype).to(DEVICE).requires_grad_()  # noqa: E731
    args = [make(T, B, I), make(B, H), make(B, H), make(4 * H, I), make(4 * H, H)]
    return args + ([make(4 * H), make(4 * H)] if bias else [None, None])


class GraphKernels:
    """TritonKernels behind the CUDA-graph buffer logic, with an eager stand-in for the capture."""

    def __init__(self):
        self.kernels, self.runner = TritonKernels(), GraphRunner(capture=EagerCapture())

    def forward(self, *args):
        return self.runner.forward(self.kernels.forward_eager, *args)

    def backward(self, *args):
        return self.runner.backward(self.kernels.backward_eager, *args)


def triton_layer(kernels):
    def layer(x, h0, c0, w_ih, w_hh, b_ih, b_hh, noise):
        compact = compact_noise(noise, (x.shape[0], x.shape[1], w_hh.shape[1]), x.device)
        return FusedLSTMFunction.apply(x, h0, c0, w_ih, w_hh, b_ih, b_hh, compact, kernels)
    return layer


def outputs_and_grads(layer, args, noise):
    outputs = layer(*args, noise)
    gen = torch.Generator().manual_seed(1)
    loss = sum((o * torch.randn(o.shape, generator=gen, dtype=o.dtype).to(DEVICE)).sum() for o in outputs)
    return list(outputs) + list(torch.autograd.grad(loss, [a for a in args if a is not None]))


def assert_matches_reference(layer, args, noise, **tol):
    for got, want in zip(outputs_and_grads(layer, args, noise), outputs_and_grads(reference.lstm_layer, args, noise)):
        torch.testing.assert_close(got, want, **(tol or TOL))


NOISES = {
    "none": lambda: RecurrentNoise(),
    "all three per-unit": lambda: RecurrentNoise(bools((T, B, H), 0.5, 1), bools((T, B, H), 0.3, 2),
                                                 bools((T, B, H), 0.7, 3)),
    "stochastic depth (T,B,1)": lambda: (lambda m: RecurrentNoise(m, m))(bools((T, B, 1), 0.5, 4)),
    "static (T,1,H)": lambda: RecurrentNoise(bools((T, 1, H), 0.5, 5), bools((T, 1, H), 0.5, 6)),
    "eval expectations": lambda: RecurrentNoise(0.5, 0.05, 0.7),
}


@pytest.mark.parametrize("noise_name", NOISES)
def test_triton_path_matches_reference_float64(noise_name):
    assert_matches_reference(triton_layer(TritonKernels()), make_args(), NOISES[noise_name]())


def test_triton_path_float32_and_no_bias():
    args = [a.detach().float().requires_grad_() if a is not None else None for a in make_args(bias=False)]
    assert_matches_reference(triton_layer(TritonKernels()), args, NOISES["all three per-unit"](),
                             atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("k", [0, T - 1])
def test_only_one_zoned_timestep(k):
    keep = torch.zeros(T, B, H, dtype=torch.bool, device=DEVICE)
    keep[k] = bools((B, H), 0.5, 9)
    assert_matches_reference(triton_layer(TritonKernels()), make_args(), RecurrentNoise(keep, keep.clone()))


def test_triton_inference_without_saving():
    args, noise = make_args(), NOISES["all three per-unit"]()
    compact = compact_noise(noise, (T, B, H), DEVICE)
    with torch.no_grad():
        got = run_inference(TritonKernels(), *args, compact)
        want = reference.lstm_layer(*args, noise)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, **TOL)


def test_bf16_recurrent_gemm_stays_close_to_fp32():
    """bf16 GEMM operands, fp32 gates/cells/accumulation: errors at bf16's resolution, not worse."""
    args = [(a.detach().float() * 0.5).requires_grad_() for a in make_args()]
    noise = NOISES["all three per-unit"]()
    got = outputs_and_grads(triton_layer(TritonKernels(gemm_dtype=torch.bfloat16)), args, noise)
    want = outputs_and_grads(reference.lstm_layer, args, noise)
    for g, w in zip(got, want):
        assert (g - w).norm() <= 2e-2 * w.norm() + 1e-6


def test_graph_buffers_are_reloaded_on_every_call():
    """Same cached graph entry, new weights, inputs, masks and expectations each call."""
    kernels = GraphKernels()
    for seed, noise in ((0, NOISES["all three per-unit"]()), (1, RecurrentNoise(bools((T, B, H), 0.5, 11),
                        bools((T, B, H), 0.2, 12), bools((T, B, H), 0.6, 13))), (2, NOISES["eval expectations"]()),
                        (3, RecurrentNoise(0.2, 0.6, 0.9))):
        assert_matches_reference(triton_layer(kernels), make_args(seed=seed), noise)
    assert len(kernels.runner._entries) == 4  # forward + backward, for bool and for scalar masks


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("cuda_graphs", [False, True])
def test_cuda_lstm_layer_matches_reference(monkeypatch, cuda_graphs):
    monkeypatch.setitem(fused.options, "cuda_graphs", cuda_graphs)
    for seed in range(2):  # the second call replays the captured graphs
        assert_matches_reference(fused.lstm_layer, make_args(seed=seed), NOISES["all three per-unit"]())
