from zoneout.nn.cells import ZoneoutGRUCell, ZoneoutLSTMCell
from zoneout.nn.dispatch import register_layer_impl
from zoneout.nn.gru import ZoneoutGRU
from zoneout.nn.lstm import LSTM, ZoneoutLSTM
from zoneout.nn.noise import RecurrentNoise, RecurrentNoiseSource

__all__ = ["LSTM", "ZoneoutLSTM", "ZoneoutLSTMCell", "ZoneoutGRU", "ZoneoutGRUCell", "RecurrentNoise",
           "RecurrentNoiseSource", "register_layer_impl"]
