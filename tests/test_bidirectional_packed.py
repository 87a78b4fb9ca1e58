"""ZoneoutLSTM / ZoneoutGRU bidirectional and on PackedSequence input, against nn.LSTM / nn.GRU (probability
0), an eval-mode expectation written here, and per-sequence runs with the same fixed training masks (a
finished sequence's state must not leak through zoneout, the reverse pass must start at each
sequence's own last valid step)."""
import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pack_sequence

from zoneout import ZoneoutGRU, ZoneoutLSTM
from zoneout.nn.noise import RecurrentNoise, RecurrentNoiseSource

F64 = torch.float64
I, H = 3, 4
TOL = dict(atol=1e-12, rtol=1e-10)
KINDS = ("lstm-reference", "lstm-fused", "gru")
LENGTHS = [5, 2, 7, 2, 4]  # unsorted, with a tie


def make(kind, num_layers=2, bidirectional=True, batch_first=False, **zoneout):
    """Our module and torch's with the same weights, in float64."""
    torch.manual_seed(0)
    if kind == "gru":
        ours = ZoneoutGRU(I, H, num_layers, batch_first=batch_first, bidirectional=bidirectional, dtype=F64,
                          **zoneout)
        theirs = nn.GRU(I, H, num_layers, batch_first=batch_first, bidirectional=bidirectional, dtype=F64)
    else:
        ours = ZoneoutLSTM(I, H, num_layers, batch_first=batch_first, bidirectional=bidirectional, dtype=F64,
                           impl=kind.split("-")[1], **zoneout)
        theirs = nn.LSTM(I, H, num_layers, batch_first=batch_first, bidirectional=bidirectional, dtype=F64)
    ours.load_state_dict(theirs.state_dict())
    return ours, theirs


def states_of(result):
    """(output, [state tensors]) for both (out, h) and (out, (h, c))."""
    output, state = result
    return output, list(state) if isinstance(state, tuple) else [state]


def initial(kind, rows, batch, gen):
    h0 = torch.randn(rows, batch, H, dtype=F64, generator=gen, requires_grad=True)
    c0 = torch.randn(rows, batch, H, dtype=F64, generator=gen, requires_grad=True)
    return (h0, c0) if kind != "gru" else h0


def compare_with_torch(ours, theirs, make_input, leaves, hx):
    results = []
    for module in (ours, theirs):
        output, states = states_of(module(make_input(), hx))
        data = output.data if hasattr(output, "batch_sizes") else output
        loss = data.square().sum() + sum(s.sin().sum() for s in states)
        results.append([data, *states, *torch.autograd.grad(loss, [*leaves, *module.parameters()])])
    assert len(results[0]) == len(results[1])
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, **TOL)


# ------------------------------------------------------------------ layout and probability 0 against torch
@pytest.mark.parametrize("kind", KINDS)
def test_parameter_names_shapes_and_state_dict_both_ways(kind):
    ours, theirs = make(kind, num_layers=3)
    assert [(n, p.shape) for n, p in ours.named_parameters()] == [(n, p.shape) for n, p in theirs.named_parameters()]
    theirs.load_state_dict(ours.state_dict())
    assert "weight_hh_l2_reverse" in ours.state_dict()


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("given_hx", [False, True])
def test_bidirectional_padded_matches_torch_values_and_gradients(kind, batch_first, given_hx):
    ours, theirs = make(kind, batch_first=batch_first)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(*((3, 6) if batch_first else (6, 3)), I, dtype=F64, generator=gen, requires_grad=True)
    hx = initial(kind, 4, 3, gen) if given_hx else None
    leaves = [x] + ([] if hx is None else list(hx) if kind != "gru" else [hx])
    compare_with_torch(ours, theirs, lambda: x, leaves, hx)


@pytest.mark.parametrize("kind", KINDS)
def test_bidirectional_unbatched_matches_torch(kind):
    ours, theirs = make(kind)
    x = torch.randn(5, I, dtype=F64, requires_grad=True)
    compare_with_torch(ours, theirs, lambda: x, [x], None)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("enforce_sorted", [False, True])
@pytest.mark.parametrize("given_hx", [False, True])
def test_packed_matches_torch_values_and_gradients(kind, bidirectional, enforce_sorted, given_hx):
    ours, theirs = make(kind, bidirectional=bidirectional)
    gen = torch.Generator().manual_seed(2)
    lengths = sorted(LENGTHS, reverse=True) if enforce_sorted else LENGTHS
    padded = torch.randn(max(lengths), len(lengths), I, dtype=F64, generator=gen, requires_grad=True)
    pack = lambda: pack_padded_sequence(padded, lengths, enforce_sorted=enforce_sorted)  # noqa: E731
    hx = initial(kind, 2 * (2 if bidirectional else 1), len(lengths), gen) if given_hx else None
    leaves = [padded] + ([] if hx is None else list(hx) if kind != "gru" else [hx])
    compare_with_torch(ours, theirs, pack, leaves, hx)
    packed = pack()
    output, _ = ours(packed, hx)
    assert torch.equal(output.batch_sizes, packed.batch_sizes)
    assert torch.equal(output.unsorted_indices, packed.unsorted_indices) if not enforce_sorted else True


@pytest.mark.parametrize("kind", KINDS)
def test_proj_size_or_bad_hx_is_refused_clearly(kind):
    if kind != "gru":
        with pytest.raises(ValueError, match="proj_size"):
            ZoneoutLSTM(I, H, proj_size=2)
    ours, _ = make(kind)
    with pytest.raises(ValueError, match="hx"):
        ours(torch.randn(5, 3, I, dtype=F64), initial(kind, 2, 3, torch.Generator()))  # 2 rows, needs 4


# ------------------------------------------------------------------ eval: the expectation, written here
def expected_eval(module, kind, x, z_c, z_h):
    """Bidirectional multi-layer eval output from the weights, with the expectation step."""
    layer_input, finals = x, []
    for layer in range(module.num_layers):
        outputs = []
        for direction, suffix in enumerate(("", "_reverse")):
            w = {k: getattr(module, f"{k}_l{layer}{suffix}") for k in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")}
            seq = layer_input if direction == 0 else layer_input.flip(0)
            h = c = torch.zeros(x.shape[1], H, dtype=F64)
            out = []
            for x_t in seq:
                gi, gh = x_t @ w["weight_ih"].T + w["bias_ih"], h @ w["weight_hh"].T + w["bias_hh"]
                if kind == "gru":
                    r, u = torch.sigmoid(gi[:, :H] + gh[:, :H]), torch.sigmoid(gi[:, H:2 * H] + gh[:, H:2 * H])
                    n = torch.tanh(gi[:, 2 * H:] + r * gh[:, 2 * H:])
                    h = z_h * h + (1 - z_h) * ((1 - u) * n + u * h)
                else:
                    i, f, g, o = (gi + gh).chunk(4, -1)
                    c_new = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
                    h = z_h * h + (1 - z_h) * torch.sigmoid(o) * torch.tanh(c_new)
                    c = z_c * c + (1 - z_c) * c_new
                out.append(h)
            out = torch.stack(out)
            outputs.append(out if direction == 0 else out.flip(0))
            finals.append(h)
        layer_input = torch.cat(outputs, dim=2)
    return layer_input, torch.stack(finals)


@pytest.mark.parametrize("kind", KINDS)
def test_bidirectional_eval_is_the_expectation(kind):
    zoneout = dict(zoneout_hidden=0.3) if kind == "gru" else dict(zoneout_cell=0.4, zoneout_hidden=0.3)
    ours, _ = make(kind, dropout=0.5, **zoneout)
    ours.eval()
    x = torch.randn(6, 3, I, dtype=F64)
    output, states = states_of(ours(x))
    want_output, want_h = expected_eval(ours, kind, x, zoneout.get("zoneout_cell", 0.0), 0.3)
    torch.testing.assert_close(output, want_output, **TOL)
    torch.testing.assert_close(states[0], want_h, **TOL)


@pytest.mark.parametrize("kind", KINDS)
def test_packed_eval_equals_each_sequence_run_alone(kind):
    zoneout = dict(zoneout_hidden=0.3) if kind == "gru" else dict(zoneout_cell=0.4, zoneout_hidden=0.3)
    ours, _ = make(kind, **zoneout)
    ours.eval()
    sequences = [torch.randn(n, I, dtype=F64) for n in LENGTHS]
    output, states = states_of(ours(pack_sequence(sequences, enforce_sorted=False)))
    padded, _ = nn.utils.rnn.pad_packed_sequence(output)
    for b, seq in enumerate(sequences):
        alone_output, alone_states = states_of(ours(seq))
        torch.testing.assert_close(padded[:len(seq), b], alone_output, **TOL)
        assert torch.all(padded[len(seq):, b] == 0)
        for state, alone in zip(states, alone_states):
            torch.testing.assert_close(state[:, b], alone, **TOL)


# ------------------------------------------------------------------ training masks
class FixedNoise(RecurrentNoiseSource):
    """Hands out given masks: noises[row] for state row `row` (layer * num_directions + direction)."""

    def __init__(self, noises):
        super().__init__()
        self.noises = noises

    def noise(self, seq_len, batch, hidden, device, training, layer=0):
        return self.noises[layer]


def fixed_masks(rows, T, B, gen, kind):
    masks = [torch.rand(2, T, B, H, generator=gen) < 0.5 for _ in range(rows)]
    if kind == "gru":
        return [RecurrentNoise(keep_hidden=m[1]) for m in masks]
    return [RecurrentNoise(keep_cell=m[0], keep_hidden=m[1]) for m in masks]


def with_noise(module, noises):
    module.recurrent_regularizers = nn.ModuleList([FixedNoise(noises)])
    return module


@pytest.mark.parametrize("kind", KINDS)
def test_packed_training_equals_each_sequence_alone_with_the_same_masks(kind):
    """Masks index (processing step, sorted batch position): the reverse direction's step s is time
    L_b - 1 - s. A finished sequence must keep its state (no leak through zoneout at padded steps)."""
    ours, _ = make(kind)
    gen = torch.Generator().manual_seed(5)
    sequences = [torch.randn(n, I, dtype=F64, generator=gen) for n in LENGTHS]
    packed = pack_sequence(sequences, enforce_sorted=False)
    noises = fixed_masks(4, max(LENGTHS), len(LENGTHS), gen, kind)
    output, states = states_of(with_noise(ours, noises)(packed))
    padded, _ = nn.utils.rnn.pad_packed_sequence(output)
    for position, b in enumerate(packed.sorted_indices.tolist()):
        length = LENGTHS[b]
        own = [RecurrentNoise(*(None if m is None else m[:length, position:position + 1]
                                for m in (n.keep_cell, n.keep_hidden, n.update_keep))) for n in noises]
        alone_output, alone_states = states_of(with_noise(ours, own)(sequences[b].unsqueeze(1)))
        torch.testing.assert_close(padded[:length, b], alone_output[:, 0], **TOL)
        for state, alone in zip(states, alone_states):
            torch.testing.assert_close(state[:, b], alone[:, 0], **TOL)


@pytest.mark.parametrize("kind", KINDS)
def test_packed_equals_padded_with_frozen_padding(kind):
    """Unidirectional: padded input whose padded steps keep every unit (mask True) gives the packed
    result -- padded positions never reach valid ones and the final state is the last valid step's."""
    ours, _ = make(kind, bidirectional=False)
    gen = torch.Generator().manual_seed(6)
    T, lengths = max(LENGTHS), torch.tensor(LENGTHS)
    padded = torch.randn(T, len(LENGTHS), I, dtype=F64, generator=gen)
    packed = pack_padded_sequence(padded, LENGTHS, enforce_sorted=False)
    noises = fixed_masks(2, T, len(LENGTHS), gen, kind)
    output, states = states_of(with_noise(ours, noises)(packed))
    frozen = (torch.arange(T).unsqueeze(1) >= lengths).unsqueeze(-1)  # (T, B, 1): padding
    unsort = lambda m: None if m is None else m[:, packed.unsorted_indices] | frozen  # noqa: E731
    padded_noises = [RecurrentNoise(unsort(n.keep_cell), unsort(n.keep_hidden)) for n in noises]
    padded_output, padded_states = states_of(with_noise(ours, padded_noises)(padded * 1e3 * frozen + padded))
    unpacked, _ = nn.utils.rnn.pad_packed_sequence(output)
    valid = ~frozen
    torch.testing.assert_close(unpacked * valid, padded_output * valid, **TOL)
    for a, b in zip(states, padded_states):
        torch.testing.assert_close(a, b, **TOL)


@pytest.mark.parametrize("kind", KINDS)
def test_masks_of_the_two_directions_are_independent(kind):
    """With z_h = 0.5 the forward and reverse halves keep different units at the same processing step."""
    ours, _ = make(kind, num_layers=1, zoneout_hidden=0.5)
    x = torch.randn(8, 50, I, dtype=F64)
    h0 = torch.randn(2, 50, H, dtype=F64)
    output, _ = ours(x, h0 if kind == "gru" else (h0, torch.zeros_like(h0)))
    forward = torch.cat([h0[:1], output[..., :H]])
    reverse = torch.cat([h0[1:], output[..., H:].flip(0)])
    kept_forward, kept_reverse = forward[1:] == forward[:-1], reverse[1:] == reverse[:-1]
    assert 0.4 < kept_forward.double().mean() < 0.6 and 0.4 < kept_reverse.double().mean() < 0.6
    assert (kept_forward == kept_reverse).double().mean() < 0.6  # shared masks would give 1.0
