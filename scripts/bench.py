"""Training-step benchmark of the zoneout LSTM implementations. A script, never a test.

A step = forward + backward + Adam through an LM head (one-hot 50 -> LSTM -> Linear(H, 50),
cross-entropy) at T=100, B in {32, 128}, H in {256, 1000}, plus pMNIST's shape (T=784, B=100,
H=100, input 1, Linear(100, 10) on the last h). Rows: nn.LSTM (oneDNN / cuDNN, no zoneout), a
naive nn.LSTMCell loop with per-step zoneout masks, ZoneoutLSTM(impl="reference") and
ZoneoutLSTM(impl="fused"), the last three with z_c = 0.5, z_h = 0.05. Repetitions interleave the
rows (noise on a shared machine hits all of them alike); the table reports medians.

    python scripts/bench.py [--device cpu|cuda] [--quick] [--out results/bench_<device>.md]
    python scripts/bench.py --cpu-options [--rows cpp,cpp+onednn]  # fused CPU kernel options: C++ with MKL /
                                             # oneDNN GEMMs vs the PyTorch-op kernels
    python scripts/bench.py --device cuda --ptb-epoch [--tf32] [--bf16] [--cuda-graphs]
    python scripts/bench.py --tts-only [--tiny]   # only the speech/TTS rows (bench_tts.py); --tiny: a smoke check
    python scripts/bench.py --bn-only [--tiny]    # only the recurrent-BN LSTM rows (bench_bn.py)
    python scripts/bench.py --rnn gru|rnn [--quick]  # GRU / tanh-RNN rows instead (CPU)

With --rnn gru (rnn): nn.GRU (nn.RNN, tanh), GRU (RNN)(impl="reference") and (impl="fused") with
z_h = 0.05, written to results/bench_cpu_gru.md (_rnn.md); no TTS rows, no targets.

The speech/TTS rows (bidirectional layer, 200-step cell decoder loop; scripts/bench_tts.py) and the
recurrent-BN LSTM rows (reference loop vs fast path at the char-PTB and pMNIST shapes;
scripts/bench_bn.py) are appended to every default run; --no-tts / --no-bn leave them out.

On CUDA the report also profiles the fused step with and without CUDA graphs (torch.profiler): host
time to issue a step vs the GPU's kernel time. Host >= GPU means the step is launch-bound, which is
what CUDA graphs remove; this is the measurement that decides options["cuda_graphs"]'s default.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch import nn

import zoneout.nn.fused as fused
from zoneout.cpuinfo import cpu_description, cpu_model
from zoneout.nn.csrc import cpu_ext
from zoneout.nn.fused import cpu_gemm
from zoneout.nn.gru import GRU
from zoneout.nn.lstm import ZoneoutLSTM
from zoneout.nn.rnn import RNN

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_bn import bn_section  # noqa: E402
from bench_step import PMNIST, VOCAB, task_batch, training_step  # noqa: E402
from bench_tts import tts_section  # noqa: E402

Z_CELL, Z_HIDDEN = 0.5, 0.05
PTB_CHAR_TRAIN_CHARS = 5_017_482  # characters + one end-of-line per line (data/README.md)
ROWS = ("nn.LSTM", "LSTMCell loop", "reference", "fused")
KIND_ROWS = {"lstm": ROWS, "gru": ("nn.GRU", "reference", "fused"), "rnn": ("nn.RNN", "reference", "fused")}
GATES = {"lstm": 4, "gru": 3, "rnn": 1}
KIND = "lstm"  # --rnn; set by main() (workers get the same argv)


class CellLoop(nn.Module):
    """The usual zoneout implementation: an nn.LSTMCell in a Python loop, masks drawn per step."""

    def __init__(self, input_size, hidden_size):
        super().__init__()
        self.cell = nn.LSTMCell(input_size, hidden_size)

    def forward(self, x):
        h = c = x.new_zeros(x.shape[1], self.cell.hidden_size)
        outputs = []
        for x_t in x:
            h_new, c_new = self.cell(x_t, (h, c))  # h_new = o * tanh(un-zoned c_new), as the paper
            c = torch.where(torch.rand_like(c) < Z_CELL, c, c_new)
            h = torch.where(torch.rand_like(h) < Z_HIDDEN, h, h_new)
            outputs.append(h)
        return torch.stack(outputs), None


def make_rnn(row, input_size, hidden):
    if row == "nn.LSTM":
        return nn.LSTM(input_size, hidden)
    if row == "LSTMCell loop":
        return CellLoop(input_size, hidden)
    if row in ("nn.GRU", "nn.RNN"):
        return (nn.GRU if row == "nn.GRU" else nn.RNN)(input_size, hidden)
    if KIND != "lstm":  # tanh-RNN for rnn
        return (GRU if KIND == "gru" else RNN)(input_size, hidden, zoneout_hidden=Z_HIDDEN, impl=row)
    return ZoneoutLSTM(input_size, hidden, zoneout_cell=Z_CELL, zoneout_hidden=Z_HIDDEN, impl=row)


def make_step(row, shape, device, gen):
    """A closure running one training step of `row` on `shape` = (name, T, B, H)."""
    name, T, B, H = shape
    torch.manual_seed(0)  # same weights for every row
    x, y, classes = task_batch(shape, device, gen)
    return training_step(make_rnn(row, x.shape[-1], H).to(device), H, name, x, y, classes, device)


def model_flops(shape):
    """Matmul FLOPs of a step (forward x 3), the usual MFU convention."""
    name, T, B, H = shape
    inp, classes = (1, 10) if name == PMNIST else (VOCAB, VOCAB)
    head = 2 * B * H * classes * (1 if name == PMNIST else T)
    return 3 * (2 * T * B * GATES[KIND] * H * (inp + H) + head)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def peak_bytes(step, device):
    """GPU: torch.cuda.max_memory_allocated over the step (minus what was live before).
    CPU: peak of the bytes allocated during the step and still live, summed over the profiler's memory
    events in time order (each allocation and free is one; frees of blocks allocated before the step are
    not reported). An op's self memory is no timeline: a Function that frees what its child ops allocated
    (the per-step GEMM results of a fused layer) shows one large negative value at its own start."""
    if device.type == "cuda":
        sync(device)
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        step()
        sync(device)
        return torch.cuda.max_memory_allocated() - before
    from torch.profiler import ProfilerActivity, profile
    fused.release_workspaces()  # the pooled blocks are then allocated, and counted, within the step
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    events = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events()
                    if e.name() == "[memory]")
    live = peak = 0
    for _, delta in events:
        live += delta
        peak = max(peak, live)
    return peak


def matmul_peak(device, dtype=torch.float32):
    """Best of 8 square matmuls (on a loaded machine the best is the least disturbed)."""
    n = 2048 if device.type == "cpu" else 8192
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    return 2 * n ** 3 / min(time_rows({"mm": lambda: a @ b}, device, 8, statistic=min).values())


def time_rows(steps, device, reps, statistic=statistics.median):
    """Interleaved timings: each round runs every row once, rotating the order."""
    names = list(steps)
    for name in names:  # warm-up: first-call costs (C++ build, Triton compile, allocator) stay out
        steps[name]()
    times = {name: [] for name in names}
    for rep in range(reps):
        for name in names[rep % len(names):] + names[:rep % len(names)]:
            sync(device)
            start = time.perf_counter()
            steps[name]()
            sync(device)
            times[name].append(time.perf_counter() - start)
    return {name: statistic(values) for name, values in times.items()}


def launch_profile(step, device, steps=3):
    """Per step (mean over `steps` after a warm-up): host_ms, the CPU time to issue the step (no
    sync inside; if it exceeds device_ms the GPU waits for launches), device_ms, the summed time of
    the GPU kernels and copies, kernels, their count, and wall_ms, the synchronised step time."""
    from torch.profiler import ProfilerActivity, profile, record_function
    step()
    sync(device)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        start = time.perf_counter()
        for _ in range(steps):
            with record_function("bench_step"):
                step()
        sync(device)
        wall = time.perf_counter() - start
    host = sum(e.cpu_time_total for e in prof.key_averages() if e.key == "bench_step")
    on_device = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA
                 and not getattr(e, "is_user_annotation", False) and e.name != "bench_step"]
    device_us = sum(e.time_range.elapsed_us() for e in on_device)
    return {"host_ms": host / 1e3 / steps, "device_ms": device_us / 1e3 / steps,
            "kernels": len(on_device) / steps, "wall_ms": wall * 1e3 / steps}


def launch_rows(shape, device, gen):
    """--device cuda: the fused step's launch profile without and with CUDA graphs, as table lines."""
    label, lines = f"{shape[0]} T={shape[1]} B={shape[2]} H={shape[3]}", []
    saved = fused.options["cuda_graphs"]
    try:
        for graphs in (False, True):
            fused.options["cuda_graphs"] = graphs
            p = launch_profile(make_step("fused", shape, device, gen), device)
            bound = "launch" if p["host_ms"] >= p["device_ms"] else "GPU"
            lines.append(f"| {label} | {'on' if graphs else 'off'} | {p['host_ms']:,.2f} ms | {p['device_ms']:,.2f} ms "
                         f"| {p['wall_ms']:,.2f} ms | {p['kernels']:,.0f} | {bound} |")
    finally:
        fused.options["cuda_graphs"] = saved
    return lines


def time_split(step):
    """Shares of a fused step's wall time (CPU profile): GEMMs, zoneout mask sampling, the fused
    pointwise code (self time of the Function's forward and backward), and the rest."""
    from torch.profiler import ProfilerActivity, profile
    start = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    total = (time.perf_counter() - start) * 1e6
    shares = dict.fromkeys(("gemm", "masks", "pointwise"), 0.0)
    for e in prof.key_averages():  # mkl::_mkl_linear: the forward's packed-weight recurrent GEMM (MKL); oneDNN's
        kind = ("gemm" if e.key in ("aten::mm", "aten::addmm", "aten::addmm_", "mkl::_mkl_linear",
                                    "mkldnn::_linear_pointwise") else
                "masks" if e.key in ("aten::uniform_", "aten::lt", "zoneout::bernoulli_mask") else
                "pointwise" if e.key.startswith("Fused") and "Function" in e.key else None)
        if kind:
            shares[kind] += e.self_cpu_time_total / total
    return [*shares.values(), max(0.0, 1 - sum(shares.values()))]


def shapes_for(args):
    if args.worker:
        name, *sizes = args.worker.split(",")
        return [(name, *map(int, sizes))]
    if args.quick:
        return [("LM", 100, 32, 256), (PMNIST, 196, 100, 100)]
    shapes = [("LM", 100, b, h) for b in (32, 128) for h in (256, 1000)] + [(PMNIST, 784, 100, 100)]
    wanted = args.shapes.split(",") if args.shapes else None  # e.g. "B32H256,pMNIST"
    return [s for s in shapes if wanted is None or (s[0] == PMNIST and PMNIST in wanted)
            or f"B{s[2]}H{s[3]}" in wanted]


def describe(device):
    lines = [f"- date: {datetime.datetime.now().isoformat(timespec='seconds')}"]
    git = lambda *a: subprocess.run(["git", *a], capture_output=True, text=True).stdout.strip()  # noqa: E731
    lines.append(f"- git commit: {git('rev-parse', '--short', 'HEAD')}"
                 f"{' (+ uncommitted changes)' if git('status', '--porcelain') else ''}")
    if device.type == "cuda":
        lines.append(f"- device: {torch.cuda.get_device_name()} (CUDA {torch.version.cuda})")
    else:
        model = cpu_description() if cpu_model() else platform.processor()
        lines.append(f"- device: CPU {model}, {os.cpu_count()} cores, torch threads {torch.get_num_threads()}, "
                     f"ISA {torch.backends.cpu.get_cpu_capability()}")
        lines.append(f"- fused CPU GEMMs: options['cpu_gemm'] = {fused.options['cpu_gemm']!r} "
                     f"(\"auto\" on this {cpu_gemm.cpu_vendor()} CPU: {cpu_gemm.default_cpu_gemm(100)} at H = 100, "
                     f"{cpu_gemm.default_cpu_gemm(256)} from H = 256 up)")
    lines.append(f"- torch {torch.__version__}, python {platform.python_version()}")
    return lines


# --cpu-options rows: the fused layer's options each sets ("cpp" vs "cpp+onednn" decides options["cpu_gemm"]'s
# "auto" per CPU vendor, zoneout/nn/fused/cpu_gemm.py).
CPU_OPTION_ROWS = {"cpp": {"cpu_kernels": "cpp", "cpu_gemm": "mkl"},
                   "cpp+onednn": {"cpu_kernels": "cpp", "cpu_gemm": "onednn"},
                   "torch": {"cpu_kernels": "torch"}}
# TorchScript and torch.compile of the per-step math were measured here too and left the library (0.58-0.77x
# of nn.LSTM vs the C++ kernels' 0.88-1.29x on the AMD EPYC): results/bench_cpu_options_amd.md.


def option_step(option, step):
    """--cpu-options: a fused step run with the options of row `option` (CPU_OPTION_ROWS), restored after."""
    def run():
        saved = dict(fused.options)
        fused.options.update(CPU_OPTION_ROWS[option])
        try:
            step()
        finally:
            fused.options.update(saved)
    return run


def run_shape(args, device, rows, shape, peak):
    """Time, memory and profile of every row at one shape: (table lines, [(row, ratio)], split)."""
    gen = torch.Generator(device=device).manual_seed(0)
    if args.cpu_options:  # the rows are kernel options of the fused layer
        steps = {"nn.LSTM": make_step("nn.LSTM", shape, device, gen),
                 **{row: option_step(row, make_step("fused", shape, device, gen)) for row in rows}}
    else:
        steps = {row: make_step(row, shape, device, gen) for row in rows}
    medians = time_rows(steps, device, args.reps or (2 if args.quick else 5))
    label = f"{shape[0]} T={shape[1]} B={shape[2]} H={shape[3]}"
    table, ratios = [], []
    for row, seconds in medians.items():
        ratio = medians[KIND_ROWS[KIND][0]] / seconds
        ratios.append((row, ratio))
        mfu = model_flops(shape) / seconds
        memory = f"{peak_bytes(steps[row], device) / 2 ** 20:,.0f} MiB"
        if row == "fused" and device.type == "cpu":  # what its pool kept from that step (buffers.py)
            memory += f"; pool {fused.buffers.held_bytes() / 2 ** 20:,.0f} MiB"
        rate = f"{1 / seconds:.2f} steps/s" if shape[0] == PMNIST else f"{shape[1] * shape[2] / seconds:,.0f} chars/s"
        table.append(f"| {label} | {row} | {rate} | {seconds * 1e3:,.0f} ms | {ratio:.2f}x | "
                     f"{memory} | {mfu / 1e9:,.1f} GFLOP/s ({100 * mfu / peak:.0f}%) |")
    split = time_split(steps["fused"]) if "fused" in steps and device.type == "cpu" else None
    launches = launch_rows(shape, device, gen) if "fused" in steps and device.type == "cuda" else []
    return table, ratios, split, launches


def run_table(args, device, rows):
    """Each shape in a fresh worker process (unless --in-process), so that no shape inherits the
    allocator and cache state of the ones before it and the order of shapes cannot matter."""
    peak = args.peak or matmul_peak(device, torch.bfloat16 if args.bf16 else torch.float32)
    table, ratios, splits, launches = [], {}, {}, []
    for shape in shapes_for(args):
        if args.in_process or args.worker:
            lines, shape_ratios, split, shape_launches = run_shape(args, device, rows, shape, peak)
        else:
            command = [sys.executable, __file__, *sys.argv[1:], "--worker", ",".join(map(str, shape)),
                       "--peak", str(peak)]
            done = subprocess.run(command, capture_output=True, text=True)
            result = [ln for ln in done.stdout.splitlines() if ln.startswith("RESULT ")]
            if done.returncode != 0 or not result:
                raise RuntimeError(f"worker for {shape} failed:\n{done.stderr[-3000:]}")
            lines, shape_ratios, split, shape_launches = json.loads(result[-1][len("RESULT "):])
        launches += shape_launches
        for line in lines:
            print(line, flush=True)
        table += lines
        ratios.update({(tuple(shape), row): ratio for row, ratio in shape_ratios})
        if split:
            splits[f"{shape[0]} T={shape[1]} B={shape[2]} H={shape[3]}"] = {"fused": split}
    return table, ratios, splits, launches, peak


def targets(ratios):
    lines = []
    for (shape, row), ratio in sorted(ratios.items(), key=lambda kv: (kv[0][0][2], kv[0][0][3])):
        if row != "fused" or shape[0] != "LM" or KIND != "lstm":  # the targets are the LSTM's
            continue
        goal = 1.0 if shape[3] >= 1000 else 0.9
        mark = "met" if ratio >= goal else "missed"
        lines.append(f"- fused >= {goal:.1f}x nn.LSTM at B={shape[2]} H={shape[3]}: {ratio:.2f}x ({mark})")
    for (shape, row), ratio in ratios.items():
        if row == "fused" and (shape, "LSTMCell loop") in ratios:
            speedup = ratio / ratios[(shape, "LSTMCell loop")]
            lines.append(f"- fused vs naive LSTMCell loop at {shape[0]} B={shape[2]} H={shape[3]}: {speedup:.1f}x "
                         f"({'met' if speedup >= 2 else 'missed'}; target >= 2x)")
    return lines


def ptb_epoch(args, device):
    """Wall time of one char-PTB epoch at the paper's settings with the fused layer (synthetic
    characters: the time does not depend on which characters they are)."""
    T, B, H = 100, 32, 1000
    steps = PTB_CHAR_TRAIN_CHARS // (T * B)
    step = make_step("fused", ("LM", T, B, H), device, torch.Generator(device=device).manual_seed(0))
    step()
    sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    sync(device)
    seconds = time.perf_counter() - start
    return f"- char-PTB epoch (fused, B={B}, T={T}, H={H}, Adam, {steps} steps): {seconds:.1f} s"


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add = parser.add_argument
    add("--device", default="cpu", choices=("cpu", "cuda"))
    add("--rnn", default="lstm", choices=tuple(KIND_ROWS), help="which recurrent layer (gru, rnn: CPU only)")
    add("--quick", action="store_true", help="two small shapes, 2 reps: a smoke check")
    add("--reps", type=int, default=0, help="timed repetitions per row (default 5, quick 2)")
    add("--out", default=None, help="markdown output (default results/bench_<device>.md)")
    add("--cpu-options", action="store_true", help="compare the fused CPU kernel options instead")
    add("--ptb-epoch", action="store_true", help="also time a char-PTB epoch (GPU)")
    add("--rows", default="", help=f"comma-separated subset of {','.join(ROWS)} (with nn.LSTM; nn.GRU / nn.RNN "
                                   f"with --rnn), or with --cpu-options of {','.join(CPU_OPTION_ROWS)}")
    add("--shapes", default="", help="comma-separated subset, e.g. B32H256,B128H1000,pMNIST")
    add("--in-process", action="store_true", help="run all shapes in this process (default: a worker each)")
    add("--threads", type=int, default=0, help="torch intra-op threads (default: torch's)")
    add("--tf32", action="store_true")
    add("--bf16", action="store_true", help="bf16 recurrent GEMMs in the fused layer (GPU)")
    add("--cuda-graphs", action="store_true")
    add("--keep-denormals", action="store_true", help="do not flush denormals (CPU pMNIST then ~7x slower, all rows)")
    add("--no-tts", action="store_true", help="leave out the speech/TTS rows")
    add("--tts-only", action="store_true", help="only the speech/TTS rows (bidirectional layer, cell decoder loop)")
    add("--no-bn", action="store_true", help="leave out the recurrent-BN LSTM rows")
    add("--bn-only", action="store_true", help="only the recurrent-BN LSTM rows (reference vs fused BatchNormLSTM)")
    add("--tiny", action="store_true",
        help="with --tts-only / --bn-only: tiny shapes, a smoke check (no meaningful times)")
    add("--worker", default="", help=argparse.SUPPRESS)
    add("--peak", type=float, default=0.0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    rows = KIND_ROWS[args.rnn]
    if args.rnn != "lstm" and (args.device != "cpu" or args.cpu_options or args.tts_only or args.ptb_epoch):
        parser.error("--rnn gru / rnn: CPU rows only (the fused GRU / RNN kernels are C++), without "
                     "--cpu-options, --tts-only, --ptb-epoch")
    if args.cpu_options:  # nn.LSTM is always timed with them, as the baseline
        rows = tuple(CPU_OPTION_ROWS)
        args.rows = tuple(args.rows.split(",")) if args.rows else rows
        if not set(args.rows) <= set(rows):
            parser.error(f"with --cpu-options, --rows must name rows from {rows}")
        return args
    args.rows = tuple(args.rows.split(",")) if args.rows else rows
    if rows[0] not in args.rows or not set(args.rows) <= set(rows):
        parser.error(f"--rows must name rows from {rows} and include {rows[0]} (the ratio baseline)")
    return args


def report(args, device, header, table, ratios, splits, launches, peak, load_before):
    load = os.getloadavg()
    lines = header + [f"- load average (1/5/15 min): before {'/'.join(f'{x:.2f}' for x in load_before)}, "
                      f"after {'/'.join(f'{x:.2f}' for x in load)}",
                      f"- matmul peak measured here: {peak / 1e9:,.0f} GFLOP/s", "",
                      f"| shape | row | throughput | step | vs {KIND_ROWS[KIND][0]} | peak memory | achieved (MFU) |",
                      "|---|---|---|---|---|---|---|", *table, "",
                      "Peak memory: " + ("torch.cuda.max_memory_allocated over one step." if device.type == "cuda"
                                         else "peak of the tensor bytes allocated during one step and live at "
                                              "once, from torch.profiler's memory events in time order (the fused "
                                              "layers' pooled blocks are freed before, so counted); pool: what the "
                                              "fused layer's buffer pool (zoneout/nn/fused/buffers.py) then "
                                              "holds until the next step, part of that peak."),
                      "MFU: matmul FLOPs of the step (3 x forward) / step time, vs the measured matmul peak.", ""]
    if not args.cpu_options:
        lines += ["## Targets", "", *targets(ratios), ""]
    if splits:
        lines += ["## Where the fused step's time goes (CPU profile of one step)", "",
                  "| shape | GEMMs | mask sampling | fused pointwise | rest (head, Adam, Python) |",
                  "|---|---|---|---|---|"]
        lines += [f"| {label} | " + " | ".join(f"{x:.0%}" for x in shares) + " |"
                  for label, rows in splits.items() for shares in rows.values()] + [""]
    if launches:
        lines += ["## Launch-bound or GPU-bound? (fused step, torch.profiler, mean of 3 steps)", "",
                  "Host: CPU time to issue the step (no sync inside). GPU: summed kernel and copy time. "
                  "Host >= GPU: the GPU waits for launches, which CUDA graphs remove. Host and wall include "
                  "the profiler's overhead (the table above is timed without it).", "",
                  "| shape | CUDA graphs | host | GPU | wall (synchronised) | kernels/step | bound |",
                  "|---|---|---|---|---|---|---|", *launches, ""]
    if args.ptb_epoch:
        lines += ["## Char-PTB epoch", "", ptb_epoch(args, device) if device.type == "cuda" else
                  "- not run: needs --device cuda", ""]
    return "\n".join(lines)


def main():
    global KIND
    args = parse_args()
    KIND = args.rnn
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    flush = not args.keep_denormals and torch.set_flush_denormal(True)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = args.tf32
    fused.options.update(cuda_graphs=args.cuda_graphs, gemm_dtype=torch.bfloat16 if args.bf16 else None)
    if args.worker:  # one shape for the parent process, as a JSON line
        print("RESULT " + json.dumps(run_shape(args, device, args.rows, shapes_for(args)[0], args.peak)))
        return
    load_before = os.getloadavg()
    reps = args.reps or (2 if args.quick or args.tiny else 5)
    if args.tts_only or args.bn_only:
        title, section = (("# Speech/TTS rows", tts_section) if args.tts_only else
                          ("# Recurrent-BN LSTM rows", bn_section))
        text = "\n".join([title, ""] + describe(device) + [""] + section(device, time_rows, reps, tiny=args.tiny))
        print(text)
        if args.out:
            Path(args.out).write_text(text)
        return
    header = [f"# Training-step benchmark: zoneout {KIND.upper()} implementations", ""] + describe(device)
    if device.type == "cpu":
        built = cpu_ext.load() is not None
        header.append(f"- fused CPU kernels: {'C++ extension' if built else 'PyTorch ops: ' + str(cpu_ext.error())}"
                      f" (load {cpu_ext.load_seconds() or 0:.1f} s in this process; a cold build takes minutes)")
    header.append(f"- options: tf32={args.tf32} bf16={args.bf16} cuda_graphs={args.cuda_graphs} "
                  f"flush_denormal={bool(flush)} " + (f"z_c={Z_CELL} " if KIND == "lstm" else "") + f"z_h={Z_HIDDEN}")
    text = report(args, device, header, *run_table(args, device, args.rows), load_before)
    if not (args.no_tts or args.cpu_options or KIND != "lstm"):
        text += "\n" + "\n".join(tts_section(device, time_rows, reps))
    if not (args.no_bn or args.cpu_options or KIND != "lstm"):
        text += "\n" + "\n".join(bn_section(device, time_rows, reps))
    print(text)
    suffix = "" if KIND == "lstm" else f"_{KIND}"
    out = args.out or (None if args.cpu_options else f"results/bench_{device.type}{suffix}.md")
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(text)


if __name__ == "__main__":
    main()
