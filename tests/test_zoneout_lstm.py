"""ZoneoutLSTM (impl="reference") against nn.LSTM and against the paper's equations (docs/replication.md §1.1-1.2, §6).

The expected values are computed here from the weights with an independent LSTM step, never by
calling zoneout.nn.reference, so a bug in the oracle cannot hide behind itself.
"""
import pytest
import torch
from torch import nn

from zoneout import ZoneoutLSTM
from zoneout.nn import reference
from zoneout.nn.noise import RecurrentNoise

F64 = torch.float64


# ---------------------------------------------------------------- independent LSTM written for these tests
def expected_step(x_t, h_prev, c_prev, weight_ih, weight_hh, bias, keep_c, keep_h, h_from_zoned_cell=False,
                  update_keep=1.0):
    """One step of the paper's zoneout LSTM; keep_* are floats (eval) or 0/1 float tensors (a fixed mask).
    `update_keep` multiplies the cell update i*g (recurrent dropout), 1 = let it through."""
    pre = x_t @ weight_ih.T + h_prev @ weight_hh.T + bias
    hidden = h_prev.shape[-1]
    i = torch.sigmoid(pre[..., :hidden])
    f = torch.sigmoid(pre[..., hidden:2 * hidden])
    g = torch.tanh(pre[..., 2 * hidden:3 * hidden])
    o = torch.sigmoid(pre[..., 3 * hidden:])
    c_candidate = f * c_prev + update_keep * i * g
    c = keep_c * c_prev + (1 - keep_c) * c_candidate
    h_candidate = o * torch.tanh(c if h_from_zoned_cell else c_candidate)  # the buggy variant reads the zoned c
    h = keep_h * h_prev + (1 - keep_h) * h_candidate
    return h, c


def layer_params(model, layer):
    weight_ih, weight_hh = getattr(model, f"weight_ih_l{layer}"), getattr(model, f"weight_hh_l{layer}")
    if model.bias:
        bias = getattr(model, f"bias_ih_l{layer}") + getattr(model, f"bias_hh_l{layer}")
    else:
        bias = torch.zeros(weight_ih.shape[0], dtype=weight_ih.dtype)
    return weight_ih, weight_hh, bias


def expected_eval_output(model, x, h0, c0, zoneout_cell, zoneout_hidden):
    """Eval-mode output of a multi-layer model: expectation masks, no dropout between layers."""
    layer_input, h_n, c_n = x, [], []
    for layer in range(model.num_layers):
        h, c = h0[layer], c0[layer]
        outputs = []
        for t in range(x.shape[0]):
            h, c = expected_step(layer_input[t], h, c, *layer_params(model, layer), zoneout_cell, zoneout_hidden)
            outputs.append(h)
        layer_input = torch.stack(outputs)
        h_n.append(h)
        c_n.append(c)
    return layer_input, torch.stack(h_n), torch.stack(c_n)


def zoneout_lstm(*args, **kwargs):
    return ZoneoutLSTM(*args, impl="reference", **kwargs).to(F64)


def random_state(num_layers, batch, hidden):
    return torch.randn(num_layers, batch, hidden, dtype=F64), torch.randn(num_layers, batch, hidden, dtype=F64)


# ---------------------------------------------------------------- 1. drop-in for nn.LSTM
@pytest.mark.parametrize("num_layers", [1, 3])
@pytest.mark.parametrize("bias", [True, False])
def test_parameter_names_and_shapes_equal_nn_lstm(num_layers, bias):
    ours = ZoneoutLSTM(5, 7, num_layers=num_layers, bias=bias, zoneout_cell=0.3, zoneout_hidden=0.1, impl="reference")
    torch_lstm = nn.LSTM(5, 7, num_layers=num_layers, bias=bias)
    ours_shapes = [(name, tuple(p.shape)) for name, p in ours.named_parameters()]
    torch_shapes = [(name, tuple(p.shape)) for name, p in torch_lstm.named_parameters()]
    assert ours_shapes == torch_shapes
    assert list(ours.state_dict()) == list(torch_lstm.state_dict())


@pytest.mark.parametrize("num_layers", [1, 3])
@pytest.mark.parametrize("bias", [True, False])
def test_state_dict_loads_both_ways(num_layers, bias):
    ours = ZoneoutLSTM(4, 6, num_layers=num_layers, bias=bias, zoneout_cell=0.5, zoneout_hidden=0.05, impl="reference")
    torch_lstm = nn.LSTM(4, 6, num_layers=num_layers, bias=bias)
    ours.load_state_dict(torch_lstm.state_dict())  # strict: same keys, same shapes
    for name, value in torch_lstm.state_dict().items():
        assert torch.equal(ours.state_dict()[name], value)

    fresh = nn.LSTM(4, 6, num_layers=num_layers, bias=bias)
    with torch.no_grad():
        for p in ours.parameters():
            p.add_(1.0)  # make ours differ from torch_lstm so the reverse load is observable
    fresh.load_state_dict(ours.state_dict())
    for name, value in ours.state_dict().items():
        assert torch.equal(fresh.state_dict()[name], value)
    x = torch.randn(3, 2, 4)
    # ours mixes in the zoneout expectation even in eval, so compare a zero-zoneout copy with the loaded weights
    plain = ZoneoutLSTM(4, 6, num_layers=num_layers, bias=bias, impl="reference")
    plain.load_state_dict(fresh.state_dict())
    torch.testing.assert_close(plain(x)[0], fresh(x)[0], rtol=1e-5, atol=1e-6)


def test_functional_call_reads_substituted_weights():
    # Weight noise runs the model through torch.func.functional_call: the layers must read their
    # parameters at forward time, never through a cached copy.
    torch.manual_seed(9)
    model = zoneout_lstm(3, 4, num_layers=2, zoneout_cell=0.2, zoneout_hidden=0.1).eval()
    noisy = {name: p.detach() + 0.1 * torch.randn_like(p) for name, p in model.named_parameters()}
    twin = zoneout_lstm(3, 4, num_layers=2, zoneout_cell=0.2, zoneout_hidden=0.1).eval()
    twin.load_state_dict(noisy)
    x = torch.randn(5, 2, 3, dtype=F64)
    output, (h_n, c_n) = torch.func.functional_call(model, noisy, (x,))
    want_output, (want_h, want_c) = twin(x)
    assert torch.equal(output, want_output) and torch.equal(h_n, want_h) and torch.equal(c_n, want_c)
    assert not torch.allclose(model(x)[0], output)


# ---------------------------------------------------------------- 2. probabilities 0 == nn.LSTM, values and gradients
def assert_matches_nn_lstm(ours, torch_lstm, x, hx):
    """Forward both, backprop the same random functional, compare everything to ~1e-12 in float64."""
    leaves_ours = [x.clone().requires_grad_()] + ([t.clone().requires_grad_() for t in hx] if hx else [])
    leaves_torch = [x.clone().requires_grad_()] + ([t.clone().requires_grad_() for t in hx] if hx else [])
    run = lambda model, leaves: model(leaves[0], tuple(leaves[1:]) if hx else None)  # noqa: E731
    out_ours, (h_ours, c_ours) = run(ours, leaves_ours)
    out_torch, (h_torch, c_torch) = run(torch_lstm, leaves_torch)
    for mine, theirs in ((out_ours, out_torch), (h_ours, h_torch), (c_ours, c_torch)):
        assert mine.shape == theirs.shape
        torch.testing.assert_close(mine, theirs, rtol=0, atol=1e-12)
    probes = [torch.randn_like(t) for t in (out_torch, h_torch, c_torch)]
    loss = lambda tensors: sum((t * w).sum() for t, w in zip(tensors, probes))  # noqa: E731
    loss((out_ours, h_ours, c_ours)).backward()
    loss((out_torch, h_torch, c_torch)).backward()
    for (name, p_ours), (_, p_torch) in zip(ours.named_parameters(), torch_lstm.named_parameters()):
        assert p_ours.grad is not None, name
        torch.testing.assert_close(p_ours.grad, p_torch.grad, rtol=0, atol=1e-12, msg=name)
    for mine, theirs in zip(leaves_ours, leaves_torch):
        torch.testing.assert_close(mine.grad, theirs.grad, rtol=0, atol=1e-12)


@pytest.mark.parametrize("num_layers,bias,batch_first,given_hx", [
    (1, True, False, False),
    (1, False, False, True),
    (3, True, False, True),   # multi-layer, inter-layer dropout 0, training mode
    (2, True, True, True),    # batch_first
    (2, False, True, False),
])
def test_zero_probabilities_match_nn_lstm_values_and_gradients(num_layers, bias, batch_first, given_hx):
    torch.manual_seed(0)
    torch_lstm = nn.LSTM(3, 4, num_layers=num_layers, bias=bias, batch_first=batch_first, dropout=0.0).to(F64)
    ours = zoneout_lstm(3, 4, num_layers=num_layers, bias=bias, batch_first=batch_first, dropout=0.0,
                        zoneout_cell=0.0, zoneout_hidden=0.0)
    ours.load_state_dict(torch_lstm.state_dict())
    x = torch.randn(2, 5, 3, dtype=F64) if batch_first else torch.randn(5, 2, 3, dtype=F64)
    hx = random_state(num_layers, 2, 4) if given_hx else None
    assert_matches_nn_lstm(ours.train(), torch_lstm.train(), x, hx)


@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("given_hx", [False, True])
def test_zero_probabilities_match_nn_lstm_on_unbatched_input(batch_first, given_hx):
    torch.manual_seed(1)
    torch_lstm = nn.LSTM(3, 4, num_layers=2, batch_first=batch_first).to(F64)
    ours = zoneout_lstm(3, 4, num_layers=2, batch_first=batch_first)
    ours.load_state_dict(torch_lstm.state_dict())
    x = torch.randn(6, 3, dtype=F64)  # (T, I): nn.LSTM ignores batch_first for unbatched input
    hx = tuple(t[:, 0] for t in random_state(2, 1, 4)) if given_hx else None
    assert_matches_nn_lstm(ours, torch_lstm, x, hx)


# ---------------------------------------------------------------- 3. probability 1 keeps the initial state
@pytest.mark.parametrize("num_layers", [1, 2])
def test_probability_one_keeps_the_initial_state_forever(num_layers):
    torch.manual_seed(2)
    model = zoneout_lstm(3, 5, num_layers=num_layers, zoneout_cell=1.0, zoneout_hidden=1.0).train()
    h0, c0 = random_state(num_layers, 4, 5)
    output, (h_n, c_n) = model(torch.randn(7, 4, 3, dtype=F64), (h0, c0))
    assert torch.equal(output, h0[-1].expand(7, 4, 5))
    assert torch.equal(h_n, h0)
    assert torch.equal(c_n, c0)


# ---------------------------------------------------------------- 4 & 9. eval = expectation, deterministic, no rescaling
def test_eval_output_is_the_expectation_formula_and_deterministic():
    torch.manual_seed(3)
    zoneout_cell, zoneout_hidden = 0.3, 0.6
    model = zoneout_lstm(3, 5, num_layers=2, dropout=0.4, zoneout_cell=zoneout_cell,
                         zoneout_hidden=zoneout_hidden).eval()
    x = torch.randn(6, 4, 3, dtype=F64)
    h0, c0 = random_state(2, 4, 5)
    rng_before = torch.get_rng_state()
    output, (h_n, c_n) = model(x, (h0, c0))
    again = model(x, (h0, c0))
    assert torch.equal(torch.get_rng_state(), rng_before), "eval drew random numbers"
    assert torch.equal(output, again[0]) and torch.equal(h_n, again[1][0]) and torch.equal(c_n, again[1][1])

    want_out, want_h, want_c = expected_eval_output(model, x, h0, c0, zoneout_cell, zoneout_hidden)
    torch.testing.assert_close(output, want_out, rtol=0, atol=1e-12)
    torch.testing.assert_close(h_n, want_h, rtol=0, atol=1e-12)
    torch.testing.assert_close(c_n, want_c, rtol=0, atol=1e-12)


def test_eval_has_no_inverse_probability_rescaling():
    # One step from a zero state: c = (1 - z_c) * i * g. Rescaling by 1/(1 - z_c) would give i * g.
    torch.manual_seed(4)
    model = zoneout_lstm(3, 5, zoneout_cell=0.5, zoneout_hidden=0.5).eval()
    x = torch.randn(1, 4, 3, dtype=F64)
    zeros = torch.zeros(1, 4, 5, dtype=F64)
    _, (h_n, c_n) = model(x, (zeros, zeros))
    _, h_plain, c_plain = expected_eval_output(model, x, zeros, zeros, 0.0, 0.0)
    torch.testing.assert_close(c_n, 0.5 * c_plain, rtol=0, atol=1e-12)
    torch.testing.assert_close(h_n, 0.5 * h_plain, rtol=0, atol=1e-12)  # h~ still reads the un-zoned c~


# ---------------------------------------------------------------- 8. output is the zoned h; h~ reads c~; no train rescaling
def test_training_output_is_zoned_h_and_updates_are_not_rescaled():
    # T = 1 so c_1 is observable as c_n: each unit is either exactly its old value or exactly the candidate.
    torch.manual_seed(5)
    model = zoneout_lstm(3, 64, zoneout_cell=0.5, zoneout_hidden=0.9).train()
    x = torch.randn(1, 32, 3, dtype=F64)
    h0, c0 = random_state(1, 32, 64)
    output, (h_n, c_n) = model(x, (h0, c0))
    h_candidate, c_candidate = expected_step(x[0], h0[0], c0[0], *layer_params(model, 0), 0.0, 0.0)
    kept_h, kept_c = output[0] == h0[0], c_n[0] == c0[0]
    assert 0.85 < kept_h.double().mean() < 0.95 and 0.45 < kept_c.double().mean() < 0.55
    torch.testing.assert_close(output[0][~kept_h], h_candidate[~kept_h], rtol=0, atol=1e-12)
    torch.testing.assert_close(c_n[0][~kept_c], c_candidate[~kept_c], rtol=0, atol=1e-12)
    assert torch.equal(h_n, output[-1:])  # the output is the zoned h, the same tensor carried as state


def fixed_masks(seq_len, batch, hidden, seed):
    generator = torch.Generator().manual_seed(seed)
    draw = lambda p: torch.rand(seq_len, batch, hidden, generator=generator) < p  # noqa: E731
    return draw(0.5), draw(0.5), draw(0.7)


def random_layer_args(seq_len=4, batch=3, input_size=2, hidden=5, seed=0):
    generator = torch.Generator().manual_seed(seed)
    rand = lambda *shape: torch.randn(*shape, generator=generator, dtype=F64)  # noqa: E731
    return (rand(seq_len, batch, input_size), rand(batch, hidden), rand(batch, hidden),
            rand(4 * hidden, input_size), rand(4 * hidden, hidden), rand(4 * hidden), rand(4 * hidden))


def test_hidden_candidate_reads_the_unzoned_cell_with_hand_built_masks():
    x, h0, c0, weight_ih, weight_hh, bias_ih, bias_hh = random_layer_args()
    keep_cell, keep_hidden, update_keep = fixed_masks(4, 3, 5, seed=1)
    assert (keep_cell & ~keep_hidden).any()  # where the two variants differ
    assert not update_keep.all()  # some cell updates dropped: m_t multiplies i*g only, inside c~
    output, h_last, c_last = reference.lstm_layer(x, h0, c0, weight_ih, weight_hh, bias_ih, bias_hh,
                                                  RecurrentNoise(keep_cell, keep_hidden, update_keep))

    def unroll(h_from_zoned_cell):
        h, c, outputs = h0, c0, []
        for t in range(4):
            h, c = expected_step(x[t], h, c, weight_ih, weight_hh, bias_ih + bias_hh, keep_cell[t].double(),
                                 keep_hidden[t].double(), h_from_zoned_cell, update_keep[t].double())
            outputs.append(h)
        return torch.stack(outputs), h, c

    right, wrong = unroll(False), unroll(True)
    assert (right[0] - wrong[0]).abs().max() > 1e-3
    for got, want in zip((output, h_last, c_last), right):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-12)
    previous = torch.cat([h0[None], output[:-1]])
    assert torch.equal(output[keep_hidden], previous[keep_hidden])  # kept units carry h_{t-1} bit for bit


# ---------------------------------------------------------------- 10. gradcheck with fixed masks
@pytest.mark.parametrize("mask_kind", ["bool", "float"])
def test_gradcheck_reference_layer_with_fixed_masks(mask_kind):
    args = random_layer_args(seq_len=3, batch=2, input_size=2, hidden=2, seed=2)
    args = tuple(a.requires_grad_() for a in args)
    if mask_kind == "bool":
        noise = RecurrentNoise(*fixed_masks(3, 2, 2, seed=3))
    else:
        noise = RecurrentNoise(keep_cell=0.3, keep_hidden=0.6, update_keep=0.8)
    layer = lambda *inputs: reference.lstm_layer(*inputs, noise)  # noqa: E731
    assert torch.autograd.gradcheck(layer, args, eps=1e-6, atol=1e-7)


# ---------------------------------------------------------------- 12. validation
@pytest.mark.parametrize("hidden_size", [0, -3])
def test_non_positive_hidden_size_raises(hidden_size):
    with pytest.raises(ValueError, match="hidden_size"):
        ZoneoutLSTM(3, hidden_size, impl="reference")


@pytest.mark.parametrize("input_shape,state_shape", [
    ((5, 2, 3), (2, 4)),      # batched input, state without the layer axis: would broadcast example 0's state
    ((5, 2, 3), (1, 3, 4)),   # wrong batch
    ((5, 2, 3), (1, 2, 5)),   # wrong hidden size
    ((5, 3), (1, 1, 4)),      # unbatched input takes a (num_layers, hidden_size) state
])
def test_wrong_initial_state_shape_raises(input_shape, state_shape):
    model = ZoneoutLSTM(3, 4, zoneout_cell=0.1, impl="reference")
    state = torch.zeros(state_shape)
    with pytest.raises(ValueError, match="h_0"):
        model(torch.zeros(input_shape), (state, state))


# ---------------------------------------------------------------- 13. dtypes and no_grad
def test_float32_agrees_with_float64():
    torch.manual_seed(6)
    model64 = zoneout_lstm(3, 5, num_layers=2, zoneout_cell=0.4, zoneout_hidden=0.2).eval()
    model32 = ZoneoutLSTM(3, 5, num_layers=2, zoneout_cell=0.4, zoneout_hidden=0.2, impl="reference").eval()
    model32.load_state_dict({k: v.float() for k, v in model64.state_dict().items()})
    x = torch.randn(6, 2, 3, dtype=F64)
    out64, (h64, c64) = model64(x)
    out32, (h32, c32) = model32(x.float())
    assert out32.dtype == h32.dtype == c32.dtype == torch.float32
    for low, high in ((out32, out64), (h32, h64), (c32, c64)):
        torch.testing.assert_close(low.double(), high, rtol=1e-5, atol=1e-6)
    model32.train()  # training in float32 too: probability-1 keeps the state exactly
    keep_all = ZoneoutLSTM(3, 5, zoneout_cell=1.0, zoneout_hidden=1.0, impl="reference")
    h0, c0 = torch.randn(1, 2, 5), torch.randn(1, 2, 5)
    out, (h_n, c_n) = keep_all(x.float(), (h0, c0))
    assert torch.equal(out, h0.expand(6, 2, 5)) and torch.equal(c_n, c0)


def test_no_grad_forward_equals_grad_forward():
    torch.manual_seed(7)
    model = zoneout_lstm(3, 5, num_layers=2, zoneout_cell=0.5, zoneout_hidden=0.05).eval()
    x = torch.randn(4, 2, 3, dtype=F64)
    with_grad = model(x)
    with torch.no_grad():
        without_grad = model(x)
    assert not without_grad[0].requires_grad and with_grad[0].requires_grad
    assert torch.equal(with_grad[0], without_grad[0]) and torch.equal(with_grad[1][1], without_grad[1][1])
    model.train()
    torch.manual_seed(8)
    trained_with_grad = model(x)
    torch.manual_seed(8)
    with torch.no_grad():
        trained_without_grad = model(x)  # same seed -> same masks -> same values
    assert torch.equal(trained_with_grad[0], trained_without_grad[0])
