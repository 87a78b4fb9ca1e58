"""One run folder, one run, one process: the rules train.py applies before it writes anything there.

- A run folder is owned by one process at a time (an OS lock on `.lock`, released when the process dies).
- A folder that holds a run (a checkpoint or a summary) is continued only with trainer.resume=true, and
  replaced only with trainer.overwrite=true, which first moves the old run to a sibling folder: no
  folder ever mixes two runs.
- Temp files of writes a kill interrupted (zoneout/atomic.py) are removed when the next owner starts.
"""
from __future__ import annotations

import fcntl
import os
import time
from pathlib import Path

LOCK_FILE = ".lock"
RUN_FILES = ("last.pt", "best.pt", "summary.json")  # what makes a folder hold a run
HYDRA_FILES = (".hydra", "train.log", LOCK_FILE)     # what Hydra and the lock create before training starts


class RunFolderError(ValueError):
    """The run folder cannot be used as asked: its message is the one line to show."""


class RunFolderLock:
    def __init__(self, run_dir: Path):
        self.path, self.handle = Path(run_dir) / LOCK_FILE, None

    def __enter__(self):
        self.handle = open(self.path, "a+")
        try:
            fcntl.flock(self.handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.handle.seek(0)
            holder = self.handle.read().strip() or "unknown"
            self.handle.close()
            raise RunFolderError(f"{self.path.parent} is in use by another process (pid {holder}); wait for it to "
                                 "end, or stop it (SIGTERM saves where it stands) and resume") from None
        self.handle.seek(0)
        self.handle.truncate()
        self.handle.write(f"{os.getpid()}\n")
        self.handle.flush()
        return self

    def __exit__(self, *exc):
        fcntl.flock(self.handle, fcntl.LOCK_UN)
        self.handle.close()


def remove_stale_temp_files(run_dir: Path) -> list[Path]:
    """Temp files (`.<name>.*.tmp`) of atomic writes that a kill interrupted; only the folder's owner calls this."""
    stale = sorted(Path(run_dir).glob(".*.tmp"))
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


def existing_run(run_dir: Path) -> str | None:
    """What run the folder holds ('a finished run', 'a run in progress'), or None."""
    present = [name for name in RUN_FILES if (Path(run_dir) / name).exists()]
    if not present:
        return None
    return "a finished run" if "summary.json" in present else "a run in progress"


def move_aside(run_dir: Path) -> Path:
    """Move everything but Hydra's fresh files and the lock into <run_dir>.replaced-<time>/."""
    run_dir = Path(run_dir)
    target = run_dir.with_name(f"{run_dir.name}.replaced-{time.strftime('%Y%m%d-%H%M%S')}")
    suffix = 1
    while target.exists():
        target, suffix = target.with_name(f"{target.name.split('~')[0]}~{suffix}"), suffix + 1
    target.mkdir(parents=True)
    for entry in run_dir.iterdir():
        if entry.name not in HYDRA_FILES:
            entry.rename(target / entry.name)
    return target


def remove_if_untouched(run_dir: Path, runs_root: Path | None = None) -> bool:
    """Remove a folder that holds nothing but what Hydra and the lock created for a run that was refused
    before it began, and its parents up to runs_root if that left them empty. Returns whether it did."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir() or any(entry.name not in HYDRA_FILES + ("error.txt",) for entry in run_dir.iterdir()):
        return False
    if (run_dir / "train.log").exists() and (run_dir / "train.log").stat().st_size:
        return False
    for entry in run_dir.iterdir():
        if entry.is_dir():
            for inner in sorted(entry.rglob("*"), reverse=True):
                inner.rmdir() if inner.is_dir() else inner.unlink()
            entry.rmdir()
        else:
            entry.unlink()
    run_dir.rmdir()
    parent, stop = run_dir.parent, (runs_root.resolve() if runs_root else None)
    while stop is not None and parent.resolve() != stop and stop in parent.resolve().parents and not any(parent.iterdir()):
        parent.rmdir()
        parent = parent.parent
    return True
