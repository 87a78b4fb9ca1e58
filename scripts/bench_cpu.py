"""`make bench` on a CPU: every fused layer against its PyTorch counterpart, per thread count, into
results/bench_cpu_<vendor>.md (a speed claim names the CPU that measured it).

For each --threads value it runs scripts/bench.py once per layer kind, each in its own process:
LSTM (fused vs nn.LSTM, plus the recurrent-BN rows: fused vs the reference loop), GRU (vs nn.GRU) and tanh-RNN
(vs nn.RNN). Every ratio is measured inside one of those processes with interleaved repetitions; this
script only gathers the reports and puts the fused-vs-PyTorch ratios side by side.

    python scripts/bench_cpu.py [--threads 1,2] [--quick] [--shapes B32H256,pMNIST] [--reps N]
                                [--lstm-rows nn.LSTM,fused] [--kinds lstm,gru,rnn] [--out F]

Run it on idle cores: a training run beside it skews every row (the load averages are in the report).
"""
from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from zoneout.cpuinfo import cpu_model, cpu_vendor

BENCH = Path(__file__).with_name("bench.py")
BASELINE = {"lstm": "nn.LSTM", "gru": "nn.GRU", "rnn": "nn.RNN"}
# a table line of bench.py: | shape | row | throughput | step | 1.02x | ...
ROW = re.compile(r"^\| (?P<shape>[^|]+?) \| (?P<row>[^|]+?) \| [^|]+ \| [^|]+ \| (?P<ratio>[\d.]+)x \|")


def fused_ratios(report: str) -> dict[str, float]:
    """shape -> the fused row's ratio to the PyTorch baseline, from one bench.py report."""
    return {m["shape"]: float(m["ratio"]) for m in map(ROW.match, report.splitlines())
            if m and m["row"] == "fused"}


def run_bench(kind: str, threads: int, args) -> str:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "report.md"
        command = [sys.executable, str(BENCH), "--rnn", kind, "--threads", str(threads), "--out", str(out)]
        command += ["--quick"] if args.quick else []
        command += ["--shapes", args.shapes] if args.shapes else []
        command += ["--reps", str(args.reps)] if args.reps else []
        command += ["--rows", args.lstm_rows] if kind == "lstm" and args.lstm_rows else []
        command += ["--no-tts"]  # the speech/TTS rows have their own report (bench.py --tts-only)
        print(f"bench_cpu: {kind}, {threads} thread(s) ...", file=sys.stderr, flush=True)
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(f"bench_cpu: bench.py --rnn {kind} --threads {threads} failed:\n{done.stderr[-2000:]}")
        return out.read_text()


def summary(ratios: dict[tuple[str, int], dict[str, float]], thread_counts: list[int]) -> list[str]:
    lines = ["| layer | shape | " + " | ".join(f"{t} thread{'s' * (t > 1)}" for t in thread_counts) + " | target |",
             "|---|---|" + "---|" * len(thread_counts) + "---|"]
    for kind in BASELINE:
        shapes = dict.fromkeys(s for t in thread_counts for s in ratios.get((kind, t), {}))
        for shape in shapes:
            cells = [ratios.get((kind, t), {}).get(shape) for t in thread_counts]
            met = all(c is not None and c >= 1.0 for c in cells)
            lines.append(f"| fused {kind.upper()} vs {BASELINE[kind]} | {shape} | "
                         + " | ".join("–" if c is None else f"{c:.2f}x" for c in cells)
                         + f" | >= 1.0x: {'met' if met else 'missed'} |")
    return lines


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", default="1,2", help="comma-separated torch thread counts (default 1,2)")
    parser.add_argument("--quick", action="store_true", help="bench.py --quick for every run: a smoke check")
    parser.add_argument("--shapes", default="", help="passed to bench.py, e.g. B32H256,B128H1000,pMNIST")
    parser.add_argument("--reps", type=int, default=0, help="passed to bench.py")
    parser.add_argument("--lstm-rows", default="", help="bench.py --rows for the LSTM, e.g. nn.LSTM,fused "
                                                        "(default: all four)")
    parser.add_argument("--kinds", default="lstm,gru,rnn", help="which layers (default lstm,gru,rnn)")
    parser.add_argument("--out", default=None, help="default results/bench_cpu_<vendor>.md")
    args = parser.parse_args()
    try:
        thread_counts = [int(t) for t in args.threads.split(",")]
        assert thread_counts and all(t > 0 for t in thread_counts)
    except (ValueError, AssertionError):
        parser.error(f"--threads must be positive integers separated by commas, got {args.threads!r}")
    kinds = args.kinds.split(",")
    if not set(kinds) <= set(BASELINE):
        parser.error(f"--kinds must name layers from {tuple(BASELINE)}, got {args.kinds!r}")
    vendor, model = cpu_vendor(), cpu_model() or "unknown CPU"
    reports, ratios = [], {}
    for threads in thread_counts:
        for kind in kinds:
            report = run_bench(kind, threads, args)
            ratios[(kind, threads)] = fused_ratios(report)
            body = report.split("\n", 1)[1] if report.startswith("# ") else report
            reports.append(f"## {kind.upper()}, {threads} thread{'s' * (threads > 1)}\n{body.replace(chr(10) + '## ', chr(10) + '### ')}")
    text = "\n".join([f"# CPU benchmark: fused layers vs PyTorch ({model})", "",
                      "Ratios are fused vs the PyTorch layer (oneDNN / MKL) in the same process, interleaved "
                      "repetitions, medians (scripts/bench_cpu.py -> scripts/bench.py).", "",
                      *summary(ratios, thread_counts), "", *reports])
    out = Path(args.out or f"results/bench_cpu_{vendor}.md")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
