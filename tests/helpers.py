"""Helpers shared by the test files (pytest puts this folder on sys.path: `from helpers import ...`)."""
from __future__ import annotations

import torch


def bools(shape, p: float, seed: int, device="cpu") -> torch.Tensor:
    """A reproducible bool mask, True with probability p (fixed masks make fused and reference comparable)."""
    return (torch.rand(shape, generator=torch.Generator().manual_seed(seed)) < p).to(device)
