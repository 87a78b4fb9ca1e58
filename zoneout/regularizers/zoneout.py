"""Zoneout (Krueger et al. 2017), the regularizer of this paper: each unit keeps its previous c / h
with probability z. Its noise source lives in zoneout.nn.zoneout_noise, because the layers
(ZoneoutLSTM, ZoneoutGRU, the cells) build it themselves and zoneout.nn must not reach up into
zoneout.regularizers; this module names it beside the other regularizers."""
from zoneout.nn.zoneout_noise import Zoneout

__all__ = ["Zoneout"]
