"""Zoneout (Krueger et al., ICLR 2017) and its baselines in PyTorch."""
from zoneout.nn import LSTM, ZoneoutGRU, ZoneoutGRUCell, ZoneoutLSTM, ZoneoutLSTMCell

__all__ = ["LSTM", "ZoneoutLSTM", "ZoneoutLSTMCell", "ZoneoutGRU", "ZoneoutGRUCell"]
__version__ = "0.1.0"
