"""Edge cases where a layer must do what nn does: an empty sequence, a probability that is not a real
number, a state of another dtype. Each raises what nn raises for the same input (a RuntimeError, so code
written for nn catches it), and a ValueError as this library's errors always were."""
import numpy as np
import pytest
import torch
from torch import nn

from zoneout import ZoneoutGRU, ZoneoutGRUCell, ZoneoutLSTM, ZoneoutLSTMCell
from zoneout.nn.bn_lstm import BatchNormLSTM
from zoneout.nn.rnn import RNN

IMPLS = ["reference", "auto"]
LAYERS = {
    "lstm": (lambda impl: ZoneoutLSTM(3, 4, zoneout_cell=0.5, zoneout_hidden=0.05, impl=impl), lambda: nn.LSTM(3, 4)),
    "gru": (lambda impl: ZoneoutGRU(3, 4, zoneout_hidden=0.1, impl=impl), lambda: nn.GRU(3, 4)),
    "rnn": (lambda impl: RNN(3, 4, zoneout_hidden=0.1, impl=impl), lambda: nn.RNN(3, 4)),
}


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("kind", sorted(LAYERS))
@pytest.mark.parametrize("shape", [(0, 2, 3), (0, 3)], ids=["batched", "unbatched"])
def test_an_empty_sequence_is_refused_as_nn_refuses_it(kind, impl, shape):
    ours, theirs = LAYERS[kind]
    with pytest.raises(RuntimeError, match="sequence length"):
        theirs()(torch.zeros(shape))  # nn's own behaviour: if torch changes it, this test says so first
    layer = ours(impl)
    for mode in (layer.train, layer.eval):
        mode()
        with pytest.raises(RuntimeError, match="sequence length 0") as raised:
            layer(torch.zeros(shape))
        assert isinstance(raised.value, ValueError)


def test_an_empty_sequence_is_refused_by_the_batch_norm_lstm_too():
    with pytest.raises(ValueError, match="sequence length 0"):
        BatchNormLSTM(3, 4, max_length=5)(torch.zeros(0, 2, 3))


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("batch_first", [False, True])
def test_an_empty_batch_leaves_the_batch_norm_population_untouched(impl, batch_first):
    """An empty batch has no statistics: its NaN mean once went into every timestep's population, and
    every later evaluation gave NaN."""
    torch.manual_seed(0)
    layer = BatchNormLSTM(3, 4, num_layers=2, max_length=5, batch_first=batch_first, impl=impl)
    layer(torch.randn(2, 3, 3) if batch_first else torch.randn(3, 2, 3))  # some population to keep
    before = {name: buffer.clone() for name, buffer in layer.named_buffers()}
    empty = torch.zeros(0, 3, 3) if batch_first else torch.zeros(3, 0, 3)
    for mode in (layer.train, layer.eval):
        mode()
        output, (h_n, c_n) = layer(empty)
        assert output.shape == ((0, 3, 4) if batch_first else (3, 0, 4))
        assert h_n.shape == c_n.shape == (2, 0, 4)
    for name, buffer in layer.named_buffers():
        assert torch.equal(buffer, before[name]), name
    layer.eval()
    assert torch.isfinite(layer(torch.randn(3, 2, 3).transpose(0, 1) if batch_first else torch.randn(3, 2, 3))[0]).all()


@pytest.mark.parametrize("value", [True, False, "0.5", None, torch.tensor(0.5)], ids=repr)
@pytest.mark.parametrize("make", [
    lambda p: ZoneoutLSTM(3, 4, zoneout_hidden=p), lambda p: ZoneoutLSTM(3, 4, zoneout_cell=p),
    lambda p: ZoneoutLSTMCell(3, 4, zoneout_hidden=p), lambda p: ZoneoutGRU(3, 4, zoneout_hidden=p),
    lambda p: ZoneoutGRUCell(3, 4, zoneout_hidden=p), lambda p: ZoneoutLSTM(3, 4, num_layers=2, dropout=p),
], ids=["lstm-h", "lstm-c", "lstm-cell", "gru", "gru-cell", "dropout"])
def test_a_probability_must_be_a_real_number(make, value):
    """zoneout_hidden=True used to be taken as 1.0: every unit kept its initial zeros, all outputs zero."""
    with pytest.raises(ValueError, match="must be a probability in \\[0, 1\\] \\(a real number\\)"):
        make(value)


@pytest.mark.parametrize("value", [0, 1, 0.25, np.float32(0.5), np.float64(0.05)], ids=repr)
def test_real_numbers_of_any_type_are_probabilities(value):
    layer = ZoneoutLSTM(3, 4, zoneout_cell=value, zoneout_hidden=value)
    assert layer.zoneout_cell == layer.zoneout_hidden == float(value)
    assert isinstance(layer.zoneout_cell, float)


@pytest.mark.parametrize("impl", IMPLS)
def test_a_state_of_another_dtype_is_refused_as_nn_refuses_it(impl):
    x = torch.randn(5, 2, 3)
    h64 = torch.zeros(1, 2, 4, dtype=torch.float64)
    with pytest.raises(RuntimeError):
        nn.LSTM(3, 4)(x, (h64, h64))
    for layer, hx in [(ZoneoutLSTM(3, 4, impl=impl), (h64, torch.zeros(1, 2, 4))),
                      (ZoneoutLSTM(3, 4, impl=impl), (torch.zeros(1, 2, 4), h64)),
                      (ZoneoutGRU(3, 4, impl=impl), h64), (RNN(3, 4, impl=impl), h64)]:
        with pytest.raises(RuntimeError, match="dtype torch.float64 does not match the parameters' torch.float32") as raised:
            layer(x, hx)
        assert isinstance(raised.value, ValueError)


def test_a_cell_state_of_another_dtype_is_refused_as_nn_refuses_it():
    x, h64, h32 = torch.randn(2, 3), torch.zeros(2, 4, dtype=torch.float64), torch.zeros(2, 4)
    with pytest.raises(RuntimeError):
        nn.LSTMCell(3, 4)(x, (h64, h64))
    with pytest.raises(RuntimeError, match="c dtype torch.float64"):
        ZoneoutLSTMCell(3, 4)(x, (h32, h64))
    with pytest.raises(RuntimeError, match="hx dtype torch.float64"):
        ZoneoutGRUCell(3, 4)(x, h64)


def test_a_state_in_the_parameters_dtype_is_used_as_given():
    layer = ZoneoutLSTM(3, 4, dtype=torch.float64, impl="reference").eval()
    x, h0 = torch.randn(5, 2, 3, dtype=torch.float64), torch.randn(1, 2, 4, dtype=torch.float64)
    output, (h_n, c_n) = layer(x, (h0, h0))
    assert output.dtype == h_n.dtype == c_n.dtype == torch.float64


@pytest.mark.parametrize("impl", IMPLS)
def test_shape_errors_are_runtime_errors_like_nn(impl):
    """`except RuntimeError` in code written for nn.LSTM sees our refusals too."""
    layer = ZoneoutLSTM(3, 4, impl=impl)
    for bad in [lambda: layer(torch.randn(5, 2, 7)), lambda: layer(torch.randn(5, 2, 3), (torch.zeros(2, 2, 4),) * 2),
                lambda: ZoneoutLSTMCell(3, 4)(torch.randn(2, 7)),
                lambda: ZoneoutLSTMCell(3, 4)(torch.randn(2, 3), (torch.zeros(3, 4),) * 2)]:
        with pytest.raises(RuntimeError) as raised:
            bad()
        assert isinstance(raised.value, ValueError)
