"""GRU and tanh/ReLU-RNN layers: exact nn.GRU / nn.RNN equivalence without noise, zoneout on h."""
import pytest
import torch
from torch import nn

from zoneout.nn.gru import GRU
from zoneout.nn.noise import RecurrentNoise, RecurrentNoiseSource
from zoneout.nn.rnn import RNN
from zoneout.regularizers import RecurrentDropout, StochasticDepth, Zoneout

H, I = 5, 3


class FixedHiddenMask(RecurrentNoiseSource):
    """Hands out given keep_hidden masks (one per layer) and records every noise() call."""

    def __init__(self, masks=None):
        super().__init__()
        self.masks, self.calls = masks, []

    def noise(self, seq_len, batch, hidden, device, training, layer=0):
        self.calls.append((seq_len, batch, hidden, training, layer))
        return RecurrentNoise(keep_hidden=None if self.masks is None else self.masks[layer])


def make_pair(kind, zoneout_hidden=0.0, **kwargs):
    """Our layer and the torch reference with identical parameters, in float64."""
    torch.manual_seed(0)
    if kind == "gru":
        reference, ours = nn.GRU(I, H, **kwargs), GRU(I, H, zoneout_hidden=zoneout_hidden, **kwargs)
    else:
        reference = nn.RNN(I, H, nonlinearity=kind, **kwargs)
        ours = RNN(I, H, nonlinearity=kind, zoneout_hidden=zoneout_hidden, **kwargs)
    ours.load_state_dict(reference.state_dict())
    return ours.double(), reference.double()


def reference_cell(kind, layer):
    """The torch single-step cell carrying `layer`'s parameters."""
    cell = nn.GRUCell(I, H) if kind == "gru" else nn.RNNCell(I, H, nonlinearity=kind)
    cell = cell.double()
    with torch.no_grad():
        for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
            getattr(cell, name).copy_(getattr(layer, f"{name}_l0"))
    return cell


def zoned_loop(cell, x, h0, keep):
    """h_t = keep * h_{t-1} + (1 - keep) * cell(x_t, h_{t-1}); keep a float or a (T, B, H) 0/1 tensor."""
    h, outputs = h0, []
    for t in range(x.shape[0]):
        k = keep[t] if isinstance(keep, torch.Tensor) else keep
        h = k * h + (1 - k) * cell(x[t], h)
        outputs.append(h)
    return torch.stack(outputs)


KINDS = ["gru", "tanh", "relu"]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("num_layers, bias, batch_first", [(1, True, False), (2, True, True), (2, False, False)])
def test_matches_torch_without_noise_forward_and_gradients(kind, num_layers, bias, batch_first):
    ours, reference = make_pair(kind, num_layers=num_layers, bias=bias, batch_first=batch_first)
    shape = (4, 6, I) if batch_first else (6, 4, I)
    x = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(num_layers, 4, H, dtype=torch.float64, requires_grad=True)
    results = []
    for module in (ours, reference):
        output, h_n = module(x, h0)
        (output.square().sum() + h_n.sin().sum()).backward()
        grads = [x.grad.clone(), h0.grad.clone()] + [p.grad.clone() for p in module.parameters()]
        x.grad, h0.grad = None, None
        results.append((output, h_n, grads))
    (out_a, h_a, grads_a), (out_b, h_b, grads_b) = results
    torch.testing.assert_close(out_a, out_b, rtol=0, atol=1e-12)
    torch.testing.assert_close(h_a, h_b, rtol=0, atol=1e-12)
    assert len(grads_a) == len(grads_b)
    for grad_a, grad_b in zip(grads_a, grads_b):
        torch.testing.assert_close(grad_a, grad_b, rtol=0, atol=1e-11)


@pytest.mark.parametrize("kind", KINDS)
def test_unbatched_input_and_default_state_match_torch(kind):
    ours, reference = make_pair(kind, num_layers=2)
    x = torch.randn(6, I, dtype=torch.float64)
    (out_a, h_a), (out_b, h_b) = ours(x), reference(x)
    assert out_a.shape == (6, H) and h_a.shape == (2, H)
    torch.testing.assert_close(out_a, out_b, rtol=0, atol=1e-12)
    torch.testing.assert_close(h_a, h_b, rtol=0, atol=1e-12)


@pytest.mark.parametrize("kind", KINDS)
def test_zoneout_mask_keeps_previous_hidden_units(kind):
    ours, _ = make_pair(kind)
    x, h0 = torch.randn(7, 4, I, dtype=torch.float64), torch.randn(1, 4, H, dtype=torch.float64)
    mask = torch.rand(7, 4, H) < 0.4
    ours.recurrent_regularizers.append(FixedHiddenMask([mask]))
    output, h_n = ours.train()(x, h0)
    expected = zoned_loop(reference_cell(kind, ours), x, h0[0], mask.double())
    torch.testing.assert_close(output, expected, rtol=0, atol=1e-12)
    assert torch.equal(h_n[0], output[-1])  # h_n is the zoned last state


@pytest.mark.parametrize("kind", KINDS)
def test_zoneout_eval_is_the_expectation(kind):
    ours, _ = make_pair(kind, zoneout_hidden=0.3)
    x, h0 = torch.randn(7, 4, I, dtype=torch.float64), torch.randn(1, 4, H, dtype=torch.float64)
    output, _ = ours.eval()(x, h0)
    expected = zoned_loop(reference_cell(kind, ours), x, h0[0], 0.3)
    torch.testing.assert_close(output, expected, rtol=0, atol=1e-12)
    torch.testing.assert_close(ours(x, h0)[0], output, rtol=0, atol=0)  # deterministic


@pytest.mark.parametrize("kind", KINDS)
def test_zoneout_probability_one_keeps_the_initial_state_forever(kind):
    ours, _ = make_pair(kind, zoneout_hidden=1.0, num_layers=2)
    x, h0 = torch.randn(9, 4, I, dtype=torch.float64), torch.randn(2, 4, H, dtype=torch.float64)
    output, h_n = ours.train()(x, h0)  # every mask draw is "keep"
    assert torch.equal(output, h0[1].expand(9, -1, -1)) and torch.equal(h_n, h0)
    output, h_n = ours.eval()(x, h0)  # expectation 1.0 * h_prev + 0.0 * h~ (float mixing: round-off only)
    torch.testing.assert_close(output, h0[1].expand(9, -1, -1), rtol=0, atol=1e-14)
    torch.testing.assert_close(h_n, h0, rtol=0, atol=1e-14)


@pytest.mark.parametrize("kind", KINDS)
def test_zoneout_training_keep_rate(kind):
    torch.manual_seed(0)
    ours, _ = make_pair(kind, zoneout_hidden=0.3)
    x, h0 = torch.randn(30, 64, I, dtype=torch.float64), torch.randn(1, 64, H, dtype=torch.float64)
    output, _ = ours.train()(x, h0)
    previous = torch.cat([h0, output[:-1]])
    kept = (output == previous)[previous != 0]  # a ReLU unit at 0 can also be recomputed as 0
    assert abs(kept.double().mean().item() - 0.3) < 0.03


def test_stochastic_depth_on_hidden_only_skips_whole_timesteps():
    torch.manual_seed(0)
    ours, _ = make_pair("gru")
    ours.recurrent_regularizers.append(StochasticDepth(0.5, cell=False))
    x, h0 = torch.randn(30, 32, I, dtype=torch.float64), torch.randn(1, 32, H, dtype=torch.float64)
    output, _ = ours.train()(x, h0)
    units_kept = (output == torch.cat([h0, output[:-1]])).sum(-1)
    assert set(units_kept.unique().tolist()) <= {0, H}
    expected = zoned_loop(reference_cell("gru", ours), x, h0[0], 0.5)
    torch.testing.assert_close(ours.eval()(x, h0)[0], expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("kind", KINDS)
def test_one_noise_draw_per_layer_and_forward_pass(kind):
    spy = FixedHiddenMask()
    layer = (GRU(I, H, num_layers=3, recurrent_regularizers=[spy]) if kind == "gru"
             else RNN(I, H, num_layers=3, nonlinearity=kind, recurrent_regularizers=[spy]))
    layer(torch.randn(6, 4, I))
    layer.eval()(torch.randn(6, 4, I))
    assert spy.calls == [(6, 4, H, True, 0), (6, 4, H, True, 1), (6, 4, H, True, 2),
                         (6, 4, H, False, 0), (6, 4, H, False, 1), (6, 4, H, False, 2)]


def test_zoneout_masks_are_independent_per_layer():
    torch.manual_seed(0)
    zoneout = Zoneout(hidden=0.5)
    first, second = (zoneout.noise(20, 8, H, "cpu", True, layer).keep_hidden for layer in (0, 1))
    assert not torch.equal(first, second)


@pytest.mark.parametrize("regularizer, name", [
    (RecurrentDropout(0.5), "RecurrentDropout"),
    (StochasticDepth(0.5), "StochasticDepth"),
    (Zoneout(cell=0.5, hidden=0.05), "Zoneout"),
])
@pytest.mark.parametrize("layer_class", [GRU, RNN])
def test_cell_noise_is_refused(layer_class, regularizer, name):
    with pytest.raises(ValueError, match=name):
        layer_class(I, H, recurrent_regularizers=[regularizer])


@pytest.mark.parametrize("make, field", [
    (lambda: GRU(I, H, zoneout_hidden=1.5), "zoneout_hidden"),
    (lambda: RNN(I, H, zoneout_hidden=-0.1), "zoneout_hidden"),
    (lambda: GRU(I, H, dropout=1.2), "dropout"),
    (lambda: RNN(I, H, nonlinearity="sigmoid"), "nonlinearity"),
    (lambda: GRU(I, 0), "hidden_size"),
    (lambda: RNN(I, H, num_layers=0), "num_layers"),
    (lambda: GRU(I, H)(torch.randn(5, 2, I + 1)), "input"),
    (lambda: GRU(I, H)(torch.randn(5, 2, I), torch.zeros(2, 2, H)), "hx"),
])
def test_invalid_settings_raise_value_error_naming_the_field(make, field):
    with pytest.raises(ValueError, match=field):
        make()


def test_dropout_between_layers_only_in_training():
    torch.manual_seed(0)
    with_dropout, without = GRU(I, H, num_layers=2, dropout=0.5), GRU(I, H, num_layers=2)
    without.load_state_dict(with_dropout.state_dict())
    x = torch.randn(5, 3, I)
    assert torch.equal(with_dropout.eval()(x)[0], without.eval()(x)[0])
    assert not torch.allclose(with_dropout.train()(x)[0], without.train()(x)[0])


def test_cell_noise_from_a_custom_source_is_refused_at_forward_time():
    class CellOnly(RecurrentNoiseSource):
        def noise(self, seq_len, batch, hidden, device, training, layer=0):
            return RecurrentNoise(keep_cell=0.5)

    layer = RNN(I, H, recurrent_regularizers=[CellOnly()])
    with pytest.raises(ValueError, match="CellOnly sets keep_cell"):
        layer(torch.randn(4, 2, I))
