"""The fused CPU GRU and simple-RNN layers (zoneout.nn.fused.gru_rnn_function, C++ kernels) against the reference
loops zoneout.nn.gru.gru_layer / zoneout.nn.rnn.rnn_layer, with the same masks given to both, and
against nn.GRU / nn.RNN without noise. The first use of the C++ kernels builds them (~1 min, cached).
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers import bools
from torch import nn

import zoneout.nn.fused as fused
from zoneout.nn import reference
from zoneout.nn.csrc import cpu_ext
from zoneout.nn.fused import gru_rnn_function
from zoneout.nn.gru import GRU, ZoneoutGRU
from zoneout.nn.noise import RecurrentNoise
from zoneout.nn.rnn import RNN

ROOT = Path(__file__).resolve().parent.parent
T, B, I, H = 6, 3, 4, 5
TOL = dict(atol=1e-10, rtol=1e-10)
KINDS = ("gru", "tanh", "relu")


REAL_MODULE = gru_rnn_function._module
CALLS = {"gru": 0, "rnn": 0}  # the fused kernels' forward calls in the running test


@pytest.fixture(autouse=True)
def calls(monkeypatch):
    """Skips without the C++ kernels; else counts their forward calls (autograd and no-grad paths alike)."""
    module = cpu_ext.load()
    if module is None:
        pytest.skip(f"C++ kernels unavailable: {cpu_ext.error()}")
    counts = CALLS
    counts.update(gru=0, rnn=0)

    class Spy:
        def __getattr__(self, name):
            target = getattr(module, name)
            if name.endswith("_forward"):
                def counted(*args):
                    counts[name.split("_")[0]] += 1
                    return target(*args)
                return counted
            return target
    monkeypatch.setattr(gru_rnn_function, "_module", lambda: Spy())
    return counts


def layers(kind):
    """(fused, reference) layer functions with gru_layer's signature."""
    if kind == "gru":
        return fused.gru_layer, reference.gru_layer
    return (lambda *a: fused.rnn_layer(*a, nonlinearity=kind)), (lambda *a: reference.rnn_layer(*a, nonlinearity=kind))



def make_args(kind, dtype=torch.float64, seed=0, bias=True, t=T, b=B, h=H):
    gen = torch.Generator().manual_seed(seed)
    make = lambda *shape: torch.randn(*shape, generator=gen, dtype=dtype).requires_grad_()  # noqa: E731
    rows = (3 if kind == "gru" else 1) * h
    args = [make(t, b, I), make(b, h), make(rows, I), make(rows, h)]
    return args + ([make(rows), make(rows)] if bias else [None, None])


def outputs_and_grads(layer, args, noise, seed=1):
    outputs = layer(*args, noise)
    gen = torch.Generator().manual_seed(seed)
    loss = sum((o * torch.randn(o.shape, generator=gen, dtype=o.dtype)).sum() for o in outputs)
    return outputs, torch.autograd.grad(loss, [a for a in args if a is not None])


def assert_matches_reference(kind, args, noise, fused_calls=1, **tol):
    fused_layer, reference_layer = layers(kind)
    expected, expected_grads = outputs_and_grads(reference_layer, args, noise)
    before = sum(CALLS.values())
    actual, actual_grads = outputs_and_grads(fused_layer, args, noise)
    assert sum(CALLS.values()) - before == fused_calls  # the kernels ran (or, with 0, did not)
    assert len(actual_grads) == len(expected_grads) == len([a for a in args if a is not None])
    for want, got in zip(list(expected) + list(expected_grads), list(actual) + list(actual_grads)):
        torch.testing.assert_close(got, want, **(tol or TOL))


NOISES = {
    "none": lambda: RecurrentNoise(),
    "per-unit": lambda: RecurrentNoise(keep_hidden=bools((T, B, H), 0.4, 1)),
    "stochastic depth (T,B,1)": lambda: RecurrentNoise(keep_hidden=bools((T, B, 1), 0.5, 2)),
    "static (T,1,H)": lambda: RecurrentNoise(keep_hidden=bools((T, 1, H), 0.5, 3)),
    "transposed view": lambda: RecurrentNoise(keep_hidden=bools((T, H, B), 0.5, 4).transpose(1, 2)),
    "eval expectation": lambda: RecurrentNoise(keep_hidden=0.3),
}


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("noise_name", NOISES)
def test_outputs_and_all_gradients_match_reference_float64(kind, noise_name):
    assert_matches_reference(kind, make_args(kind), NOISES[noise_name]())


@pytest.mark.parametrize("kind", KINDS)
def test_bias_false_matches_reference(kind):
    assert_matches_reference(kind, make_args(kind, bias=False), NOISES["per-unit"]())


@pytest.mark.parametrize("kind", KINDS)
def test_float32_matches_reference(kind):
    args = [a.detach().float().requires_grad_() for a in make_args(kind)]
    assert_matches_reference(kind, args, NOISES["per-unit"](), atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("kind", KINDS)
def test_float32_at_h256_packed_gemm_matches_reference(kind):
    """H >= 256 in float32 takes MKL's packed-weight GEMM (where MKL has it)."""
    args = [(a.detach() * 0.1).float().requires_grad_() for a in make_args(kind, t=4, h=256)]
    noise = RecurrentNoise(keep_hidden=bools((4, B, 256), 0.3, 5))
    assert_matches_reference(kind, args, noise, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("k", [0, 2, T - 1])
def test_mask_of_one_timestep_only_acts_at_that_timestep(kind, k):
    """Only step k zones out: the fused gradients match, while a reference given a neighbouring or a
    constant step's mask (what an off-by-one in the backward would read) differs by far more."""
    keep = torch.zeros(T, B, H, dtype=torch.bool)
    keep[k] = bools((B, H), 0.5, 9)
    args = make_args(kind)
    assert_matches_reference(kind, args, RecurrentNoise(keep_hidden=keep))
    fused_layer, reference_layer = layers(kind)
    output = fused_layer(*args, RecurrentNoise(keep_hidden=keep))[0].detach()
    if k > 0:
        assert torch.equal(output[k][keep[k]], output[k - 1][keep[k]])
    _, fused_grads = outputs_and_grads(fused_layer, args, RecurrentNoise(keep_hidden=keep))
    for wrong in (keep[[k] * T], keep.roll(1, 0), keep.roll(-1, 0)):
        _, wrong_grads = outputs_and_grads(reference_layer, args, RecurrentNoise(keep_hidden=wrong))
        assert max((a - b).abs().max() for a, b in zip(fused_grads, wrong_grads)) > 1e-3


@pytest.mark.parametrize("kind", KINDS)
def test_gradcheck_with_fixed_masks(kind):
    args = make_args(kind, t=3, b=2)
    keep = bools((3, 2, H), 0.5, 1)
    fused_layer, _ = layers(kind)
    assert torch.autograd.gradcheck(lambda *a: fused_layer(*a, RecurrentNoise(keep_hidden=keep)), args,
                                    eps=1e-6, atol=1e-7)


@pytest.mark.parametrize("kind", KINDS)
def test_no_grad_matches_reference_and_builds_no_graph(kind):
    fused_layer, reference_layer = layers(kind)
    args, noise = make_args(kind), NOISES["per-unit"]()
    with torch.no_grad():
        got, want = fused_layer(*args, noise), reference_layer(*args, noise)
    for g, w in zip(got, want):
        assert g.grad_fn is None
        torch.testing.assert_close(g, w, **TOL)


@pytest.mark.parametrize("kind", KINDS)
def test_double_backward_raises(kind):
    fused_layer, _ = layers(kind)
    args = make_args(kind)
    output, _ = fused_layer(*args, NOISES["per-unit"]())
    with pytest.raises(RuntimeError, match="double backward.*impl='reference'"):  # when the graph is asked for
        torch.autograd.grad(output.sum(), args[3], create_graph=True)


def make_module(kind, impl, **kwargs):
    if kind == "gru":
        return ZoneoutGRU(I, H, impl=impl, **kwargs)
    return RNN(I, H, nonlinearity=kind, impl=impl, **kwargs)


@pytest.mark.parametrize("kind", KINDS)
def test_without_noise_equals_nn_modules_float32(kind, calls):
    """Probability 0, two layers, batch_first, given h0: values and every gradient vs nn.GRU / nn.RNN."""
    torch.manual_seed(0)
    native = nn.GRU(I, H, 2, batch_first=True) if kind == "gru" else nn.RNN(I, H, 2, nonlinearity=kind,
                                                                           batch_first=True)
    ours = make_module(kind, "auto", num_layers=2, batch_first=True)
    ours.load_state_dict(native.state_dict())
    x, h0 = torch.randn(B, T, I), torch.randn(2, B, H)
    results = []
    for model in (native, ours):
        inputs = [x.clone().requires_grad_(), h0.clone().requires_grad_()]
        output, h_n = model(*inputs)
        loss = output.square().sum() + h_n.sin().sum()
        results.append([output, h_n, *torch.autograd.grad(loss, inputs + list(model.parameters()))])
    for want, got in zip(*results):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
    assert calls["gru" if kind == "gru" else "rnn"] == 2


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("shape", ["multilayer", "bidirectional", "packed"])
def test_module_runs_fused_and_matches_reference_module(kind, shape, calls):
    """Same seeds -> the same masks for both impls; the fused path is actually taken."""
    kwargs = dict(num_layers=2, zoneout_hidden=0.3, bidirectional=shape != "multilayer", batch_first=True)
    results = []
    for impl in ("reference", "fused"):
        torch.manual_seed(0)
        model = make_module(kind, impl, **kwargs).double()
        torch.manual_seed(1)
        x = torch.randn(B, T, I, dtype=torch.float64, requires_grad=True)
        inputs = x
        if shape == "packed":
            inputs = nn.utils.rnn.pack_padded_sequence(x, [T, T - 2, 3], batch_first=True)
        output, h_n = model(inputs)
        if shape == "packed":
            output = nn.utils.rnn.pad_packed_sequence(output, batch_first=True)[0]
        loss = (output * output.detach().cos()).sum() + h_n.sin().sum()
        results.append([output, h_n, *torch.autograd.grad(loss, [x, *model.parameters()])])
    for want, got in zip(*results):
        torch.testing.assert_close(got, want, **TOL)
    assert calls["gru" if kind == "gru" else "rnn"] > 0


@pytest.mark.parametrize("kind", KINDS)
def test_eval_is_deterministic_and_equals_reference(kind, calls):
    torch.manual_seed(0)
    models = {impl: make_module(kind, impl, zoneout_hidden=0.3).double().eval() for impl in ("reference", "auto")}
    models["auto"].load_state_dict(models["reference"].state_dict())
    x = torch.randn(T, B, I, dtype=torch.float64)
    first, second = models["auto"](x)[0], models["auto"](x)[0]
    assert torch.equal(first, second)
    torch.testing.assert_close(first, models["reference"](x)[0], **TOL)
    assert calls["gru" if kind == "gru" else "rnn"] == 2


@pytest.mark.parametrize("kind", KINDS)
def test_float_masks_fall_back_to_reference(kind):
    noise = RecurrentNoise(keep_hidden=torch.rand(T, B, H, dtype=torch.float64))
    assert_matches_reference(kind, make_args(kind), noise, fused_calls=0)


@pytest.mark.parametrize("kind", KINDS)
def test_disabled_extension_runs_the_reference(kind, monkeypatch):
    monkeypatch.setattr(gru_rnn_function, "_module", REAL_MODULE)
    monkeypatch.setattr(cpu_ext, "_state", {})
    monkeypatch.setenv("ZONEOUT_FUSED_CPP", "0")
    assert gru_rnn_function._module() is None
    assert_matches_reference(kind, make_args(kind), NOISES["per-unit"](), fused_calls=0)
    model = make_module(kind, "fused", zoneout_hidden=0.3)
    model(torch.randn(T, B, I))[0].sum().backward()


@pytest.mark.parametrize("kind", KINDS)
def test_impl_reference_and_tracing_never_call_the_kernels(kind, calls):
    make_module(kind, "reference", zoneout_hidden=0.3)(torch.randn(T, B, I))
    model = make_module(kind, "auto", zoneout_hidden=0.3).eval()
    torch.jit.trace(model, torch.randn(T, B, I), check_trace=False)
    assert calls == {"gru": 0, "rnn": 0}


def test_impl_is_checked_and_reaches_the_layers():
    with pytest.raises(ValueError, match="impl"):
        GRU(I, H, impl="cudnn")
    with pytest.raises(ValueError, match="impl"):
        RNN(I, H, impl="nope")
    assert "impl='reference'" in repr(ZoneoutGRU(I, H, impl="reference"))


def test_build_model_passes_impl(calls):
    from omegaconf import OmegaConf

    from zoneout.models.build import build_model

    for cell in ("gru", "rnn"):
        model_cfg = OmegaConf.create({"cell": cell, "hidden_size": 6, "num_layers": 1, "input": "onehot",
                                      "embedding_size": None, "nonlinearity": "tanh", "init": "orthogonal",
                                      "init_range": 0.04, "forget_bias": 1.0, "impl": "reference"})
        reg = OmegaConf.load(ROOT / "configs" / "regularizer" / "none.yaml")
        reg.zoneout_hidden = 0.2
        model = build_model(model_cfg, reg, None, 10, 12)
        assert [m.impl for m in model.modules() if isinstance(m, (GRU, RNN))] == ["reference"]
