"""What code written for nn.RNNBase / nn.RNNCellBase reads besides forward, shared by every layer and cell.

- constructor checks in nn.RNNBase's order, with its exception types and messages, and its warning for
  dropout on a single layer;
- `flatten_parameters()`: a no-op (every weight is its own parameter, read in place by every
  implementation; nn's is a no-op too off cuDNN), so code that calls it (Tacotron 2's encoder) runs;
- `all_weights`, `_all_weights`, `_flat_weights`, `_flat_weights_names`: nn's lists, built from the
  parameters at each read, so they follow `.to()`, `.double()` and reassigned parameters;
- `mode`, `proj_size` (always 0);
- `torch.jit.script` refused with one error naming torch.jit.trace / torch.export, which record the
  reference loop and are tested.
"""
from __future__ import annotations

import warnings

from torch import nn

SCRIPT_REFUSED = (
    "{name} cannot be compiled by torch.jit.script: its forward picks kernels and draws zoneout masks in "
    "Python. Use torch.jit.trace(model.eval(), example_inputs) or torch.export.export(model, example_inputs), "
    "which record the reference loop (plain torch ops) and are tested with these modules.")


def check_sizes(**sizes: int) -> None:
    """nn.RNNBase's checks of input_size / hidden_size: an int (TypeError), greater than zero (ValueError)."""
    for name, value in sizes.items():
        if not isinstance(value, int):
            raise TypeError(f"{name} should be of type int, got: {type(value).__name__}")
        if value <= 0:
            raise ValueError(f"{name} must be greater than zero")


def check_bools(**flags: bool) -> None:
    """bias / batch_first must be bools, as nn.RNNBase says: bias="False" would build a biased layer."""
    for name, value in flags.items():
        if not isinstance(value, bool):
            raise TypeError(f"{name} should be of type bool, got: {type(value).__name__}")


def check_layer_arguments(input_size, hidden_size, num_layers, bias, batch_first, dropout: float,
                          proj_size: int = 0) -> None:
    """nn.RNNBase.__init__'s checks and warning, in its order; `dropout` already checked to be in [0, 1]."""
    if dropout > 0 and num_layers == 1:
        warnings.warn("dropout option adds dropout after all but last recurrent layer, so non-zero dropout "
                      f"expects num_layers greater than 1, but got dropout={dropout} and num_layers={num_layers}",
                      stacklevel=4)
    check_bools(bias=bias, batch_first=batch_first)
    check_sizes(input_size=input_size, hidden_size=hidden_size)
    if not isinstance(num_layers, int):  # nn fails later on range(num_layers) with a TypeError too
        raise TypeError(f"num_layers should be of type int, got: {type(num_layers).__name__}")
    if num_layers <= 0:
        raise ValueError("num_layers must be greater than zero")
    if not isinstance(proj_size, int):
        raise TypeError(f"proj_size should be of type int, got: {type(proj_size).__name__}")
    if proj_size < 0:
        raise ValueError("proj_size should be a positive integer or zero to disable projections")
    if proj_size >= hidden_size:
        raise ValueError("proj_size has to be smaller than hidden_size")


def refuse_proj_size(proj_size) -> None:
    """nn.GRU / nn.RNN refuse the keyword whatever its value."""
    if proj_size is not None:
        raise ValueError("proj_size argument is only supported for LSTM, not RNN or GRU")


class RecurrentSurface:
    """nn.RNNBase's attributes besides forward; a subclass provides `_all_weights` (names per
    layer-direction) and `mode`."""

    # properties TorchScript must not compile (torch.jit.trace compiles a module's properties)
    __jit_unused_properties__ = ["all_weights", "_all_weights", "_flat_weights", "_flat_weights_names", "mode"]
    proj_size = 0

    def flatten_parameters(self) -> None:
        """A no-op: the weights are separate parameters every implementation reads in place."""

    @property
    def _flat_weights_names(self) -> list[str]:
        return [name for names in self._all_weights for name in names]

    @property
    def _flat_weights(self) -> list[nn.Parameter]:
        return [getattr(self, name) for name in self._flat_weights_names]

    @property
    def all_weights(self) -> list[list[nn.Parameter]]:
        return [[getattr(self, name) for name in names] for names in self._all_weights]

    def __prepare_scriptable__(self):
        raise RuntimeError(SCRIPT_REFUSED.format(name=type(self).__name__))


class LayerSurface(RecurrentSurface):
    """For layers with nn.RNNBase's parameter names (num_layers, num_directions, bias set)."""

    @property
    def _all_weights(self) -> list[list[str]]:
        kinds = ("weight_ih", "weight_hh", "bias_ih", "bias_hh") if self.bias else ("weight_ih", "weight_hh")
        return [[f"{kind}_l{layer}{suffix}" for kind in kinds]
                for layer in range(self.num_layers) for suffix in ("", "_reverse")[:self.num_directions]]

    def nn_extra_repr(self) -> str:
        """nn.RNNBase.extra_repr: the sizes, then only the arguments that differ from their defaults."""
        text = f"{self.input_size}, {self.hidden_size}"
        defaults = (("num_layers", 1), ("bias", True), ("batch_first", False), ("dropout", 0),
                    ("bidirectional", False))
        for name, default in defaults:
            if getattr(self, name) != default:
                text += f", {name}={getattr(self, name)}"
        return text


class CellSurface(RecurrentSurface):
    """For cells with nn.RNNCellBase's parameter names (weight_ih, weight_hh, bias_ih, bias_hh)."""

    @property
    def _all_weights(self) -> list[list[str]]:
        return [["weight_ih", "weight_hh", "bias_ih", "bias_hh"] if self.bias else ["weight_ih", "weight_hh"]]

    def nn_extra_repr(self) -> str:
        return f"{self.input_size}, {self.hidden_size}" + ("" if self.bias else f", bias={self.bias}")
