"""The CPU masks' counter-based generator (zoneout/nn/counter_masks.py, csrc/cpu_masks.cpp): its definition
(SplitMix64's published outputs), C++ = PyTorch-op twin bit for bit, independence of the thread count,
reproducibility under torch.manual_seed, and the statistics a zoneout mask needs (rate, independence of
neighbouring elements -- two share one 64-bit draw --, of timesteps, of the c and h masks)."""
import math

import pytest
import torch

from zoneout.nn import counter_masks
from zoneout.nn.csrc import cpu_ext
from zoneout.nn.noise import bernoulli_mask
from zoneout.nn.zoneout_noise import Zoneout


def cpp_module():
    module = cpu_ext.load()
    if module is None:
        pytest.skip(f"fused CPU kernels unavailable: {cpu_ext.error()}")
    return module


def splitmix64(seed, count):
    """SplitMix64 (Steele, Lea & Flood 2014) in plain Python integers: the reference."""
    mask, state, out = (1 << 64) - 1, seed, []
    for _ in range(count):
        state = (state + 0x9E3779B97F4A7C15) & mask
        z = state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
        out.append(z ^ (z >> 31))
    return out


def test_draws_are_splitmix64_outputs():
    # the published first outputs of SplitMix64 seeded with 0, and a key with the top bit pattern set
    assert splitmix64(0, 3) == [0xE220A8397B1DCDAF, 0x6E789E6AA1B965F4, 0x06C45D188009454F]
    for key in (0, 12345, 2 ** 63 - 2):
        got = [value % (1 << 64) for value in counter_masks.draws(key, 50).tolist()]
        assert got == splitmix64(key, 50)


def test_elements_take_low_then_high_half_of_each_draw():
    key, n = 77, 9
    words = splitmix64(key, 5)
    halves = [w & 0xFFFFFFFF if e % 2 == 0 else w >> 32 for e, w in ((e, words[e // 2]) for e in range(n))]
    for p in (0.1, 0.5, 0.9):
        expected = [u < int(p * 2 ** 32) for u in halves]
        assert counter_masks.sample_torch((n,), p, key).tolist() == expected
        assert cpp_module().bernoulli_mask([n], p, key).tolist() == expected


@pytest.mark.parametrize("shape", [(0,), (1,), (7,), (3, 5, 7), (4, 2, 33), (10, 32, 128)])
@pytest.mark.parametrize("p", [0.0, 0.05, 0.5, 0.95, 1.0])
def test_cpp_equals_torch_twin(shape, p):
    module = cpp_module()
    for key in (0, 1, 2 ** 62 + 12345):
        cpp = module.bernoulli_mask(list(shape), p, key)
        assert cpp.dtype == torch.bool and tuple(cpp.shape) == shape
        assert torch.equal(cpp, counter_masks.sample_torch(shape, p, key))


def test_extreme_probabilities():
    assert not counter_masks.sample_torch((1000,), 0.0, 3).any()
    assert counter_masks.sample_torch((1000,), 1.0, 3).all()
    assert not cpp_module().bernoulli_mask([1001], 0.0, 3).any()
    assert cpp_module().bernoulli_mask([1001], 1.0, 3).all()


def test_independent_of_thread_count():
    module, threads = cpp_module(), torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = module.bernoulli_mask([50, 64, 300], 0.3, 99)
        torch.set_num_threads(max(2, threads))
        many = module.bernoulli_mask([50, 64, 300], 0.3, 99)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one, many)


def test_reproducible_under_manual_seed_and_fresh_per_call():
    torch.manual_seed(4)
    first, second = bernoulli_mask(0.5, (20, 8, 16), "cpu"), bernoulli_mask(0.5, (20, 8, 16), "cpu")
    torch.manual_seed(4)
    assert torch.equal(first, bernoulli_mask(0.5, (20, 8, 16), "cpu"))
    assert not torch.equal(first, second)
    generator = torch.Generator().manual_seed(11)
    again = torch.Generator().manual_seed(11)
    assert torch.equal(bernoulli_mask(0.3, (50,), "cpu", generator), bernoulli_mask(0.3, (50,), "cpu", again))


def test_keep_rate_and_independence():
    n = 400_000
    for p in (0.05, 0.15, 0.5, 0.95):
        mask = bernoulli_mask(p, (n,), "cpu").double()
        assert abs(mask.mean().item() - p) < 5 * math.sqrt(p * (1 - p) / n)
    mask = bernoulli_mask(0.5, (100, 40, 100), "cpu").double() * 2 - 1  # +-1: products measure correlation
    bound = lambda count: 5 / math.sqrt(count)  # noqa: E731
    pairs = mask.reshape(-1, 2)  # elements 2i and 2i+1 share a draw
    assert abs((pairs[:, 0] * pairs[:, 1]).mean().item()) < bound(pairs.shape[0])
    across_units = (mask[..., 1:] * mask[..., :-1]).mean().item()
    across_examples = (mask[:, 1:] * mask[:, :-1]).mean().item()
    across_steps = (mask[1:] * mask[:-1]).mean().item()
    for value in (across_units, across_examples, across_steps):
        assert abs(value) < bound(mask[1:].numel())


def test_zoneout_cell_and_hidden_masks_independent_unless_shared():
    torch.manual_seed(0)
    noise = Zoneout(cell=0.5, hidden=0.5).noise(50, 32, 64, torch.device("cpu"), training=True)
    agree = (noise.keep_cell == noise.keep_hidden).double().mean().item()
    assert abs(agree - 0.5) < 5 * math.sqrt(0.25 / noise.keep_cell.numel())
    shared = Zoneout(cell=0.5, hidden=0.5, shared_mask=True).noise(50, 32, 64, torch.device("cpu"), training=True)
    assert shared.keep_cell is shared.keep_hidden


def test_torch_twin_rejects_bad_probability():
    with pytest.raises(ValueError, match=r"probability must be in \[0, 1\]"):
        counter_masks.sample_torch((3,), 1.5, 0)


def test_compiled_and_traced_masks_stay_in_the_graph_with_the_same_bits():
    def masks():
        return bernoulli_mask(0.3, (6, 4, 10), "cpu"), bernoulli_mask(0.7, (5,), "cpu")

    torch.manual_seed(3)
    eager = masks()
    compiled = torch.compile(masks, backend="eager", fullgraph=True)  # fullgraph: a graph break raises
    torch.manual_seed(3)
    assert all(torch.equal(a, b) for a, b in zip(eager, compiled()))
    torch.manual_seed(3)
    traced = torch.jit.trace(lambda x: x & bernoulli_mask(0.3, (6, 4, 10), "cpu"), torch.ones(6, 4, 10, dtype=torch.bool),
                             check_trace=False)
    torch.manual_seed(3)
    assert torch.equal(traced(torch.ones(6, 4, 10, dtype=torch.bool)), eager[0])
