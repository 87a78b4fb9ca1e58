"""Recurrent batch normalization (Cooijmans et al. 2017) LSTM, as in the zoneout paper's pMNIST runs.

    (i, f, g, o) = BN_t(h_{t-1} W_hh^T; gamma_h, 0) + BN_t(x_t W_ih^T; gamma_x, 0) + b_ih + b_hh
    c~_t = sigmoid(f) * c_{t-1} + m_t * sigmoid(i) * tanh(g)        (m_t: recurrent-dropout keep mask)
    c_t  = d^c_t * c_{t-1} + (1 - d^c_t) * c~_t                     (zoneout on c)
    h~_t = sigmoid(o) * tanh(BN_t(c~_t; gamma_c, beta_c))           (from the UN-zoned candidate, as [R])
    h_t  = d^h_t * h_{t-1} + (1 - d^h_t) * h~_t                     (zoneout on h; the layer output)

BN_t keeps separate population statistics for every timestep t < max_length (docs/replication.md §2.4):
training normalises with the minibatch's statistics at that timestep (biased variance) and updates
pop = m * batch + (1 - m) * pop; eval uses the population statistics, and timesteps beyond
max_length -- or beyond the longest sequence trained on -- reuse the last trained timestep's.
m is the paper code's momentum 0.01, except that with population_warmup (the default) the n-th
update of a timestep uses m = max(momentum, 1/n): a plain average of the first 1/momentum batches,
then the EMA. Without it the initial (mean 0, var 1) still weighs 0.99^n after n updates, which at
short training swamps the tiny variances of W_x x for pMNIST's scalar pixels and leaves eval at
chance (measured: 0.99^100 = 0.37 population variance vs ~1e-5 in the batch). After ~500 updates
the two agree to 1% and at paper scale (75k updates) exactly; population_warmup=False is the EMA
from the init, as written in [R]. Either way the population lags a network whose weights still move
fast (quick-scale pMNIST: valid error 0.83 with the population vs 0.61 with batch statistics after
100 steps); `recalibrate_population` re-estimates it from training batches with the current weights
(0.62 there), which train.py does before every evaluation with trainer.bn_recalibration_batches.
Weights and biases are named like nn.LSTM's (gate order i, f, g, o); gammas init 0.1, betas 0.
`impl` picks how a layer runs: "reference" (zoneout.nn.reference.bn_lstm_layer, the readable loop and the test oracle)
or "fused"/"auto" (zoneout/nn/fused/bn_lstm_function.py: the same computation as one autograd.Function with C++
CPU kernels, several times faster per training step; it runs the reference loop itself for what it does not
support, and the reference runs whatever `impl` says while tracing, exporting or compiling).
"""
from __future__ import annotations

import math
from typing import Callable, Iterable, Optional, Sequence

import torch
from torch import Tensor, nn

from zoneout.nn.dispatch import check_impl, layer_function
from zoneout.nn.noise import RecurrentNoise, RecurrentNoiseSource
from zoneout.nn.sequences import RecurrentInputError, check_sequence_length


class StepwiseBatchNorm(nn.Module):
    """Batch norm over the batch axis of time-major (S, B, F) inputs, with statistics per timestep."""

    def __init__(self, num_features: int, max_length: int, gamma_init: float = 0.1, shift: bool = True,
                 eps: float = 1e-5, momentum: float = 0.01, population_warmup: bool = True):
        super().__init__()
        self.num_features, self.max_length = num_features, max_length
        self.eps, self.momentum, self.population_warmup = eps, momentum, population_warmup
        self.weight = nn.Parameter(torch.full((num_features,), float(gamma_init)))
        self.register_parameter("bias", nn.Parameter(torch.zeros(num_features)) if shift else None)
        self.register_buffer("running_mean", torch.zeros(max_length, num_features))
        self.register_buffer("running_var", torch.ones(max_length, num_features))
        # How many leading timesteps have population statistics (the longest training sequence, capped).
        self.register_buffer("steps_tracked", torch.zeros((), dtype=torch.long))
        # Updates each timestep's statistics have had (for the warm-up average).
        self.register_buffer("updates", torch.zeros(max_length, dtype=torch.long))
        self.plain_average = False  # set by recalibrate_population: every update weighs 1/n

    def forward(self, input: Tensor, start: int = 0) -> Tensor:
        """input (S, B, F) holding timesteps start .. start + S - 1."""
        if self.training:
            mean, var = self.batch_statistics(input)
            if input.shape[-2]:  # an empty batch has no statistics (its mean is NaN): the population stays
                self.update_population(mean.detach(), var.detach(), start)
        else:
            mean, var = self.population(start, input.shape[0])
        return self.normalize(input, mean, var)

    @staticmethod
    def batch_statistics(input: Tensor) -> tuple[Tensor, Tensor]:
        """Mean and biased variance over the batch axis (-2) of (..., B, F)."""
        var, mean = torch.var_mean(input, dim=-2, unbiased=False)
        return mean, var

    def population(self, start: int, steps: int) -> tuple[Tensor, Tensor]:
        """Population mean and variance (steps, F) for timesteps start .. start + steps - 1."""
        last = (self.steps_tracked - 1).clamp(min=0)
        index = torch.arange(start, start + steps, device=self.running_mean.device).clamp(max=self.max_length - 1)
        index = torch.minimum(index, last)
        return self.running_mean[index], self.running_var[index]

    def normalize(self, input: Tensor, mean: Tensor, var: Tensor) -> Tensor:
        """gamma * (input - mean) / sqrt(var + eps) + beta; input (..., B, F), statistics (..., F)."""
        scale = self.weight * torch.rsqrt(var + self.eps)  # per feature: two full-size ops, not four
        shift = -mean * scale if self.bias is None else self.bias - mean * scale
        return input * scale.unsqueeze(-2) + shift.unsqueeze(-2)

    @torch.no_grad()
    def update_population(self, mean: Tensor, var: Tensor, start: int) -> None:
        """Fold batch statistics (S, F) of timesteps start .. start + S - 1 into the population."""
        # Timesteps at or past max_length have no slot; they are normalised with batch statistics
        # in training and read the last slot in eval.
        end = min(start + mean.shape[0], self.max_length)
        if end <= start:
            return
        updates = self.updates[start:end]
        updates += 1
        weight = torch.full(updates.shape, self.momentum, dtype=self.running_mean.dtype, device=updates.device)
        if self.plain_average:
            weight = 1.0 / updates.to(weight.dtype)
        elif self.population_warmup:
            weight = torch.maximum(weight, 1.0 / updates.to(weight.dtype))
        weight = weight.unsqueeze(1)
        self.running_mean[start:end].lerp_(mean[: end - start].to(self.running_mean.dtype), weight)
        self.running_var[start:end].lerp_(var[: end - start].to(self.running_var.dtype), weight)
        self.steps_tracked.clamp_(min=end)

    def reset_population(self) -> None:
        self.running_mean.zero_()
        self.running_var.fill_(1.0)
        self.updates.zero_()
        self.steps_tracked.zero_()

    def extra_repr(self) -> str:
        return (f"{self.num_features}, max_length={self.max_length}, shift={self.bias is not None}, "
                f"eps={self.eps}, momentum={self.momentum}, population_warmup={self.population_warmup}")


@torch.no_grad()
def recalibrate_population(model: nn.Module, run_batch: Callable[[object], object], batches: Iterable) -> int:
    """Re-estimate the population statistics of every StepwiseBatchNorm in `model` as the plain average
    of the batch statistics over `batches`, each run through `run_batch` in training mode (noise as in
    training: the statistics the EMA would see) with the current weights, without gradients. Returns
    the number of batches used; 0 (and nothing changed) for a model without recurrent BN."""
    norms = [module for module in model.modules() if isinstance(module, StepwiseBatchNorm)]
    if not norms:
        return 0
    was_training, count = model.training, 0
    for norm in norms:
        norm.reset_population()
        norm.plain_average = True
    try:
        model.train()
        for batch in batches:
            run_batch(batch)
            count += 1
    finally:
        for norm in norms:
            norm.plain_average = False
        model.train(was_training)
    return count


class BatchNormLSTM(nn.Module):
    """Multi-layer recurrent-BN LSTM; noise from `recurrent_regularizers` (zoneout, recurrent dropout,
    stochastic depth), one draw per layer and forward pass. `max_length`: the longest training sequence
    (784 for pMNIST). `population_warmup`, `impl`: see the module docstring."""

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, batch_first: bool = False,
                 max_length: int = 784, gamma_init: float = 0.1, eps: float = 1e-5, momentum: float = 0.01,
                 population_warmup: bool = True, recurrent_regularizers: Sequence[RecurrentNoiseSource] = (),
                 impl: str = "auto"):
        super().__init__()
        self.impl = check_impl(impl)
        for name, value in (("input_size", input_size), ("hidden_size", hidden_size), ("num_layers", num_layers),
                            ("max_length", max_length)):
            if int(value) != value or value <= 0:
                raise ValueError(f"{name} must be a positive integer, got {value}")
        if not (math.isfinite(eps) and eps > 0):
            raise ValueError(f"eps must be a finite number > 0, got {eps}")
        if not 0.0 < momentum <= 1.0:
            raise ValueError(f"momentum must be in (0, 1], got {momentum}")
        if not math.isfinite(gamma_init):
            raise ValueError(f"gamma_init must be a finite number, got {gamma_init}")
        self.input_size, self.hidden_size, self.num_layers = int(input_size), int(hidden_size), int(num_layers)
        self.batch_first, self.max_length = bool(batch_first), int(max_length)
        self.gamma_init, self.eps, self.momentum = float(gamma_init), float(eps), float(momentum)
        self.population_warmup = bool(population_warmup)
        self.recurrent_regularizers = nn.ModuleList(recurrent_regularizers)
        gates = 4 * self.hidden_size
        norm = lambda features, shift: StepwiseBatchNorm(  # noqa: E731
            features, self.max_length, self.gamma_init, shift, self.eps, self.momentum, self.population_warmup)
        for layer in range(self.num_layers):
            layer_input = self.input_size if layer == 0 else self.hidden_size
            self.register_parameter(f"weight_ih_l{layer}", nn.Parameter(torch.empty(gates, layer_input)))
            self.register_parameter(f"weight_hh_l{layer}", nn.Parameter(torch.empty(gates, self.hidden_size)))
            self.register_parameter(f"bias_ih_l{layer}", nn.Parameter(torch.empty(gates)))
            self.register_parameter(f"bias_hh_l{layer}", nn.Parameter(torch.empty(gates)))
            # Betas of the gate norms would duplicate the biases, so only BN(c) has one ([BN] §3).
            self.add_module(f"bn_ih_l{layer}", norm(gates, False))
            self.add_module(f"bn_hh_l{layer}", norm(gates, False))
            self.add_module(f"bn_c_l{layer}", norm(self.hidden_size, True))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Weights U(-1/sqrt(H), 1/sqrt(H)) like nn.LSTM, biases 0 ([BN]); BN gammas 0.1, betas 0."""
        bound = 1.0 / math.sqrt(self.hidden_size)
        for layer in range(self.num_layers):
            for kind in ("ih", "hh"):
                nn.init.uniform_(getattr(self, f"weight_{kind}_l{layer}"), -bound, bound)
                nn.init.zeros_(getattr(self, f"bias_{kind}_l{layer}"))
            for kind in ("ih", "hh", "c"):
                norm = getattr(self, f"bn_{kind}_l{layer}")
                nn.init.constant_(norm.weight, self.gamma_init)
                if norm.bias is not None:
                    nn.init.zeros_(norm.bias)

    def layer_noise(self, layer: int, seq_len: int, batch: int, device) -> RecurrentNoise:
        noise = RecurrentNoise()
        for regularizer in self.recurrent_regularizers:
            noise = noise.merged(regularizer.noise(seq_len, batch, self.hidden_size, device, self.training, layer))
        return noise

    def layer_forward(self, layer: int, input: Tensor, h0: Tensor, c0: Tensor, noise: RecurrentNoise):
        get = lambda name: getattr(self, f"{name}_l{layer}")  # noqa: E731  (read at call time: weight noise)
        return self.layer_function()(input, h0, c0, get("weight_ih"), get("weight_hh"), get("bias_ih"), get("bias_hh"),
                             get("bn_ih"), get("bn_hh"), get("bn_c"), noise)

    def layer_function(self) -> Callable:
        """The layer function `impl` selects (dispatch.py)."""
        return layer_function("bn_lstm", getattr(self, "impl", "auto"))  # (a model pickled before impl existed)

    def forward(self, input: Tensor, hx: Optional[tuple[Tensor, Tensor]] = None
                ) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        """Same contract as nn.LSTM.forward: input (T, B, I) ((B, T, I) with batch_first), hx = (h0, c0)
        each (num_layers, B, H) -> output (T, B, H), (h_n, c_n)."""
        if input.dim() != 3 or input.shape[-1] != self.input_size:
            raise RecurrentInputError(f"input must be (T, B, {self.input_size}) (or batch_first), got {tuple(input.shape)}")
        if self.batch_first:
            input = input.transpose(0, 1)
        check_sequence_length(input.shape[0])
        seq_len, batch = input.shape[0], input.shape[1]
        if hx is None:
            zeros = input.new_zeros(self.num_layers, batch, self.hidden_size)
            hx = (zeros, zeros)
        expected = (self.num_layers, batch, self.hidden_size)
        if tuple(hx[0].shape) != expected or tuple(hx[1].shape) != expected:
            raise RecurrentInputError(f"hx must be two tensors of shape {expected}, got "
                             f"{tuple(hx[0].shape)} and {tuple(hx[1].shape)}")
        if batch == 0:  # no statistics in an empty batch: empty outputs, population untouched, no gradient
            output = input.new_zeros(seq_len, 0, self.hidden_size)
            return (output.transpose(0, 1) if self.batch_first else output), (hx[0].clone(), hx[1].clone())
        h_n, c_n, layer_input = [], [], input
        for layer in range(self.num_layers):
            noise = self.layer_noise(layer, seq_len, batch, input.device)
            layer_input, h, c = self.layer_forward(layer, layer_input, hx[0][layer], hx[1][layer], noise)
            h_n.append(h)
            c_n.append(c)
        output = layer_input.transpose(0, 1) if self.batch_first else layer_input
        return output, (torch.stack(h_n), torch.stack(c_n))

    def extra_repr(self) -> str:
        return (f"{self.input_size}, {self.hidden_size}, num_layers={self.num_layers}, max_length={self.max_length}, "
                f"gamma_init={self.gamma_init}, eps={self.eps}, momentum={self.momentum}, "
                f"population_warmup={self.population_warmup}, impl={self.impl!r}")

