"""The GPU path of the fused layer (Triton pointwise kernels + torch GEMMs), checked on the CPU with
TRITON_INTERPRET=1 at small sizes against the reference loop; on a CUDA machine also on the GPU,
where the last tests (skipped without CUDA) check TF32 off and on, that a steady-state forward +
backward never synchronises with the host, and a model on a device that is not the current one.
The plumbing behind those (graph cache, device guard, GEMM choice) is tested on CPU in
tests/test_fused_gpu_hardening.py."""
from __future__ import annotations

import os

import pytest
import torch
from helpers import bools as seeded_bools

if not torch.cuda.is_available():  # must be set before the kernels are decorated (imported)
    os.environ.setdefault("TRITON_INTERPRET", "1")
pytest.importorskip("triton", reason="triton is not installed (pip install triton); the GPU kernels are untested")

import zoneout.nn.fused as fused  # noqa: E402
from zoneout.nn import reference  # noqa: E402
from zoneout.nn.fused import triton_backend  # noqa: E402
from zoneout.nn.fused.cuda_graphs import EagerCapture, GraphRunner  # noqa: E402
from zoneout.nn.fused.lstm_function import FusedLSTMFunction, run_inference  # noqa: E402
from zoneout.nn.fused.masks import compact_noise  # noqa: E402
from zoneout.nn.fused.triton_backend import TritonKernels  # noqa: E402
from zoneout.nn.noise import RecurrentNoise  # noqa: E402

T, B, I, H = 5, 3, 4, 6
TOL = dict(atol=1e-10, rtol=1e-10)
DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
if DEVICE.type == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("no GPU and TRITON_INTERPRET is not 1", allow_module_level=True)


needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
# bf16 GEMMs with fp32 output need sm_80+; below that gemm_dtype=bf16 raises by design (tested on CPU)
bf16_gemm_ok = not torch.cuda.is_available() or torch.cuda.get_device_capability() >= (8, 0)


@pytest.fixture(autouse=True)
def _tf32_off(monkeypatch):
    """The fp32 tolerances here are for IEEE fp32 GEMMs; a session that turned TF32 on (--tf32)
    must not fail them for reasons unrelated to the kernels. TF32 is tested on purpose below."""
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)


def bools(shape, p, seed):
    return seeded_bools(shape, p, seed, DEVICE)


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
    # the same weights for every dtype (drawn in fp64), so fp32 and fp64 runs compare
    weights = [torch.randn(o.shape, generator=gen, dtype=torch.float64).to(o.device, o.dtype) for o in outputs]
    loss = sum((o * w).sum() for o, w in zip(outputs, weights))
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


@pytest.mark.skipif(not bf16_gemm_ok, reason="bf16 GEMMs need compute capability 8.0+")
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


@needs_cuda
@pytest.mark.parametrize("cuda_graphs", [False, True])
def test_cuda_lstm_layer_matches_reference(monkeypatch, cuda_graphs):
    monkeypatch.setitem(fused.options, "cuda_graphs", cuda_graphs)
    for seed in range(2):  # the second call replays the captured graphs
        assert_matches_reference(fused.lstm_layer, make_args(seed=seed), NOISES["all three per-unit"]())


def relative_errors(layer, args32, noise):
    """Norm-relative error of each output and gradient of `layer` on fp32 args vs the fp64 reference."""
    args64 = [a.detach().double().requires_grad_() if a is not None else None for a in args32]
    got = outputs_and_grads(layer, args32, noise)
    want = outputs_and_grads(reference.lstm_layer, args64, noise)
    return [((g.double() - w).norm() / (w.norm() + 1e-12)).item() for g, w in zip(got, want)]


@needs_cuda
@pytest.mark.parametrize("cuda_graphs", [False, True])
@pytest.mark.parametrize("tf32", [False, True])
def test_cuda_fp32_with_tf32_off_and_on(monkeypatch, cuda_graphs, tf32):
    """fp32 on the GPU against the fp64 reference: IEEE fp32 GEMMs to ~1e-6, TF32 GEMMs (10-bit
    mantissa) to ~1e-3; the graphs are keyed on the TF32 switch, so flipping it captures anew."""
    monkeypatch.setitem(fused.options, "cuda_graphs", cuda_graphs)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", tf32)
    args = [a.detach().float().requires_grad_() for a in make_args(seed=3)]
    for _ in range(2):  # capture, then replay
        errors = relative_errors(fused.lstm_layer, args, NOISES["all three per-unit"]())
        assert max(errors) < (1e-2 if tf32 else 1e-5), errors


@needs_cuda
@pytest.mark.parametrize("cuda_graphs", [False, True])
@pytest.mark.parametrize("gemm_dtype", [None, torch.bfloat16])
@pytest.mark.parametrize("noise_name", ["all three per-unit", "eval expectations"])
def test_cuda_steady_state_forward_backward_never_syncs(monkeypatch, cuda_graphs, gemm_dtype, noise_name):
    """No host-device synchronisation in a call after the first (which compiles and captures):
    torch.cuda.set_sync_debug_mode("error") raises on any (torch.tensor copies, .item(), ...)."""
    if gemm_dtype is not None and not bf16_gemm_ok:
        pytest.skip("bf16 GEMMs need compute capability 8.0+")
    monkeypatch.setitem(fused.options, "cuda_graphs", cuda_graphs)
    monkeypatch.setitem(fused.options, "gemm_dtype", gemm_dtype)
    args, noise = make_args(dtype=torch.float32), NOISES[noise_name]()
    outputs_and_grads(fused.lstm_layer, args, noise)  # warm-up: Triton compile, graph capture
    torch.cuda.synchronize()
    weight = torch.randn(T, B, H, device=DEVICE)
    torch.cuda.set_sync_debug_mode("error")
    try:
        output, h_n, c_n = fused.lstm_layer(*args, noise)
        loss = (output * weight).sum() + h_n.sum() + c_n.sum()
        grads = torch.autograd.grad(loss, [a for a in args if a is not None])
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert all(torch.isfinite(g).all() for g in grads)


@needs_cuda
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs a second CUDA device")
@pytest.mark.parametrize("cuda_graphs", [False, True])
def test_cuda_model_on_a_device_that_is_not_current(monkeypatch, cuda_graphs):
    """Tensors on cuda:1 while cuda:0 is current: the Triton launches (current device's stream) and
    the GEMMs (the tensors' device) must meet on cuda:1."""
    monkeypatch.setitem(fused.options, "cuda_graphs", cuda_graphs)
    second = torch.device("cuda", 1)
    assert torch.cuda.current_device() == 0
    args = [a.detach().to(second).requires_grad_() for a in make_args()]
    noise = NOISES["all three per-unit"]()
    noise = RecurrentNoise(*(m.to(second) for m in (noise.keep_cell, noise.keep_hidden, noise.update_keep)))
    for _ in range(2):  # capture, then replay
        for got, want in zip(outputs_and_grads(fused.lstm_layer, args, noise),
                             outputs_and_grads(reference.lstm_layer, args, noise)):
            assert got.device == second
            torch.testing.assert_close(got, want, **TOL)
    assert torch.cuda.current_device() == 0


@needs_cuda
def test_cuda_graphs_inference_mode_then_no_grad(monkeypatch):
    monkeypatch.setitem(fused.options, "cuda_graphs", True)
    args, noise = [a.detach() for a in make_args()], NOISES["eval expectations"]()
    want = reference.lstm_layer(*args, noise)
    for mode in (torch.inference_mode, torch.no_grad, torch.inference_mode):
        with mode():
            got = fused.lstm_layer(*args, noise)
        for g, w in zip(got, want):
            torch.testing.assert_close(g, w, **TOL)


@needs_cuda
def test_cuda_bf16_gemm_is_the_fp32_output_one():
    if not bf16_gemm_ok:
        with pytest.raises(RuntimeError, match="compute capability"):
            triton_backend.lowp_gemm_for(DEVICE, torch.bfloat16)
    else:
        assert triton_backend.lowp_gemm_for(DEVICE, torch.bfloat16) is triton_backend._mm_fp32_output
