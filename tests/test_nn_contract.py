"""What code written for nn.LSTM / nn.GRU / nn.RNN and their cells reads besides forward: the nn.RNNBase
surface (flatten_parameters, all_weights, _flat_weights, mode, proj_size, extra_repr), constructor
checks and warnings as nn's, a zero-size batch, double backward, and torch.jit.script."""
import warnings

import pytest
import torch
from torch import nn
from torch.func import functional_call

from zoneout import ZoneoutGRU, ZoneoutGRUCell, ZoneoutLSTM, ZoneoutLSTMCell
from zoneout.nn.csrc import cpu_ext
from zoneout.nn.rnn import RNN

F64 = torch.float64

# name -> (ours(impl, **kwargs), nn's(**kwargs)); both take nn's constructor keywords
LAYERS = {
    "lstm": (lambda impl="auto", **kw: ZoneoutLSTM(3, 4, zoneout_cell=0.2, zoneout_hidden=0.1, impl=impl, **kw),
             lambda **kw: nn.LSTM(3, 4, **kw)),
    "gru": (lambda impl="auto", **kw: ZoneoutGRU(3, 4, zoneout_hidden=0.1, impl=impl, **kw),
            lambda **kw: nn.GRU(3, 4, **kw)),
    "rnn": (lambda impl="auto", **kw: RNN(3, 4, zoneout_hidden=0.1, impl=impl, **kw), lambda **kw: nn.RNN(3, 4, **kw)),
    "rnn_relu": (lambda impl="auto", **kw: RNN(3, 4, nonlinearity="relu", zoneout_hidden=0.1, impl=impl, **kw),
                 lambda **kw: nn.RNN(3, 4, nonlinearity="relu", **kw)),
}
CELLS = {
    "lstm_cell": (lambda impl="auto", **kw: ZoneoutLSTMCell(3, 4, zoneout_cell=0.2, zoneout_hidden=0.1, impl=impl, **kw),
                  lambda **kw: nn.LSTMCell(3, 4, **kw)),
    "gru_cell": (lambda impl="auto", **kw: ZoneoutGRUCell(3, 4, zoneout_hidden=0.1, **kw),
                 lambda **kw: nn.GRUCell(3, 4, **kw)),
}
CONFIGS = [{}, {"bias": False}, {"num_layers": 2, "bidirectional": True}, {"num_layers": 2, "batch_first": True},
           {"num_layers": 3, "dropout": 0.5, "bidirectional": True, "bias": False}]


def flatten(out):
    for item in out if isinstance(out, (tuple, list)) else (out,):
        yield from flatten(item) if isinstance(item, (tuple, list)) else (item,)


def assert_same_outputs(got, expected, tolerance=0.0):
    for a, b in zip(flatten(got), flatten(expected), strict=True):
        torch.testing.assert_close(a, b, rtol=tolerance, atol=tolerance)


def needs_cpp():
    if cpu_ext.load() is None:
        pytest.skip(f"C++ kernels unavailable: {cpu_ext.error()}")


# ---------------------------------------------------------------- the nn.RNNBase surface
@pytest.mark.parametrize("config", CONFIGS, ids=repr)
@pytest.mark.parametrize("kind", sorted(LAYERS))
def test_weight_lists_name_and_hold_the_parameters_as_nn_does(kind, config):
    ours, theirs = LAYERS[kind][0](**config), LAYERS[kind][1](**config)
    assert ours._flat_weights_names == theirs._flat_weights_names
    assert [[tuple(w.shape) for w in ws] for ws in ours.all_weights] == \
           [[tuple(w.shape) for w in ws] for ws in theirs.all_weights]
    assert [w is getattr(ours, name) for w, name in zip(ours._flat_weights, ours._flat_weights_names)] == \
           [True] * len(ours._flat_weights_names)
    assert [w for ws in ours.all_weights for w in ws] == ours._flat_weights
    ours.double()  # a cast replaces the parameters: the lists follow, as nn's do
    assert all(w.dtype == F64 and w is getattr(ours, n) for w, n in zip(ours._flat_weights, ours._flat_weights_names))


@pytest.mark.parametrize("kind", sorted(LAYERS) + sorted(CELLS))
def test_flatten_parameters_is_a_no_op(kind):
    """Tacotron 2's encoder calls it in every forward: nothing to flatten, nothing changes."""
    module = {**LAYERS, **CELLS}[kind][0]().eval()
    x = torch.randn(5, 2, 3) if kind in LAYERS else torch.randn(2, 3)
    before = {name: (p.data_ptr(), p.detach().clone()) for name, p in module.named_parameters()}
    expected = module(x)
    assert module.flatten_parameters() is None
    for name, p in module.named_parameters():
        assert p.data_ptr() == before[name][0] and torch.equal(p, before[name][1])
    assert_same_outputs(module(x), expected)


@pytest.mark.parametrize("kind, mode", [("lstm", "LSTM"), ("gru", "GRU"), ("rnn", "RNN_TANH"), ("rnn_relu", "RNN_RELU"),
                                        ("lstm_cell", "LSTM"), ("gru_cell", "GRU")])
def test_mode_and_proj_size_as_nn(kind, mode):
    ours, theirs = {**LAYERS, **CELLS}[kind]
    assert ours().mode == mode and ours().proj_size == 0
    if kind in LAYERS:
        assert theirs().mode == mode and theirs().proj_size == 0


@pytest.mark.parametrize("config", CONFIGS, ids=repr)
@pytest.mark.parametrize("kind", sorted(LAYERS))
def test_extra_repr_is_nns_then_the_zoneout_fields(kind, config):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ours, theirs = LAYERS[kind][0](impl="reference", **config), LAYERS[kind][1](**config)
    assert ours.extra_repr().startswith(theirs.extra_repr() + ", zoneout_")
    assert "zoneout_hidden=0.1, impl='reference'" in ours.extra_repr()


@pytest.mark.parametrize("kind", sorted(CELLS))
@pytest.mark.parametrize("bias", [True, False])
def test_cell_extra_repr_is_nns_then_the_zoneout_fields(kind, bias):
    ours, theirs = CELLS[kind][0](bias=bias), CELLS[kind][1](bias=bias)
    assert ours.extra_repr().startswith(theirs.extra_repr() + ", zoneout_")
    assert "zoneout_hidden=0.1" in ours.extra_repr()


# ---------------------------------------------------------------- constructor checks as nn's
@pytest.mark.parametrize("kind", sorted(LAYERS))
@pytest.mark.parametrize("kwargs, error", [
    ({"bias": "False"}, TypeError), ({"bias": 0}, TypeError), ({"batch_first": 1}, TypeError),
    ({"input_size": 3.0}, TypeError), ({"hidden_size": 4.0}, TypeError), ({"hidden_size": 0}, ValueError),
    ({"input_size": -1}, ValueError), ({"num_layers": 0}, ValueError), ({"num_layers": 2.0}, TypeError),
    ({"dropout": 1.5}, ValueError),
], ids=repr)
def test_bad_constructor_arguments_raise_what_nn_raises(kind, kwargs, error):
    base = {"input_size": 3, "hidden_size": 4}
    theirs_class = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN, "rnn_relu": nn.RNN}[kind]
    ours_class = {"lstm": ZoneoutLSTM, "gru": ZoneoutGRU, "rnn": RNN, "rnn_relu": RNN}[kind]
    with pytest.raises(error):
        theirs_class(**{**base, **kwargs})  # nn's own behaviour: if torch changes it, this test says so first
    with pytest.raises(error):
        ours_class(**{**base, **kwargs})


@pytest.mark.parametrize("kind", sorted(LAYERS))
def test_dropout_with_one_layer_warns_as_nn_does(kind):
    ours, theirs = LAYERS[kind]
    for make in (theirs, ours):
        with pytest.warns(UserWarning, match="non-zero dropout expects num_layers greater than 1"):
            make(dropout=0.2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ours(dropout=0.2, num_layers=2)
        ours(dropout=0.0)


@pytest.mark.parametrize("make", [lambda **kw: ZoneoutGRU(3, 4, **kw), lambda **kw: RNN(3, 4, **kw),
                                  lambda **kw: nn.GRU(3, 4, **kw), lambda **kw: nn.RNN(3, 4, **kw)],
                         ids=["ours-gru", "ours-rnn", "nn-gru", "nn-rnn"])
@pytest.mark.parametrize("proj_size", [0, 2, 10])
def test_proj_size_on_a_gru_or_rnn_is_a_value_error_as_in_nn(make, proj_size):
    with pytest.raises(ValueError, match="proj_size argument is only supported for LSTM"):
        make(proj_size=proj_size)


@pytest.mark.parametrize("proj_size, message", [(-1, "proj_size should be a positive integer or zero"),
                                                (4, "proj_size has to be smaller than hidden_size"),
                                                (2, "proj_size=2 is not supported")])
def test_lstm_proj_size_errors(proj_size, message):
    with pytest.raises(ValueError, match=message):
        ZoneoutLSTM(3, 4, proj_size=proj_size)


@pytest.mark.parametrize("kind", sorted(CELLS))
@pytest.mark.parametrize("kwargs, error", [({"bias": "False"}, TypeError), ({"input_size": 3.0}, TypeError),
                                           ({"hidden_size": 0}, ValueError)], ids=repr)
def test_bad_cell_arguments_are_refused(kind, kwargs, error):
    make = {"lstm_cell": ZoneoutLSTMCell, "gru_cell": ZoneoutGRUCell}[kind]
    with pytest.raises(error):
        make(**{"input_size": 3, "hidden_size": 4, **kwargs})


# ---------------------------------------------------------------- a zero-size batch
def _grads(module):
    return [p.grad for p in module.parameters()]


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("impl", ["reference", "auto"])
@pytest.mark.parametrize("config", CONFIGS, ids=repr)
@pytest.mark.parametrize("kind", sorted(LAYERS))
def test_a_zero_size_batch_returns_and_backpropagates_what_nn_does(kind, config, impl, training):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ours, theirs = LAYERS[kind][0](impl=impl, **config), LAYERS[kind][1](**config)
    ours.train(training), theirs.train(training)
    shape = (0, 5, 3) if config.get("batch_first") else (5, 0, 3)
    results = []
    for module in (ours, theirs):
        x = torch.zeros(shape, requires_grad=True)
        output, state = module(x)
        states = state if isinstance(state, tuple) else (state,)
        (output.sum() + sum(s.sum() for s in states)).backward()
        results.append((output, states, x.grad, _grads(module)))
    (output, states, x_grad, grads), (nn_output, nn_states, nn_x_grad, nn_grads) = results
    assert output.shape == nn_output.shape and output.dtype == nn_output.dtype
    assert [s.shape for s in states] == [s.shape for s in nn_states]
    assert x_grad.shape == nn_x_grad.shape
    assert all(g is not None and torch.equal(g, torch.zeros_like(g)) for g in grads)
    assert [g.shape for g in grads] == [g.shape for g in nn_grads]


@pytest.mark.parametrize("with_state", [False, True])
@pytest.mark.parametrize("impl", ["reference", "auto"])
@pytest.mark.parametrize("kind", sorted(CELLS))
def test_a_zero_size_batch_through_a_cell(kind, impl, with_state):
    ours, theirs = CELLS[kind][0](impl=impl), CELLS[kind][1]()
    lstm = kind == "lstm_cell"
    hx = None
    if with_state:
        hx = (torch.zeros(0, 4), torch.zeros(0, 4)) if lstm else torch.zeros(0, 4)
    for module in (ours, theirs):
        x = torch.zeros(0, 3, requires_grad=True)
        out = module(x, hx)
        outs = out if lstm else (out,)
        assert [o.shape for o in outs] == [torch.Size([0, 4])] * len(outs)
        sum(o.sum() for o in outs).backward()
        assert x.grad.shape == (0, 3)
    assert all(g is not None and torch.equal(g, torch.zeros_like(g)) for g in _grads(ours))


# ---------------------------------------------------------------- double backward
def _as_function(module):
    """module(x) as a function of x and every parameter, its outputs flattened into one vector."""
    names = [name for name, _ in module.named_parameters()]

    def run(x, *params):
        out = functional_call(module, dict(zip(names, params)), (x,))
        return torch.cat([o.flatten() for o in flatten(out)])
    return run, [p.detach().clone().requires_grad_() for p in module.parameters()]


SMALL_REFERENCE = {
    "lstm": lambda: ZoneoutLSTM(2, 2, zoneout_cell=0.3, zoneout_hidden=0.2, impl="reference", bidirectional=True),
    "gru": lambda: ZoneoutGRU(2, 2, zoneout_hidden=0.3, impl="reference", bidirectional=True),
    "rnn": lambda: RNN(2, 2, zoneout_hidden=0.3, impl="reference"),
    "lstm_cell": lambda: ZoneoutLSTMCell(2, 2, zoneout_cell=0.3, zoneout_hidden=0.2, impl="reference"),
    "gru_cell": lambda: ZoneoutGRUCell(2, 2, zoneout_hidden=0.3),
}


@pytest.mark.parametrize("kind", sorted(SMALL_REFERENCE))
def test_double_backward_of_the_reference_path_passes_gradgradcheck(kind):
    """Eval mode: the zoneout expectation is deterministic, so finite differences see one function."""
    module = SMALL_REFERENCE[kind]().to(F64).eval()
    x = torch.randn((3, 2, 2) if "cell" not in kind else (2, 2), dtype=F64, requires_grad=True)
    run, params = _as_function(module)
    assert torch.autograd.gradgradcheck(run, (x, *params), eps=1e-6, atol=1e-5)


def _fused_modules():
    return {"lstm": lambda: ZoneoutLSTM(3, 4, zoneout_cell=0.2, impl="fused"),
            "lstm_auto": lambda: ZoneoutLSTM(3, 4, zoneout_hidden=0.2, impl="auto", bidirectional=True),
            "lstm_cell": lambda: ZoneoutLSTMCell(3, 4, zoneout_cell=0.2, impl="auto"),
            "gru": lambda: ZoneoutGRU(3, 4, zoneout_hidden=0.2, impl="fused"),
            "rnn": lambda: RNN(3, 4, zoneout_hidden=0.2, impl="fused")}


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("kind", sorted(_fused_modules()))
def test_double_backward_through_the_fused_kernels_is_a_clear_error(kind, training):
    """A gradient penalty on the fused path must not get a None or constant gradient: it is refused,
    naming impl='reference'."""
    if kind in ("gru", "rnn"):
        needs_cpp()
    module = _fused_modules()[kind]().train(training)
    x = torch.randn((5, 2, 3) if kind != "lstm_cell" else (2, 3), requires_grad=True)
    out = module(x)[0]
    with pytest.raises(RuntimeError, match="double backward.*impl='reference'"):
        torch.autograd.grad(out.sum(), [x, *module.parameters()], create_graph=True)
    with pytest.raises(RuntimeError, match="double backward.*impl='reference'"):
        module(x)[0].pow(2).sum().backward(create_graph=True)
    module(x)[0].sum().backward()  # first order is untouched
    assert x.grad is not None and all(p.grad is not None for p in module.parameters())


# ---------------------------------------------------------------- torch.jit.script
@pytest.mark.parametrize("kind", sorted(LAYERS) + sorted(CELLS))
def test_jit_script_is_refused_pointing_to_trace_and_export(kind):
    module = {**LAYERS, **CELLS}[kind][0]()
    for target in (module, nn.Sequential(nn.Identity(), module)):
        with pytest.raises(RuntimeError, match=r"torch\.jit\.script.*torch\.jit\.trace.*torch\.export"):
            torch.jit.script(target)


@pytest.mark.parametrize("kind", sorted(LAYERS) + sorted(CELLS))
def test_jit_trace_still_works_on_every_module(kind):
    module = {**LAYERS, **CELLS}[kind][0]().eval()
    x = torch.randn(5, 2, 3) if kind in LAYERS else torch.randn(2, 3)
    traced = torch.jit.trace(module, (x,), check_trace=False)
    assert_same_outputs(traced(x), module(x), 1e-6)  # traced: the reference loop; eager: the fused kernels
