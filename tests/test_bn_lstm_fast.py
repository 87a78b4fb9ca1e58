"""The fast recurrent-BN LSTM (zoneout/nn/fused/bn_lstm_function.py) against the reference loop in float64:
outputs, final states, every gradient and every population buffer, with the same masks; eval with the
population (past max_length too); recalibration; fallbacks; and the model the BN rows build uses it."""
from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from helpers import bools
from hydra import compose, initialize_config_dir

import zoneout.nn.reference as reference_loops
from zoneout.models.build import build_model
from zoneout.nn import dispatch
from zoneout.nn.bn_lstm import BatchNormLSTM, StepwiseBatchNorm, recalibrate_population
from zoneout.nn.csrc import cpu_ext
from zoneout.nn.fused import bn_lstm_function, bn_torch_kernels
from zoneout.nn.noise import RecurrentNoise, RecurrentNoiseSource

ROOT = Path(__file__).resolve().parent.parent
I, H, B = 3, 6, 5
TIGHT = dict(rtol=0, atol=1e-10)


@pytest.fixture(params=["cpp", "torch"], autouse=True)
def kernels(request, monkeypatch):
    """Every test runs on both kernel sets (the PyTorch-op ones are also the CUDA path)."""
    if request.param == "cpp" and cpu_ext.load(extension=cpu_ext.BN_LSTM) is None:
        pytest.skip(f"C++ kernels unavailable: {cpu_ext.error(cpu_ext.BN_LSTM)}")
    monkeypatch.setitem(bn_lstm_function.options, "cpu_kernels", request.param)
    return request.param


class FixedNoise(RecurrentNoiseSource):
    """The same masks for every layer and call (training); `eval_noise` in eval."""

    def __init__(self, noise, eval_noise=None):
        super().__init__()
        self.fixed, self.eval_noise = noise, eval_noise or RecurrentNoise()

    def noise(self, seq_len, batch, hidden, device, training, layer=0):
        return self.fixed if training else self.eval_noise


def bernoulli(p, *shape, seed):
    return bools(shape, p, seed)


def masks(kind, T):
    """RecurrentNoise of one kind for T steps (bool masks as the regularizers draw them)."""
    cell, hidden = bernoulli(0.3, T, B, H, seed=1), bernoulli(0.2, T, B, H, seed=2)
    update = bernoulli(0.6, T, B, H, seed=3)
    return {
        "none": RecurrentNoise(),
        "zoneout": RecurrentNoise(keep_cell=cell, keep_hidden=hidden),
        "shared zoneout": RecurrentNoise(keep_cell=cell, keep_hidden=cell),
        "recurrent dropout": RecurrentNoise(update_keep=update),
        "all three": RecurrentNoise(keep_cell=cell, keep_hidden=hidden, update_keep=update),
        "stochastic depth": RecurrentNoise(keep_cell=bernoulli(0.4, T, B, 1, seed=4),
                                           keep_hidden=bernoulli(0.4, T, B, 1, seed=4)),
        "static": RecurrentNoise(keep_cell=bernoulli(0.5, 1, 1, H, seed=5).expand(T, 1, H)),
    }[kind]


def pair(num_layers=2, max_length=5, noise=RecurrentNoise(), eval_noise=None, **kwargs):
    """(reference, fast) float64 models with equal parameters, gammas/betas/biases moved off their init."""
    torch.manual_seed(0)
    reference = BatchNormLSTM(I, H, num_layers=num_layers, max_length=max_length, impl="reference",
                              recurrent_regularizers=[FixedNoise(noise, eval_noise)], **kwargs).double()
    with torch.no_grad():
        for parameter in reference.parameters():
            if parameter.dim() == 1:
                parameter.add_(0.05 * torch.randn_like(parameter))
    fast = copy.deepcopy(reference)
    fast.impl = "fused"
    return reference, fast


def inputs(T, layers=2, seed=7):
    g = torch.Generator().manual_seed(seed)
    draw = lambda *shape: torch.randn(*shape, generator=g, dtype=torch.float64)  # noqa: E731
    return draw(T, B, I), draw(layers, B, H), draw(layers, B, H)


def training_step(model, x, h0, c0, weights):
    """Forward, a loss weighing every output and final state differently, backward. Returns everything."""
    x, h0, c0 = (t.clone().requires_grad_() for t in (x, h0, c0))
    output, (h_n, c_n) = model(x, (h0, c0))
    loss = (output * weights[0]).sum() + (h_n * weights[1]).sum() + (c_n * weights[2]).sum()
    loss.backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters()}
    return (output.detach(), h_n.detach(), c_n.detach()), (x.grad, h0.grad, c0.grad), grads


def loss_weights(T, layers=2, seed=8):
    g = torch.Generator().manual_seed(seed)
    shapes = ((T, B, H), (layers, B, H), (layers, B, H))
    return [torch.randn(*shape, generator=g, dtype=torch.float64) for shape in shapes]


def assert_same_buffers(reference, fast):
    for (name, mine), (_, theirs) in zip(fast.named_buffers(), reference.named_buffers()):
        if mine.is_floating_point():
            torch.testing.assert_close(mine, theirs, **TIGHT, msg=name)
        else:
            assert torch.equal(mine, theirs), name


def assert_same_step(reference, fast, x, h0, c0, weights):
    (out_r, hn_r, cn_r), inputs_r, grads_r = training_step(reference, x, h0, c0, weights)
    (out_f, hn_f, cn_f), inputs_f, grads_f = training_step(fast, x, h0, c0, weights)
    torch.testing.assert_close(out_f, out_r, **TIGHT)
    torch.testing.assert_close((hn_f, cn_f), (hn_r, cn_r), **TIGHT)
    for name, mine, theirs in zip(("input", "h0", "c0"), inputs_f, inputs_r):
        torch.testing.assert_close(mine, theirs, **TIGHT, msg=f"grad of {name}")
    assert grads_f.keys() == grads_r.keys()
    for name in grads_r:
        torch.testing.assert_close(grads_f[name], grads_r[name], **TIGHT, msg=f"grad of {name}")
    assert_same_buffers(reference, fast)


@pytest.mark.parametrize("kind", ["none", "zoneout", "shared zoneout", "recurrent dropout", "all three",
                                  "stochastic depth", "static"])
def test_training_steps_match_the_reference(kind):
    T = 7  # longer than max_length 5: the last steps use batch statistics but have no population slot
    reference, fast = pair(noise=masks(kind, T))
    x, h0, c0 = inputs(T)
    for step in range(2):  # the second step sees the population updated by the first
        assert_same_step(reference, fast, x + step, h0, c0, loss_weights(T, seed=8 + step))
    assert fast.bn_c_l1.updates.tolist() == [2] * 5 and fast.bn_ih_l0.steps_tracked.item() == 5


def test_a_per_timestep_mask_pattern_catches_timestep_offsets_in_backward():
    """Masks that differ completely from one step to the next (all kept / none kept / per unit), and a loss
    on one timestep only: any step of the backward reading its neighbour's mask or statistics shows."""
    T = 6
    keep_hidden = torch.zeros(T, B, H, dtype=torch.bool)
    keep_hidden[1::3] = True
    keep_cell = torch.zeros(T, B, H, dtype=torch.bool)
    keep_cell[2::3] = True
    keep_cell[4, :, : H // 2] = False
    update_keep = torch.ones(T, B, H, dtype=torch.bool)
    update_keep[0::3] = False
    update_keep[3, :2] = True
    reference, fast = pair(noise=RecurrentNoise(keep_cell, keep_hidden, update_keep), max_length=T)
    x, h0, c0 = inputs(T)
    weights = loss_weights(T)
    weights[0][:4].zero_()
    weights[0][5:].zero_()  # the loss sees the output of timestep 4 and the final states only
    assert_same_step(reference, fast, x, h0, c0, weights)


@pytest.mark.parametrize("plain_average, warmup", [(False, True), (False, False), (True, True)])
def test_population_update_rules_match(plain_average, warmup):
    reference, fast = pair(num_layers=1, population_warmup=warmup, momentum=0.3)
    for model in (reference, fast):
        for bn in model.modules():
            if isinstance(bn, StepwiseBatchNorm):
                bn.plain_average = plain_average
    for seed in range(4):  # T 3, 4, 5, 6: slots filled unevenly, steps_tracked grows then caps
        x, h0, c0 = inputs(3 + seed, layers=1, seed=seed)
        for model in (reference, fast):
            model(x, (h0, c0))
        assert_same_buffers(reference, fast)


def test_eval_uses_the_population_like_the_reference_past_max_length_and_trained_length():
    noise = masks("all three", 4)
    eval_noise = RecurrentNoise(keep_cell=0.3, keep_hidden=0.2, update_keep=0.6)  # the expectations
    reference, fast = pair(noise=noise, eval_noise=eval_noise, max_length=6)
    x, h0, c0 = inputs(4)
    for model in (reference, fast):
        model(x, (h0, c0))  # trained on 4 of 6 slots
        model.eval()
    for T in (3, 9):  # 9: past the trained length and past max_length
        x, h0, c0 = inputs(T, seed=20 + T)
        with torch.no_grad():
            expected, (h_r, c_r) = reference(x, (h0, c0))
            output, (h_f, c_f) = fast(x, (h0, c0))
        torch.testing.assert_close(output, expected, **TIGHT)
        torch.testing.assert_close((h_f, c_f), (h_r, c_r), **TIGHT)
    assert_same_buffers(reference, fast)  # eval leaves the population alone
    # gradients in eval (population statistics: no batch-statistics terms in the BN backward)
    x, h0, c0 = inputs(9, seed=30)
    assert_same_step(reference, fast, x, h0, c0, loss_weights(9))


def test_recalibration_matches_the_reference():
    reference, fast = pair(momentum=0.3)
    batches = [inputs(4, seed=40 + k) for k in range(3)]
    for model in (reference, fast):
        model(*inputs(4, seed=1)[:1])  # some history to forget
        assert recalibrate_population(model, lambda batch, m=model: m(batch[0], (batch[1], batch[2])), batches) == 3
    assert_same_buffers(reference, fast)


def test_float32_agrees_with_the_reference():
    reference, fast = pair(noise=masks("all three", 5))
    reference.float(), fast.float()
    x, h0, c0 = (t.float() for t in inputs(5))
    results = []
    for model in (reference, fast):
        x_ = x.clone().requires_grad_()
        output, _ = model(x_, (h0, c0))
        output.square().sum().backward()
        results.append((output, x_.grad, model.weight_hh_l0.grad, model.bn_c_l1.weight.grad))
    for mine, theirs in zip(results[1], results[0]):
        torch.testing.assert_close(mine, theirs, rtol=1e-4, atol=1e-5)


def spy_reference(monkeypatch):
    """Record every run of the reference loop: as impl="reference" (dispatch) or as the fast path's fallback."""
    calls = []
    original = reference_loops.bn_lstm_layer

    def spy(*args):
        calls.append(args[0].dtype)
        return original(*args)
    monkeypatch.setattr(reference_loops, "bn_lstm_layer", spy)
    monkeypatch.setitem(dispatch.LAYERS["bn_lstm"], "reference", spy)
    return calls


def test_unsupported_inputs_fall_back_to_the_reference(monkeypatch):
    calls = spy_reference(monkeypatch)
    reference, fast = pair(num_layers=1)
    x, h0, c0 = inputs(4, layers=1)
    fast(x, (h0, c0))
    assert calls == []
    float_mask = RecurrentNoise(keep_cell=torch.full((4, B, H), 0.5, dtype=torch.float64))  # not a bool mask
    fast.recurrent_regularizers[0].fixed = float_mask
    reference.recurrent_regularizers[0].fixed = float_mask
    torch.testing.assert_close(fast(x, (h0, c0))[0], reference(x, (h0, c0))[0], **TIGHT)
    assert calls == [torch.float64, torch.float64]  # the fast model fell back (and the reference ran)
    fast.recurrent_regularizers[0].fixed = RecurrentNoise()
    fast.bfloat16()(x.bfloat16(), (h0.bfloat16(), c0.bfloat16()))
    assert calls[-1] == torch.bfloat16


@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::torch.jit.TracerWarning")
def test_tracing_runs_the_reference(monkeypatch):
    calls = spy_reference(monkeypatch)
    _, fast = pair(num_layers=1)
    fast.eval()
    x, h0, c0 = inputs(3, layers=1)
    torch.jit.trace(fast, (x, (h0, c0)), check_trace=False)
    assert calls


def test_impl_setting():
    with pytest.raises(ValueError, match="impl"):
        BatchNormLSTM(I, H, impl="fast")
    assert BatchNormLSTM(I, H).impl == "auto" and "impl='auto'" in repr(BatchNormLSTM(I, H))


def test_disabled_extension_uses_the_pytorch_kernels(monkeypatch):
    monkeypatch.setattr(cpu_ext, "_state", {})
    monkeypatch.setenv("ZONEOUT_FUSED_CPP", "0")
    monkeypatch.setitem(bn_lstm_function.options, "cpu_kernels", "auto")
    assert bn_lstm_function.kernels_for(torch.device("cpu")) is bn_torch_kernels
    monkeypatch.setitem(bn_lstm_function.options, "cpu_kernels", "cpp")
    with pytest.raises(RuntimeError, match="unavailable"):
        bn_lstm_function.kernels_for(torch.device("cpu"))


@pytest.mark.parametrize("experiment, vocab", [("ptb_char/recurrent_batchnorm", 50),
                                               ("pmnist/batchnorm_zoneout", None)])
def test_the_bn_rows_models_train_on_the_fast_path(experiment, vocab, monkeypatch, kernels):
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        cfg = compose("config", overrides=[f"experiment={experiment}", "scale=quick"])
    assert cfg.model.impl == "auto"
    model_cfg = cfg.model.copy()
    model_cfg.hidden_size = 8
    model = build_model(model_cfg, cfg.regularizer, vocab, vocab or 10, 784 if vocab is None else 100).train()
    reference_calls = spy_reference(monkeypatch)
    applied = []
    original = bn_lstm_function.BNLSTMFunction.apply
    monkeypatch.setattr(bn_lstm_function.BNLSTMFunction, "apply", lambda *args: applied.append(args[-1]) or original(*args))
    if vocab is None:
        logits = model(torch.rand(3, 20))[0]
    else:
        logits = model(torch.randint(vocab, (3, 12)), None)[0]
    logits.square().mean().backward()
    expected_kernels = bn_torch_kernels if kernels == "torch" else bn_lstm_function._cpp["kernels"]
    assert applied == [expected_kernels] * cfg.model.num_layers and reference_calls == []
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
