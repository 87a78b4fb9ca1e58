"""Atomic file writes: a temp file in the target's folder, fsync, then rename, so a kill at any
moment leaves the old file or the new one, never half of one. Torch-free (the data fetcher uses it).

Temp files are created private (0600); `publish` gives the final file the mode an ordinary
`open(path, "w")` would (0666 minus the umask), so run folders, results and data stay readable
by whoever could read them before."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import BinaryIO, Callable


def _umask() -> int:
    mask = os.umask(0o022)  # the only way to read it is to set it: put it straight back
    os.umask(mask)
    return mask


FILE_MODE = 0o666 & ~_umask()


def publish(partial: Path, final: Path) -> None:
    """Rename a finished temp file over `final`, with the mode a plainly created file would have."""
    os.chmod(partial, FILE_MODE)
    os.replace(partial, final)


def atomic_write_bytes(path: Path, write: Callable[[BinaryIO], object]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        publish(Path(tmp), path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, lambda handle: handle.write(text.encode()))
