"""Benchmark rows for speech/TTS use, run by scripts/bench.py: a bidirectional layer
(Tacotron 2's encoder LSTM, padded and packed) and a 200-step decoder loop of one LSTM cell (its
decoder LSTMs), each against PyTorch's own module, in one process with interleaved repetitions
(time_rows), so the ratios compare like with like. Zoneout 0.1 on c and h, as in Tacotron 2.
A step = forward + backward + Adam. Then the small batches of TTS training (B 1, 4, 16 at H 256 and
1024: where per-call overhead, not GEMMs, can decide) and autoregressive inference: one eval-mode,
no-grad cell call at B = 1, the latency of a decoder step.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

from zoneout import ZoneoutLSTM, ZoneoutLSTMCell

ZONEOUT = dict(zoneout_cell=0.1, zoneout_hidden=0.1)
# (T, B, I, H per direction): Tacotron 2's encoder; (steps, B, I, H): its attention LSTM (prenet 256 + context 512)
FULL = {"encoder": (150, 32, 512, 256), "decoder": (200, 32, 768, 1024)}
TINY = {"encoder": (6, 3, 4, 8), "decoder": (5, 3, 4, 8)}
# (steps, I) of the small-batch cell loops, at every (B, H) below; a latency row is one call, repeated
SMALL_BATCH = {"loop": (50, 256), "batches": (1, 4, 16), "hidden": (256, 1024), "latency_calls": 200}
SMALL_BATCH_TINY = {"loop": (4, 4), "batches": (1, 2), "hidden": (8,), "latency_calls": 3}


def _adam_step(module, loss_of):
    optimizer = torch.optim.Adam(module.parameters(), lr=1e-4)

    def step():
        loss = loss_of()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return step


def encoder_steps(shape, device, gen):
    """Rows: nn.LSTM and ZoneoutLSTM, bidirectional, on a padded batch and on a pack of random lengths."""
    T, B, I, H = shape
    x = torch.randn(T, B, I, device=device, generator=gen)
    lengths = torch.randint(max(1, T // 2), T + 1, (B,), generator=torch.Generator().manual_seed(0))
    lengths[0] = T
    steps = {}
    for name, make in (("nn.LSTM", lambda: nn.LSTM(I, H, bidirectional=True)),
                       ("ZoneoutLSTM", lambda: ZoneoutLSTM(I, H, bidirectional=True, **ZONEOUT))):
        for form in ("padded", "packed"):
            torch.manual_seed(0)
            module = make().to(device)
            if form == "padded":
                loss_of = lambda m=module: m(x)[0].square().mean()  # noqa: E731
            else:
                loss_of = lambda m=module: m(pack_padded_sequence(x, lengths, enforce_sorted=False))[0].data.square().mean()  # noqa: E731,E501
            steps[f"{name} bidirectional {form}"] = _adam_step(module, loss_of)
    return steps


class _CellLoop(nn.Module):
    """A decoder's loop: one cell call per output step, the step's h feeds the loss."""

    def __init__(self, cell, masks: bool):
        super().__init__()
        self.cell, self.masks = cell, masks

    def forward(self, inputs):
        hx, total = None, 0
        for x in inputs:
            h, c = self.cell(x, hx)
            if self.masks and hx is not None:  # the usual hand-written zoneout around nn.LSTMCell
                c = torch.where(torch.rand_like(c) < ZONEOUT["zoneout_cell"], hx[1], c)
                h = torch.where(torch.rand_like(h) < ZONEOUT["zoneout_hidden"], hx[0], h)
            hx = (h, c)
            total = total + h.square().mean()
        return total


def decoder_steps(shape, device, gen):
    """Rows: nn.LSTMCell loop (no zoneout), nn.LSTMCell loop with hand-written zoneout, ZoneoutLSTMCell loop."""
    steps_, B, I, H = shape
    inputs = torch.randn(steps_, B, I, device=device, generator=gen).unbind(0)
    rows = {}
    for name, make, masks in (("nn.LSTMCell loop", lambda: nn.LSTMCell(I, H), False),
                              ("nn.LSTMCell loop + zoneout masks", lambda: nn.LSTMCell(I, H), True),
                              ("ZoneoutLSTMCell loop", lambda: ZoneoutLSTMCell(I, H, **ZONEOUT), False)):
        torch.manual_seed(0)
        loop = _CellLoop(make(), masks).to(device)
        rows[name] = _adam_step(loop, lambda m=loop: m(inputs))
    return rows


def small_batch_steps(steps_: int, batch: int, input_size: int, hidden: int, device, gen):
    """Training rows at one small (B, H): the nn.LSTMCell loop and the ZoneoutLSTMCell loop."""
    inputs = torch.randn(steps_, batch, input_size, device=device, generator=gen).unbind(0)
    rows = {}
    for name, make in (("nn.LSTMCell loop", lambda: nn.LSTMCell(input_size, hidden)),
                       ("ZoneoutLSTMCell loop", lambda: ZoneoutLSTMCell(input_size, hidden, **ZONEOUT))):
        torch.manual_seed(0)
        loop = _CellLoop(make(), masks=False).to(device)
        rows[name] = _adam_step(loop, lambda m=loop: m(inputs))
    return rows


def latency_steps(calls: int, input_size: int, hidden: int, device, gen):
    """Inference rows: `calls` eval-mode, no-grad calls of one cell at B = 1, each feeding the next."""
    x = torch.randn(1, input_size, device=device, generator=gen)
    rows = {}
    for name, make in (("nn.LSTMCell step", lambda: nn.LSTMCell(input_size, hidden)),
                       ("ZoneoutLSTMCell step", lambda: ZoneoutLSTMCell(input_size, hidden, **ZONEOUT))):
        torch.manual_seed(0)
        cell = make().to(device).eval()

        @torch.no_grad()
        def run(cell=cell):
            hx = None
            for _ in range(calls):
                hx = cell(x, hx)
        rows[name] = run
    return rows


def small_batch_section(device, time_rows, reps: int, tiny: bool = False) -> list[str]:
    """Markdown lines: small-batch training steps and B = 1 inference latency, each against nn.LSTMCell."""
    spec = SMALL_BATCH_TINY if tiny else SMALL_BATCH
    steps_, input_size = spec["loop"]
    gen = torch.Generator(device=device).manual_seed(0)
    lines = [f"## Small batches and inference (zoneout 0.1; {steps_}-step cell loops, input {input_size})", "",
             "| B | H | row | time | vs nn.LSTMCell (higher = faster) |", "|---|---|---|---|---|"]
    for hidden in spec["hidden"]:
        for batch in spec["batches"]:
            medians = time_rows(small_batch_steps(steps_, batch, input_size, hidden, device, gen), device, reps)
            for row, seconds in medians.items():
                lines.append(f"| {batch} | {hidden} | {row} (training step) | {seconds * 1e3:,.2f} ms | "
                             f"{medians['nn.LSTMCell loop'] / seconds:.2f}x |")
        calls = spec["latency_calls"]
        medians = time_rows(latency_steps(calls, input_size, hidden, device, gen), device, reps)
        for row, seconds in medians.items():
            lines.append(f"| 1 | {hidden} | {row} (eval, no grad; per call) | {seconds / calls * 1e6:,.1f} us | "
                         f"{medians['nn.LSTMCell step'] / seconds:.2f}x |")
    return lines + [""]


def tts_section(device, time_rows, reps: int, tiny: bool = False) -> list[str]:
    """Markdown lines: each row's median step time and its ratio to PyTorch's module (same input form)."""
    shapes = TINY if tiny else FULL
    gen = torch.Generator(device=device).manual_seed(0)
    lines = ["## Speech/TTS shapes (zoneout 0.1; ratios measured in one process)", "",
             "| shape | row | step | vs PyTorch's module (higher = faster) |", "|---|---|---|---|"]
    for part, make, baseline_of in (("encoder", encoder_steps, lambda row: "nn.LSTM bidirectional " + row.split()[-1]),
                                    ("decoder", decoder_steps, lambda row: "nn.LSTMCell loop")):
        medians = time_rows(make(shapes[part], device, gen), device, reps)
        label = f"{part} " + ("T={} B={} I={} H={}" if part == "encoder" else "{} steps B={} I={} H={}").format(
            *shapes[part])
        for row, seconds in medians.items():
            ratio = medians[baseline_of(row)] / seconds
            lines.append(f"| {label} | {row} | {seconds * 1e3:,.1f} ms | {ratio:.2f}x |")
    return lines + [""] + small_batch_section(device, time_rows, reps, tiny)
