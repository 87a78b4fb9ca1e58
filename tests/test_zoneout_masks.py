"""Zoneout masks as the LSTM actually applies them (docs/replication.md §1.3, §6 items 1, 4, 5).

The keep pattern is read off the recurrence itself: every call of reference.lstm_cell_step is
recorded, and a unit counts as kept at (t, b, j) when its new value equals its previous value bit
for bit. In float64 with random weights an updated unit never lands exactly on its old value, so
this observes keep-vs-update end to end (Zoneout's sampling AND the mixing in the cell), which is
what catches the original code's inverted "(1 - p)" convention.
"""
import math

import pytest
import torch

from zoneout import LSTM, ZoneoutLSTM
from zoneout.nn.noise import RecurrentNoise
from zoneout.nn.reference import lstm as reference
from zoneout.regularizers import Zoneout

F64 = torch.float64
SIGMAS = 5.0


@pytest.fixture
def recorded_steps(monkeypatch):
    """Every (h_prev, c_prev, h, c) the reference recurrence computes, in call order."""
    steps = []
    real_step = reference.lstm_cell_step

    def recording_step(gates, h_prev, c_prev, noise):
        h, c = real_step(gates, h_prev, c_prev, noise)
        steps.append((h_prev.detach(), c_prev.detach(), h.detach(), c.detach()))
        return h, c

    monkeypatch.setattr(reference, "lstm_cell_step", recording_step)
    return steps


def kept_patterns(model, steps, seq_len=10, batch=16):
    """Run one forward on random data; return per layer (kept_c, kept_h), bool (T, B, H)."""
    steps.clear()
    x = torch.randn(seq_len, batch, model.input_size, dtype=F64)
    # A random, non-zero initial state, so that keeping at t = 0 is as visible as at any other step.
    state_shape = (model.num_layers, batch, model.hidden_size)
    model(x, (torch.randn(state_shape, dtype=F64), torch.randn(state_shape, dtype=F64)))
    assert len(steps) == model.num_layers * seq_len, "reference.lstm_layer no longer calls lstm_cell_step per step"
    patterns = []
    for layer in range(model.num_layers):
        chunk = steps[layer * seq_len:(layer + 1) * seq_len]
        kept_c = torch.stack([c == c_prev for _, c_prev, _, c in chunk])
        kept_h = torch.stack([h == h_prev for h_prev, _, h, _ in chunk])
        patterns.append((kept_c, kept_h))
    return patterns


def assert_rate(events, probability, what):
    """The fraction of True in `events` is within SIGMAS binomial standard deviations of `probability`."""
    n = events.numel()
    rate = events.double().mean().item()
    tolerance = SIGMAS * math.sqrt(probability * (1 - probability) / n)
    assert abs(rate - probability) <= tolerance, f"{what}: rate {rate:.4f}, expected {probability} +- {tolerance:.4f}"


def assert_independent_halves(a, b, what):
    """Two independent Bernoulli(0.5) patterns disagree half the time; a repeated or shared one never does."""
    assert_rate(a != b, 0.5, what)


def random_layer_args(seq_len, batch, hidden, input_size=2, seed=0):
    """input, h0, c0, weight_ih, weight_hh, bias_ih, bias_hh for reference.lstm_layer, float64."""
    generator = torch.Generator().manual_seed(seed)
    rand = lambda *shape: torch.randn(*shape, generator=generator, dtype=F64)  # noqa: E731
    return (rand(seq_len, batch, input_size), rand(batch, hidden), rand(batch, hidden),
            rand(4 * hidden, input_size), rand(4 * hidden, hidden), rand(4 * hidden), rand(4 * hidden))


def zoneout_model(zoneout_cell, zoneout_hidden, num_layers=1, hidden=32):
    return ZoneoutLSTM(3, hidden, num_layers=num_layers, zoneout_cell=zoneout_cell, zoneout_hidden=zoneout_hidden,
                       impl="reference").to(F64).train()


# ---------------------------------------------------------------- 5. keep, not update, with probability z
@pytest.mark.parametrize("zoneout_cell,zoneout_hidden", [(0.9, 0.0), (0.1, 0.0), (0.0, 0.9), (0.0, 0.1)])
def test_units_keep_their_previous_value_with_probability_z(recorded_steps, zoneout_cell, zoneout_hidden):
    torch.manual_seed(10)
    [(kept_c, kept_h)] = kept_patterns(zoneout_model(zoneout_cell, zoneout_hidden), recorded_steps, seq_len=16)
    assert_rate(kept_c, zoneout_cell, "c_t == c_{t-1}")  # the inverted (1 - p) convention would give 1 - z
    assert_rate(kept_h, zoneout_hidden, "h_t == h_{t-1}")


# ---------------------------------------------------------------- 6. keep rate per p, for c and h separately
@pytest.mark.parametrize("zoneout_cell,zoneout_hidden", [(0.05, 0.5), (0.25, 0.95), (0.5, 0.05), (0.75, 0.25),
                                                         (0.95, 0.75)])
def test_empirical_keep_rate_over_many_masks(recorded_steps, zoneout_cell, zoneout_hidden):
    # Different z for c and h, so swapping the two masks also fails.
    torch.manual_seed(11)
    model = zoneout_model(zoneout_cell, zoneout_hidden, num_layers=2)
    patterns = [p for _ in range(3) for p in kept_patterns(model, recorded_steps)]
    assert_rate(torch.stack([c for c, _ in patterns]), zoneout_cell, "cell keep rate")
    assert_rate(torch.stack([h for _, h in patterns]), zoneout_hidden, "hidden keep rate")


def test_masks_are_fresh_per_timestep_example_unit_call_and_layer(recorded_steps):
    torch.manual_seed(12)
    model = zoneout_model(0.5, 0.5, num_layers=2, hidden=24)
    first_call = kept_patterns(model, recorded_steps, seq_len=12, batch=12)
    second_call = kept_patterns(model, recorded_steps, seq_len=12, batch=12)
    for name, index in (("cell", 0), ("hidden", 1)):
        for layer in range(2):
            kept = first_call[layer][index]
            assert_independent_halves(kept[1:], kept[:-1], f"{name} layer {layer}: per timestep")
            assert_independent_halves(kept[:, 1:], kept[:, :-1], f"{name} layer {layer}: per example")
            assert_independent_halves(kept[..., 1:], kept[..., :-1], f"{name} layer {layer}: per unit")
            assert_independent_halves(kept, second_call[layer][index], f"{name} layer {layer}: per forward call")
        assert_independent_halves(first_call[0][index], first_call[1][index], f"{name}: layer 0 vs layer 1")


# ---------------------------------------------------------------- 7. c and h have separate masks unless shared
def test_cell_and_hidden_masks_are_independent(recorded_steps):
    torch.manual_seed(13)
    model = zoneout_model(0.5, 0.5, num_layers=2)
    patterns = [p for _ in range(2) for p in kept_patterns(model, recorded_steps)]
    kept_c = torch.stack([c for c, _ in patterns]).double().flatten()
    kept_h = torch.stack([h for _, h in patterns]).double().flatten()
    correlation = torch.corrcoef(torch.stack([kept_c, kept_h]))[0, 1].item()
    assert abs(correlation) < SIGMAS / math.sqrt(kept_c.numel()), f"c/h keep correlation {correlation:.4f}"
    assert_independent_halves(kept_c, kept_h, "cell vs hidden")


def test_shared_mask_keeps_cell_and_hidden_together(recorded_steps):
    torch.manual_seed(14)
    model = LSTM(3, 32, num_layers=2, recurrent_regularizers=[Zoneout(0.5, 0.5, shared_mask=True)],
                 impl="reference").to(F64).train()
    for kept_c, kept_h in kept_patterns(model, recorded_steps):
        assert torch.equal(kept_c, kept_h)
        assert_rate(kept_c, 0.5, "shared keep rate")


# ---------------------------------------------------------------- the regularizer's own contract
def test_zoneout_noise_is_bool_masks_in_training_and_floats_in_eval():
    zoneout = Zoneout(cell=0.3, hidden=0.6)
    rng_before = torch.get_rng_state()
    assert zoneout.noise(5, 4, 3, "cpu", training=False) == RecurrentNoise(keep_cell=0.3, keep_hidden=0.6)
    assert torch.equal(torch.get_rng_state(), rng_before), "eval noise drew random numbers"
    noise = zoneout.noise(5, 4, 3, "cpu", training=True)
    for mask in (noise.keep_cell, noise.keep_hidden):
        assert mask.dtype == torch.bool and mask.shape == (5, 4, 3)
    assert noise.update_keep is None
    assert Zoneout(cell=0.0, hidden=0.2).noise(5, 4, 3, "cpu", training=True).keep_cell is None
    assert Zoneout(cell=0.0, hidden=0.2).noise(5, 4, 3, "cpu", training=False).keep_cell is None


# ---------------------------------------------------------------- 12. static mask
def test_static_mask_is_the_same_every_call_every_batch_and_in_eval(recorded_steps):
    torch.manual_seed(15)
    model = LSTM(3, 64, num_layers=2, recurrent_regularizers=[Zoneout(0.3, 0.6, static_mask=True)],
                 impl="reference").to(F64)
    model.train()
    first = kept_patterns(model, recorded_steps, seq_len=32, batch=4)
    second = kept_patterns(model, recorded_steps, seq_len=32, batch=7)
    model.eval()
    evaluated = kept_patterns(model, recorded_steps, seq_len=32, batch=5)
    for layer in range(2):
        for index, (name, probability) in enumerate((("cell", 0.3), ("hidden", 0.6))):
            pattern = first[layer][index][:, :1]  # (T, 1, H)
            for run, batch in ((first, 4), (second, 7), (evaluated, 5)):
                assert torch.equal(run[layer][index], pattern.expand(32, batch, 64)), f"{name} layer {layer}"
            assert_rate(pattern, probability, f"static {name} keep rate")
        assert not torch.equal(first[0][0], first[1][0][:, :4]), "layers share one static mask"


# ---------------------------------------------------------------- 11. stochastic-depth and static mask shapes broadcast
@pytest.mark.parametrize("field", ["keep_cell", "keep_hidden", "update_keep"])
@pytest.mark.parametrize("mask_shape", [(5, 3, 1), (5, 1, 4)])  # stochastic depth, static
def test_broadcast_masks_equal_their_expanded_form(field, mask_shape):
    x, h0, c0, weight_ih, weight_hh, bias_ih, bias_hh = random_layer_args(seq_len=5, batch=3, hidden=4, seed=4)
    mask = torch.rand(mask_shape, generator=torch.Generator().manual_seed(5)) < 0.5
    assert mask.any() and not mask.all()
    run = lambda m: reference.lstm_layer(x, h0, c0, weight_ih, weight_hh, bias_ih, bias_hh,  # noqa: E731
                                         RecurrentNoise(**{field: m}))
    for got, want in zip(run(mask), run(mask.expand(5, 3, 4).contiguous())):
        assert torch.equal(got, want)
    assert not torch.equal(run(mask)[0], run(None)[0])  # the mask did something


# ---------------------------------------------------------------- 12. probability validation
@pytest.mark.parametrize("field", ["zoneout_cell", "zoneout_hidden", "dropout"])
@pytest.mark.parametrize("value", [-0.1, 1.5])
def test_invalid_probability_raises_naming_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        ZoneoutLSTM(3, 4, impl="reference", **{field: value})


def test_shared_mask_needs_equal_probabilities():
    with pytest.raises(ValueError, match="shared_mask"):
        Zoneout(cell=0.2, hidden=0.3, shared_mask=True)
    assert Zoneout(cell=0.15, hidden=0.15, shared_mask=True).shared_mask
