"""The training step every benchmark row times (scripts/bench.py, bench_bn.py): forward + backward + Adam
through a task head, on synthetic data of the task's shape. LM: one-hot characters of a 50-symbol
vocabulary, Linear(H, 50) at every step; pMNIST: one pixel per step, Linear(H, 10) on the last h."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

VOCAB, PMNIST = 50, "pMNIST"


def task_batch(shape, device, gen):
    """(x, y, classes) for shape = (task, T, B, H): time-major inputs and their targets."""
    task, T, B, _ = shape
    if task == PMNIST:
        x, classes = torch.rand(T, B, 1, device=device, generator=gen), 10
        return x, torch.randint(0, classes, (B,), device=device, generator=gen), classes
    tokens = torch.randint(0, VOCAB, (T + 1, B), device=device, generator=gen)
    return F.one_hot(tokens[:-1], VOCAB).float(), tokens[1:], VOCAB


def training_step(rnn: nn.Module, hidden: int, task: str, x, y, classes: int, device):
    """A closure running one step of `rnn` plus a fresh head and Adam on (x, y)."""
    head = nn.Linear(hidden, classes).to(device)
    optimizer = torch.optim.Adam(list(rnn.parameters()) + list(head.parameters()), lr=1e-3)

    def step():
        out, _ = rnn(x)
        logits = head(out[-1]) if task == PMNIST else head(out).flatten(0, 1)
        loss = F.cross_entropy(logits, y.flatten())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return step
