"""Pixel-by-pixel sequence classifier for (permuted) MNIST: softmax on the last hidden state."""
from __future__ import annotations

from typing import Sequence

from torch import Tensor, nn


class SequenceClassifier(nn.Module):
    def __init__(self, layers: Sequence[nn.Module], hidden_size: int, num_classes: int = 10):
        super().__init__()
        self.layers = nn.ModuleList(layers)
        self.decoder = nn.Linear(hidden_size, num_classes)

    def forward(self, pixels: Tensor, state=None):
        """pixels (B, 784) -> logits (B, classes), hidden states (T, B, H), final states."""
        x = pixels.t().unsqueeze(-1)  # one scalar input per timestep
        finals = []
        for layer in self.layers:
            x, final = layer(x)
            finals.append(final)
        return self.decoder(x[-1]), x, finals
