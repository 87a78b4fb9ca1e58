"""Where each paper-scale char-PTB run stands, and the command that continues it.

    python scripts/paper_status.py      (make paper-status)

For every run folder $ZONEOUT_RUNS_DIR/paper/ptb_char/<name>/seed<N> (runs/ by default): the epochs it
finished and its best validation BPC (metrics.jsonl), where its last.pt would resume (epoch and step,
when it was saved), whether a training process holds it now (the pid in .lock, checked in /proc; the lock
itself is never taken, so a starting run is never refused), and the last command line
scripts/paper_scale_run.sh logged for it in seed<N>.log. Reads only; what a note on the runs must say.
"""
from __future__ import annotations

import argparse
import datetime
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from paper_trajectory import TrajectoryError, live_runs_dir, read_json_lines  # noqa: E402  (scripts/, beside this file)

from zoneout import checkpoint  # noqa: E402
from zoneout.run_folder import LOCK_FILE  # noqa: E402


def resume_point(folder: Path) -> str:
    """'epoch 7, step 879 (saved 2026-12-07 21:12 UTC)' from last.pt, or why there is none."""
    path = folder / "last.pt"
    if not path.exists():
        return "no last.pt: starts from scratch"
    state = checkpoint.load(path)  # a damaged file is refused in one line (CheckpointError)
    partial = state.get("partial") or {}
    saved = datetime.datetime.fromtimestamp(path.stat().st_mtime, datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    if partial:
        return f"epoch {partial['epoch']}, step {partial['steps']} (saved {saved})"
    return f"start of epoch {state['epoch'] + 1} (saved {saved})"


def holder(folder: Path) -> str:
    """'running (pid N)' when the pid in .lock is a live trainer of this run, else 'stopped'."""
    try:
        pid = int((folder / LOCK_FILE).read_text().strip())
        command = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except (OSError, ValueError):
        return "stopped"
    name = f"name=ptb_char/{folder.parent.name}".encode()
    return f"running (pid {pid})" if b"zoneout.train" in command and name in command else "stopped"


def launch_command(folder: Path) -> str:
    log = folder.parent / f"{folder.name}.log"
    lines = [line for line in log.read_text(errors="replace").splitlines() if line.startswith("launch ")] if log.exists() else []
    return lines[-1].split(": ", 1)[1] if lines else "not logged (launched by a launcher older than its launch line)"


def status(runs_root: Path) -> list[dict]:
    rows = []
    for folder in sorted((runs_root / "ptb_char").glob("*/seed*")):
        if not folder.is_dir():
            continue
        epochs = read_json_lines(folder / "metrics.jsonl") if (folder / "metrics.jsonl").exists() else []
        best = min(epochs, key=lambda m: m["valid_bpc"]) if epochs else None
        rows.append({"run": f"{folder.parent.name}/{folder.name}", "epochs": len(epochs),
                     "best": f"{best['valid_bpc']:.4f} (epoch {best['epoch']})" if best else "",
                     "resumes at": resume_point(folder), "now": holder(folder), "continue with": launch_command(folder)})
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.parse_args(argv)
    runs_root = live_runs_dir()
    try:
        rows = status(runs_root)
    except (TrajectoryError, checkpoint.CheckpointError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if not rows:
        print(f"no paper-scale char-PTB run under {runs_root / 'ptb_char'}")
        return 0
    for row in rows:
        print(f"{row['run']}: epochs finished {row['epochs']}, best valid {row['best'] or '-'}; "
              f"resumes at {row['resumes at']}; {row['now']}")
        print(f"    continue with: {row['continue with']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
