"""bf16 vs fp32 on this CPU: does a bf16 GEMM path pay here at all? A script, never a test.

One process, one thread, interleaved repetitions, medians: torch.mm at the fused layers' GEMM
shapes in fp32 and in bf16 (fp32 accumulation inside oneDNN/MKL), then an nn.LSTM training step
(forward + backward) in fp32 and under torch.autocast("cpu", dtype=torch.bfloat16). A bf16 path
for the fused layers only makes sense where the bf16 column is well above the fp32 one, which
needs native bf16 instructions (avx512_bf16 or AMX); without them oneDNN falls back to slow code.

    python scripts/bench_dtypes.py [--out results/bench_dtypes_cpu_<vendor>.md] [--reps 3]

Stop the long runs (kill -STOP, then kill -CONT) or wait for idle cores before timing.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from zoneout.cpuinfo import cpu_description, cpu_flags  # noqa: E402

# (M, K, N): the paper's per-step recurrent GEMM, a larger batch, the input projection / weight
# gradient, the small scale's recurrent GEMM, the one-hot input projection
SHAPES = [(32, 1000, 4000), (128, 1000, 4000), (1280, 1000, 4000), (32, 256, 1024), (3200, 50, 4000)]
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def seconds_per_call(fn, budget=0.3):
    start = time.perf_counter()
    fn()
    once = time.perf_counter() - start
    n = max(1, int(budget / max(once, 1e-6)))
    start = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - start) / n


def interleaved(fns, reps):
    times = {name: [] for name in fns}
    for _ in range(reps):
        for name, fn in fns.items():
            times[name].append(seconds_per_call(fn))
    return {name: statistics.median(t) for name, t in times.items()}


def gemm_rows(reps):
    rows = []
    for m, k, n in SHAPES:
        fns = {}
        for name, dtype in DTYPES.items():
            a, b = torch.randn(m, k, dtype=dtype), torch.randn(k, n, dtype=dtype)
            fns[name] = lambda a=a, b=b: torch.mm(a, b)
        t = interleaved(fns, reps)
        flop = 2 * m * k * n
        rows.append(f"| {m}x{k}x{n} | {flop / t['fp32'] / 1e9:.1f} | {flop / t['bf16'] / 1e9:.2f} "
                    f"| {t['fp32'] / t['bf16']:.3f}x |")
    return rows


def lstm_row(reps, hidden=256, batch=32, steps=100):
    lstm = torch.nn.LSTM(hidden, hidden)
    x = torch.randn(steps, batch, hidden)

    def step(bf16):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            y, _ = lstm(x)
        y.float().sum().backward()

    try:
        step(True)
    except RuntimeError as err:  # oneDNN has no bf16 LSTM primitive without native bf16
        first = str(err).splitlines()[0]
        return f"| nn.LSTM step T={steps} B={batch} H={hidden} | - | fails: `{first}` | - |"
    t = interleaved({"fp32": lambda: step(False), "bf16": lambda: step(True)}, reps)
    return (f"| nn.LSTM step T={steps} B={batch} H={hidden} | {t['fp32'] * 1e3:.0f} ms | "
            f"{t['bf16'] * 1e3:.0f} ms | {t['fp32'] / t['bf16']:.3f}x |")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="write the markdown table here too")
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    native = sorted(cpu_flags() & {"avx512_bf16", "amx_bf16", "amx_tile"})
    lines = [
        f"# bf16 vs fp32 on CPU ({cpu_description()})", "",
        f"torch {torch.__version__}, one thread, medians of {args.reps} interleaved repetitions "
        f"(scripts/bench_dtypes.py). CPU capability {torch.backends.cpu.get_cpu_capability()}; "
        f"oneDNN bf16 supported: {torch.ops.mkldnn._is_mkldnn_bf16_supported()}; native bf16 flags: "
        f"{', '.join(native) or 'none'}.", "",
        "| GEMM (M x K x N) | fp32 GFLOP/s | bf16 GFLOP/s | bf16 speed-up |", "|---|---|---|---|",
    ]
    lines += gemm_rows(args.reps)
    lines += ["", "| step | fp32 | bf16 autocast | bf16 speed-up |", "|---|---|---|---|", lstm_row(args.reps)]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
