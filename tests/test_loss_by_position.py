"""scripts/loss_by_position.py: validation BPC by position in the chunk, on a run it trains."""
from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
from test_train import tiny_cfg

from zoneout.train import train

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
import loss_by_position  # noqa: E402


def test_the_bands_add_up_to_the_split_the_run_logged(data_dir, tmp_path, capsys):
    run = tmp_path / "run"
    train(tiny_cfg(data_dir, "trainer.eval_max_batches=null", "trainer.max_epochs=1"), run)
    capsys.readouterr()
    out = tmp_path / "report.md"
    assert loss_by_position.main([str(run), "--checkpoint", "best.pt", "--out", str(out)]) == 0
    report = out.read_text()
    assert report == capsys.readouterr().out
    whole, logged = map(float, re.search(r"whole split: ([\d.]+) BPC .* logged ([\d.]+) for this epoch", report).groups())
    assert whole == pytest.approx(logged, abs=1e-4)  # the same evaluation as the run's own
    bands = re.findall(r"^\| (\d+)(?:-(\d+))? \| ([\d.]+) \|$", report, flags=re.M)
    assert [int(b[0]) for b in bands] == [1, 2, 3, 4, 6, 11, 21, 51] and bands[-1][1] == "99"
    # Chunks of 100 give 99 predictions each (plus the split's remainder): weight the bands by width.
    sizes = [int(b[1] or b[0]) - int(b[0]) + 1 for b in bands]
    assert sum(s * float(b[2]) for s, b in zip(sizes, bands)) / 99 == pytest.approx(whole, abs=2e-3)
    steady, cost = map(float, re.search(r"positions 51 on: ([\d.]+); start cost .*: ([+-][\d.]+) BPC", report).groups())
    assert steady == pytest.approx(float(bands[-1][2])) and cost == pytest.approx(whole - steady, abs=2e-4)


def test_runs_it_cannot_read_are_one_line(data_dir, tmp_path, capsys):
    assert loss_by_position.main([str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "needs config.yaml and best.pt" in err[0]
