"""Baseline regularizers: mask statistics, eval expectations, exact penalty values, weight-noise semantics."""
import math

import pytest
import torch
from torch import nn

from zoneout.nn import LSTM
from zoneout.nn.bn_lstm import BatchNormLSTM
from zoneout.nn.gru import GRU
from zoneout.nn.noise import RecurrentNoiseSource
from zoneout.regularizers import NormStabilizer, RecurrentDropout, SequenceDropout, StochasticDepth, WeightNoise, Zoneout, norm_stabilizer_penalty


def manual_lstm(lstm, x, h0, c0, keep_cell=None, keep_hidden=None, update_scale=1.0):
    """Independent single-layer LSTM loop; keeps are floats (expectations) or float (T,B,*) 0/1 masks."""
    weight_ih, weight_hh = lstm.weight_ih_l0, lstm.weight_hh_l0
    bias = lstm.bias_ih_l0 + lstm.bias_hh_l0
    mix = lambda keep, prev, new: new if keep is None else keep * prev + (1 - keep) * new  # noqa: E731
    pick = lambda keep, t: keep[t] if isinstance(keep, torch.Tensor) else keep  # noqa: E731
    h, c, outputs = h0, c0, []
    for t in range(x.shape[0]):
        i, f, g, o = (x[t] @ weight_ih.T + h @ weight_hh.T + bias).chunk(4, -1)
        c_new = torch.sigmoid(f) * c + pick(update_scale, t) * torch.sigmoid(i) * torch.tanh(g)
        h_new = torch.sigmoid(o) * torch.tanh(c_new)
        c, h = mix(pick(keep_cell, t), c, c_new), mix(pick(keep_hidden, t), h, h_new)
        outputs.append(h)
    return torch.stack(outputs), h, c


def lstm_inputs(T=6, B=4, I=3, H=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    draw = lambda *shape: torch.randn(*shape, generator=g, dtype=torch.float64)  # noqa: E731
    return draw(T, B, I), draw(1, B, H), draw(1, B, H)


# ---------------------------------------------------------------- recurrent dropout

def test_recurrent_dropout_mask_drops_update_with_probability_p():
    torch.manual_seed(0)
    noise = RecurrentDropout(0.3).noise(50, 40, 30, "cpu", training=True)
    assert noise.keep_cell is None and noise.keep_hidden is None
    assert noise.update_keep.shape == (50, 40, 30) and noise.update_keep.dtype == torch.bool
    assert abs(noise.update_keep.float().mean().item() - 0.7) < 0.01  # keep rate 1 - p
    again = RecurrentDropout(0.3).noise(50, 40, 30, "cpu", training=True)
    assert not torch.equal(noise.update_keep, again.update_keep)  # fresh per forward pass


def test_recurrent_dropout_eval_scales_update_by_keep_probability():
    x, h0, c0 = lstm_inputs()
    lstm = LSTM(3, 5, recurrent_regularizers=[RecurrentDropout(0.4)], impl="reference").double().eval()
    output, (h_n, c_n) = lstm(x, (h0, c0))
    expected, h_T, c_T = manual_lstm(lstm, x, h0[0], c0[0], update_scale=0.6)
    torch.testing.assert_close(output, expected, rtol=0, atol=1e-12)
    torch.testing.assert_close(c_n[0], c_T, rtol=0, atol=1e-12)
    torch.testing.assert_close(lstm(x, (h0, c0))[0], output, rtol=0, atol=0)  # deterministic


def test_recurrent_dropout_p1_drops_every_update_in_training():
    x, h0, c0 = lstm_inputs()
    lstm = LSTM(3, 5, recurrent_regularizers=[RecurrentDropout(1.0)], impl="reference").double().train()
    output, (_, c_n) = lstm(x, (h0, c0))
    expected, _, c_T = manual_lstm(lstm, x, h0[0], c0[0], update_scale=0.0)  # c_t = f * c_{t-1} only
    torch.testing.assert_close(output, expected, rtol=0, atol=1e-12)
    torch.testing.assert_close(c_n[0], c_T, rtol=0, atol=1e-12)
    zero_state = torch.zeros_like(c0)
    output, (_, c_n) = lstm(x, (zero_state, zero_state))  # c stays 0, so h = o * tanh(0) = 0
    assert torch.count_nonzero(output) == 0 and torch.count_nonzero(c_n) == 0


def test_recurrent_dropout_p0_is_no_noise():
    dropout = RecurrentDropout(0.0)
    assert dropout.noise(3, 2, 4, "cpu", training=True).update_keep is None
    assert dropout.noise(3, 2, 4, "cpu", training=False).update_keep is None


# ---------------------------------------------------------------- stochastic depth

def test_stochastic_depth_mask_is_one_draw_per_timestep_and_example():
    torch.manual_seed(0)
    noise = StochasticDepth(0.3).noise(200, 64, 32, "cpu", training=True)
    keep = noise.keep_hidden
    assert keep.shape == (200, 64, 1) and keep.dtype == torch.bool  # broadcast over units
    assert noise.keep_cell is keep  # the same tensor for c and h: a whole timestep is skipped
    assert abs(keep.float().mean().item() - 0.3) < 0.02
    assert (keep.any(0) & ~keep.all(0)).float().mean() > 0.99  # varies across time for almost every example
    assert (keep.any(1) & ~keep.all(1)).float().mean() > 0.99  # varies across examples at almost every t


def test_stochastic_depth_skips_whole_timesteps_in_lstm():
    torch.manual_seed(1)
    T, B, H = 40, 64, 8
    x, h0, c0 = lstm_inputs(T, B, 3, H, seed=1)
    lstm = LSTM(3, H, recurrent_regularizers=[StochasticDepth(0.5)], impl="reference").double().train()
    output, _ = lstm(x, (h0, c0))
    previous = torch.cat([h0, output[:-1]])
    units_kept = (output == previous).sum(-1)  # (T, B)
    assert set(units_kept.unique().tolist()) <= {0, H}  # all units of a timestep or none
    assert abs((units_kept == H).float().mean().item() - 0.5) < 0.05


def test_stochastic_depth_eval_is_expectation():
    x, h0, c0 = lstm_inputs()
    for cell, expected_cell in ((True, 0.3), (False, None)):
        lstm = LSTM(3, 5, recurrent_regularizers=[StochasticDepth(0.3, cell=cell)], impl="reference").double().eval()
        output, (_, c_n) = lstm(x, (h0, c0))
        expected, _, c_T = manual_lstm(lstm, x, h0[0], c0[0], keep_cell=expected_cell, keep_hidden=0.3)
        torch.testing.assert_close(output, expected, rtol=0, atol=1e-12)
        torch.testing.assert_close(c_n[0], c_T, rtol=0, atol=1e-12)


def test_stochastic_depth_hidden_only_option():
    noise = StochasticDepth(0.5, cell=False).noise(4, 3, 2, "cpu", training=True)
    assert noise.keep_cell is None and noise.keep_hidden.shape == (4, 3, 1)
    with pytest.raises(ValueError, match="stochastic_depth"):
        StochasticDepth(0.5, cell=False, hidden=False)


# ---------------------------------------------------------------- weight noise

class TwoReads(nn.Module):
    """Reads its weight at two 'timesteps' of one call, and has a bias."""

    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(30, 20))
        self.bias = nn.Parameter(torch.randn(30))

    def forward(self, x):
        return torch.stack([x @ self.weight.T + self.bias for _ in range(2)])


def test_weight_noise_is_absent_in_eval():
    model, x = TwoReads().eval(), torch.randn(4, 20)
    assert torch.equal(WeightNoise(0.5)(model, x), model(x))


def test_weight_noise_statistics_and_sharing_in_training():
    torch.manual_seed(0)
    model, noise = TwoReads().train(), WeightNoise(0.075)
    identity = torch.eye(20)  # row k of the output reads column k of the noisy W
    out = noise(model, identity)
    assert torch.equal(out[0], out[1])  # the same noisy W at every timestep of a call
    eps = (out[0] - model.bias).T - model.weight  # the noise drawn for this call
    assert abs(eps.std().item() - 0.075) < 0.01 and abs(eps.mean().item()) < 0.01
    second = noise(model, identity)
    assert not torch.equal(out, second)  # resampled every call (minibatch)
    same_inputs = noise(model, torch.ones(5, 20))
    assert torch.allclose(same_inputs[0], same_inputs[0][:1].expand(5, -1))  # same W for every example
    bias_only = noise(model, torch.zeros(3, 20))
    assert torch.equal(bias_only[0], model.bias.expand(3, -1))  # biases carry no noise


def test_weight_noise_gradients_reach_clean_weights_and_model_is_untouched():
    torch.manual_seed(0)
    model = TwoReads().train()
    weight_before = model.weight.detach().clone()
    x = torch.randn(7, 20)
    WeightNoise(0.3)(model, x).sum().backward()
    # d/dW of sum(x (W + eps)^T + b) over 2 reads is 2 * sum_n x_n for every output row
    torch.testing.assert_close(model.weight.grad, 2 * x.sum(0).expand(30, -1))
    torch.testing.assert_close(model.bias.grad, torch.full((30,), 14.0))
    assert torch.equal(model.weight.detach(), weight_before)
    assert isinstance(model.weight, nn.Parameter)


def test_weight_noise_covers_weight_matrices_only():
    lstm = LSTM(3, 4, num_layers=2)
    expected = {"weight_ih_l0", "weight_hh_l0", "weight_ih_l1", "weight_hh_l1"}
    assert set(WeightNoise(0.1).noisy_parameters(lstm)) == expected
    bn_lstm = BatchNormLSTM(3, 4, max_length=5)  # BN gammas are named "weight" but are vectors
    assert set(WeightNoise(0.1).noisy_parameters(bn_lstm)) == {"weight_ih_l0", "weight_hh_l0"}
    model = nn.Sequential(nn.Embedding(10, 4), nn.Linear(4, 10))
    assert set(WeightNoise(0.1).noisy_parameters(model)) == {"0.weight", "1.weight"}


def test_weight_noise_runs_recurrent_layers_and_keeps_bn_buffer_updates():
    torch.manual_seed(0)
    gru, x = GRU(3, 4), torch.randn(5, 2, 3)
    noisy = WeightNoise(0.1)(gru.train(), x)[0]
    assert not torch.allclose(noisy, gru(x)[0])
    bn_lstm = BatchNormLSTM(3, 4, max_length=5).train()
    WeightNoise(0.1)(bn_lstm, torch.randn(5, 8, 3))
    assert bn_lstm.bn_hh_l0.steps_tracked.item() == 5
    assert not torch.equal(bn_lstm.bn_ih_l0.running_mean, torch.zeros(5, 16))


# ---------------------------------------------------------------- norm stabilizer

def test_norm_stabilizer_exact_value():
    hidden = torch.tensor([[[3.0, 4.0], [1.0, 0.0]],    # t=0: norms 5, 1
                           [[0.0, 1.0], [0.0, 2.0]],    # t=1: norms 1, 2
                           [[6.0, 8.0], [0.0, 0.0]]])   # t=2: norms 10, 0
    # example 0: ((1-5)^2 + (10-1)^2) / 3 = 97/3; example 1: ((2-1)^2 + (0-2)^2) / 3 = 5/3
    expected = 2.0 * (97 / 3 + 5 / 3) / 2
    assert math.isclose(norm_stabilizer_penalty(hidden, beta=2.0).item(), expected, rel_tol=1e-6)
    assert math.isclose(NormStabilizer(2.0)(hidden).item(), expected, rel_tol=1e-6)


def test_norm_stabilizer_matches_original_code_normalisation():
    hidden = torch.randn(99, 4, 6, dtype=torch.float64)  # 99 predicted steps -> 98 differences / 99
    norms = hidden.norm(dim=-1)
    per_sequence = sum((norms[t] - norms[t - 1]) ** 2 for t in range(1, 99)) / 99
    torch.testing.assert_close(norm_stabilizer_penalty(hidden, 50.0), 50.0 * per_sequence.mean())
    assert norm_stabilizer_penalty(hidden[:1], 50.0).item() == 0.0  # one state: nothing to stabilise


def test_norm_stabilizer_gradient_is_finite_at_zero_states():
    hidden = torch.zeros(3, 2, 4, requires_grad=True)
    norm_stabilizer_penalty(hidden, 50.0).backward()
    assert torch.isfinite(hidden.grad).all()


# ---------------------------------------------------------------- non-recurrent dropout

def test_sequence_dropout_standard_mask_is_fresh_per_element():
    torch.manual_seed(0)
    out = SequenceDropout(0.25).train()(torch.ones(50, 40, 30, dtype=torch.float64))
    assert set(out.unique().tolist()) <= {0.0, 1 / 0.75}
    assert abs((out == 0).float().mean().item() - 0.25) < 0.01
    assert not torch.equal(out[0], out[1])  # a new mask at every timestep


@pytest.mark.parametrize("batch_first", [False, True])
def test_sequence_dropout_variational_mask_is_shared_across_time(batch_first):
    torch.manual_seed(0)
    shape = (200, 20, 100) if batch_first else (20, 200, 100)  # 20 timesteps
    x = torch.ones(shape, dtype=torch.float64)
    out = SequenceDropout(0.4, variational=True, batch_first=batch_first).train()(x)
    over_time = out if not batch_first else out.transpose(0, 1)
    assert torch.equal(over_time, over_time[:1].expand_as(over_time))  # constant across time
    assert abs((over_time[0] == 0).float().mean().item() - 0.4) < 0.02
    assert set(out.unique().tolist()) <= {0.0, 1 / 0.6}


def test_sequence_dropout_eval_identity_and_edge_probabilities():
    x = torch.randn(5, 3, 4)
    assert torch.equal(SequenceDropout(0.5).eval()(x), x)
    assert torch.equal(SequenceDropout(0.5, variational=True).eval()(x), x)
    assert torch.equal(SequenceDropout(0.0, variational=True).train()(x), x)
    assert torch.count_nonzero(SequenceDropout(1.0, variational=True).train()(x)) == 0


# ---------------------------------------------------------------- validation

@pytest.mark.parametrize("make, field", [
    (lambda: RecurrentDropout(1.5), "recurrent_dropout"),
    (lambda: RecurrentDropout(-0.1), "recurrent_dropout"),
    (lambda: StochasticDepth(1.01), "stochastic_depth"),
    (lambda: SequenceDropout(2.0), "dropout"),
    (lambda: WeightNoise(-0.1), "weight_noise"),
    (lambda: WeightNoise(float("nan")), "weight_noise"),
    (lambda: NormStabilizer(-1.0), "norm_stabilizer"),
    (lambda: norm_stabilizer_penalty(torch.zeros(3, 2), 1.0), "hidden_states"),
])
def test_invalid_settings_raise_value_error_naming_the_field(make, field):
    with pytest.raises(ValueError, match=field):
        make()


def test_recurrent_regularizers_are_noise_sources():
    for regularizer in (RecurrentDropout(0.5), StochasticDepth(0.5), Zoneout(0.5, 0.05)):
        assert isinstance(regularizer, RecurrentNoiseSource)
