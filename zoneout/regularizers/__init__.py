"""One small module per regularizer of the paper's comparisons."""
from zoneout.regularizers.zoneout import Zoneout

__all__ = ["Zoneout"]
