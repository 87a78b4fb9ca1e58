"""scripts/bench_cpu.py (`make bench`): gathering bench.py's reports; no timing here (a script, never a test)."""
import importlib.util
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "bench_cpu.py"
spec = importlib.util.spec_from_file_location("bench_cpu", SCRIPT)
bench_cpu = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench_cpu)

REPORT = """# Training-step benchmark: zoneout GRU implementations

| shape | row | throughput | step | vs nn.GRU | peak memory | achieved (MFU) |
|---|---|---|---|---|---|---|
| LM T=100 B=32 H=256 | nn.GRU | 28,539 chars/s | 112 ms | 1.00x | 56 MiB | 55.8 GFLOP/s (46%) |
| LM T=100 B=32 H=256 | reference | 16,231 chars/s | 197 ms | 0.57x | 39 MiB | 31.8 GFLOP/s (26%) |
| LM T=100 B=32 H=256 | fused | 29,083 chars/s | 110 ms | 1.02x | 27 MiB | 56.9 GFLOP/s (47%) |
| pMNIST T=784 B=100 H=100 | fused | 1.38 steps/s | 723 ms | 0.97x | 254 MiB | 26.3 GFLOP/s (22%) |
"""


def test_fused_ratios_reads_only_the_fused_rows():
    assert bench_cpu.fused_ratios(REPORT) == {"LM T=100 B=32 H=256": 1.02, "pMNIST T=784 B=100 H=100": 0.97}


def test_summary_marks_a_target_met_only_at_every_thread_count():
    ratios = {("gru", 1): {"LM T=100 B=32 H=256": 1.02}, ("gru", 2): {"LM T=100 B=32 H=256": 0.98},
              ("rnn", 1): {"LM T=100 B=32 H=256": 1.3}, ("rnn", 2): {"LM T=100 B=32 H=256": 1.1}}
    lines = bench_cpu.summary(ratios, [1, 2])
    assert lines[0].startswith("| layer | shape | 1 thread | 2 threads |")
    gru = next(ln for ln in lines if "GRU" in ln)
    rnn = next(ln for ln in lines if "RNN vs" in ln)
    assert "1.02x | 0.98x" in gru and gru.endswith("missed |")
    assert rnn.endswith("met |")


def test_vendor_is_named_for_the_report_file():
    assert bench_cpu.cpu_vendor() in ("amd", "intel", "cpu") and bench_cpu.cpu_model() is not None
