"""What differs between the paper's datasets, behind one small interface train.py uses:
how an epoch is batched, what the loss of a batch is, and how the metric is reported.

- chunks (char-PTB, text8): sequences from the zero state, re-cut from a random offset each epoch.
- stream (word-PTB): BPTT windows with the state carried across minibatches.
- pixels (pMNIST): classify the last hidden state.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from zoneout.config_check import ConfigError
from zoneout.data import batching, mnist
from zoneout.data.text import load_corpus


@dataclass
class StepResult:
    loss: Tensor            # mean loss of the batch (what backward sees, before penalties)
    nll_sum: float          # summed negative log-likelihood (nats)
    count: int              # predictions in the batch
    correct: int            # classification only
    hidden: Tensor          # top-layer hidden states (T, B, H), for the norm stabilizer
    state: Optional[list]   # recurrent state to carry (stream loader only)


def metric_from(metric: str, nll_sum: float, count: int, correct: int) -> float:
    mean_nll = nll_sum / max(count, 1)
    if metric == "bpc":
        return mean_nll / math.log(2)
    if metric == "perplexity":
        return math.exp(min(mean_nll, 50.0))
    return 1.0 - correct / max(count, 1)  # error rate


def detach_state(state):
    if state is None:
        return None
    if isinstance(state, Tensor):
        return state.detach()
    return type(state)(detach_state(s) for s in state)


class LanguageModelingTask:
    def __init__(self, corpus, cfg, device):
        self.device, self.loader = device, cfg.loader
        self.metric = cfg.metric
        self.seq_len, self.batch_size, self.eval_batch_size = cfg.seq_len, cfg.batch_size, cfg.eval_batch_size
        train = corpus.train
        self.train_stream = train[: max(int(len(train) * cfg.train_fraction), 2 * self.seq_len + 2)]
        self.splits = {"valid": corpus.valid, "test": corpus.test}
        self.vocab_size = corpus.vocab_size
        self.tokens_per_step = self.batch_size * self.seq_len
        self._check_sizes()

    def _check_sizes(self) -> None:
        """A batch or sequence so large that an epoch is one or two steps (or none): refused, never trained."""
        stream, length, batch = len(self.train_stream), self.seq_len, self.batch_size
        if self.loader == "stream":
            windows = (stream // batch - 1) // length
            if windows < 2:
                raise ConfigError(f"dataset.batch_size={batch} with dataset.seq_len={length}: the training stream "
                                  f"({stream:,} tokens) gives {windows} window(s) an epoch, fewer than 2; lower one of them")
        elif (stream - length + 1) // length < 2 * batch:  # the random offset may cost one sequence
            raise ConfigError(f"dataset.batch_size={batch} with dataset.seq_len={length}: the training stream "
                              f"({stream:,} tokens) holds {max((stream - length + 1) // length, 0):,} sequences, fewer "
                              "than two batches; lower one of them (or raise dataset.train_fraction)")
        for split, data in self.splits.items():
            if len(data) < length + 1:
                raise ConfigError(f"dataset.seq_len={length}: longer than the {split} split ({len(data):,} tokens)")

    def train_batches(self, generator: torch.Generator) -> Iterable:
        if self.loader == "stream":
            return batching.stream_batches(self.train_stream, self.batch_size, self.seq_len)
        return batching.random_offset_chunks(self.train_stream, self.seq_len, self.batch_size, generator)

    def eval_batches(self, split: str, stream: bool = False) -> Iterable:
        data = self.splits[split]
        if stream or self.loader == "stream":
            return batching.stream_batches(data, self.eval_batch_size, self.seq_len)
        return batching.eval_chunks(data, self.seq_len, self.eval_batch_size)

    def step(self, model, batch, state, forward=None) -> StepResult:
        if isinstance(batch, (tuple, list)):  # stream window: (inputs, targets), state carried
            inputs, targets = batch
        else:  # chunk: predict chunk[:, 1:] from chunk[:, :-1], from the zero state
            inputs, targets, state = batch[:, :-1], batch[:, 1:], None
        inputs, targets = inputs.to(self.device), targets.to(self.device)
        logits, hidden, new_state = (forward or model)(inputs, state)
        nll = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.t().reshape(-1), reduction="sum")
        count = targets.numel()
        return StepResult(nll / count, nll.item(), count, 0, hidden, detach_state(new_state))


class PixelClassificationTask:
    metric = "error"

    def __init__(self, mnist: dict, permutation: Tensor, cfg, device):
        self.device, self.permutation = device, permutation
        self.batch_size, self.eval_batch_size = cfg.batch_size, cfg.eval_batch_size
        images, labels = mnist["train"]
        keep = max(int(len(labels) * cfg.train_fraction), self.batch_size)
        self.train = (images[:keep], labels[:keep])
        self.splits = {"valid": mnist["valid"], "test": mnist["test"]}
        self.tokens_per_step = self.batch_size * 784

    def train_batches(self, generator: torch.Generator) -> Iterable:
        return mnist.mnist_batches(*self.train, self.batch_size, self.permutation, generator)

    def eval_batches(self, split: str, stream: bool = False) -> Iterable:
        return mnist.mnist_batches(*self.splits[split], self.eval_batch_size, self.permutation)

    def step(self, model, batch, state, forward=None) -> StepResult:
        pixels, labels = batch[0].to(self.device), batch[1].to(self.device)
        logits, hidden, _ = (forward or model)(pixels)
        nll = F.cross_entropy(logits, labels, reduction="sum")
        correct = (logits.argmax(-1) == labels).sum().item()
        return StepResult(nll / len(labels), nll.item(), len(labels), correct, hidden, None)


def build_task(cfg, device):
    """(task, input vocabulary or None, number of outputs, longest sequence the model sees)."""
    data_cfg = cfg.dataset
    if data_cfg.name == "pmnist":
        images = mnist.load_pmnist(data_cfg.data_dir, data_cfg.mirror)
        permutation = mnist.pixel_permutation(data_cfg.permutation, data_cfg.permutation_seed)
        return PixelClassificationTask(images, permutation, data_cfg, device), None, 10, 784
    corpus = load_corpus(data_cfg.name, data_cfg.data_dir, data_cfg.mirror)
    task = LanguageModelingTask(corpus, data_cfg, device)
    return task, corpus.vocab_size, corpus.vocab_size, data_cfg.seq_len
