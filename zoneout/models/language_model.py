"""Recurrent language model: tokens -> (one-hot | embedding) -> recurrent layers -> softmax.

With input="onehot" the one-hot goes straight into the first layer's gates, as in the paper's
code (docs/replication.md §1.5); the lookup below is that product, computed as an index instead of a GEMM.
With a LearnedInitialState every sequence that starts from scratch (state None) starts from trained
per-layer vectors, as the authors' char-PTB code does.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import Tensor, nn

from zoneout.models.initial_state import LearnedInitialState
from zoneout.regularizers.dropout import SequenceDropout


class OneHotProjection(nn.Module):
    """one_hot(tokens) @ W^T: exactly a Linear on one-hot vectors, as an embedding lookup."""

    def __init__(self, vocab_size: int):
        super().__init__()
        self.vocab_size = vocab_size

    def forward(self, tokens: Tensor) -> Tensor:
        return torch.nn.functional.one_hot(tokens, self.vocab_size).to(torch.get_default_dtype())


class LanguageModel(nn.Module):
    def __init__(self, vocab_size: int, layers: Sequence[nn.Module], hidden_size: int,
                 embedding_size: Optional[int] = None, dropout: Optional[SequenceDropout] = None,
                 initial_state: Optional[LearnedInitialState] = None):
        super().__init__()
        self.vocab_size = vocab_size
        self.input = nn.Embedding(vocab_size, embedding_size) if embedding_size else OneHotProjection(vocab_size)
        self.layers = nn.ModuleList(layers)
        self.dropout = dropout or nn.Identity()
        self.decoder = nn.Linear(hidden_size, vocab_size)
        self.initial_state = initial_state  # None: every sequence starts from zeros

    def forward(self, tokens: Tensor, state: Optional[list] = None):
        """tokens (B, T) -> logits (T, B, V), top-layer hidden states (T, B, H), per-layer final states."""
        x = self.dropout(self.input(tokens.t()).to(self.decoder.weight.dtype))  # one-hot follows model.double()
        if not state:  # a sequence from scratch (a carried stream state is used as given)
            state = self.initial_state(tokens.shape[0]) if self.initial_state is not None else [None] * len(self.layers)
        new_state = []
        for layer, layer_state in zip(self.layers, state):
            x, final = layer(x, layer_state)
            new_state.append(final)
            x = self.dropout(x)  # between layers and before the softmax (Zaremba et al.)
        hidden = x
        return self.decoder(hidden), hidden, new_state
