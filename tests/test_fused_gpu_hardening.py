"""The GPU path's plumbing, checked on the CPU (Triton under TRITON_INTERPRET=1, mocks where a GPU
would be needed): the CUDA-graph cache (inference_mode then no_grad, its key, its memory bound),
the fp32-output low-precision GEMM chosen by capability, no host copies or reads per call, and
the device guard around every launch and capture. The GPU-only checks are in
tests/test_fused_triton.py."""
from __future__ import annotations

import collections
import contextlib
import importlib.util
import os
from pathlib import Path

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

if not torch.cuda.is_available():  # must be set before the kernels are decorated (imported)
    os.environ.setdefault("TRITON_INTERPRET", "1")
pytest.importorskip("triton", reason="triton is not installed (pip install triton); the GPU kernels are untested")

from zoneout.nn import reference  # noqa: E402
from zoneout.nn.fused import torch_kernels, triton_backend  # noqa: E402
from zoneout.nn.fused.cuda_graphs import EagerCapture, GraphRunner  # noqa: E402
from zoneout.nn.fused.lstm_function import FusedLSTMFunction, run_inference  # noqa: E402
from zoneout.nn.fused.masks import SCALAR, CompactMask, CompactNoise, compact_mask, compact_noise, device_values  # noqa: E402
from zoneout.nn.fused.triton_backend import TritonKernels, lowp_gemm_for  # noqa: E402
from zoneout.nn.noise import RecurrentNoise  # noqa: E402

T, B, I, H = 4, 3, 2, 5
CPU = torch.device("cpu")
if not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("no GPU and TRITON_INTERPRET is not 1", allow_module_level=True)


def make_args(seed=0, dtype=torch.float64, shape=(T, B, I, H), grad=True):
    t, b, i, h = shape
    gen = torch.Generator().manual_seed(seed)
    make = lambda *s: torch.randn(*s, generator=gen, dtype=dtype).requires_grad_(grad)  # noqa: E731
    return [make(t, b, i), make(b, h), make(b, h), make(4 * h, i), make(4 * h, h), make(4 * h), make(4 * h)]


def bool_noise(seed=1, shape=(T, B, H)):
    gen = torch.Generator().manual_seed(seed)
    return RecurrentNoise(torch.rand(shape, generator=gen) < 0.5, torch.rand(shape, generator=gen) < 0.2)


def graph_kernels(**runner):
    kernels = TritonKernels(cuda_graphs=True, capture=EagerCapture())
    if runner:
        kernels._graphs = GraphRunner(capture=EagerCapture(), **runner)
    return kernels


def fused(kernels, args, noise, grad=True):
    """Outputs (and input gradients when grad) of the Function run by `kernels`."""
    compact = compact_noise(noise, (args[0].shape[0], args[0].shape[1], args[4].shape[1]), args[0].device)
    if not grad:
        return list(run_inference(kernels, *args, compact))
    outputs = FusedLSTMFunction.apply(*args, compact, kernels)
    return list(outputs) + list(torch.autograd.grad(sum(o.sum() for o in outputs), args))


def reference_result(args, noise, grad=True):
    outputs = reference.lstm_layer(*args, noise)
    if not grad:
        return [o.detach() for o in outputs]
    return list(outputs) + list(torch.autograd.grad(sum(o.sum() for o in outputs), args))


def assert_all_close(got, want, **tol):
    assert len(got) == len(want)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, **(tol or dict(atol=1e-10, rtol=1e-10)))


# --- finding 4: the CUDA-graph cache ---------------------------------------------------------------

def test_graph_cache_inference_mode_then_no_grad():
    """Static buffers made under inference_mode are inference tensors: a no_grad call with the same
    shapes used to fail in copy_ ("Inplace update to inference tensor outside InferenceMode")."""
    kernels, noise = graph_kernels(), RecurrentNoise(0.5, 0.1)
    args = [a.detach() for a in make_args()]
    want = reference_result(args, noise, grad=False)
    with torch.inference_mode():
        assert_all_close(fused(kernels, args, noise, grad=False), want)
    with torch.no_grad():
        assert_all_close(fused(kernels, args, noise, grad=False), want)
    with torch.inference_mode():
        assert_all_close(fused(kernels, args, noise, grad=False), want)
    assert len(kernels.graph_runner()._entries) == 2  # one per autograd mode, each reused


def test_graph_cache_key_holds_matmul_precision_and_dtype(monkeypatch):
    """A graph replays the GEMM kernels cuBLAS picked at capture: TF32 / reduced-precision switches
    and the dtype are part of the key, so flipping one captures anew instead of replaying stale work."""
    kernels, noise = graph_kernels(), bool_noise()
    count = lambda: len(kernels.graph_runner()._entries)  # noqa: E731
    assert_all_close(fused(kernels, make_args(), noise), reference_result(make_args(), noise))
    assert count() == 2  # forward + backward
    fused(kernels, make_args(seed=3), noise)
    assert count() == 2  # same key: replayed
    matmul = torch.backends.cuda.matmul
    monkeypatch.setattr(matmul, "allow_tf32", not matmul.allow_tf32)
    fused(kernels, make_args(), noise)
    assert count() == 4
    monkeypatch.setattr(matmul, "allow_bf16_reduced_precision_reduction",
                        not matmul.allow_bf16_reduced_precision_reduction)
    fused(kernels, make_args(), noise)
    assert count() == 6
    args32 = make_args(dtype=torch.float32)
    assert_all_close(fused(kernels, args32, noise), reference_result(args32, noise), atol=2e-5, rtol=1e-4)
    assert count() == 8


def test_graph_cache_is_bounded_by_bytes():
    noise = RecurrentNoise(0.5, 0.1)
    small, large = (T, B, I, H), (2 * T, B, I, H)
    probe = graph_kernels()
    fused(probe, make_args(shape=small), noise)
    forward_bytes = list(probe.graph_runner()._entries.values())[0].nbytes
    kernels = graph_kernels(max_bytes=int(2.5 * forward_bytes))
    for shape in (small, large, small):
        args = make_args(shape=shape)
        assert_all_close(fused(kernels, args, noise), reference_result(args, noise))
        runner = kernels.graph_runner()
        assert runner.cached_bytes() <= runner.max_bytes or len(runner._entries) == 1
    # inputs alone above the budget: run eagerly, cache nothing
    kernels = graph_kernels(max_bytes=64)
    args = make_args()
    assert_all_close(fused(kernels, args, noise), reference_result(args, noise))
    assert not kernels.graph_runner()._entries


def test_graph_cache_is_bounded_by_count():
    kernels, noise = graph_kernels(max_entries=3), RecurrentNoise(0.5, 0.1)
    for t in range(1, 5):
        fused(kernels, make_args(shape=(t, B, I, H)), noise)
        assert len(kernels.graph_runner()._entries) <= 3


# --- finding 5: the fp32-output low-precision GEMM ------------------------------------------------

@pytest.mark.parametrize("has_mm_dtype,capability,lowp,expected", [
    (True, (9, 0), torch.bfloat16, "fp32 output"),
    (True, (8, 0), torch.bfloat16, "fp32 output"),
    (True, (7, 5), torch.float16, "fp32 output"),
    (True, (7, 5), torch.bfloat16, "compute capability 8.0"),
    (False, (9, 0), torch.bfloat16, "has no torch.mm"),
])
def test_lowp_gemm_is_chosen_by_capability(monkeypatch, has_mm_dtype, capability, lowp, expected):
    monkeypatch.setattr(triton_backend, "_has_fp32_output_gemm", lambda: has_mm_dtype)
    monkeypatch.setattr(triton_backend, "_capability", lambda device: capability)
    cuda = torch.device("cuda", 0)
    if expected == "fp32 output":
        assert lowp_gemm_for(cuda, lowp) is triton_backend._mm_fp32_output
    else:
        with pytest.raises(RuntimeError, match=expected) as error:
            lowp_gemm_for(cuda, lowp)
        assert "options['gemm_dtype'] = None" in str(error.value)


def test_lowp_gemm_on_cpu_is_exact_upcast_and_chosen_once(monkeypatch):
    """On CPU (interpreter) the bf16 operands are upcast exactly and multiplied in fp32; the choice
    is made once per (device, dtype), not per step and never by catching an exception."""
    a, b = torch.randn(3, 4).bfloat16(), torch.randn(4, 5).bfloat16()
    out = torch.empty(3, 5)
    lowp_gemm_for(CPU, torch.bfloat16)(a, b, out)
    torch.testing.assert_close(out, a.double().mm(b.double()).float())
    calls = []
    real = triton_backend.lowp_gemm_for
    monkeypatch.setattr(triton_backend, "lowp_gemm_for", lambda *a: calls.append(a) or real(*a))
    kernels, noise = TritonKernels(gemm_dtype=torch.bfloat16), bool_noise()
    for seed in range(2):
        fused(kernels, make_args(seed=seed, dtype=torch.float32), noise)
    assert calls == [(CPU, torch.bfloat16)]


# --- finding 2: no host copies or host reads per call ---------------------------------------------

class OpCounter(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops[str(func)] += 1
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("graphs", [False, True])
@pytest.mark.parametrize("noise", [bool_noise(), RecurrentNoise(0.5, 0.05, 0.7)], ids=["bool", "expectations"])
def test_no_host_data_or_host_reads_in_a_steady_state_call(graphs, noise):
    """torch.tensor(data) (a pageable host-to-device copy: aten.lift_fresh) and float(tensor) /
    .item() (a device-to-host read: aten._local_scalar_dense) each synchronise a CUDA stream;
    a call after the first makes neither, and re-fills no expectations (they are cached)."""
    kernels = graph_kernels() if graphs else TritonKernels()
    fused(kernels, make_args(), noise)
    with OpCounter() as counter:
        fused(kernels, make_args(seed=1), noise)
    for op in ("aten.lift_fresh.default", "aten._local_scalar_dense.default", "aten.fill_.Scalar"):
        assert counter.ops[op] == 0, (op, counter.ops)


def test_zero_dim_gpu_mask_stays_on_the_device():
    """A 0-d expectation tensor off the CPU is never read back (the meta device stands in for CUDA:
    any host read of it raises); device_values copies it on the device."""
    meta = torch.device("meta")
    mask = compact_mask("keep_cell", torch.tensor(0.25, device=meta), (T, B, H), meta)
    assert mask.kind == SCALAR and isinstance(mask.value, torch.Tensor)
    values = device_values(CompactNoise(mask, CompactMask(SCALAR, 0.5), CompactMask()), torch.float32, meta)
    assert values.shape == (3,) and values.device == meta
    assert compact_mask("keep_cell", torch.tensor(0.25), (T, B, H), CPU).value == 0.25  # CPU: a float


@pytest.mark.parametrize("kernels", [TritonKernels(), torch_kernels], ids=["triton", "torch ops"])
def test_tensor_valued_expectations_match_floats(kernels):
    """Both GPU kernel choices read a 0-d tensor expectation (as a GPU mask arrives) like the float."""
    args = make_args()
    floats = compact_noise(RecurrentNoise(0.25, 0.5, 0.75), (T, B, H), CPU)
    tensors = CompactNoise(*(CompactMask(m.kind, torch.tensor(m.value), None) for m in floats.fields()))
    got = FusedLSTMFunction.apply(*args, tensors, kernels)
    want = FusedLSTMFunction.apply(*args, floats, kernels)
    assert_all_close(list(got), list(want))
    grads = [torch.autograd.grad(sum(o.sum() for o in out), args) for out in (got, want)]
    assert_all_close(list(grads[0]), list(grads[1]))


# --- finding 1: the device guard ------------------------------------------------------------------

def test_on_device_names_the_tensors_device():
    guard = triton_backend.on_device(torch.device("cuda", 1))
    assert isinstance(guard, torch.cuda.device) and guard.idx == 1
    assert isinstance(triton_backend.on_device(CPU), contextlib.nullcontext)


@pytest.mark.parametrize("graphs", [False, True])
def test_every_launch_and_capture_runs_under_the_device_guard(monkeypatch, graphs):
    guarded = []

    @contextlib.contextmanager
    def fake_guard(device):
        guarded.append(device)
        try:
            yield
        finally:
            guarded.pop()

    def checked(kernel):
        class Checked:
            def __getitem__(self, grid):
                def launch(*args, **kwargs):
                    assert guarded == [CPU], "a Triton launch outside torch.cuda.device(tensor.device)"
                    launches.append(kernel)
                    return kernel[grid](*args, **kwargs)
                return launch
        return Checked()

    class CheckedCapture(EagerCapture):
        def __call__(self, fn, device=None):
            assert guarded == [CPU] and device == CPU, "a graph capture outside the device guard"
            captures.append(device)
            return super().__call__(fn, device)

    launches, captures = [], []
    monkeypatch.setattr(triton_backend, "on_device", fake_guard)
    monkeypatch.setattr(triton_backend, "forward_step_kernel", checked(triton_backend.forward_step_kernel))
    monkeypatch.setattr(triton_backend, "backward_step_kernel", checked(triton_backend.backward_step_kernel))
    kernels = TritonKernels(cuda_graphs=graphs, capture=CheckedCapture() if graphs else None)
    args, noise = make_args(), bool_noise()
    assert_all_close(fused(kernels, args, noise), reference_result(args, noise))
    assert launches and guarded == []
    assert len(captures) == (2 if graphs else 0)


# --- finding 3: the profile that decides the CUDA-graph default ------------------------------------

def test_bench_launch_profile_runs_on_cpu():
    """scripts/bench.py's host-vs-device profile: on CPU it runs and reports no device time."""
    path = Path(__file__).resolve().parent.parent / "scripts" / "bench.py"
    spec = importlib.util.spec_from_file_location("bench", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    x, w = torch.randn(8, 8), torch.randn(8, 8)
    profile = bench.launch_profile(lambda: (x @ w).relu_(), CPU, steps=2)
    assert profile["host_ms"] > 0 and profile["device_ms"] == 0 and profile["kernels"] == 0
