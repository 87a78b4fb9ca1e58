"""CUDA-graph replay of the Triton path's step loops: a sequence's T GEMMs and T kernel launches
become one graph launch, removing the per-step CPU launch overhead that dominates at small B*H.

A graph bakes in addresses, so each (shapes, dtype, mask layout) key owns static input buffers:
a call copies its inputs in, replays, and returns clones of the static outputs (the Function
saves them for backward, and the next replay would overwrite them). Masks keep their compact
shape in the static buffers ((T,B,1) stays (T,B,1)); the expectations live in a static tensor.
`capture` is injectable so the buffer logic can be tested on CPU with an eager stand-in.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from zoneout.nn.fused.masks import BOOL, CompactMask, CompactNoise


def cuda_capture(fn: Callable[[], list[Tensor]]):
    """Warm up on a side stream (compiles kernels, sets up cuBLAS), then capture fn into a graph."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    # thread_local: the backward is captured on the autograd engine's thread
    with torch.cuda.graph(graph, capture_error_mode="thread_local"):
        outputs = fn()
    return graph, outputs


class EagerCapture:
    """Stand-in for tests without a GPU: 'replay' reruns fn and writes into the first outputs."""

    def __call__(self, fn):
        outputs = fn()
        replay = type("Replay", (), {"replay": lambda _: [o.copy_(n) for o, n in zip(outputs, fn())]})()
        return replay, outputs


def _compact(mask: Tensor) -> Tensor:
    """The drawn mask behind an expanded (T,B,H) view: broadcast dims narrowed back to size 1."""
    for dim in range(mask.dim()):
        if mask.stride(dim) == 0:
            mask = mask.narrow(dim, 0, 1)
    return mask


def _noise_key(noise: CompactNoise) -> tuple:
    return tuple((m.kind, tuple(_compact(m.tensor).shape) if m.kind == BOOL else None) for m in noise.fields())


class _Static:
    """Static copies of a call's tensors and noise, with the same layout on every call."""

    def __init__(self, tensors: list[Tensor], noise: CompactNoise, like: Tensor):
        self.tensors = [t.detach().clone() for t in tensors]
        self.masks = [_compact(m.tensor).clone() if m.kind == BOOL else None for m in noise.fields()]
        fields = []
        for mask, base in zip(noise.fields(), self.masks):
            view = base.expand(mask.tensor.shape) if base is not None else None
            fields.append(CompactMask(mask.kind, mask.value, view))
        self.noise = CompactNoise(*fields)
        self.values = torch.zeros(3, dtype=like.dtype, device=like.device)

    def load(self, tensors: list[Tensor], noise: CompactNoise) -> None:
        for static, tensor in zip(self.tensors, tensors):
            static.copy_(tensor)
        for base, mask in zip(self.masks, noise.fields()):
            if base is not None:
                base.copy_(_compact(mask.tensor))
        self.values.copy_(torch.tensor(noise.values(), dtype=self.values.dtype))


class GraphRunner:
    """Keeps the `max_entries` most recently used graphs (each holds its static buffers' memory)."""

    def __init__(self, capture: Callable = cuda_capture, max_entries: int = 16):
        self.capture, self.max_entries = capture, max_entries
        self._entries: dict = {}

    def _run(self, key, tensors: list[Tensor], noise: CompactNoise, body: Callable) -> tuple[_Static, list[Tensor]]:
        entry = self._entries.pop(key, None)  # re-inserted below: dict order = recency
        if entry is None:
            if len(self._entries) >= self.max_entries:
                self._entries.pop(next(iter(self._entries)))
            static = _Static(tensors, noise, tensors[0])
            static.load(tensors, noise)
            graph, outputs = self.capture(lambda: body(static))
            entry = (static, graph, outputs)
        self._entries[key] = entry
        static, graph, outputs = entry
        static.load(tensors, noise)
        graph.replay()
        return static, [o.clone() for o in outputs]

    def forward(self, run: Callable, gates, h0, c0, weight_hh, noise: CompactNoise, save: bool) -> list[Tensor]:
        key = ("forward", gates.shape, h0.shape, gates.dtype, gates.device, save, _noise_key(noise))
        body = lambda s: run(*s.tensors, s.noise, save, values=s.values)  # noqa: E731
        static, outputs = self._run(key, [gates, h0, c0, weight_hh], noise, body)
        if save:  # the loop activates the gates in place; the Function saves the caller's buffer
            gates.copy_(static.tensors[0])
        return outputs

    def backward(self, run: Callable, grad_output, grad_h, grad_c, gates, cells, tanh_cells, weight_hh,
                 noise: CompactNoise) -> list[Tensor]:
        key = ("backward", gates.shape, cells.shape, gates.dtype, gates.device, _noise_key(noise))
        body = lambda s: run(*s.tensors, s.noise, values=s.values)  # noqa: E731
        _, outputs = self._run(key, [grad_output, grad_h, grad_c, gates, cells, tanh_cells, weight_hh], noise, body)
        return outputs
