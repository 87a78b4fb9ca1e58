"""The first-use build of the C++ CPU kernels never hangs a later run: a build killed midway leaves
torch's lock file behind, and a process that waits on a live build waits a bounded time."""
from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from zoneout.nn.csrc import cpu_ext

ROOT = Path(__file__).resolve().parent.parent
# Loads the kernels, then runs a fused ZoneoutLSTM step either way (C++ kernels or the PyTorch fallback).
SCRIPT = """
import torch
from zoneout import ZoneoutLSTM
from zoneout.nn.csrc import cpu_ext
module = cpu_ext.load()
lstm = ZoneoutLSTM(3, 4, zoneout_cell=0.5, zoneout_hidden=0.05, impl="fused")
lstm(torch.randn(5, 2, 3))[0].sum().backward()
print("LOADED" if module is not None else "FALLBACK " + str(cpu_ext.error()).splitlines()[0])
"""


def environment(extensions: Path, **extra) -> dict:
    return {**os.environ, "TORCH_EXTENSIONS_DIR": str(extensions), "OMP_NUM_THREADS": "1", **extra}


def build_dir(extensions: Path) -> Path:
    return extensions / "zoneout" / cpu_ext.build_name_and_flags()[0]


def working_in(folder: Path) -> list[int]:
    """Live processes whose working directory is folder: ninja and the compilers it runs there."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and os.readlink(proc / "cwd") == os.path.realpath(folder) and \
                    (proc / "stat").read_text().rpartition(")")[2].split()[0] != "Z":
                found.append(int(proc.name))
        except OSError:
            continue
    return found


def test_waiting_on_a_live_build_is_bounded_and_falls_back(tmp_path):
    folder = build_dir(tmp_path / "ext")
    folder.mkdir(parents=True)
    with open(folder / "zoneout.lock", "a+") as held:  # a live builder holds the lock for the whole test
        fcntl.flock(held, fcntl.LOCK_EX)
        held.write("pid 4242")
        held.flush()
        start = time.monotonic()
        result = subprocess.run([sys.executable, "-c", SCRIPT], env=environment(tmp_path / "ext", ZONEOUT_BUILD_WAIT_S="2"),
                                capture_output=True, text=True, timeout=120, cwd=ROOT)
        waited = time.monotonic() - start
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().startswith("FALLBACK TimeoutError: another process held the build lock")
    assert result.stderr.count("waiting for pid 4242 to finish building") == 1  # said once, naming the holder
    assert result.stderr.count("could not be built") == 1 and waited < 100
    assert not (folder / "lock").exists() and not list(folder.glob("*.so"))  # it never built beside the holder


@pytest.mark.slow
def test_a_build_killed_midway_does_not_hang_the_next_process(tmp_path):
    extensions = tmp_path / "ext"
    folder = build_dir(extensions)
    builder = subprocess.Popen([sys.executable, "-c", SCRIPT], env=environment(extensions), cwd=ROOT,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 240
    while not (folder / "lock").exists() and builder.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)  # torch's lock file appears when the compiler starts
    assert (folder / "lock").exists(), "the build never started"
    while not working_in(folder) and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(2)  # well into the compile
    assert working_in(folder), "no compiler running"
    os.kill(builder.pid, signal.SIGKILL)  # only the process that asked for the build, as `kill -9 PID` does
    builder.wait()
    deadline = time.monotonic() + 30
    while working_in(folder) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not working_in(folder), "compilers outlived the killed build"  # they would compete with the next
    assert (folder / "lock").exists()  # what used to hang every later process
    result = subprocess.run([sys.executable, "-c", SCRIPT], env=environment(extensions, ZONEOUT_BUILD_WAIT_S="600"),
                            capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "LOADED"  # the stale lock was broken and the build completed
    assert "left by a build that was killed" in result.stderr


def test_the_build_folder_differs_with_the_python_environment(monkeypatch):
    monkeypatch.setattr(sys, "prefix", "/envs/one")
    one = cpu_ext.build_name_and_flags()
    assert cpu_ext.build_name_and_flags() == one  # stable within an environment
    monkeypatch.setattr(sys, "prefix", "/envs/two")
    two = cpu_ext.build_name_and_flags()
    assert two[0] != one[0] and two[1] == one[1]
