"""A Tacotron-2-style text-to-mel model whose recurrent layers are whatever classes it is given.

The model code is written the way NVIDIA's Tacotron 2 (model.py) writes it for nn.LSTM / nn.LSTMCell,
and runs unchanged on the zoneout drop-ins:
  encoder: character embedding -> conv stack -> `self.lstm.flatten_parameters()` ->
           pack_padded_sequence(lengths) -> bidirectional LSTM -> pad_packed_sequence; `inference`
           (one unpadded utterance) calls flatten_parameters too and skips the packing;
  decoder: prenet over all teacher frames -> per frame: attention LSTMCell -> location-sensitive
           attention over the encoder outputs -> decoder LSTMCell -> mel frame and stop logit;
           `inference` feeds each predicted frame back until the stop logit fires.
`Tacotron(sizes, lstm_class, cell_class)`: any classes taking nn.LSTM's / nn.LSTMCell's arguments. The
defaults are ZoneoutLSTM / ZoneoutLSTMCell with zoneout_cell = zoneout_hidden = 0.1, as in Tacotron 2;
`Tacotron(sizes, nn.LSTM, nn.LSTMCell)` is the same model on PyTorch's layers. Sizes are shrunk so it
runs on a CPU in seconds; `--full` uses Tacotron 2's (512 / 1024). The postnet is left out (it has no
recurrence).

    python examples/tacotron_style.py [--steps 5] [--full]
"""
from __future__ import annotations

import argparse
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from zoneout import ZoneoutLSTM, ZoneoutLSTMCell

ZONEOUT = dict(zoneout_cell=0.1, zoneout_hidden=0.1)
SMALL = dict(vocab=40, embed=32, attention_rnn=48, decoder_rnn=48, prenet=16, attention=16, n_mels=20,
             location_filters=4, location_kernel=5)
FULL = dict(vocab=148, embed=512, attention_rnn=1024, decoder_rnn=1024, prenet=256, attention=128, n_mels=80,
            location_filters=32, location_kernel=31)


class Encoder(nn.Module):
    def __init__(self, embed: int, lstm_class):
        super().__init__()
        self.convolutions = nn.ModuleList([nn.Sequential(nn.Conv1d(embed, embed, 5, padding=2), nn.BatchNorm1d(embed))
                                           for _ in range(3)])
        self.lstm = lstm_class(embed, embed // 2, 1, batch_first=True, bidirectional=True)

    def convolve(self, x: torch.Tensor) -> torch.Tensor:
        """(B, embed, T) -> (B, T, embed)."""
        for convolution in self.convolutions:
            x = F.dropout(F.relu(convolution(x)), 0.5, self.training)
        return x.transpose(1, 2)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """A batch sorted longest first (as a Tacotron collate sorts it): only the valid steps are run."""
        x = self.convolve(x)
        self.lstm.flatten_parameters()
        packed = pack_padded_sequence(x, lengths.cpu(), batch_first=True)
        outputs, _ = self.lstm(packed)
        outputs, _ = pad_packed_sequence(outputs, batch_first=True)
        return outputs

    def inference(self, x: torch.Tensor) -> torch.Tensor:
        x = self.convolve(x)
        self.lstm.flatten_parameters()
        outputs, _ = self.lstm(x)
        return outputs


class LocationAttention(nn.Module):
    """Additive attention whose energies also see a convolution of the previous and cumulative weights."""

    def __init__(self, query: int, memory: int, attention: int, filters: int, kernel: int):
        super().__init__()
        self.query = nn.Linear(query, attention, bias=False)
        self.memory = nn.Linear(memory, attention, bias=False)
        self.location_conv = nn.Conv1d(2, filters, kernel, padding=kernel // 2, bias=False)
        self.location = nn.Linear(filters, attention, bias=False)
        self.energy = nn.Linear(attention, 1)

    def forward(self, query, memory, keys, weights_so_far, mask):
        """query (B, Q), memory (B, T, M), keys (B, T, A), weights_so_far (B, 2, T) -> context, weights."""
        location = self.location(self.location_conv(weights_so_far).transpose(1, 2))
        energies = self.energy(torch.tanh(self.query(query).unsqueeze(1) + location + keys)).squeeze(-1)
        weights = energies.masked_fill(~mask, float("-inf")).softmax(-1)
        return torch.bmm(weights.unsqueeze(1), memory).squeeze(1), weights


class Decoder(nn.Module):
    def __init__(self, cell_class, embed, attention_rnn, decoder_rnn, prenet, attention, n_mels, location_filters,
                 location_kernel, **_):
        super().__init__()
        self.n_mels, self.attention_rnn_size, self.decoder_rnn_size = n_mels, attention_rnn, decoder_rnn
        self.prenet = nn.ModuleList([nn.Linear(n_mels, prenet, bias=False), nn.Linear(prenet, prenet, bias=False)])
        self.attention_rnn = cell_class(prenet + embed, attention_rnn)
        self.attention = LocationAttention(attention_rnn, embed, attention, location_filters, location_kernel)
        self.decoder_rnn = cell_class(attention_rnn + embed, decoder_rnn)
        self.mel = nn.Linear(decoder_rnn + embed, n_mels)
        self.stop = nn.Linear(decoder_rnn + embed, 1)

    def run_prenet(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.prenet:  # Tacotron keeps prenet dropout on at inference too
            x = F.dropout(F.relu(layer(x)), 0.5, training=True)
        return x

    def start(self, memory: torch.Tensor, mask: torch.Tensor) -> None:
        """Zero states, weights and context for a new batch; the keys are projected once."""
        batch, steps, embed = memory.shape
        zeros = lambda size: memory.new_zeros(batch, size)  # noqa: E731
        self.attention_state = (zeros(self.attention_rnn_size), zeros(self.attention_rnn_size))
        self.decoder_state = (zeros(self.decoder_rnn_size), zeros(self.decoder_rnn_size))
        self.weights, self.cumulative_weights = zeros(steps), zeros(steps)
        self.context = zeros(embed)
        self.memory, self.keys, self.mask = memory, self.attention.memory(memory), mask

    def step(self, prenet_frame: torch.Tensor):
        """One output frame from the previous frame's prenet output: (mel frame, stop logit, weights)."""
        self.attention_state = self.attention_rnn(torch.cat([prenet_frame, self.context], -1), self.attention_state)
        so_far = torch.stack([self.weights, self.cumulative_weights], 1)
        self.context, self.weights = self.attention(self.attention_state[0], self.memory, self.keys, so_far, self.mask)
        self.cumulative_weights = self.cumulative_weights + self.weights
        self.decoder_state = self.decoder_rnn(torch.cat([self.attention_state[0], self.context], -1), self.decoder_state)
        features = torch.cat([self.decoder_state[0], self.context], -1)
        return self.mel(features), self.stop(features).squeeze(-1), self.weights

    def forward(self, memory, mask, mels):
        """Teacher-forced: mels (B, frames, n_mels) -> predicted mels, stop logits, attention weights."""
        go = memory.new_zeros(memory.shape[0], 1, self.n_mels)
        prenet_frames = self.run_prenet(torch.cat([go, mels[:, :-1]], 1))
        self.start(memory, mask)
        frames, stops, alignments = zip(*(self.step(prenet_frames[:, t]) for t in range(mels.shape[1])))
        return torch.stack(frames, 1), torch.stack(stops, 1), torch.stack(alignments, 1)

    def inference(self, memory, max_steps: int = 50, stop_threshold: float = 0.5):
        """Free-running for one utterance (no padding): stops when sigmoid(stop logit) > stop_threshold."""
        self.start(memory, memory.new_ones(memory.shape[:2], dtype=torch.bool))
        previous, frames, stops, alignments = memory.new_zeros(memory.shape[0], self.n_mels), [], [], []
        for _ in range(max_steps):
            frame, stop, weights = self.step(self.run_prenet(previous))
            frames.append(frame), stops.append(stop), alignments.append(weights)
            if torch.sigmoid(stop).item() > stop_threshold:
                break
            previous = frame
        return torch.stack(frames, 1), torch.stack(stops, 1), torch.stack(alignments, 1)


class Tacotron(nn.Module):
    def __init__(self, sizes: dict, lstm_class=partial(ZoneoutLSTM, **ZONEOUT),
                 cell_class=partial(ZoneoutLSTMCell, **ZONEOUT)):
        super().__init__()
        self.embedding = nn.Embedding(sizes["vocab"], sizes["embed"])
        self.encoder = Encoder(sizes["embed"], lstm_class)
        self.decoder = Decoder(cell_class, **sizes)

    def forward(self, text, text_lengths, mels):
        """text (B, T) sorted by text_lengths, longest first; mels (B, frames, n_mels)."""
        memory = self.encoder(self.embedding(text).transpose(1, 2), text_lengths)
        mask = torch.arange(memory.shape[1], device=text.device) < text_lengths.unsqueeze(1)
        return self.decoder(memory, mask, mels)

    def inference(self, text, max_steps: int = 50):
        """text (1, T) -> mels, stop logits and attention weights, frame by frame."""
        return self.decoder.inference(self.encoder.inference(self.embedding(text).transpose(1, 2)), max_steps)


def loss_of(outputs, mels: torch.Tensor, stop: torch.Tensor) -> torch.Tensor:
    predicted, stop_logits, _ = outputs
    return F.mse_loss(predicted, mels) + F.binary_cross_entropy_with_logits(stop_logits, stop)


def random_batch(sizes: dict, batch: int, gen: torch.Generator, frames: int = 15):
    """Random text and mels, sorted by text length, longest first (as a Tacotron collate sorts them)."""
    text_lengths = torch.randint(3, 12, (batch,), generator=gen).sort(descending=True).values
    text = torch.randint(1, sizes["vocab"], (batch, int(text_lengths.max())), generator=gen)
    text = text.masked_fill(torch.arange(text.shape[1]) >= text_lengths.unsqueeze(1), 0)  # padding symbol 0
    mels = torch.randn(batch, frames, sizes["n_mels"], generator=gen)
    stop = torch.zeros(batch, frames)
    stop[:, -1] = 1
    return text, text_lengths, mels, stop


def train(steps: int = 5, sizes: dict = SMALL, batch: int = 4, seed: int = 0) -> list[float]:
    """A few Adam steps on one random batch; returns the losses (they should go down)."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model = Tacotron(sizes)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    text, text_lengths, mels, stop = random_batch(sizes, batch, gen)
    losses = []
    for _ in range(steps):
        loss = loss_of(model(text, text_lengths, mels), mels, stop)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        losses.append(loss.item())
    return losses


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--full", action="store_true", help="Tacotron 2's layer sizes")
    args = parser.parse_args()
    for step, loss in enumerate(train(args.steps, FULL if args.full else SMALL)):
        print(f"step {step}: loss {loss:.4f}")


if __name__ == "__main__":
    main()
