"""CUDA-graph replay of the Triton path's step loops: a sequence's T GEMMs and T kernel launches
become one graph launch, removing the per-step CPU launch overhead that dominates at small B*H.

A graph bakes in addresses, so each key owns static input buffers: a call copies its inputs in
(device to device), replays, and returns clones of the static outputs (the Function saves them for
backward, and the next replay would overwrite them). Masks keep their compact shape in the static
buffers ((T,B,1) stays (T,B,1)); the expectations live in a static (3,) tensor.

The key holds everything that changes the captured work: shapes, dtype, device, mask layout, the
matmul precision switches read when cuBLAS picks its kernels (TF32, reduced-precision reductions)
and the autograd mode (buffers made under torch.inference_mode are inference tensors, which a
later no_grad call could not copy into). The cache is bounded by the bytes its entries hold
(static buffers + outputs; each entry is ~1 GB at T=100, B=128, H=1000) and by a count.
`capture` is injectable so the buffer logic can be tested on CPU with an eager stand-in.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import Tensor

from zoneout.nn.fused.masks import BOOL, CompactMask, CompactNoise, device_values

# Share of the device's memory the cache may hold when GraphRunner.max_bytes is None.
DEFAULT_MEMORY_SHARE = 0.125


def cuda_capture(fn: Callable[[], list[Tensor]], device: torch.device):
    """Warm up on a side stream (compiles kernels, sets up cuBLAS), then capture fn into a graph.
    The caller holds torch.cuda.device(device); the streams are named by device all the same."""
    stream = torch.cuda.Stream(device=device)
    stream.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(stream):
        fn()
    torch.cuda.current_stream(device).wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    # thread_local: the backward is captured on the autograd engine's thread
    with torch.cuda.graph(graph, capture_error_mode="thread_local"):
        outputs = fn()
    return graph, outputs


class EagerCapture:
    """Stand-in for tests without a GPU: 'replay' reruns fn and writes into the first outputs."""

    def __call__(self, fn, device=None):
        outputs = fn()
        replay = type("Replay", (), {"replay": lambda _: [o.copy_(n) for o, n in zip(outputs, fn())]})()
        return replay, outputs


def matmul_settings() -> tuple:
    """The global switches cuBLAS reads when a GEMM is captured: a graph replays the captured choice."""
    matmul = torch.backends.cuda.matmul
    if hasattr(torch.backends, "fp32_precision"):  # torch >= 2.9: the legacy getters raise once the new API is used
        tf32 = (torch.backends.fp32_precision, matmul.fp32_precision)  # (the legacy setters update these too)
    else:
        tf32 = (matmul.allow_tf32, torch.get_float32_matmul_precision())
    return tf32 + (matmul.allow_bf16_reduced_precision_reduction, matmul.allow_fp16_reduced_precision_reduction)


def _compact(mask: Tensor) -> Tensor:
    """The drawn mask behind an expanded (T,B,H) view: broadcast dims narrowed back to size 1."""
    for dim in range(mask.dim()):
        if mask.stride(dim) == 0:
            mask = mask.narrow(dim, 0, 1)
    return mask


def _noise_key(noise: CompactNoise) -> tuple:
    return tuple((m.kind, tuple(_compact(m.tensor).shape) if m.kind == BOOL else None) for m in noise.fields())


def _nbytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors if t is not None)


class _Static:
    """Static copies of a call's tensors, masks and expectations, with the same layout on every call."""

    def __init__(self, tensors: list[Tensor], noise: CompactNoise, values: Tensor):
        self.tensors = [t.detach().clone() for t in tensors]
        self.masks = [_compact(m.tensor).clone() if m.kind == BOOL else None for m in noise.fields()]
        fields = []
        for mask, base in zip(noise.fields(), self.masks):
            view = base.expand(mask.tensor.shape) if base is not None else None
            fields.append(CompactMask(mask.kind, mask.value, view))
        self.noise = CompactNoise(*fields)
        self.values = values.clone()

    def load(self, tensors: list[Tensor], noise: CompactNoise, values: Tensor) -> None:
        """Device-to-device copies only: nothing here waits for the GPU."""
        for static, tensor in zip(self.tensors, tensors):
            static.copy_(tensor)
        for base, mask in zip(self.masks, noise.fields()):
            if base is not None:
                base.copy_(_compact(mask.tensor))
        self.values.copy_(values)

    def nbytes(self) -> int:
        return _nbytes(self.tensors + self.masks + [self.values])


class _Entry:
    def __init__(self, static: _Static, graph, outputs: list[Tensor]):
        self.static, self.graph, self.outputs = static, graph, outputs
        self.nbytes = static.nbytes() + _nbytes(outputs)


class GraphRunner:
    """Least-recently-used cache of captured graphs, holding at most `max_entries` of them and at
    most `max_bytes` of buffers (None: DEFAULT_MEMORY_SHARE of the device's memory). A call whose
    inputs alone exceed the budget runs eagerly; a single entry above it is kept alone."""

    def __init__(self, capture: Callable = cuda_capture, max_entries: int = 16, max_bytes: Optional[int] = None):
        self.capture, self.max_entries, self.max_bytes = capture, max_entries, max_bytes
        self._entries: dict = {}

    def cached_bytes(self) -> int:
        return sum(entry.nbytes for entry in self._entries.values())

    def _budget(self, device: torch.device) -> float:
        if self.max_bytes is not None:
            return self.max_bytes
        if device.type != "cuda":
            return float("inf")
        return DEFAULT_MEMORY_SHARE * torch.cuda.get_device_properties(device).total_memory

    def _evict_until(self, fits: Callable[[], bool]) -> None:
        while self._entries and not fits():
            self._entries.pop(next(iter(self._entries)))  # dict order = recency: the first is the oldest

    def _run(self, key, tensors: list[Tensor], noise: CompactNoise, values: Tensor, body: Callable,
             eager: Callable) -> tuple[Optional[_Static], list[Tensor]]:
        device = tensors[0].device
        key = key + (device, matmul_settings(), torch.is_inference_mode_enabled(), torch.is_grad_enabled())
        entry = self._entries.pop(key, None)  # re-inserted below: dict order = recency
        if entry is None:
            budget = self._budget(device)
            if _nbytes(tensors) > budget:
                return None, eager()
            self._evict_until(lambda: len(self._entries) < self.max_entries
                              and self.cached_bytes() + _nbytes(tensors) <= budget)
            static = _Static(tensors, noise, values)
            entry = _Entry(static, *self.capture(lambda: body(static), device))
            self._evict_until(lambda: self.cached_bytes() + entry.nbytes <= budget)
        self._entries[key] = entry
        entry.static.load(tensors, noise, values)
        entry.graph.replay()
        return entry.static, [o.clone() for o in entry.outputs]

    def forward(self, run: Callable, gates, h0, c0, weight_hh, noise: CompactNoise, save: bool,
                values: Optional[Tensor] = None) -> list[Tensor]:
        values = device_values(noise, h0.dtype, h0.device) if values is None else values
        key = ("forward", gates.shape, h0.shape, gates.dtype, save, _noise_key(noise))
        body = lambda s: run(*s.tensors, s.noise, save, values=s.values)  # noqa: E731
        eager = lambda: run(gates, h0, c0, weight_hh, noise, save, values=values)  # noqa: E731
        static, outputs = self._run(key, [gates, h0, c0, weight_hh], noise, values, body, eager)
        if save and static is not None:  # the loop activates the gates in place; the Function saves the caller's buffer
            gates.copy_(static.tensors[0])
        return outputs

    def backward(self, run: Callable, grad_output, grad_h, grad_c, gates, cells, tanh_cells, weight_hh,
                 noise: CompactNoise, values: Optional[Tensor] = None) -> list[Tensor]:
        values = device_values(noise, gates.dtype, gates.device) if values is None else values
        key = ("backward", gates.shape, cells.shape, gates.dtype, _noise_key(noise))
        tensors = [grad_output, grad_h, grad_c, gates, cells, tanh_cells, weight_hh]
        body = lambda s: run(*s.tensors, s.noise, values=s.values)  # noqa: E731
        eager = lambda: run(*tensors, noise, values=values)  # noqa: E731
        return self._run(key, tensors, noise, values, body, eager)[1]
