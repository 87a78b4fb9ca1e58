"""Pixel-by-pixel sequence classifier for (permuted) MNIST: softmax on the last hidden state."""
from __future__ import annotations

from typing import Optional, Sequence

from torch import Tensor, nn

from zoneout.models.initial_state import LearnedInitialState


class SequenceClassifier(nn.Module):
    def __init__(self, layers: Sequence[nn.Module], hidden_size: int, num_classes: int = 10,
                 initial_state: Optional[LearnedInitialState] = None):
        super().__init__()
        self.layers = nn.ModuleList(layers)
        self.decoder = nn.Linear(hidden_size, num_classes)
        self.initial_state = initial_state  # None: zeros; the authors' pMNIST code learns h0 and c0

    def forward(self, pixels: Tensor, state=None):
        """pixels (B, 784) -> logits (B, classes), hidden states (T, B, H), final states."""
        x = pixels.t().unsqueeze(-1)  # one scalar input per timestep
        finals = []
        starts = self.initial_state(pixels.shape[0]) if self.initial_state is not None else [None] * len(self.layers)
        for layer, start in zip(self.layers, starts):
            x, final = layer(x, start)
            finals.append(final)
        return self.decoder(x[-1]), x, finals
