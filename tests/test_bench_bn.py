"""scripts/bench_bn.py runs its rows at tiny shapes (a smoke check: no timing is asserted)."""
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
from bench_bn import bn_section  # noqa: E402


def test_bn_bench_rows_run_at_tiny_shapes():
    def time_rows(steps, device, reps):
        for step in steps.values():
            step()
        return {name: 1.0 for name in steps}

    lines = bn_section(torch.device("cpu"), time_rows, reps=1, tiny=True)
    rows = [line for line in lines if line.startswith("| char-PTB") or line.startswith("| pMNIST")]
    assert len(rows) == 4 and sum("| fused |" in r for r in rows) == 2
