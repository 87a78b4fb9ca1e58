"""Build (once, cached) and load the C++ CPU kernels; None when they cannot be built.

Two extensions share this machinery: the fused kernels (`FUSED`, the default of every function here:
cpu_kernels.cpp for the LSTM and cpu_hidden_kernels.cpp for the GRU and simple RNN, one module) and the
recurrent-BN LSTM's (bn_cpu_kernels.cpp, `BN_LSTM`); all include cpu_common.h.
torch.utils.cpp_extension.load compiles an extension with the system C++ compiler and ninja
into TORCH_EXTENSIONS_DIR (default ~/.cache/torch_extensions) and reuses the build while the
source and flags are unchanged. The module name carries the CPU's vector ISA, because the code is
compiled for it (AVX512 / AVX2 via ATen's Vectorized, whose exp/tanh are libtorch's Sleef), so a
cache shared between different machines never loads code the CPU cannot run.
Set ZONEOUT_FUSED_CPP=0 to skip the builds (both extensions) and use the pure-PyTorch kernels.

A build killed midway (Ctrl-C, kill -9, a cluster time limit) must never hang later runs: torch's own
build lock is a plain file that outlives a killed builder, and every later process would wait on it
forever. So we build in our own folder under an OS lock (flock), which the kernel releases when its
holder dies: whoever holds it is the only builder, so a torch lock file found there is stale and is
removed. A process that waits for another's build says so once and, after ZONEOUT_BUILD_WAIT_S
seconds (default 600), falls back to the PyTorch-op kernels with one warning.

A first-use build says so once on stderr (what, where, that it takes minutes). On Linux it runs in a
child process (cpu_build.py) that kills its compilers when the process that asked for the build dies,
even by kill -9, so no orphaned compiler competes with the next build. The build name also carries the
Python environment (sys.prefix), so two venvs with the same torch never rebuild over each other.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

_HERE = Path(__file__).parent
# The script the build child runs (tests point it at a fake build).
BUILDER = _HERE / "cpu_build.py"


@dataclass(frozen=True)
class Extension:
    """One C++ extension: its module-name prefix, the sources it compiles into one module and the headers
    they include (all hashed into the build name), and what to call it in messages."""
    prefix: str
    sources: tuple[Path, ...]
    headers: tuple[Path, ...]
    what: str


FUSED = Extension("zoneout_fused_cpu", (_HERE / "cpu_kernels.cpp", _HERE / "cpu_hidden_kernels.cpp",
                                        _HERE / "cpu_masks.cpp"),
                  (_HERE / "cpu_common.h",), "fused CPU kernels")
BN_LSTM = Extension("zoneout_bn_lstm_cpu", (_HERE / "bn_cpu_kernels.cpp",), (_HERE / "cpu_common.h",),
                    "recurrent-BN LSTM CPU kernels")
_ISA_FLAGS = {
    "AVX512": ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mavx2", "-mfma"],
    "AVX2": ["-mavx2", "-mfma"],
}
_log = logging.getLogger(__name__)
# Extension prefix -> {"module": the loaded module or None, "error": why not, "build_seconds"}.
_state: dict = {}


def _isa() -> str:
    try:
        capability = torch.backends.cpu.get_cpu_capability()
    except Exception:  # older torch or exotic platform: build portable scalar code
        return "DEFAULT"
    return capability if capability in _ISA_FLAGS else "DEFAULT"


def build_name_and_flags(extension: Extension = FUSED) -> tuple[str, list[str]]:
    """The extension's name (ISA + a digest of sources, flags, torch version and Python environment) and
    compiler flags."""
    isa = _isa()
    flags = ["-O3", "-fopenmp", f"-DCPU_CAPABILITY={isa}", f"-DCPU_CAPABILITY_{isa}", *_ISA_FLAGS.get(isa, [])]
    texts = [path.read_text() for path in (*extension.sources, *extension.headers)]
    # Each environment builds against its own headers and paths: sharing a folder rebuilds on every switch.
    environment = os.path.realpath(sys.prefix)
    digest = hashlib.sha1(("".join(texts) + " ".join(flags) + torch.__version__ + environment).encode()).hexdigest()[:10]
    return f"{extension.prefix}_{isa.lower()}_{digest}", flags


def load(verbose: bool = False, extension: Extension = FUSED):
    """The compiled module, or None (with the reason in `error()`) if disabled or it fails to build."""
    state = _state.setdefault(extension.prefix, {})
    if "module" in state:
        return state["module"]
    if os.environ.get("ZONEOUT_FUSED_CPP", "1") == "0":
        state.update(module=None, error="disabled by ZONEOUT_FUSED_CPP=0")
        return None
    name, flags = build_name_and_flags(extension)
    build_dir = build_root() / name
    start = time.perf_counter()
    try:
        from torch.utils import cpp_extension

        _put_ninja_on_path()
        request = dict(name=name, sources=[str(path) for path in extension.sources], extra_cflags=flags,
                       extra_ldflags=["-fopenmp"], build_directory=str(build_dir), verbose=verbose)
        with exclusive_build(build_dir, extension.what) as lock:
            if not lock:
                raise TimeoutError(f"another process held the build lock of {build_dir} for {wait_seconds():g} s "
                                   "(ZONEOUT_BUILD_WAIT_S)")
            if not built(build_dir, name):
                cpp_extension.verify_ninja_availability()  # before announcing a build that cannot start
                print(f"zoneout: building the {extension.what} on first use in {build_dir}; this takes a few "
                      "minutes on 1-2 cores, later runs reuse it", file=sys.stderr, flush=True)
                if sys.platform.startswith("linux") and lock is not True:
                    build_in_child(request, build_dir, lock)
            module = cpp_extension.load(**request)  # after the child's build: only checks it and imports it
    except Exception as error:  # no compiler, no ninja, no headers, a build that never ends: PyTorch kernels
        _log.warning("zoneout %s could not be built (%s); using the pure-PyTorch path", extension.what,
                     str(error).splitlines()[0] if str(error) else type(error).__name__)
        state.update(module=None, error=f"{type(error).__name__}: {error}")
        return None
    state.update(module=module, error=None, build_seconds=time.perf_counter() - start)
    return module


def built(build_dir: Path, name: str) -> bool:
    """The library is there and ninja logged it as done (a link killed midway leaves a partial file)."""
    log = build_dir / ".ninja_log"
    done = log.read_text(errors="replace") if log.exists() else ""
    return any((build_dir / f"{name}{suffix}").exists() and f"\t{name}{suffix}\t" in done for suffix in (".so", ".pyd"))


def _put_ninja_on_path() -> None:
    """torch looks for ninja on PATH; the pip package's binary is not there when the venv is not activated."""
    if shutil.which("ninja"):
        return
    try:
        import ninja
    except ImportError:
        return
    os.environ["PATH"] = os.pathsep.join(filter(None, (os.environ.get("PATH"), getattr(ninja, "BIN_DIR", ""))))


def build_in_child(request: dict, build_dir: Path, lock) -> None:
    """Run cpp_extension.load(**request) in BUILDER, a child that holds the build lock with us and kills its
    compilers if we die; raise with the build's last log line if it fails. Its own process group keeps a
    terminal's Ctrl-C for us; our session keeps it in our scheduling group (a new session would get a
    fresh autogroup, and with it none of a prioritised caller's CPU share)."""
    log = build_dir / "build.log"
    with open(log, "w") as output:
        child = subprocess.Popen([sys.executable, str(BUILDER), str(os.getpid()), json.dumps(request)],
                                 stdin=subprocess.DEVNULL, stdout=None if request.get("verbose") else output,
                                 stderr=output, preexec_fn=os.setpgrp, pass_fds=(lock.fileno(),))
        try:
            status = child.wait()
        finally:
            if child.poll() is None:  # Ctrl-C or an error here: the child kills its compilers on SIGTERM
                child.send_signal(signal.SIGTERM)
                child.wait()
    if status != 0:
        lines = log.read_text(errors="replace").strip().splitlines()
        raise RuntimeError(f"{lines[-1] if lines else f'the build exited with status {status}'} (log: {log})")


def build_root() -> Path:
    """Where the builds live: a zoneout folder beside torch's own extension builds."""
    root = os.environ.get("TORCH_EXTENSIONS_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "torch_extensions")
    return Path(root) / "zoneout"


def wait_seconds() -> float:
    return float(os.environ.get("ZONEOUT_BUILD_WAIT_S", "600"))


@contextlib.contextmanager
def exclusive_build(build_dir: Path, what: str = FUSED.what):
    """Hold build_dir's OS lock (yields its open file, which a build child may share), or yield None after
    wait_seconds() of waiting. Without fcntl (Windows) it yields True and relies on torch's own lock."""
    build_dir.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:
        yield True
        return
    with open(build_dir / "zoneout.lock", "a+") as handle:
        deadline, told = time.monotonic() + wait_seconds(), False
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    yield None
                    return
                if not told:
                    handle.seek(0)
                    owner = handle.read().strip() or "another process"
                    print(f"zoneout: waiting for {owner} to finish building the {what} in {build_dir} "
                          f"(at most {wait_seconds():g} s, ZONEOUT_BUILD_WAIT_S)", file=sys.stderr, flush=True)
                    told = True
                time.sleep(0.5)
        try:
            handle.seek(0)
            handle.truncate()
            handle.write(f"pid {os.getpid()}")
            handle.flush()
            stale = build_dir / "lock"  # torch's lock: only a flock holder builds here, so it is left by a dead one
            if stale.exists():
                _log.warning("zoneout: removing %s, left by a build that was killed", stale)
                stale.unlink()
            yield handle
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def error(extension: Extension = FUSED) -> str | None:
    return _state.get(extension.prefix, {}).get("error")


def load_seconds(extension: Extension = FUSED) -> float | None:
    """Wall time of the first load in this process (the full build on a cold cache)."""
    return _state.get(extension.prefix, {}).get("build_seconds")
