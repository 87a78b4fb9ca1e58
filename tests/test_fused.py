"""The fused zoneout LSTM layer (CPU kernels: C++ and PyTorch-op) against the reference loop.

Masks are drawn once and passed to both implementations, so any difference is the fused code's.
The first use of the C++ kernels builds them (~1 min on 2 cores, then cached).
"""
from __future__ import annotations

import pytest
import torch
from helpers import bools

import zoneout.nn.fused as fused
from zoneout.nn import dispatch, reference, register_layer_impl
from zoneout.nn.csrc import cpu_ext
from zoneout.nn.fused import bn_lstm_function, torch_kernels
from zoneout.nn.fused.lstm_function import FusedLSTMFunction
from zoneout.nn.fused.masks import compact_noise
from zoneout.nn.lstm import ZoneoutLSTM
from zoneout.nn.noise import RecurrentNoise

T, B, I, H = 6, 3, 4, 5
TOL = dict(atol=1e-10, rtol=1e-10)


@pytest.fixture(params=["cpp", "torch"])
def kernels(request, monkeypatch):
    """Runs the test with each CPU kernel choice (C++ skipped, with the reason, if it cannot build)."""
    if request.param == "cpp" and cpu_ext.load() is None:
        pytest.skip(f"C++ kernels unavailable: {cpu_ext.error()}")
    monkeypatch.setitem(fused.options, "cpu_kernels", request.param)
    return request.param



def make_args(dtype=torch.float64, seed=0, bias=True):
    gen = torch.Generator().manual_seed(seed)
    make = lambda *shape: torch.randn(*shape, generator=gen, dtype=dtype).requires_grad_()  # noqa: E731
    args = [make(T, B, I), make(B, H), make(B, H), make(4 * H, I), make(4 * H, H)]
    return args + ([make(4 * H), make(4 * H)] if bias else [None, None])


def outputs_and_grads(layer, args, noise, seed=1):
    outputs = layer(*args, noise)
    gen = torch.Generator().manual_seed(seed)
    loss = sum((o * torch.randn(o.shape, generator=gen, dtype=o.dtype)).sum() for o in outputs)
    leaves = [a for a in args if a is not None]
    return outputs, torch.autograd.grad(loss, leaves)


def assert_matches_reference(args, noise, **tol):
    expected, expected_grads = outputs_and_grads(reference.lstm_layer, args, noise)
    actual, actual_grads = outputs_and_grads(fused.lstm_layer, args, noise)
    for want, got in zip(list(expected) + list(expected_grads), list(actual) + list(actual_grads)):
        torch.testing.assert_close(got, want, **(tol or TOL))


NOISES = {
    "none": lambda: RecurrentNoise(),
    "per-unit zoneout": lambda: RecurrentNoise(bools((T, B, H), 0.5, 1), bools((T, B, H), 0.3, 2)),
    "all three fields": lambda: RecurrentNoise(bools((T, B, H), 0.5, 1), bools((T, B, H), 0.3, 2),
                                               bools((T, B, H), 0.7, 3)),
    "stochastic depth (T,B,1)": lambda: (lambda m: RecurrentNoise(m, m))(bools((T, B, 1), 0.5, 4)),
    "static (T,1,H)": lambda: RecurrentNoise(bools((T, 1, H), 0.5, 5), bools((T, 1, H), 0.5, 6)),
    "recurrent dropout": lambda: RecurrentNoise(update_keep=bools((T, B, H), 0.5, 7)),
    "eval expectations": lambda: RecurrentNoise(0.5, 0.05, 0.7),
}


@pytest.mark.parametrize("noise_name", NOISES)
def test_outputs_and_all_gradients_match_reference_float64(kernels, noise_name):
    assert_matches_reference(make_args(), NOISES[noise_name]())


def test_float32_matches_reference(kernels):
    args = [a.detach().float().requires_grad_() for a in make_args()]
    assert_matches_reference(args, NOISES["all three fields"](), atol=2e-5, rtol=1e-4)


def test_bias_false_matches_reference(kernels):
    assert_matches_reference(make_args(bias=False), NOISES["per-unit zoneout"]())


@pytest.mark.parametrize("k", [0, 2, T - 1])
def test_mask_of_one_timestep_only_acts_at_that_timestep(kernels, k):
    """Only timestep k zones out (c and h). Using one step's mask for all steps, or a neighbouring
    step's mask in backward, changes outputs/gradients by far more than the tolerance (checked)."""
    keep = torch.zeros(T, B, H, dtype=torch.bool)
    keep[k] = bools((B, H), 0.5, 9)
    noise = RecurrentNoise(keep.clone(), keep.clone())
    args = make_args()
    assert_matches_reference(args, noise)
    output = fused.lstm_layer(*args, noise)[0].detach()
    if k > 0:  # the kept units of step k repeat step k-1 exactly
        assert torch.equal(output[k][keep[k]], output[k - 1][keep[k]])
    for wrong in (keep[[k] * T], keep.roll(1, 0), keep.roll(-1, 0)):  # the test is sensitive to misuse
        _, right_grads = outputs_and_grads(reference.lstm_layer, args, noise)
        _, wrong_grads = outputs_and_grads(reference.lstm_layer, args, RecurrentNoise(wrong, wrong))
        assert max((a - b).abs().max() for a, b in zip(right_grads, wrong_grads)) > 1e-3


def test_cell_and_hidden_masks_are_not_shared(kernels):
    x, h0, c0, *weights = make_args()
    always, never = torch.ones(T, B, H, dtype=torch.bool), torch.zeros(T, B, H, dtype=torch.bool)
    output, h_last, c_last = fused.lstm_layer(x, h0, c0, *weights, RecurrentNoise(always, never))
    assert torch.equal(c_last, c0) and not torch.allclose(output, h0.expand_as(output))
    output, h_last, c_last = fused.lstm_layer(x, h0, c0, *weights, RecurrentNoise(never, always))
    assert torch.equal(output, h0.expand_as(output)) and not torch.allclose(c_last, c0)


def test_stochastic_depth_mask_freezes_whole_examples(kernels):
    keep = torch.zeros(T, B, 1, dtype=torch.bool)
    keep[3, 1] = True  # example 1 skips timestep 3 entirely
    x, h0, c0, *weights = make_args()
    output, _, _ = fused.lstm_layer(x, h0, c0, *weights, RecurrentNoise(keep, keep))
    assert torch.equal(output[3, 1], output[2, 1]) and not torch.allclose(output[3, 0], output[2, 0])


def test_dropping_every_cell_update_keeps_a_zero_cell_zero(kernels):
    x, h0, c0, *weights = make_args()
    c0 = torch.zeros_like(c0)
    _, _, c_last = fused.lstm_layer(x, h0, c0, *weights, RecurrentNoise(update_keep=torch.zeros(T, B, H).bool()))
    assert torch.equal(c_last, torch.zeros_like(c_last))


def test_gradcheck_fused_function_with_fixed_masks(kernels):
    gen = torch.Generator().manual_seed(3)
    t, b, i, h = 3, 2, 2, 3
    make = lambda *s: torch.randn(*s, generator=gen, dtype=torch.float64).requires_grad_()  # noqa: E731
    args = (make(t, b, i), make(b, h), make(b, h), make(4 * h, i), make(4 * h, h), make(4 * h), make(4 * h))
    noise = RecurrentNoise(bools((t, b, h), 0.5, 1), bools((t, b, 1), 0.5, 2), bools((t, 1, h), 0.5, 3))
    compact, kernel_impl = compact_noise(noise, (t, b, h), torch.device("cpu")), fused.kernels_for(torch.device("cpu"))
    layer = lambda *a: FusedLSTMFunction.apply(*a, compact, kernel_impl)  # noqa: E731
    assert torch.autograd.gradcheck(layer, args, eps=1e-6, atol=1e-7)


def test_module_matches_nn_lstm_without_noise(kernels):
    """Two layers, batch_first, given (h0, c0): values and every gradient, float64 and float32."""
    for dtype, tol in ((torch.float64, TOL), (torch.float32, dict(atol=1e-5, rtol=1e-4))):
        torch.manual_seed(0)
        native = torch.nn.LSTM(I, H, num_layers=2, batch_first=True).to(dtype)
        ours = ZoneoutLSTM(I, H, num_layers=2, batch_first=True, impl="fused").to(dtype)
        ours.load_state_dict(native.state_dict())
        x = torch.randn(B, T, I, dtype=dtype)
        hx = (torch.randn(2, B, H, dtype=dtype), torch.randn(2, B, H, dtype=dtype))
        results = []
        for model in (native, ours):
            inputs = [x.clone().requires_grad_(), hx[0].clone().requires_grad_(), hx[1].clone().requires_grad_()]
            output, (h_n, c_n) = model(inputs[0], (inputs[1], inputs[2]))
            loss = output.square().sum() + h_n.sin().sum() + c_n.cos().sum()
            grads = torch.autograd.grad(loss, inputs + list(model.parameters()))
            results.append([output, h_n, c_n, *grads])
        for want, got in zip(*results):
            torch.testing.assert_close(got, want, **tol)


def test_multilayer_zoneout_module_matches_reference_module(kernels):
    """Same seed -> the regularizer draws the same masks for both impls (per layer)."""
    grads = []
    for impl in ("reference", "fused"):
        torch.manual_seed(0)
        model = ZoneoutLSTM(I, H, num_layers=2, batch_first=True, zoneout_cell=0.5, zoneout_hidden=0.3,
                            impl=impl).double()
        x = torch.randn(B, T, I, dtype=torch.float64, requires_grad=True)
        torch.manual_seed(1)
        output, (h_n, c_n) = model(x)
        grads.append([output, h_n, c_n, *torch.autograd.grad((output * output.detach().cos()).sum() + c_n.sum(),
                                                              [x, *model.parameters()])])
    for want, got in zip(*grads):
        torch.testing.assert_close(got, want, **TOL)


def test_eval_is_deterministic_and_equals_reference(kernels):
    torch.manual_seed(0)
    models = {impl: ZoneoutLSTM(I, H, zoneout_cell=0.5, zoneout_hidden=0.05, impl=impl).double().eval()
              for impl in ("reference", "fused")}
    models["fused"].load_state_dict(models["reference"].state_dict())
    x = torch.randn(T, B, I, dtype=torch.float64)
    first, second = models["fused"](x)[0], models["fused"](x)[0]
    assert torch.equal(first, second)
    torch.testing.assert_close(first, models["reference"](x)[0], **TOL)


def test_no_grad_inference_matches_and_builds_no_graph(kernels):
    args, noise = make_args(), NOISES["all three fields"]()
    with torch.no_grad():
        got = fused.lstm_layer(*args, noise)
        want = reference.lstm_layer(*args, noise)
    for g, w in zip(got, want):
        assert g.grad_fn is None
        torch.testing.assert_close(g, w, **TOL)


def test_backward_twice_with_retain_graph_gives_the_same_gradients(kernels):
    args = make_args()
    output, _, _ = fused.lstm_layer(*args, NOISES["all three fields"]())
    first = torch.autograd.grad(output.sum(), args[3:5], retain_graph=True)
    second = torch.autograd.grad(output.sum(), args[3:5])
    assert all(torch.equal(a, b) for a, b in zip(first, second))


def test_float_tensor_masks_fall_back_to_reference():
    args, keep = make_args(), torch.rand(T, B, H, dtype=torch.float64)
    assert_matches_reference(args, RecurrentNoise(keep_cell=keep))


def test_mask_that_does_not_broadcast_raises_value_error():
    with pytest.raises(ValueError, match="keep_hidden"):
        fused.lstm_layer(*make_args(), RecurrentNoise(keep_hidden=torch.ones(T, B + 1, H, dtype=torch.bool)))


def test_dispatch_picks_fused_for_auto_and_the_reference_for_reference_or_capture(monkeypatch):
    kinds = {"lstm": (fused.lstm_layer, reference.lstm_layer), "gru": (fused.gru_layer, reference.gru_layer),
             "rnn": (fused.rnn_layer, reference.rnn_layer), "bn_lstm": (bn_lstm_function.bn_lstm_layer, reference.bn_lstm_layer)}
    for kind, (fast, loop) in kinds.items():
        assert dispatch.layer_function(kind, "auto") is fast and dispatch.layer_function(kind, "fused") is fast
        assert dispatch.layer_function(kind, "reference") is loop
    monkeypatch.setattr(dispatch, "capturing", lambda: True)  # tracing / exporting / compiling
    assert all(dispatch.layer_function(kind, "fused") is loop for kind, (_, loop) in kinds.items())
    with pytest.raises(ValueError, match="impl must be one of"):
        dispatch.check_impl("fast")


def test_register_layer_impl_replaces_what_fused_and_auto_run(monkeypatch):
    monkeypatch.setitem(dispatch.LAYERS, "lstm", dict(dispatch.LAYERS["lstm"]))
    calls = []

    def traced(*args):
        calls.append(args[0].shape)
        return reference.lstm_layer(*args)
    register_layer_impl("fused", traced)
    ZoneoutLSTM(I, H, zoneout_cell=0.5)(torch.randn(T, B, I))
    assert calls == [(T, B, I)]
    with pytest.raises(ValueError, match="kind must be one of"):
        register_layer_impl("fused", traced, kind="transformer")


def test_unbuildable_extension_falls_back_to_pytorch_kernels(monkeypatch):
    from torch.utils import cpp_extension

    def fail(*args, **kwargs):
        raise RuntimeError("no compiler here")
    monkeypatch.setattr(cpu_ext, "_state", {})
    monkeypatch.setattr(cpp_extension, "load", fail)
    monkeypatch.setattr(cpu_ext, "build_in_child", fail)  # a cold cache builds in a child, not through load
    assert cpu_ext.load() is None and "no compiler here" in cpu_ext.error()
    assert fused.kernels_for(torch.device("cpu")) is torch_kernels
    assert_matches_reference(make_args(), NOISES["all three fields"]())
    monkeypatch.setitem(fused.options, "cpu_kernels", "cpp")
    with pytest.raises(RuntimeError, match="unavailable"):
        fused.kernels_for(torch.device("cpu"))


def test_disabling_the_extension_by_environment(monkeypatch):
    monkeypatch.setattr(cpu_ext, "_state", {})
    monkeypatch.setenv("ZONEOUT_FUSED_CPP", "0")
    assert cpu_ext.load() is None and "ZONEOUT_FUSED_CPP" in cpu_ext.error()


def test_double_backward_raises_instead_of_returning_wrong_values(kernels):
    args = make_args()
    output, _, _ = fused.lstm_layer(*args, NOISES["all three fields"]())
    with pytest.raises(RuntimeError, match="double backward.*impl='reference'"):  # when the graph is asked for
        torch.autograd.grad(output.sum(), args[4], create_graph=True)


def test_misshapen_arguments_get_the_reference_error_not_a_kernel_crash():
    x, h0, c0, *weights = make_args()
    with pytest.raises(RuntimeError):
        fused.lstm_layer(x, h0[:, :-1], c0, *weights, RecurrentNoise())
    with pytest.raises(RuntimeError):
        fused.lstm_layer(x, h0, c0, weights[0][:, :-1], *weights[1:], RecurrentNoise())


def test_float32_at_h256_takes_the_packed_gemm_path_and_matches_reference(kernels):
    """H >= 256 in float32 switches the C++ forward to MKL's packed-weight GEMM (where MKL has it)."""
    gen = torch.Generator().manual_seed(5)
    t, b, i, h = 4, 3, 3, 256
    make = lambda *s: (torch.randn(*s, generator=gen) * 0.1).requires_grad_()  # noqa: E731
    args = [make(t, b, i), make(b, h), make(b, h), make(4 * h, i), make(4 * h, h), make(4 * h), make(4 * h)]
    noise = RecurrentNoise(bools((t, b, h), 0.5, 1), bools((t, b, h), 0.05, 2), bools((t, 1, h), 0.7, 3))
    assert_matches_reference(args, noise, atol=1e-5, rtol=1e-4)


def test_layers_need_no_regularizers_and_fused_imports_on_its_own():
    """zoneout.nn builds its own zoneout noise (no reaching up into zoneout.regularizers), and the fused
    package imports on its own (tests/test_import_graph.py checks that no import circle exists)."""
    import subprocess
    import sys

    script = ("import sys, torch\n"
              "import zoneout.nn.fused as fused\n"
              "from zoneout import ZoneoutLSTM, ZoneoutLSTMCell, ZoneoutGRU\n"
              "ZoneoutLSTM(3, 4, zoneout_cell=0.5)(torch.randn(2, 1, 3)); ZoneoutLSTMCell(3, 4, zoneout_hidden=0.1)(torch.randn(1, 3))\n"
              "ZoneoutGRU(3, 4, zoneout_hidden=0.1)(torch.randn(2, 1, 3))\n"
              "from zoneout.nn import dispatch\n"
              "assert dispatch.LAYERS['lstm']['fused'] is fused.lstm_layer\n"
              "assert not [m for m in sys.modules if m.startswith('zoneout.regularizers')], 'zoneout.nn imported regularizers'\n"
              "from zoneout.regularizers import Zoneout\n"
              "from zoneout.nn.zoneout_noise import Zoneout as Same\n"
              "assert Zoneout is Same\n")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
