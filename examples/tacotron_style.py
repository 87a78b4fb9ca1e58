"""A Tacotron-2-style text-to-mel model regularized with zoneout 0.1, trained for a few steps on random data.

Where Tacotron 2 uses nn.LSTM / nn.LSTMCell, this uses the zoneout drop-ins:
  encoder: character embedding -> conv stack -> ZoneoutLSTM(bidirectional=True) on a
           pack_padded_sequence of the (unsorted) text lengths -> pad_packed_sequence
  decoder: per output frame, prenet -> attention LSTM (ZoneoutLSTMCell) -> attention over the
           encoder outputs -> decoder LSTM (ZoneoutLSTMCell) -> mel frame and stop token
Both LSTMs and the encoder use zoneout_cell = zoneout_hidden = 0.1, as in Tacotron 2. Sizes are
shrunk so it runs on a CPU in seconds; `--full` uses Tacotron 2's (512 / 1024).

    python examples/tacotron_style.py [--steps 5] [--full]
"""
from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from zoneout import ZoneoutLSTM, ZoneoutLSTMCell

ZONEOUT = dict(zoneout_cell=0.1, zoneout_hidden=0.1)
SMALL = dict(vocab=40, embed=32, attention_rnn=48, decoder_rnn=48, prenet=16, attention=16, n_mels=20)
FULL = dict(vocab=148, embed=512, attention_rnn=1024, decoder_rnn=1024, prenet=256, attention=128, n_mels=80)


class Encoder(nn.Module):
    def __init__(self, vocab: int, embed: int):
        super().__init__()
        self.embedding = nn.Embedding(vocab, embed)
        self.convs = nn.Sequential(*[nn.Sequential(nn.Conv1d(embed, embed, 5, padding=2), nn.BatchNorm1d(embed),
                                                   nn.ReLU(), nn.Dropout(0.5)) for _ in range(3)])
        self.lstm = ZoneoutLSTM(embed, embed // 2, batch_first=True, bidirectional=True, **ZONEOUT)

    def forward(self, text: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        x = self.convs(self.embedding(text).transpose(1, 2)).transpose(1, 2)
        packed = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
        output, _ = self.lstm(packed)
        return pad_packed_sequence(output, batch_first=True, total_length=text.shape[1])[0]


class Decoder(nn.Module):
    def __init__(self, embed, attention_rnn, decoder_rnn, prenet, attention, n_mels, **_):
        super().__init__()
        self.n_mels = n_mels
        self.prenet = nn.ModuleList([nn.Linear(n_mels, prenet), nn.Linear(prenet, prenet)])
        self.attention_rnn = ZoneoutLSTMCell(prenet + embed, attention_rnn, **ZONEOUT)
        self.query = nn.Linear(attention_rnn, attention, bias=False)
        self.memory = nn.Linear(embed, attention, bias=False)
        self.score = nn.Linear(attention, 1, bias=False)
        self.decoder_rnn = ZoneoutLSTMCell(attention_rnn + embed, decoder_rnn, **ZONEOUT)
        self.mel = nn.Linear(decoder_rnn + embed, n_mels)
        self.stop = nn.Linear(decoder_rnn + embed, 1)

    def forward(self, memory: torch.Tensor, memory_mask: torch.Tensor, mels: torch.Tensor):
        """Teacher-forced: mels (B, frames, n_mels) -> predicted mels and stop logits."""
        batch = memory.shape[0]
        keys = self.memory(memory)
        context = memory.new_zeros(batch, memory.shape[2])
        attention_state = decoder_state = None
        previous = memory.new_zeros(batch, self.n_mels)  # the <GO> frame
        frames, stops = [], []
        for step in range(mels.shape[1]):
            x = previous
            for layer in self.prenet:  # Tacotron keeps prenet dropout on at inference too
                x = F.dropout(F.relu(layer(x)), 0.5, training=True)
            attention_state = self.attention_rnn(torch.cat([x, context], -1), attention_state)
            scores = self.score(torch.tanh(self.query(attention_state[0]).unsqueeze(1) + keys)).squeeze(-1)
            weights = scores.masked_fill(~memory_mask, float("-inf")).softmax(-1)
            context = torch.bmm(weights.unsqueeze(1), memory).squeeze(1)
            decoder_state = self.decoder_rnn(torch.cat([attention_state[0], context], -1), decoder_state)
            features = torch.cat([decoder_state[0], context], -1)
            frames.append(self.mel(features))
            stops.append(self.stop(features).squeeze(-1))
            previous = mels[:, step]
        return torch.stack(frames, 1), torch.stack(stops, 1)


class Tacotron(nn.Module):
    def __init__(self, sizes: dict):
        super().__init__()
        self.encoder = Encoder(sizes["vocab"], sizes["embed"])
        self.decoder = Decoder(**sizes)

    def forward(self, text, text_lengths, mels):
        memory_mask = torch.arange(text.shape[1], device=text.device) < text_lengths.unsqueeze(1)
        return self.decoder(self.encoder(text, text_lengths), memory_mask, mels)


def random_batch(sizes: dict, batch: int, gen: torch.Generator):
    text_lengths = torch.randint(3, 12, (batch,), generator=gen)
    text = torch.randint(1, sizes["vocab"], (batch, int(text_lengths.max())), generator=gen)
    mels = torch.randn(batch, 15, sizes["n_mels"], generator=gen)
    stop = torch.zeros(batch, 15)
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
        predicted, stop_logits = model(text, text_lengths, mels)
        loss = F.mse_loss(predicted, mels) + F.binary_cross_entropy_with_logits(stop_logits, stop)
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
