"""One small module per regularizer of the paper's comparisons."""
from zoneout.regularizers.dropout import SequenceDropout
from zoneout.regularizers.norm_stabilizer import NormStabilizer, norm_stabilizer_penalty
from zoneout.regularizers.recurrent_dropout import RecurrentDropout
from zoneout.regularizers.stochastic_depth import StochasticDepth
from zoneout.regularizers.weight_noise import WeightNoise
from zoneout.regularizers.zoneout import Zoneout

__all__ = ["Zoneout", "RecurrentDropout", "StochasticDepth", "WeightNoise", "NormStabilizer",
           "norm_stabilizer_penalty", "SequenceDropout"]
