"""scripts/bench_tts.py runs its rows at tiny shapes (a smoke check: no timing is asserted)."""
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
from bench_tts import tts_section  # noqa: E402


def test_tts_bench_rows_run_at_tiny_shapes():
    def time_rows(steps, device, reps):
        for step in steps.values():
            step()
        return {name: 1.0 for name in steps}

    lines = tts_section(torch.device("cpu"), time_rows, reps=1, tiny=True)
    rows = [line for line in lines if line.startswith("| encoder") or line.startswith("| decoder")]
    assert len(rows) == 7 and any("ZoneoutLSTMCell loop" in r for r in rows)
    assert any("ZoneoutLSTM bidirectional packed" in r for r in rows)
    small = [line for line in lines if line.startswith("| 1 |") or line.startswith("| 2 |")]
    assert len(small) == 6  # B 1 and 2: two training rows each, then the B = 1 latency pair
    assert sum("(eval, no grad; per call)" in r for r in small) == 2 and all(r.endswith("x |") for r in small)
