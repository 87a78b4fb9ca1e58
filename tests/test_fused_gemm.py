"""options["cpu_gemm"]: the fused C++ CPU LSTM's float32 GEMMs on MKL or oneDNN (zoneout/nn/fused/cpu_gemm.py).

Both choices and the reference loop get the same masks; any difference is the GEMM library's rounding.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
from torch.profiler import ProfilerActivity, profile

import zoneout.nn.fused as fused
from zoneout.nn import reference
from zoneout.nn.cells import ZoneoutLSTMCell
from zoneout.nn.csrc import cpu_ext
from zoneout.nn.fused import cpu_gemm
from zoneout.nn.lstm import ZoneoutLSTM
from zoneout.nn.noise import RecurrentNoise

GEMM_OPS = ("aten::mm", "aten::addmm", "aten::addmm_", "aten::mm_out", "mkl::_mkl_linear")
ONEDNN_OP = "mkldnn::_linear_pointwise"


@pytest.fixture
def cpp(monkeypatch):
    if cpu_ext.load() is None:
        pytest.skip(f"C++ kernels unavailable: {cpu_ext.error()}")
    monkeypatch.setitem(fused.options, "cpu_kernels", "cpp")


def make_case(T, B, I, H, bias=True, dtype=torch.float32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    make = lambda *shape: (torch.randn(*shape, generator=gen, dtype=dtype) * 0.1).requires_grad_()  # noqa: E731
    args = [make(T, B, I), make(B, H), make(B, H), make(4 * H, I), make(4 * H, H)]
    args += [make(4 * H), make(4 * H)] if bias else [None, None]
    keep = lambda p: torch.rand(T, B, H, generator=gen) < p  # noqa: E731
    return args, RecurrentNoise(keep(0.5), keep(0.05), keep(0.7))


def outputs_and_grads(layer, args, noise):
    outputs = layer(*args, noise)
    gen = torch.Generator().manual_seed(1)
    loss = sum((o * torch.randn(o.shape, generator=gen, dtype=o.dtype)).sum() for o in outputs)
    return list(outputs) + list(torch.autograd.grad(loss, [a for a in args if a is not None]))


def fused_run(monkeypatch, gemm, args, noise):
    """Outputs and gradients under options["cpu_gemm"] = gemm, and the profiler's op counts of that call."""
    monkeypatch.setitem(fused.options, "cpu_gemm", gemm)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        results = outputs_and_grads(fused.lstm_layer, args, noise)
    return results, {e.key: e.count for e in prof.key_averages()}


# H=256: the packed paths (MKL and oneDNN, T > 1); H=300: the backward's W_hh^T copied dense in chunks of
# 256 rows of W_hh before oneDNN's reorder, the last chunk partial (1,200 rows); T=1, B=1: the one-step cell
# path (dense weights).
SHAPES = {"packed H=256": (5, 3, 4, 256, True), "packed H=300": (3, 2, 4, 300, True),
          "cell T=1 B=1": (1, 1, 3, 16, True), "no bias": (4, 2, 3, 20, False)}


@pytest.mark.parametrize("shape", SHAPES)
def test_onednn_matches_mkl_and_reference_float32(cpp, monkeypatch, shape):
    *dims, bias = SHAPES[shape]
    args, noise = make_case(*dims, bias=bias)
    expected = outputs_and_grads(reference.lstm_layer, args, noise)
    mkl, _ = fused_run(monkeypatch, "mkl", args, noise)
    onednn, _ = fused_run(monkeypatch, "onednn", args, noise)
    for want, a, b in zip(expected, mkl, onednn):
        torch.testing.assert_close(b, want, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("input_size", [512, 4])
def test_onednn_runs_every_gemm_of_the_layer_but_a_narrow_input_projection(cpp, monkeypatch, input_size):
    """Forward: input projection + T recurrent; backward: T recurrent + grad_input, grad_W_ih, grad_W_hh.
    oneDNN's op is called from Python and from the C++ loop (through the dispatcher) alike. An input
    narrower than cpu_gemm.onednn_projects' threshold is projected by MKL's addmm into a pooled block
    (measured faster on the AMD EPYC: the fresh result's page faults cost more than MKL's GEMM loses)."""
    T = 3
    args, noise = make_case(T, 2, input_size, 256)
    _, counts = fused_run(monkeypatch, "onednn", args, noise)
    if cpu_gemm.onednn_projects(input_size):
        assert counts.get(ONEDNN_OP) == 2 * T + 4
        assert not [op for op in GEMM_OPS if op in counts], counts
    else:
        assert counts.get(ONEDNN_OP) == 2 * T + 3
        assert [op for op in GEMM_OPS if op in counts] == ["aten::addmm"] and counts["aten::addmm"] == 1, counts
    _, counts = fused_run(monkeypatch, "mkl", args, noise)
    assert ONEDNN_OP not in counts and counts.get("mkl::_mkl_linear") == T


def test_float64_stays_on_the_existing_path(cpp, monkeypatch):
    args, noise = make_case(3, 2, 4, 8, dtype=torch.float64)
    expected = outputs_and_grads(reference.lstm_layer, args, noise)
    got, counts = fused_run(monkeypatch, "onednn", args, noise)
    assert ONEDNN_OP not in counts
    for want, have in zip(expected, got):
        torch.testing.assert_close(have, want, atol=1e-10, rtol=1e-10)


def test_invalid_choice_names_the_option_and_the_allowed_values(monkeypatch):
    monkeypatch.setitem(fused.options, "cpu_gemm", "openblas")
    args, noise = make_case(2, 1, 3, 4)
    with pytest.raises(ValueError, match=r"options\['cpu_gemm'\].*'auto', 'mkl', 'onednn'.*'openblas'"):
        fused.lstm_layer(*args, noise)


def test_auto_is_the_measured_vendor_and_width_rule(monkeypatch):
    assert cpu_gemm.cpu_vendor() in ("amd", "intel", "cpu")
    monkeypatch.setattr(cpu_gemm, "cpu_vendor", lambda: "amd")  # measured: oneDNN from H = 256, MKL below
    assert (cpu_gemm.resolve("auto", 100), cpu_gemm.resolve("auto", 256), cpu_gemm.resolve("auto", 1000)) == (
        "mkl", "onednn", "onednn")
    # a cell call: oneDNN's set-up is not amortised over one step, so it takes over only from H = 1024
    assert [cpu_gemm.resolve("auto", h, steps=1) for h in (256, 1000, 1024)] == ["mkl", "mkl", "onednn"]
    assert cpu_gemm.resolve("onednn", 1000, steps=1) == "onednn"  # asked for explicitly
    monkeypatch.setattr(cpu_gemm, "cpu_vendor", lambda: "amd")
    seen = []
    real = fused.kernels_for
    monkeypatch.setattr(fused, "kernels_for", lambda *args: seen.append(args[1:]) or real(*args))
    ZoneoutLSTMCell(3, 256, zoneout_cell=0.5)(torch.randn(2, 3))
    ZoneoutLSTM(3, 256, zoneout_cell=0.5)(torch.randn(4, 2, 3))
    assert seen == [(256, 1), (256, 4)]
    monkeypatch.setattr(cpu_gemm, "cpu_vendor", lambda: "intel")  # not measured: MKL
    assert cpu_gemm.resolve("auto", 1000) == "mkl"
    assert cpu_gemm.resolve("mkl", 1000) == "mkl" and cpu_gemm.resolve("onednn", 100) == "onednn"


def test_bench_cpu_option_rows_set_and_restore_the_gemm(monkeypatch):
    path = Path(__file__).resolve().parent.parent / "scripts" / "bench.py"
    spec = importlib.util.spec_from_file_location("bench_for_test", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    seen = []
    step = lambda: seen.append((fused.options["cpu_kernels"], fused.options["cpu_gemm"]))  # noqa: E731
    for row in ("cpp", "cpp+onednn", "torch"):
        bench.option_step(row, step)()
    assert seen == [("cpp", "mkl"), ("cpp", "onednn"), ("torch", "auto")]
    assert (fused.options["cpu_kernels"], fused.options["cpu_gemm"]) == ("auto", "auto")


@pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="needs oneDNN")
def test_weight_grad_equals_the_plain_product_across_transpose_chunks():
    # Blocks of 3 and 600 rows: the second crosses transpose_into's chunk boundaries (256 rows) at an offset.
    gen = torch.Generator().manual_seed(0)
    flat = torch.randn(603, 12, generator=gen)
    first, rest = torch.randn(3, 7, generator=gen), torch.randn(200, 3, 7, generator=gen)
    expected = flat.t() @ torch.cat([first, rest.reshape(-1, 7)])
    torch.testing.assert_close(cpu_gemm.weight_grad(flat, first, rest), expected, rtol=1e-5, atol=1e-4)
    out = torch.full((7, 603), float("nan"))
    cpu_gemm.transpose_into(out, torch.cat([first, rest.reshape(-1, 7)]))
    assert torch.equal(out, torch.cat([first, rest.reshape(-1, 7)]).t())
