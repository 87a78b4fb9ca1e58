"""ZoneoutLSTMCell / ZoneoutGRUCell against nn.LSTMCell / nn.GRUCell and the paper's step equations.

Expected values come from steps written here, never from zoneout.nn, so the oracle cannot hide a bug.
"""
import pytest
import torch
from torch import nn

from zoneout import ZoneoutGRUCell, ZoneoutLSTMCell
from zoneout.nn.cells import zoneout_gru_cell, zoneout_lstm_cell
from zoneout.nn.noise import RecurrentNoise

F64 = torch.float64
I, H, B = 3, 4, 5
TOL = dict(atol=1e-12, rtol=1e-10)
IMPLS = ("reference", "fused")


def lstm_step(x, h, c, cell, keep_c, keep_h):
    """Paper §3 with keep_* floats (eval) or 0/1 float tensors (a fixed mask)."""
    bias = cell.bias_ih + cell.bias_hh if cell.bias_ih is not None else 0
    pre = x @ cell.weight_ih.T + h @ cell.weight_hh.T + bias
    i, f, g, o = pre.chunk(4, -1)
    c_candidate = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    h_candidate = torch.sigmoid(o) * torch.tanh(c_candidate)  # from the UN-zoned cell
    return keep_h * h + (1 - keep_h) * h_candidate, keep_c * c + (1 - keep_c) * c_candidate


def gru_step(x, h, cell, keep_h):
    gi, gh = x @ cell.weight_ih.T + cell.bias_ih, h @ cell.weight_hh.T + cell.bias_hh
    r, u = torch.sigmoid(gi[:, :H] + gh[:, :H]), torch.sigmoid(gi[:, H:2 * H] + gh[:, H:2 * H])
    n = torch.tanh(gi[:, 2 * H:] + r * gh[:, 2 * H:])
    return keep_h * h + (1 - keep_h) * ((1 - u) * n + u * h)


def pair(kind, bias=True, impl="fused", **zoneout):
    torch.manual_seed(0)
    if kind == "lstm":
        ours, theirs = ZoneoutLSTMCell(I, H, bias, impl=impl, **zoneout), nn.LSTMCell(I, H, bias)
    else:
        ours, theirs = ZoneoutGRUCell(I, H, bias, **zoneout), nn.GRUCell(I, H, bias)
    ours, theirs = ours.to(F64), theirs.to(F64)
    ours.load_state_dict(theirs.state_dict())
    return ours, theirs


@pytest.mark.parametrize("kind", ["lstm", "gru"])
@pytest.mark.parametrize("bias", [True, False])
def test_parameters_and_state_dict_both_ways(kind, bias):
    ours, theirs = pair(kind, bias)
    assert [(n, p.shape) for n, p in ours.named_parameters()] == [(n, p.shape) for n, p in theirs.named_parameters()]
    assert list(ours.state_dict()) == list(theirs.state_dict())
    theirs.load_state_dict(ours.state_dict())


def run_loop(cell, xs, hx, kind):
    """A decoder-style loop of `len(xs)` steps; returns the stacked outputs and the last state."""
    outputs = []
    for x in xs:
        hx = cell(x, hx)
        outputs.append(hx[0] if kind == "lstm" else hx)
    return torch.stack(outputs), hx


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("kind", ["lstm", "gru"])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("given_hx", [True, False])
def test_zero_probability_matches_torch_values_and_all_gradients(impl, kind, bias, given_hx):
    if kind == "gru" and impl == "reference":
        pytest.skip("the GRU cell has one implementation")
    ours, theirs = pair(kind, bias, impl)
    gen = torch.Generator().manual_seed(1)
    xs = torch.randn(4, B, I, dtype=F64, generator=gen, requires_grad=True)
    hx = None
    if given_hx:
        h0 = torch.randn(B, H, dtype=F64, generator=gen, requires_grad=True)
        c0 = torch.randn(B, H, dtype=F64, generator=gen, requires_grad=True)
        hx = (h0, c0) if kind == "lstm" else h0
    results = []
    for cell in (ours, theirs):
        out, last = run_loop(cell, xs, hx, kind)
        loss = out.square().sum() + sum(s.sin().sum() for s in (last if kind == "lstm" else (last,)))
        leaves = [xs, *cell.parameters()] + ([*hx] if kind == "lstm" and hx else [hx] if hx is not None else [])
        results.append([out, *torch.autograd.grad(loss, leaves)])
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, **TOL)


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_unbatched_input_matches_torch(kind):
    ours, theirs = pair(kind)
    x = torch.randn(I, dtype=F64)
    hx = (torch.randn(H, dtype=F64), torch.randn(H, dtype=F64)) if kind == "lstm" else torch.randn(H, dtype=F64)
    for state in (None, hx):
        a, b = ours(x, state), theirs(x, state)
        for u, v in zip(*(((a,), (b,)) if kind == "gru" else (a, b))):
            assert u.shape == v.shape
            torch.testing.assert_close(u, v, **TOL)


@pytest.mark.parametrize("impl", IMPLS)
def test_lstm_cell_eval_is_the_expectation_and_deterministic(impl):
    cell, _ = pair("lstm", impl=impl, zoneout_cell=0.3, zoneout_hidden=0.6)
    cell.eval()
    x, h, c = (torch.randn(B, n, dtype=F64) for n in (I, H, H))
    got = cell(x, (h, c))
    torch.testing.assert_close(got, lstm_step(x, h, c, cell, 0.3, 0.6), **TOL)
    torch.testing.assert_close(got, cell(x, (h, c)), atol=0, rtol=0)


def test_gru_cell_eval_is_the_expectation():
    cell, _ = pair("gru", zoneout_hidden=0.4)
    cell.eval()
    x, h = torch.randn(B, I, dtype=F64), torch.randn(B, H, dtype=F64)
    torch.testing.assert_close(cell(x, h), gru_step(x, h, cell, 0.4), **TOL)


@pytest.mark.parametrize("impl", IMPLS)
def test_lstm_cell_training_masks_fresh_separate_and_keep_with_probability_z(impl):
    """Every unit is either its previous value or the candidate; c and h masks differ; keep rate is z
    (not 1 - z); two calls draw different masks."""
    z_c, z_h, batch = 0.3, 0.7, 400
    cell, _ = pair("lstm", impl=impl, zoneout_cell=z_c, zoneout_hidden=z_h)
    x, h, c = (torch.randn(batch, n, dtype=F64) for n in (I, H, H))
    h_cand, c_cand = lstm_step(x, h, c, cell, 0.0, 0.0)
    kept = []
    for _ in range(2):
        h_new, c_new = cell(x, (h, c))
        kept_h, kept_c = h_new == h, c_new == c
        assert torch.all(kept_h | torch.isclose(h_new, h_cand)) and torch.all(kept_c | torch.isclose(c_new, c_cand))
        assert abs(kept_h.double().mean() - z_h) < 0.04 and abs(kept_c.double().mean() - z_c) < 0.04
        assert not torch.equal(kept_h, kept_c)
        kept.append(kept_h)
    assert not torch.equal(kept[0], kept[1])


def test_gru_cell_training_keep_rate_and_fresh_masks():
    cell, _ = pair("gru", zoneout_hidden=0.25)
    x, h = torch.randn(400, I, dtype=F64), torch.randn(400, H, dtype=F64)
    first, second = cell(x, h) == h, cell(x, h) == h
    assert abs(first.double().mean() - 0.25) < 0.04 and not torch.equal(first, second)


@pytest.mark.parametrize("impl", IMPLS)
def test_hidden_reads_the_unzoned_cell(impl):
    """Cell fully kept, h fully updated: h must be o * tanh(c~), not o * tanh(c_prev)."""
    cell, _ = pair("lstm", impl=impl)
    x, h, c = (torch.randn(B, n, dtype=F64) for n in (I, H, H))
    noise = RecurrentNoise(keep_cell=torch.ones(1, B, H, dtype=torch.bool),
                           keep_hidden=torch.zeros(1, B, H, dtype=torch.bool))
    h_new, c_new = zoneout_lstm_cell(x, h, c, *cell.parameters(), noise, impl=impl)
    assert torch.equal(c_new, c)
    torch.testing.assert_close(h_new, lstm_step(x, h, c, cell, 0.0, 0.0)[0], **TOL)


@pytest.mark.parametrize("impl", IMPLS)
def test_gradcheck_lstm_cell_with_fixed_masks(impl):
    gen = torch.Generator().manual_seed(3)
    make = lambda *s: torch.randn(*s, generator=gen, dtype=F64).requires_grad_()  # noqa: E731
    args = (make(2, I), make(2, H), make(2, H), make(4 * H, I), make(4 * H, H), make(4 * H), make(4 * H))
    masks = torch.rand(2, 1, 2, H, generator=gen) < 0.5
    noise = RecurrentNoise(keep_cell=masks[0], keep_hidden=masks[1])
    assert torch.autograd.gradcheck(lambda *a: zoneout_lstm_cell(*a, noise, impl=impl), args, eps=1e-6, atol=1e-7)
    # and the fixed masks' values against the written-out step
    cell, _ = pair("lstm")
    with torch.no_grad():
        for p, a in zip(cell.parameters(), args[3:]):
            p.copy_(a)
        got = zoneout_lstm_cell(*args[:3], *cell.parameters(), noise, impl=impl)
        want = lstm_step(*args[:3], cell, masks[0, 0].double(), masks[1, 0].double())
    torch.testing.assert_close(got, want, **TOL)


def test_gradcheck_gru_cell_with_a_fixed_mask():
    gen = torch.Generator().manual_seed(4)
    make = lambda *s: torch.randn(*s, generator=gen, dtype=F64).requires_grad_()  # noqa: E731
    args = (make(2, I), make(2, H), make(3 * H, I), make(3 * H, H), make(3 * H), make(3 * H))
    keep = torch.rand(2, H, generator=gen) < 0.5
    assert torch.autograd.gradcheck(lambda *a: zoneout_gru_cell(*a, keep), args, eps=1e-6, atol=1e-7)


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_probability_one_keeps_the_state(kind):
    zoneout = dict(zoneout_cell=1.0, zoneout_hidden=1.0) if kind == "lstm" else dict(zoneout_hidden=1.0)
    cell, _ = pair(kind, **zoneout)
    x, h, c = (torch.randn(B, n, dtype=F64) for n in (I, H, H))
    out = cell(x, (h, c)) if kind == "lstm" else (cell(x, h),)
    assert all(torch.equal(a, b) for a, b in zip(out, (h, c)))


@pytest.mark.parametrize("make, message", [
    (lambda: ZoneoutLSTMCell(I, H)(torch.randn(B, I + 1)), "input"),
    (lambda: ZoneoutLSTMCell(I, H)(torch.randn(B, I), (torch.zeros(B, H + 1), torch.zeros(B, H))), "h"),
    (lambda: ZoneoutLSTMCell(I, H)(torch.randn(B, I, dtype=F64)), "dtype"),
    (lambda: ZoneoutGRUCell(I, H)(torch.randn(B, I), torch.zeros(B + 1, H)), "hx"),
    (lambda: ZoneoutLSTMCell(I, H, zoneout_cell=1.5), "zoneout_cell"),
    (lambda: ZoneoutLSTMCell(I, H, impl="fast"), "impl"),
])
def test_bad_arguments_raise_value_error_naming_what(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_factory_kwargs():
    cell = ZoneoutLSTMCell(I, H, dtype=F64, device="cpu")
    assert all(p.dtype == F64 for p in cell.parameters())
    assert ZoneoutGRUCell(I, H, dtype=torch.bfloat16).weight_hh.dtype == torch.bfloat16
