"""Which function runs a layer's recurrence, from the module's `impl`: the one place that decides.

    "reference"  the per-timestep loop of zoneout.nn.reference (the readable oracle)
    "fused"      zoneout.nn.fused's layer (one autograd.Function over C++ / Triton / PyTorch-op kernels;
                 it runs the reference loop itself for whatever its kernels do not handle)
    "auto"       the fused layer where one is registered for the kind, else the reference

While tracing, exporting or compiling, the reference runs whatever `impl` says: it is made of plain
torch ops, which those tools can record, and they cannot see into the C++ kernels.
"""
from __future__ import annotations

from typing import Callable

from zoneout.nn import fused, reference
from zoneout.nn.fused.bn_lstm_function import bn_lstm_layer as fused_bn_lstm_layer
from zoneout.nn.noise import capturing

IMPLS = ("auto", "reference", "fused")

# kind -> implementation name -> layer function (each with its kind's reference signature)
LAYERS: dict[str, dict[str, Callable]] = {
    "lstm": {"reference": reference.lstm_layer, "fused": fused.lstm_layer},
    "gru": {"reference": reference.gru_layer, "fused": fused.gru_layer},
    "rnn": {"reference": reference.rnn_layer, "fused": fused.rnn_layer},
    "bn_lstm": {"reference": reference.bn_lstm_layer, "fused": fused_bn_lstm_layer},
}


def check_impl(impl: str) -> str:
    """`impl` itself, or a ValueError naming the allowed values (the modules' constructors call this)."""
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    return impl


def register_layer_impl(name: str, layer_fn: Callable, kind: str = "lstm") -> None:
    """Make `layer_fn` (with `kind`'s reference signature) what impl=`name` runs; "fused" replaces the
    fast path that impl="auto" picks too (e.g. an experimental kernel under test)."""
    if kind not in LAYERS:
        raise ValueError(f"kind must be one of {tuple(LAYERS)}, got {kind!r}")
    LAYERS[kind][name] = layer_fn


def layer_function(kind: str, impl: str) -> Callable:
    """The layer function a module of `kind` ("lstm", "gru", "rnn", "bn_lstm") runs for `impl`."""
    layers = LAYERS[kind]
    if capturing() or impl == "reference":
        return layers["reference"]
    if impl == "auto":
        return layers.get("fused", layers["reference"])
    if impl not in layers:
        raise ValueError(f"impl={impl!r} is not available for {kind} layers; use one of {tuple(layers)} or 'auto'")
    return layers[impl]
