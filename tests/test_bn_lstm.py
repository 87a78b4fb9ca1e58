"""Recurrent batch-norm LSTM: per-timestep batch statistics, population statistics, reuse past max_length.
The oracle tests run on both implementations (impl="reference", the loop, and "fused", the fast path);
tests/test_bn_lstm_fast.py compares the two directly, gradients included."""
import pytest
import torch

from zoneout.nn.bn_lstm import BatchNormLSTM, StepwiseBatchNorm
from zoneout.nn.noise import RecurrentNoise, RecurrentNoiseSource
from zoneout.regularizers import RecurrentDropout, Zoneout

I, H = 3, 6


def batch_statistics(x):
    """x (B, F) -> mean, biased variance over the batch."""
    return x.mean(0), ((x - x.mean(0)) ** 2).mean(0)


def oracle(model, x, h0, c0, layer=0, population=None, keep_cell=None, keep_hidden=None, update_scale=1.0):
    """Independent BN-LSTM loop for one layer. population=None: batch statistics at every timestep;
    else a function t -> row index into the model's running statistics. Returns output, h, c, and the
    batch statistics used per norm: {"ih"|"hh"|"c": [(mean, var) per t]}."""
    get = lambda name: getattr(model, f"{name}_l{layer}")  # noqa: E731
    eps = model.eps
    used = {"ih": [], "hh": [], "c": []}

    def norm(kind, value, t):
        bn = get(f"bn_{kind}")
        if population is None:
            mean, var = batch_statistics(value)
            used[kind].append((mean, var))
        else:
            mean, var = bn.running_mean[population(t)], bn.running_var[population(t)]
        beta = bn.bias if bn.bias is not None else 0.0
        return bn.weight * (value - mean) / torch.sqrt(var + eps) + beta

    pick = lambda value, t: value[t] if isinstance(value, torch.Tensor) else value  # noqa: E731
    mix = lambda keep, prev, new: new if keep is None else keep * prev + (1 - keep) * new  # noqa: E731
    h, c, outputs = h0, c0, []
    for t in range(x.shape[0]):
        gates = (norm("hh", h @ get("weight_hh").T, t) + norm("ih", x[t] @ get("weight_ih").T, t)
                 + get("bias_ih") + get("bias_hh"))
        i, f, g, o = gates.chunk(4, -1)
        c_new = torch.sigmoid(f) * c + pick(update_scale, t) * torch.sigmoid(i) * torch.tanh(g)
        h_new = torch.sigmoid(o) * torch.tanh(norm("c", c_new, t))
        c, h = mix(pick(keep_cell, t), c, c_new), mix(pick(keep_hidden, t), h, h_new)
        outputs.append(h)
    return torch.stack(outputs), h, c, used


@pytest.fixture(params=["reference", "fused"])
def impl(request):
    return request.param


def make_model(seed=0, **kwargs):
    torch.manual_seed(seed)
    model = BatchNormLSTM(I, H, **{"max_length": 10, **kwargs}).double()
    with torch.no_grad():  # move gammas/betas/biases off their init so the oracle checks every term
        for parameter in model.parameters():
            if parameter.dim() == 1:
                parameter.add_(0.05 * torch.randn_like(parameter))
    return model


def sequence(T, B=16, seed=1):
    g = torch.Generator().manual_seed(seed)
    draw = lambda *shape: torch.randn(*shape, generator=g, dtype=torch.float64)  # noqa: E731
    return draw(T, B, I), draw(1, B, H), draw(1, B, H)


def test_initialisation_and_buffer_shapes():
    model = BatchNormLSTM(I, H, num_layers=2, max_length=7)
    for layer in range(2):
        for kind, features in (("ih", 4 * H), ("hh", 4 * H), ("c", H)):
            bn = getattr(model, f"bn_{kind}_l{layer}")
            assert torch.equal(bn.weight, torch.full((features,), 0.1))  # gamma init 0.1
            assert bn.running_mean.shape == bn.running_var.shape == (7, features)
            assert torch.equal(bn.running_mean, torch.zeros(7, features))
            assert torch.equal(bn.running_var, torch.ones(7, features))
        assert getattr(model, f"bn_ih_l{layer}").bias is None and getattr(model, f"bn_hh_l{layer}").bias is None
        assert torch.equal(getattr(model, f"bn_c_l{layer}").bias, torch.zeros(H))  # beta_c init 0
    assert model.weight_ih_l0.shape == (4 * H, I) and model.weight_hh_l1.shape == (4 * H, H)


def test_training_uses_per_timestep_batch_statistics(impl):
    model = make_model(eps=1e-10, impl=impl).train()
    x, h0, c0 = sequence(5)
    normalised = []

    def recording(bn):
        normalize = bn.normalize

        def record(input, mean, var):
            output = normalize(input, mean, var)
            normalised.append((output - (bn.bias if bn.bias is not None else 0)) / bn.weight)
            return output
        return record

    for kind in ("ih", "hh", "c"):
        bn = getattr(model, f"bn_{kind}_l0")
        bn.normalize = recording(bn)
    output, (h_n, c_n) = model(x, (h0, c0))
    if impl == "reference":  # (the fast path normalises inside its kernels)
        assert len(normalised) == 1 + 2 * 5  # one call for all input timesteps, one per step for hh and c
    for values in normalised:  # ([S,] B, F): every timestep and feature has batch mean 0, variance 1
        torch.testing.assert_close(values.mean(-2), torch.zeros_like(values.mean(-2)), rtol=0, atol=1e-9)
        torch.testing.assert_close(values.var(-2, unbiased=False), torch.ones_like(values.mean(-2)), rtol=0, atol=1e-4)
    expected, h_T, c_T, _ = oracle(model, x, h0[0], c0[0])
    torch.testing.assert_close(output, expected, rtol=0, atol=1e-12)
    torch.testing.assert_close((h_n[0], c_n[0]), (h_T, c_T), rtol=0, atol=1e-12)
    output.sum().backward()
    assert all(torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0 for p in model.parameters())


@pytest.mark.parametrize("warmup, momentum, weights", [
    (False, 0.01, [0.01] * 3),                # [R]: the EMA from (mean 0, var 1)
    (True, 0.3, [1, 1 / 2, 1 / 3, 0.3, 0.3]),  # average of the first batches, then the EMA
])
def test_population_statistics_are_the_ema_of_batch_statistics(warmup, momentum, weights, impl):
    model = make_model(momentum=momentum, population_warmup=warmup, impl=impl).train()
    T = 4
    population = {kind: [torch.zeros(T, F, dtype=torch.float64), torch.ones(T, F, dtype=torch.float64)]
                  for kind, F in (("ih", 4 * H), ("hh", 4 * H), ("c", H))}
    for batch, weight in enumerate(weights):
        x, h0, c0 = sequence(T, seed=10 + batch)
        model(x, (h0, c0))
        _, _, _, used = oracle(model, x, h0[0], c0[0])
        for kind, (mean, var) in population.items():
            for t, (batch_mean, batch_var) in enumerate(used[kind]):
                mean[t] = weight * batch_mean + (1 - weight) * mean[t]
                var[t] = weight * batch_var + (1 - weight) * var[t]
    for kind, (mean, var) in population.items():
        bn = getattr(model, f"bn_{kind}_l0")
        torch.testing.assert_close(bn.running_mean[:T], mean.detach(), rtol=0, atol=1e-12)
        torch.testing.assert_close(bn.running_var[:T], var.detach(), rtol=0, atol=1e-12)
        assert torch.equal(bn.running_mean[T:], torch.zeros(10 - T, bn.num_features, dtype=torch.float64))
        assert bn.updates.tolist() == [len(weights)] * T + [0] * (10 - T)
    model.eval()
    x, h0, c0 = sequence(T, seed=99)
    expected, _, _, _ = oracle(model, x, h0[0], c0[0], population=lambda t: t)
    torch.testing.assert_close(model(x, (h0, c0))[0], expected, rtol=0, atol=1e-12)


def test_warmup_population_after_one_batch_is_that_batch_and_forgets_the_init():
    """The quick-scale pMNIST failure: tiny batch variances against the init's variance 1."""
    bn = StepwiseBatchNorm(3, max_length=2).double().train()
    x = 1e-3 * torch.randn(2, 50, 3, dtype=torch.float64) + 5.0
    bn(x)
    torch.testing.assert_close(bn.running_mean, x.mean(1), rtol=0, atol=1e-12)
    torch.testing.assert_close(bn.running_var, x.var(1, unbiased=False), rtol=0, atol=1e-15)
    plain = StepwiseBatchNorm(3, max_length=2, population_warmup=False).double().train()
    plain(x)
    assert (plain.running_var > 0.98).all()  # 0.99 * 1 + 0.01 * ~1e-6


@pytest.mark.parametrize("max_length, train_length, last", [(4, 4, 3), (10, 3, 2), (4, 6, 3)])
def test_eval_beyond_trained_length_reuses_last_statistics(max_length, train_length, last, impl):
    model = make_model(max_length=max_length, impl=impl).train()
    for seed in range(2):
        x, h0, c0 = sequence(train_length, seed=seed)
        model(x, (h0, c0))
    assert model.bn_c_l0.steps_tracked.item() == min(train_length, max_length)
    model.eval()
    x, h0, c0 = sequence(8, seed=5)
    expected, _, _, _ = oracle(model, x, h0[0], c0[0], population=lambda t: min(t, last))
    torch.testing.assert_close(model(x, (h0, c0))[0], expected, rtol=0, atol=1e-12)


def test_stepwise_batch_norm_eval_formula():
    bn = StepwiseBatchNorm(4, max_length=3, gamma_init=0.5).double()
    with torch.no_grad():
        bn.running_mean.copy_(torch.randn(3, 4))
        bn.running_var.copy_(torch.rand(3, 4) + 0.5)
        bn.bias.fill_(0.2)
        bn.steps_tracked.fill_(3)
    x = torch.randn(5, 7, 4, dtype=torch.float64)
    index = torch.tensor([1, 2, 2, 2, 2])  # starting at timestep 1; 3.. reuse slot 2
    expected = 0.5 * (x - bn.running_mean[index, None]) / torch.sqrt(bn.running_var[index, None] + 1e-5) + 0.2
    torch.testing.assert_close(bn.eval()(x, start=1), expected, rtol=0, atol=1e-12)


class FixedNoise(RecurrentNoiseSource):
    def __init__(self, noise):
        super().__init__()
        self.fixed, self.calls = noise, []

    def noise(self, seq_len, batch, hidden, device, training, layer=0):
        self.calls.append(layer)
        return self.fixed


def test_training_with_fixed_zoneout_and_update_masks_matches_oracle(impl):
    T, B = 5, 16
    shared = torch.rand(T, B, H) < 0.3
    update_keep = torch.rand(T, B, H) < 0.5
    source = FixedNoise(RecurrentNoise(keep_cell=shared, keep_hidden=shared, update_keep=update_keep))
    model = make_model(recurrent_regularizers=[source], impl=impl).train()
    x, h0, c0 = sequence(T, B)
    output, (h_n, c_n) = model(x, (h0, c0))
    expected, h_T, c_T, _ = oracle(model, x, h0[0], c0[0], keep_cell=shared.double(),
                                   keep_hidden=shared.double(), update_scale=update_keep.double())
    torch.testing.assert_close(output, expected, rtol=0, atol=1e-12)
    torch.testing.assert_close((h_n[0], c_n[0]), (h_T, c_T), rtol=0, atol=1e-12)


def test_shared_mask_zoneout_training_and_deterministic_eval(impl):
    torch.manual_seed(0)
    zoneout = Zoneout(cell=0.15, hidden=0.15, shared_mask=True)
    model = make_model(recurrent_regularizers=[zoneout, RecurrentDropout(0.5)], impl=impl).train()
    x, h0, c0 = sequence(1, B=256)
    _, (h_n, c_n) = model(x, (h0, c0))
    kept_h, kept_c = h_n == h0, c_n == c0
    assert torch.equal(kept_h, kept_c)  # one mask for h and c (pMNIST)
    assert abs(kept_h.double().mean().item() - 0.15) < 0.03
    model.eval()
    x, h0, c0 = sequence(6, seed=3)
    first, second = model(x, (h0, c0)), model(x, (h0, c0))
    torch.testing.assert_close(first, second, rtol=0, atol=0)
    # trained on one timestep only, so every timestep reads the statistics of t = 0
    expected, _, _, _ = oracle(model, x, h0[0], c0[0], population=lambda t: 0, keep_cell=0.15, keep_hidden=0.15,
                               update_scale=0.5)
    torch.testing.assert_close(first[0], expected, rtol=0, atol=1e-12)


def test_two_layers_draw_noise_per_layer_and_chain_like_the_oracle(impl):
    source = FixedNoise(RecurrentNoise())
    model = make_model(num_layers=2, recurrent_regularizers=[source], impl=impl).train()
    T, B = 4, 8
    x = torch.randn(T, B, I, dtype=torch.float64)
    h0, c0 = torch.randn(2, B, H, dtype=torch.float64), torch.randn(2, B, H, dtype=torch.float64)
    output, (h_n, c_n) = model(x, (h0, c0))
    assert source.calls == [0, 1]
    first, h1, c1, _ = oracle(model, x, h0[0], c0[0], layer=0)
    second, h2, c2, _ = oracle(model, first, h0[1], c0[1], layer=1)
    torch.testing.assert_close(output, second, rtol=0, atol=1e-12)
    torch.testing.assert_close((h_n, c_n), (torch.stack([h1, h2]), torch.stack([c1, c2])), rtol=0, atol=1e-12)


def test_batch_first_layout(impl):
    model = make_model(impl=impl).eval()
    x = torch.randn(5, 3, I, dtype=torch.float64)
    time_major = model(x)[0]
    model.batch_first = True
    torch.testing.assert_close(model(x.transpose(0, 1))[0], time_major.transpose(0, 1), rtol=0, atol=0)


@pytest.mark.parametrize("kwargs, field", [
    ({"max_length": 0}, "max_length"),
    ({"momentum": 0.0}, "momentum"),
    ({"momentum": 1.5}, "momentum"),
    ({"eps": 0.0}, "eps"),
    ({"hidden_size": 0}, "hidden_size"),
])
def test_invalid_settings_raise_value_error_naming_the_field(kwargs, field):
    arguments = {"input_size": I, "hidden_size": H, **kwargs}
    with pytest.raises(ValueError, match=field):
        BatchNormLSTM(**arguments)


def test_bad_shapes_raise_value_error():
    model = BatchNormLSTM(I, H, max_length=5)
    with pytest.raises(ValueError, match="input"):
        model(torch.randn(4, 2, I + 1))
    with pytest.raises(ValueError, match="hx"):
        model(torch.randn(4, 2, I), (torch.zeros(1, 3, H), torch.zeros(1, 3, H)))


def test_recalibration_is_the_plain_average_of_batch_statistics_with_current_weights(impl):
    from zoneout.nn.bn_lstm import recalibrate_population

    model = make_model(momentum=0.3, impl=impl).train()
    T = 4
    for seed in range(3):  # some training-time history, to be forgotten
        x, h0, c0 = sequence(T, seed=seed)
        model(x, (h0, c0))
    batches = [sequence(T, seed=20 + k) for k in range(3)]
    sums = {kind: [0.0, 0.0] for kind in ("ih", "hh", "c")}
    for x, h0, c0 in batches:
        _, _, _, used = oracle(model, x, h0[0], c0[0])
        for kind, total in sums.items():
            total[0] = total[0] + torch.stack([mean for mean, _ in used[kind]])
            total[1] = total[1] + torch.stack([var for _, var in used[kind]])
    model.eval()
    assert recalibrate_population(model, lambda batch: model(batch[0], (batch[1], batch[2])), batches) == 3
    assert not model.training  # mode restored
    for kind, (mean_sum, var_sum) in sums.items():
        bn = getattr(model, f"bn_{kind}_l0")
        torch.testing.assert_close(bn.running_mean[:T], mean_sum / 3, rtol=0, atol=1e-12)
        torch.testing.assert_close(bn.running_var[:T], var_sum / 3, rtol=0, atol=1e-12)
        assert bn.updates.tolist() == [3] * T + [0] * 6 and bn.steps_tracked.item() == T
        assert not bn.plain_average
    # training afterwards goes back to the model's own rule: max(momentum, 1/n) = max(0.3, 1/4)
    before = model.bn_c_l0.running_mean[:T].clone()
    x, h0, c0 = sequence(T, seed=40)
    _, _, _, used = oracle(model.train(), x, h0[0], c0[0])
    model(x, (h0, c0))
    expected = 0.7 * before + 0.3 * torch.stack([mean for mean, _ in used["c"]])
    torch.testing.assert_close(model.bn_c_l0.running_mean[:T], expected, rtol=0, atol=1e-12)
    assert recalibrate_population(torch.nn.LSTM(2, 3), lambda batch: None, [1, 2]) == 0
