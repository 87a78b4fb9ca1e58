"""scripts/paper_status.py: where each paper-scale run stands and the exact command that continues it."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
import paper_status  # noqa: E402
from test_paper_trajectory import fake_checkout  # noqa: E402

from zoneout import checkpoint  # noqa: E402


def run_folder(runs: Path, name: str, curve: list[float], saved: dict | None) -> Path:
    folder = runs / "paper" / "ptb_char" / name / "seed0"
    folder.mkdir(parents=True)
    (folder / "metrics.jsonl").write_text("".join(json.dumps({"epoch": i + 1, "valid_bpc": v}) + "\n" for i, v in enumerate(curve)))
    if saved is not None:
        checkpoint.save(folder / "last.pt", saved)
    return folder


def test_each_run_says_its_epochs_resume_point_holder_and_launch_command(tmp_path, monkeypatch, capsys):
    runs = tmp_path / "runs"
    monkeypatch.setenv("ZONEOUT_RUNS_DIR", str(runs))
    mid = run_folder(runs, "zoneout_clip-grad", [1.73, 1.61, 1.62], {"epoch": 3, "partial": {"epoch": 4, "steps": 879}})
    run_folder(runs, "unregularized_clip-grad", [1.70], {"epoch": 1})
    run_folder(runs, "zoneout_clip-update", [], None)
    # The launcher logs the command that continues the run (a fake checkout: no git, so no commit).
    checkout = fake_checkout(tmp_path)
    subprocess.run(["bash", str(checkout / "scripts" / "paper_scale_run.sh"), "zoneout", "grad", "a=b c"], check=True,
                   env={**os.environ, "ZONEOUT_RUNS_DIR": str(runs), "VARIANT": ""})
    # A live trainer of this run holds the lock: its pid is in .lock and its command line names the run.
    holder = subprocess.Popen([sys.executable, "-c", "import time; print('ready', flush=True); time.sleep(60)", "-m",
                               "zoneout.train", "name=ptb_char/zoneout_clip-grad"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "ready\n"  # its command line is in /proc by now
        (mid / ".lock").write_text(f"{holder.pid}\n")
        (runs / "paper/ptb_char/unregularized_clip-grad/seed0/.lock").write_text(f"{holder.pid}\n")  # not that run's
        assert paper_status.main([]) == 0
    finally:
        holder.kill()
        holder.wait()
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("unregularized_clip-grad/seed0: epochs finished 1, best valid 1.7000 (epoch 1); "
                             "resumes at start of epoch 2 (saved ") and out[0].endswith("; stopped")
    assert out[1] == "    continue with: not logged (launched by a launcher older than its launch line)"
    assert out[2].startswith("zoneout_clip-grad/seed0: epochs finished 3, best valid 1.6100 (epoch 2); "
                             "resumes at epoch 4, step 879 (saved ") and out[2].endswith(f"; running (pid {holder.pid})")
    assert out[3] == (f"    continue with: ( cd {checkout} && ZONEOUT_RUNS_DIR={runs} SEED=0 "
                      "scripts/paper_scale_run.sh zoneout grad a=b\\ c )")
    assert out[4].startswith("zoneout_clip-update/seed0: epochs finished 0, best valid -; resumes at no last.pt")


def test_a_damaged_checkpoint_is_one_line_naming_it(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("ZONEOUT_RUNS_DIR", str(tmp_path / "runs"))
    folder = run_folder(tmp_path / "runs", "zoneout_clip-grad", [1.73], {"epoch": 1})
    data = bytearray((folder / "last.pt").read_bytes())
    data[10] ^= 0xFF
    (folder / "last.pt").write_bytes(bytes(data))
    assert paper_status.main([]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(folder / "last.pt") in err[0]


@pytest.mark.parametrize("content", ["", "not a pid\n", "999999999\n"])
def test_a_missing_or_stale_lock_reads_as_stopped(tmp_path, content):
    folder = run_folder(tmp_path / "runs", "zoneout_clip-grad", [1.73], None)
    if content:
        (folder / ".lock").write_text(content)
    assert paper_status.holder(folder) == "stopped"
