"""Weight noise (Graves 2011) as in the zoneout paper's baselines: W <- W + N(0, std^2).

Noise covers every weight MATRIX of the model (parameters with ndim >= 2 whose own name contains
"weight": input, recurrent and output matrices, embeddings), never biases or batch-norm gammas/betas.
It is resampled on every training call (every minibatch) and the same noisy W serves all timesteps
and all examples of that call, as Blocks' `apply_noise` does (docs/replication.md §1.5). There is no noise
in eval. The model is run with `torch.func.functional_call`, so its parameters are never modified and
gradients flow through W + std * eps to the clean W.

    weight_noise = WeightNoise(0.075)
    logits, state = weight_noise(model, inputs, state)   # instead of model(inputs, state)
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.func import functional_call


def is_weight_matrix(name: str, parameter: Tensor) -> bool:
    return parameter.dim() >= 2 and "weight" in name.rsplit(".", 1)[-1]


class WeightNoise(nn.Module):
    def __init__(self, std: float = 0.0):
        super().__init__()
        std = float(std)
        if not (math.isfinite(std) and std >= 0.0):
            raise ValueError(f"weight_noise std must be a finite number >= 0, got {std}")
        self.std = std

    def noisy_parameters(self, model: nn.Module) -> dict[str, Tensor]:
        """name -> W + std * N(0, 1) for every weight matrix of `model`; differentiable w.r.t. W."""
        return {name: weight + self.std * torch.randn_like(weight)
                for name, weight in model.named_parameters() if is_weight_matrix(name, weight)}

    def forward(self, model: nn.Module, *args, **kwargs):
        """Call `model(*args, **kwargs)` with freshly noised weight matrices when `model.training`
        (the model's mode is the one switch: model.eval() turns the noise off)."""
        if not model.training or self.std == 0.0:
            return model(*args, **kwargs)
        # Parameters and buffers not in the dict are the module's own (strict=False), so buffer
        # updates made in forward (batch-norm population statistics) still land in the model.
        return functional_call(model, self.noisy_parameters(model), args, kwargs)

    def extra_repr(self) -> str:
        return f"std={self.std}"
