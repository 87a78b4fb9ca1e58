"""Benchmark rows for the recurrent-BN LSTM, run by scripts/bench.py: a training step of
BatchNormLSTM with impl="reference" (the per-step loop under autograd) and impl="fused" (one
autograd.Function, C++ kernels on the CPU), in one process with interleaved repetitions (time_rows),
at the shapes of the rows that use it: char-PTB quick and small (T=100, B=32, H=128 / 256, one-hot
input of 50 characters, Linear(H, 50) head at every step) and pMNIST (T=784, B=100, H=100, one pixel
per step, zoneout 0.15 on c and h with one shared mask, Linear(100, 10) head on the last h).
A step = forward + backward + Adam.
"""
from __future__ import annotations

import torch
from bench_step import PMNIST, task_batch, training_step

from zoneout.nn.bn_lstm import BatchNormLSTM
from zoneout.regularizers import Zoneout

# (task, T, B, H)
FULL = {"char-PTB quick": ("LM", 100, 32, 128), "char-PTB small": ("LM", 100, 32, 256), PMNIST: (PMNIST, 784, 100, 100)}
TINY = {"char-PTB": ("LM", 6, 4, 8), PMNIST: (PMNIST, 7, 4, 8)}
IMPLS = ("reference", "fused")


def bn_steps(shape, device, gen):
    """A training-step closure per impl, same weights and data."""
    task, T, B, H = shape
    x, y, classes = task_batch(shape, device, gen)
    steps = {}
    for impl in IMPLS:
        torch.manual_seed(0)
        noise = [Zoneout(0.15, 0.15, shared_mask=True)] if task == PMNIST else []
        rnn = BatchNormLSTM(x.shape[-1], H, max_length=T, recurrent_regularizers=noise, impl=impl).to(device)
        steps[impl] = training_step(rnn, H, task, x, y, classes, device)
    return steps


def bn_section(device, time_rows, reps: int, tiny: bool = False) -> list[str]:
    """Markdown lines: each impl's median step time and the speed-up of fused over reference."""
    gen = torch.Generator(device=device).manual_seed(0)
    lines = ["## Recurrent-BN LSTM (BatchNormLSTM training step; ratios measured in one process)", "",
             "| shape | impl | step | speed-up over reference |", "|---|---|---|---|"]
    for name, shape in (TINY if tiny else FULL).items():
        medians = time_rows(bn_steps(shape, device, gen), device, reps)
        for impl, seconds in medians.items():
            lines.append(f"| {name} T={shape[1]} B={shape[2]} H={shape[3]} | {impl} | {seconds * 1e3:,.1f} ms | "
                         f"{medians['reference'] / seconds:.2f}x |")
    return lines + [""]
