"""scripts/bench.py's peak-memory column (CPU): a timeline of the profiler's memory events, no timing."""
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
import bench  # noqa: E402

import zoneout.nn.fused as fused  # noqa: E402
from zoneout.nn.csrc import cpu_ext  # noqa: E402

CPU = torch.device("cpu")
MIB = 2 ** 20


def test_peak_counts_what_is_live_at_once():
    def step():
        first = torch.ones(MIB // 4)  # 1 MiB of float32
        second = torch.ones(MIB // 4)
        del first, second
        third = torch.ones(MIB // 4)  # allocated after both were freed: no higher peak
        del third
    assert 2 * MIB <= bench.peak_bytes(step, CPU) < 2.1 * MIB


def test_the_buffer_pool_leaves_the_fused_steps_peak_unchanged(monkeypatch):
    # The op-level accounting this replaced put the per-step GEMM results' frees (self memory of the fused
    # Function, negative) at the Function's start, and so reported the pool as raising the peak by a third.
    # Where the activations outweigh the weights (here, as at every benchmark shape) the peak is the
    # backward's, with or without the pool; with tiny activations the pool's blocks, held past the
    # backward, can add to the optimizer's temporaries (T=30 B=16 H=256: 9.4 vs 8.1 MiB).
    if cpu_ext.load() is None:
        pytest.skip(f"C++ kernels unavailable: {cpu_ext.error()}")
    step = bench.make_step("fused", ("LM", 50, 64, 128), CPU, torch.Generator().manual_seed(0))
    peaks = {}
    for reuse in (False, True):
        monkeypatch.setitem(fused.options, "reuse_buffers", reuse)
        step()
        peaks[reuse] = bench.peak_bytes(step, CPU)
    gates = 50 * 64 * 4 * 128 * 4  # the input projection, saved for backward, and dL/dgates beside it
    assert peaks[False] > 2 * gates
    assert peaks[True] == pytest.approx(peaks[False], rel=0.02)
