"""Weight initialisation schemes (docs/replication.md §1.5, §6.9): orthogonal per gate block, the authors'
square-block orthogonal, Zaremba's uniform, or PyTorch's default; biases 0 except the forget gate's."""
from __future__ import annotations

import math

import torch
from torch import nn

GATES = {"lstm": 4, "bn_lstm": 4, "gru": 3, "rnn": 1}
INIT_SCHEMES = ("orthogonal", "orthogonal_square_blocks", "uniform", "default")


def blockwise_orthogonal_(weight: torch.Tensor, blocks: int) -> None:
    """Each gate's (H, in) block gets its own (semi-)orthogonal matrix."""
    with torch.no_grad():
        for block in weight.chunk(blocks, dim=0):
            nn.init.orthogonal_(block)


def square_block_orthogonal_(weight: torch.Tensor) -> None:
    """The authors' `ortho` (docs/replication.md §1.5): the matrix cut into square blocks of side gcd(rows, cols),
    each an independent orthogonal matrix. Their code asserts that one side divides the other (the gcd is a
    side); so do we. At char-PTB's one-hot input (4000 x 50) this gives 50 x 50 blocks, entries about
    sqrt(1000 / 50) = 4.5x larger than a per-gate semi-orthogonal (1000 x 50) block."""
    rows, cols = weight.shape
    side = math.gcd(rows, cols)
    if side not in (rows, cols):
        raise ValueError(f"model.init=orthogonal_square_blocks: a {rows} x {cols} weight has no square blocks "
                         f"(gcd {side} is neither side, which the authors' code refuses too); use model.init=orthogonal")
    with torch.no_grad():
        for row_block in weight.split(side, dim=0):
            for block in row_block.split(side, dim=1):
                nn.init.orthogonal_(block)


def initialize(model: nn.Module, cell: str, scheme: str, init_range: float, forget_bias: float) -> None:
    if scheme == "default":
        pass
    elif scheme == "uniform":
        for name, parameter in model.named_parameters():
            # recurrent-BN gammas (0.1) and betas (0), and a learned initial state (0), keep their own init
            if ".bn_" not in name and not name.startswith("initial_state."):
                nn.init.uniform_(parameter, -init_range, init_range)
    elif scheme == "orthogonal":
        for layer in model.layers:
            for name, parameter in layer.named_parameters():
                if name.startswith(("weight_ih", "weight_hh")):
                    blockwise_orthogonal_(parameter, GATES[cell])
                elif name.startswith("bias"):
                    nn.init.zeros_(parameter)
        nn.init.orthogonal_(model.decoder.weight)
        nn.init.zeros_(model.decoder.bias)
    elif scheme == "orthogonal_square_blocks":
        for layer in model.layers:
            for name, parameter in layer.named_parameters():
                if name.startswith(("weight_ih", "weight_hh")):
                    square_block_orthogonal_(parameter)
                elif name.startswith("bias"):
                    nn.init.zeros_(parameter)
        square_block_orthogonal_(model.decoder.weight)
        nn.init.zeros_(model.decoder.bias)
    else:
        raise ValueError(f"model.init must be one of {', '.join(INIT_SCHEMES)}; got {scheme!r}")
    if cell in ("lstm", "bn_lstm") and forget_bias:
        with torch.no_grad():
            for layer in model.layers:
                for name, parameter in layer.named_parameters():
                    if name.startswith("bias_ih"):  # gate order i, f, g, o: the second quarter
                        hidden = parameter.shape[0] // 4
                        parameter[hidden:2 * hidden] += forget_bias
