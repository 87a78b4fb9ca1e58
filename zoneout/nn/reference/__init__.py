"""The reference recurrences: plain per-timestep loops written to be read, the oracle every faster
implementation (zoneout.nn.fused) is tested against. Each layer function takes one layer's input
(T, B, I), initial state and weights plus one RecurrentNoise draw and returns the output (T, B, H) and
the last state; the cell-step functions are what the one-step cells (zoneout.nn.cells) run."""
from zoneout.nn.reference.bn_lstm import bn_lstm_layer
from zoneout.nn.reference.hidden import NONLINEARITIES, gru_cell_step, gru_layer, rnn_layer
from zoneout.nn.reference.lstm import lstm_cell_step, lstm_layer

__all__ = ["lstm_layer", "lstm_cell_step", "gru_layer", "gru_cell_step", "rnn_layer", "NONLINEARITIES",
           "bn_lstm_layer"]
