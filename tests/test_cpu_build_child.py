"""The first-use build of the C++ CPU kernels: announced once, and (Linux) run in a child whose compilers die
with the process that asked for the build, even on kill -9.
A fake builder stands in for the compiler (a `sleep` that ninja-like starts in a process group of its own)."""
from __future__ import annotations

import contextlib
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
linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the build child is Linux-only")
# Runs cpu_build.main with a fake build: FAKE_BUILD=fail raises, FAKE_BUILD=hang starts a ninja-like child
# that starts a compiler-like `sleep` in a session of its own, writes their pids ("builder PID" lines), and waits.
FAKE_BUILDER = f"""
import os, subprocess, sys
sys.path.insert(0, {str(ROOT / "zoneout" / "nn" / "csrc")!r})
import cpu_build

NINJA = '''
import subprocess, sys
compiler = subprocess.Popen(["sleep", "300"], start_new_session=True)
with open(sys.argv[1], "a") as pids:
    pids.write(f"compiler {{compiler.pid}}\\\\n")
compiler.wait()
'''

def build(request):
    if os.environ["FAKE_BUILD"] == "fail":
        raise RuntimeError("no compiler here\\nsecond line")
    ninja = subprocess.Popen([sys.executable, "-c", NINJA, os.environ["PIDS"]])
    with open(os.environ["PIDS"], "a") as pids:
        pids.write(f"builder {{os.getpid()}}\\nninja {{ninja.pid}}\\n")
    ninja.wait()

sys.exit(cpu_build.main(build))
"""
# The process that asks for the build: argv builder, source.
PARENT = """
import sys
from pathlib import Path
from zoneout.nn.csrc import cpu_ext
cpu_ext.BUILDER = Path(sys.argv[1])
print(cpu_ext.load(extension=cpu_ext.Extension("fake_ext", (Path(sys.argv[2]),), (), "fake kernels")))
"""


@pytest.fixture
def fake(tmp_path, monkeypatch):
    """A one-source fake extension built into tmp_path/ext by the fake builder."""
    (tmp_path / "fake.cpp").write_text("// fake\n")
    (tmp_path / "builder.py").write_text(FAKE_BUILDER)
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path / "ext"))
    monkeypatch.setenv("PIDS", str(tmp_path / "pids"))
    monkeypatch.setattr(cpu_ext, "BUILDER", tmp_path / "builder.py")
    monkeypatch.setattr(cpu_ext, "_state", {})
    return cpu_ext.Extension("fake_ext", (tmp_path / "fake.cpp",), (), "fake kernels")


def dead(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] == "Z"
    except FileNotFoundError:
        return True


def test_a_first_use_build_is_announced_once(fake, monkeypatch, capsys):
    from torch.utils import cpp_extension

    name = cpu_ext.build_name_and_flags(fake)[0]
    folder = cpu_ext.build_root() / name
    builds = []

    def build_in_child(request, build_dir, lock):
        builds.append(build_dir)
        (build_dir / f"{name}.so").write_text("")
        (build_dir / ".ninja_log").write_text(f"# ninja log v7\n1\t2\t3\t{name}.so\tabc\n")
    monkeypatch.setattr(cpu_ext, "build_in_child", build_in_child)
    monkeypatch.setattr(cpp_extension, "load", lambda **request: "module")
    assert cpu_ext.load(extension=fake) == "module" and cpu_ext.load(extension=fake) == "module"
    monkeypatch.setattr(cpu_ext, "_state", {})  # a later process: the build is there
    assert cpu_ext.load(extension=fake) == "module"
    stderr = capsys.readouterr().err
    assert stderr.count("zoneout: building") == 1 and builds == [folder]
    assert f"building the fake kernels on first use in {folder}" in stderr and "few minutes" in stderr


@linux_only
def test_a_failed_child_build_falls_back_with_its_error(fake, monkeypatch):
    monkeypatch.setenv("FAKE_BUILD", "fail")
    assert cpu_ext.load(extension=fake) is None
    assert "RuntimeError: no compiler here (log: " in cpu_ext.error(fake)
    assert "second line" in (cpu_ext.build_root() / cpu_ext.build_name_and_flags(fake)[0] / "build.log").read_text()


@linux_only
def test_a_sigkilled_build_leaves_no_compiler_running(fake, tmp_path):
    pids_file = tmp_path / "pids"
    env = {**os.environ, "FAKE_BUILD": "hang", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    with open(tmp_path / "parent.err", "w") as err:
        parent = subprocess.Popen([sys.executable, "-c", PARENT, str(tmp_path / "builder.py"), str(tmp_path / "fake.cpp")],
                                  env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=err)
    deadline = time.monotonic() + 120
    while (not pids_file.exists() or len(pids_file.read_text().split()) < 6) and time.monotonic() < deadline:
        assert parent.poll() is None, (tmp_path / "parent.err").read_text()
        time.sleep(0.1)
    pids = dict(line.split() for line in pids_file.read_text().splitlines())
    builder, ninja, compiler = (int(pids[what]) for what in ("builder", "ninja", "compiler"))
    assert not any(dead(pid) for pid in (builder, ninja, compiler))
    assert os.getpgid(compiler) not in (os.getpgid(builder), os.getpgid(parent.pid))  # as ninja starts compilers
    os.kill(parent.pid, signal.SIGKILL)  # only the parent, as `kill -9 PID` does
    parent.wait()
    deadline = time.monotonic() + 20
    while not all(dead(pid) for pid in (builder, ninja, compiler)) and time.monotonic() < deadline:
        time.sleep(0.1)
    try:
        assert all(dead(pid) for pid in (builder, ninja, compiler)), "the build outlived its parent"
    finally:
        for pid in (compiler, ninja, builder):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    folder = cpu_ext.build_root() / cpu_ext.build_name_and_flags(fake)[0]
    with open(folder / "zoneout.lock", "a+") as lock:  # and the next process may build at once
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    assert (tmp_path / "parent.err").read_text().count("zoneout: building the fake kernels") == 1


def test_the_pip_ninja_is_found_without_an_activated_venv(monkeypatch):
    monkeypatch.setattr(cpu_ext.shutil, "which", lambda name: None)
    monkeypatch.setitem(sys.modules, "ninja", type(sys)("ninja"))
    monkeypatch.setattr(sys.modules["ninja"], "BIN_DIR", "/venv/bin", raising=False)
    monkeypatch.setenv("PATH", "/usr/bin")
    cpu_ext._put_ninja_on_path()
    assert os.environ["PATH"] == os.pathsep.join(("/usr/bin", "/venv/bin"))  # last: it never shadows a system ninja
