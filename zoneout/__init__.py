"""Zoneout (Krueger et al., ICLR 2017) and its baselines in PyTorch."""
from zoneout.nn import LSTM, ZoneoutLSTM

__all__ = ["LSTM", "ZoneoutLSTM"]
__version__ = "0.1.0"
