"""The two settings in which our paper-scale char-PTB model differed from the authors' code
(docs/paper_scale.md): model.initial_state=learned (their `initial_state_`, `initial_cells`) and
model.recurrent_bias=false (their `W_state` has no bias). Both are options, off by default."""
from __future__ import annotations

import copy

import pytest
import torch
from omegaconf import OmegaConf
from test_train import compose_cfg, tiny_cfg

from zoneout import checkpoint
from zoneout.config_check import ConfigError, check_config
from zoneout.models.build import ModelConfigError, build_model
from zoneout.run_identity import first_difference
from zoneout.train import train

REG = OmegaConf.create({"zoneout_cell": 0.5, "zoneout_hidden": 0.05, "zoneout_shared_mask": False,
                        "zoneout_static_mask": False, "recurrent_dropout": 0.0, "stochastic_depth": 0.0,
                        "batchnorm": False, "dropout": 0.0, "variational_dropout": False})
VOCAB, HIDDEN = 11, 8


def model_cfg(cell="lstm", impl="reference", layers=2, **extra):
    return OmegaConf.create({"cell": cell, "hidden_size": HIDDEN, "num_layers": layers, "input": "onehot",
                             "embedding_size": None, "nonlinearity": "tanh", "init": "uniform", "init_range": 0.3,
                             "forget_bias": 1.0, "impl": impl, **extra})


def tokens(batch=5, steps=7, seed=0):
    return torch.randint(VOCAB, (batch, steps), generator=torch.Generator().manual_seed(seed))


def learned_and_plain(cell="lstm", impl="reference"):
    """A model with a learned initial state and one without, sharing every other weight."""
    torch.manual_seed(0)
    reg = REG if cell == "lstm" else OmegaConf.merge(REG, {"zoneout_cell": 0.0})  # no cell state to zone out
    learned = build_model(model_cfg(cell, impl, initial_state="learned"), reg, VOCAB, VOCAB, 20).double().eval()
    plain = build_model(model_cfg(cell, impl), reg, VOCAB, VOCAB, 20).double().eval()
    plain.load_state_dict({k: v for k, v in learned.state_dict().items() if not k.startswith("initial_state.")})
    return learned, plain


def explicit_state(vectors_h, vectors_c, batch):
    """The per-layer states a caller would pass by hand: each vector repeated over the batch, as leaves."""
    def leaf(v):
        return v.detach().view(1, 1, -1).repeat(1, batch, 1).requires_grad_()
    if vectors_c is None:
        return [leaf(h) for h in vectors_h]
    return [(leaf(h), leaf(c)) for h, c in zip(vectors_h, vectors_c)]


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_learned_initial_state_starts_at_zero_and_is_not_touched_by_any_init(cell):
    learned, plain = learned_and_plain(cell)
    starts = {name: p for name, p in learned.named_parameters() if name.startswith("initial_state.")}
    assert list(starts) == (["initial_state.hidden", "initial_state.cell"] if cell == "lstm" else ["initial_state.hidden"])
    for vector in starts.values():  # uniform init (U[-0.3, 0.3] on every other parameter) left them at zero
        assert vector.shape == (2, HIDDEN) and vector.eq(0).all()
    x = tokens()
    assert torch.equal(learned(x)[0], plain(x)[0])  # zero vectors: the zero-state model exactly
    assert not any(n.startswith("initial_state.") for n, _ in plain.named_parameters())


@pytest.mark.parametrize("impl", ["reference", "fused"])
def test_learned_initial_state_is_each_sequences_start_and_its_gradient_sums_over_the_batch(impl):
    learned, plain = learned_and_plain("lstm", impl)
    with torch.no_grad():  # as if trained: distinct per layer, per unit, h and c
        learned.initial_state.hidden.copy_(torch.randn(2, HIDDEN, dtype=torch.float64) * 0.5)
        learned.initial_state.cell.copy_(torch.randn(2, HIDDEN, dtype=torch.float64) * 0.5)
    x, batch = tokens(), 5
    logits, _, _ = learned(x)
    by_hand = explicit_state(learned.initial_state.hidden, learned.initial_state.cell, batch)
    expected, _, _ = plain(x, by_hand)
    assert torch.allclose(logits, expected, atol=1e-12, rtol=0)
    assert not torch.allclose(logits, plain(x)[0])  # and it is not the zero start
    weights = torch.randn_like(logits)
    (logits * weights).sum().backward()
    (expected * weights).sum().backward()
    for layer, (h0, c0) in enumerate(by_hand):
        assert torch.allclose(learned.initial_state.hidden.grad[layer], h0.grad.sum(dim=(0, 1)), atol=1e-12)
        assert torch.allclose(learned.initial_state.cell.grad[layer], c0.grad.sum(dim=(0, 1)), atol=1e-12)
        assert learned.initial_state.cell.grad[layer].abs().sum() > 0


def test_a_carried_state_is_used_instead_of_the_learned_start():
    learned, plain = learned_and_plain()
    with torch.no_grad():
        learned.initial_state.hidden.fill_(0.7)
    carried = plain(tokens(seed=1))[2]  # word-PTB's stream: the previous window's final states
    assert torch.equal(learned(tokens(), carried)[0], plain(tokens(), carried)[0])


@pytest.mark.parametrize("impl", ["reference", "fused"])
def test_no_recurrent_bias_holds_bias_hh_at_zero_out_of_training(impl):
    torch.manual_seed(0)
    model = build_model(model_cfg("lstm", impl, recurrent_bias=False), REG, VOCAB, VOCAB, 20).train()
    with_bias = build_model(model_cfg("lstm", impl), REG, VOCAB, VOCAB, 20)
    frozen = [name for name, p in model.named_parameters() if not p.requires_grad]
    assert frozen == ["layers.0.bias_hh_l0", "layers.1.bias_hh_l0"]
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert sum(p.numel() for p in with_bias.parameters()) - sum(p.numel() for p in trainable) == 2 * 4 * HIDDEN
    optimizer = torch.optim.Adam(trainable, lr=0.1)
    for _ in range(3):
        optimizer.zero_grad()
        model(tokens())[0].square().mean().backward()
        optimizer.step()
    for layer in model.layers:
        assert layer.bias_hh_l0.eq(0).all() and layer.bias_hh_l0.grad is None
        assert layer.bias_ih_l0.grad is not None and not layer.bias_ih_l0[HIDDEN:2 * HIDDEN].eq(1).all()


@pytest.mark.parametrize("bad, message", [
    ({"cell": "gru", "recurrent_bias": False}, "model.recurrent_bias must be true, or false with model.cell=lstm"),
    ({"recurrent_bias": "no"}, "model.recurrent_bias must be true"),
    ({"initial_state": "random"}, "model.initial_state must be one of zeros, learned; got 'random'"),
])
def test_bad_values_are_one_line_naming_the_field(bad, message):
    cfg = model_cfg(**{k: v for k, v in bad.items() if k == "cell"},
                    **{k: v for k, v in bad.items() if k != "cell"})
    with pytest.raises(ModelConfigError, match=message):
        build_model(cfg, REG, VOCAB, VOCAB, 20)


def test_config_checks_name_the_field_before_any_work():
    cases = [
        (["experiment=ptb_char/zoneout", "model.initial_state=trained"], "model.initial_state='trained': allowed values are zeros, learned"),
        (["experiment=ptb_char/zoneout", "model.recurrent_bias=maybe"], "model.recurrent_bias='maybe': allowed values are true, false"),
        (["experiment=ptb_char/zoneout", "model.recurrent_bias=1"], "model.recurrent_bias=1: allowed values are true, false"),
        (["experiment=ptb_char/zoneout", "model.cell=gru", "model.recurrent_bias=false"],
         "model.recurrent_bias=false: only with model.cell=lstm"),
    ]
    for overrides, message in cases:
        with pytest.raises(ConfigError, match=message):
            check_config(compose_cfg(overrides))
    check_config(compose_cfg(["experiment=ptb_char/zoneout", "model.initial_state=learned", "model.recurrent_bias=false"]))
    check_config(compose_cfg(["experiment=pmnist/zoneout", "model.initial_state=learned"]))  # their pMNIST code learns h0, c0


def test_runs_saved_before_the_options_existed_are_the_same_experiment():
    current = OmegaConf.to_container(compose_cfg(["experiment=ptb_char/zoneout"]), resolve=True)
    assert current["model"]["initial_state"] == "zeros" and current["model"]["recurrent_bias"] is True
    saved = copy.deepcopy(current)
    del saved["model"]["initial_state"], saved["model"]["recurrent_bias"]
    assert first_difference(saved, current) is None
    changed = copy.deepcopy(current)
    changed["model"]["initial_state"] = "learned"
    assert first_difference(saved, changed) == "model.initial_state: 'zeros', now 'learned'"


def test_training_with_both_options_moves_the_start_and_never_the_missing_bias(data_dir, tmp_path):
    summary = train(tiny_cfg(data_dir, "model.initial_state=learned", "model.recurrent_bias=false"), tmp_path)
    assert summary["status"] == "finished"
    plain = train(tiny_cfg(data_dir), tmp_path / "plain")
    assert plain["parameters"] - summary["parameters"] == 4 * 25 - 2 * 25  # no bias_hh (4H), plus h0 and c0
    weights = checkpoint.load(tmp_path / "last.pt")["model"]
    assert weights["initial_state.hidden"].abs().sum() > 0 and weights["initial_state.cell"].abs().sum() > 0
    assert weights["layers.0.bias_hh_l0"].eq(0).all()


@pytest.mark.parametrize("impl", ["reference", "fused"])
def test_the_pixel_classifier_starts_from_the_learned_state_too(impl):
    torch.manual_seed(0)
    learned = build_model(model_cfg("lstm", impl, layers=1, initial_state="learned"), REG, None, 10, 12).double().eval()
    plain = build_model(model_cfg("lstm", impl, layers=1), REG, None, 10, 12).double().eval()
    plain.load_state_dict({k: v for k, v in learned.state_dict().items() if not k.startswith("initial_state.")})
    pixels = torch.rand(4, 12, dtype=torch.float64)
    assert torch.equal(learned(pixels)[0], plain(pixels)[0])
    with torch.no_grad():
        learned.initial_state.hidden.normal_()
        learned.initial_state.cell.normal_()
    logits = learned(pixels)[0]
    assert not torch.allclose(logits, plain(pixels)[0])
    logits.sum().backward()
    assert learned.initial_state.hidden.grad.abs().sum() > 0 and learned.initial_state.cell.grad.abs().sum() > 0
