"""model.init=orthogonal_square_blocks: the authors' `ortho` (docs/replication.md §1.5), checked block by block."""
from __future__ import annotations

import math

import pytest
import torch
from omegaconf import OmegaConf

from zoneout.models.build import ModelConfigError, build_model
from zoneout.models.init import square_block_orthogonal_


def model_cfg(hidden, init):
    return OmegaConf.create({"cell": "lstm", "hidden_size": hidden, "num_layers": 1, "input": "onehot",
                             "embedding_size": None, "nonlinearity": "tanh", "init": init, "init_range": 0.04,
                             "forget_bias": 1.0, "impl": "reference"})


REG = OmegaConf.create({"zoneout_cell": 0.5, "zoneout_hidden": 0.05, "zoneout_shared_mask": False,
                        "zoneout_static_mask": False, "recurrent_dropout": 0.0, "stochastic_depth": 0.0,
                        "batchnorm": False, "dropout": 0.0, "variational_dropout": False})


def assert_orthogonal_blocks(weight, side):
    rows, cols = weight.shape
    for i in range(0, rows, side):
        for j in range(0, cols, side):
            block = weight[i:i + side, j:j + side].double()
            assert torch.allclose(block @ block.t(), torch.eye(side, dtype=torch.float64), atol=1e-5)


def test_char_ptb_paper_shapes_get_the_authors_blocks():
    torch.manual_seed(0)
    model = build_model(model_cfg(100, "orthogonal_square_blocks"), REG, 50, 50, 100)
    layer = model.layers[0]
    assert_orthogonal_blocks(layer.weight_ih_l0, 50)   # (400, 50): eight 50 x 50 blocks
    assert_orthogonal_blocks(layer.weight_hh_l0, 100)  # (400, 100): one per gate
    assert_orthogonal_blocks(model.decoder.weight, 50)  # (50, 100): two
    # Entries of a 50 x 50 orthogonal block have RMS 1/sqrt(50), where a per-gate (100 x 50)
    # semi-orthogonal block has 1/sqrt(100): the scale the init changes.
    rms = layer.weight_ih_l0.pow(2).mean().sqrt().item()
    assert rms == pytest.approx(1 / math.sqrt(50), rel=1e-4)
    per_gate = build_model(model_cfg(100, "orthogonal"), REG, 50, 50, 100).layers[0].weight_ih_l0
    assert per_gate.pow(2).mean().sqrt().item() == pytest.approx(1 / math.sqrt(100), rel=1e-4)
    # Biases 0 except the forget gate's +1; the blocks differ from each other (independent draws).
    assert layer.bias_ih_l0[100:200].eq(1).all() and layer.bias_hh_l0.eq(0).all() and model.decoder.bias.eq(0).all()
    assert not torch.allclose(layer.weight_ih_l0[:50], layer.weight_ih_l0[50:100])


def test_shapes_without_square_blocks_are_refused_in_one_line():
    with pytest.raises(ValueError, match="gcd 2 is neither side"):
        square_block_orthogonal_(torch.empty(1024, 50))
    with pytest.raises(ModelConfigError, match="model.init=orthogonal_square_blocks"):
        build_model(model_cfg(256, "orthogonal_square_blocks"), REG, 50, 50, 100)
