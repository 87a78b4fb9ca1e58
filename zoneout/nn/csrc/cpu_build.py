"""Build one C++ extension in a child process whose compilers die with the process that asked for it (Linux).

cpu_ext runs `python cpu_build.py PARENT_PID REQUEST_JSON` (REQUEST_JSON: the keyword arguments of
torch.utils.cpp_extension.load) in a process group of its own. ninja starts every compiler in a process group of
its own and, killed with SIGKILL, leaves them running; so this process makes itself their subreaper (orphaned
compilers become its children) and asks the kernel for SIGTERM when its parent dies, even by SIGKILL
(PR_SET_PDEATHSIG). On SIGTERM it kills every descendant, then exits. Imports torch only, never zoneout,
so it runs the same from a checkout or an installed wheel.
"""
from __future__ import annotations

import ctypes
import json
import os
import signal
import sys
import time
import traceback

_PR_SET_PDEATHSIG = 1
_PR_SET_CHILD_SUBREAPER = 36


def descendants(root: int) -> list[int]:
    """Live (non-zombie) processes below root, parents before children, read from /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as handle:
                fields = handle.read().rpartition(")")[2].split()  # the command name may hold spaces and ')'
        except OSError:
            continue  # exited while we read
        if fields[0] != "Z":
            children.setdefault(int(fields[1]), []).append(int(entry))
    found, queue = [], list(children.get(root, []))
    while queue:
        pid = queue.pop(0)
        found.append(pid)
        queue.extend(children.get(pid, []))
    return found


def kill_descendants(deadline_s: float = 10.0) -> None:
    """SIGKILL everything below this process until nothing is left, reaping what becomes ours."""
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        alive = descendants(os.getpid())
        if not alive:
            return
        for pid in alive:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.05)
        while True:  # reap: a zombie child would hold its pid, and its orphans come to us next
            try:
                if os.waitpid(-1, os.WNOHANG)[0] == 0:
                    break
            except ChildProcessError:
                break


def _on_sigterm(signum, frame) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    kill_descendants()
    os._exit(128 + signum)


def die_with_parent(parent: int) -> None:
    """From now on this process and all it starts end when `parent` ends (or on SIGTERM)."""
    signal.signal(signal.SIGTERM, _on_sigterm)
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if os.getppid() != parent:  # it died before the death signal was asked for
        _on_sigterm(signal.SIGTERM, None)


def compile_extension(request: dict) -> None:
    from torch.utils import cpp_extension

    cpp_extension.load(**request)


def main(build=compile_extension) -> int:
    die_with_parent(int(sys.argv[1]))
    try:
        build(json.loads(sys.argv[2]))
    except Exception as error:  # the log keeps the traceback; its last line is what the parent reports
        traceback.print_exc()
        first = str(error).strip().splitlines()
        print(f"{type(error).__name__}: {first[0] if first else ''}", file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    if sys.path and os.path.abspath(sys.path[0]) == os.path.dirname(os.path.abspath(__file__)):
        del sys.path[0]  # this package's modules (masks, function, ...) must not shadow top-level names
    sys.exit(main())
