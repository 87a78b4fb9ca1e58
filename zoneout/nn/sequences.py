"""nn.RNN-style inputs and states in and out: padded or PackedSequence, batch_first, unbatched, dtypes.

Everything inside runs on a time-major padded tensor (T, B, I); for a PackedSequence the batch is
in the pack's sorted order (longest first) with per-sequence lengths, and the initial / final states
are permuted to and from that order with the pack's sorted_indices / unsorted_indices, exactly as
nn.LSTM does.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Union

import torch
from torch import Tensor
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence


class RecurrentInputError(ValueError, RuntimeError):
    """A bad input or state at forward time: a ValueError, as this library has always raised, and a
    RuntimeError, as nn.LSTM/nn.GRU/nn.RNN raise for the same input (code written for nn catches it)."""


@dataclass
class Prepared:
    x: Tensor  # (T, B, I) time-major; for packed input padded with zeros, in the pack's sorted order
    lengths: Optional[list[int]] = None  # per sequence (sorted longest first); None: all T steps
    lengths_tensor: Optional[Tensor] = None  # the same on x's device, (1, B)
    packed: Optional[PackedSequence] = None
    unbatched: bool = False


def prepare_input(input: Union[Tensor, PackedSequence], input_size: int, batch_first: bool) -> Prepared:
    if isinstance(input, PackedSequence):
        if input.data.dim() != 2 or input.data.shape[-1] != input_size:
            raise RecurrentInputError(f"packed input data must be (N, {input_size}), got {tuple(input.data.shape)}")
        # a pack without its permutation pads in its own (sorted) order
        padded, lengths = pad_packed_sequence(PackedSequence(input.data, input.batch_sizes))
        return Prepared(padded, lengths.tolist(), lengths.to(padded.device).unsqueeze(0), input)
    unbatched = input.dim() == 2
    if unbatched:
        input = input.unsqueeze(1)
    if input.dim() != 3 or input.shape[-1] != input_size:
        raise RecurrentInputError(f"input must be (T, B, {input_size}) (or batch_first), got {tuple(input.shape)}")
    if batch_first and not unbatched:
        input = input.transpose(0, 1)
    check_sequence_length(input.shape[0])
    return Prepared(input, unbatched=unbatched)


def check_sequence_length(steps: int) -> None:
    """nn.LSTM/GRU/RNN refuse an empty sequence (there is no last step to return as h_n): so do we."""
    if steps == 0:
        raise RecurrentInputError("input has sequence length 0: a recurrent layer needs at least one step "
                                  "(nn.LSTM raises 'Expected sequence length to be larger than 0' too)")


def finish_output(output: Tensor, prepared: Prepared, batch_first: bool) -> Union[Tensor, PackedSequence]:
    if prepared.packed is not None:
        data = pack_padded_sequence(output, prepared.lengths).data  # same step-major layout as the input
        return PackedSequence(data, prepared.packed.batch_sizes, prepared.packed.sorted_indices,
                              prepared.packed.unsorted_indices)
    if prepared.unbatched:
        return output.squeeze(1)
    return output.transpose(0, 1) if batch_first else output


def initial_state(hx: Optional[Tensor], name: str, prepared: Prepared, rows: int, hidden: int, dtype) -> Tensor:
    """(rows, B, H) state in the internal batch order; zeros when hx is None. A wrong shape raises,
    since it would broadcast silently inside the recurrence (nn.LSTM raises too)."""
    x = prepared.x
    batch = x.shape[1]
    if hx is None:
        return torch.zeros(rows, batch, hidden, dtype=dtype, device=x.device)
    expected = (rows, hidden) if prepared.unbatched else (rows, batch, hidden)
    if tuple(hx.shape) != expected:
        raise RecurrentInputError(f"hx {name} must have shape (num_layers * num_directions, [batch,] hidden_size) = "
                                  f"{expected}, got {tuple(hx.shape)}")
    check_state_dtype(hx, name, dtype)
    if prepared.unbatched:
        hx = hx.unsqueeze(1)
    if prepared.packed is not None and prepared.packed.sorted_indices is not None:
        hx = hx.index_select(1, prepared.packed.sorted_indices)
    return hx.to(dtype)


def finish_state(state: Tensor, prepared: Prepared) -> Tensor:
    if prepared.packed is not None and prepared.packed.unsorted_indices is not None:
        return state.index_select(1, prepared.packed.unsorted_indices)
    return state.squeeze(1) if prepared.unbatched else state


def check_state_dtype(state: Tensor, name: str, dtype: torch.dtype) -> None:
    """A state of another dtype than the recurrence is refused like the input is (nn.LSTM raises too);
    under torch.autocast it is cast to the parameters' dtype, as the input is."""
    if state.dtype != dtype and not (state.is_floating_point() and torch.is_autocast_enabled(state.device.type)):
        raise RecurrentInputError(f"{name} dtype {state.dtype} does not match the parameters' {dtype}: cast it "
                                  f"({name}.to({dtype})) or the module, or run under torch.autocast")


def compute_dtype(input: Tensor, parameter: Tensor) -> torch.dtype:
    """The dtype the recurrence runs in: the parameters'. Under torch.autocast the input is cast to it
    (the reference loop then gets autocast's low-precision GEMMs while h and c stay in the parameters'
    float32; the fused kernels run in float32). Outside autocast a mismatch is an error, never a
    silent cast."""
    if input.dtype == parameter.dtype:
        return parameter.dtype
    if input.is_floating_point() and torch.is_autocast_enabled(input.device.type):
        return parameter.dtype
    raise RecurrentInputError(f"input dtype {input.dtype} does not match the parameters' {parameter.dtype}: cast the module "
                     f"(module.to({input.dtype})) or the input, or run under torch.autocast")
