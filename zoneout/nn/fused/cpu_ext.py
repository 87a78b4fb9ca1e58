"""Build (once, cached) and load the C++ CPU kernels; None when they cannot be built.

torch.utils.cpp_extension.load compiles cpu_kernels.cpp with the system C++ compiler and ninja
into TORCH_EXTENSIONS_DIR (default ~/.cache/torch_extensions) and reuses the build while the
source and flags are unchanged. The module name carries the CPU's vector ISA, because the code is
compiled for it (AVX512 / AVX2 via ATen's Vectorized, whose exp/tanh are libtorch's Sleef), so a
cache shared between different machines never loads code the CPU cannot run.
Set ZONEOUT_FUSED_CPP=0 to skip the build and use the pure-PyTorch kernels.
"""
from __future__ import annotations

import hashlib
import logging
import os
import time
from pathlib import Path

import torch

SOURCE = Path(__file__).with_name("cpu_kernels.cpp")
_ISA_FLAGS = {
    "AVX512": ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mavx2", "-mfma"],
    "AVX2": ["-mavx2", "-mfma"],
}
_log = logging.getLogger(__name__)
_state: dict = {}  # "module": the loaded module or None, "error": why not, "build_seconds"


def _isa() -> str:
    try:
        capability = torch.backends.cpu.get_cpu_capability()
    except Exception:  # older torch or exotic platform: build portable scalar code
        return "DEFAULT"
    return capability if capability in _ISA_FLAGS else "DEFAULT"


def load(verbose: bool = False):
    """The compiled module, or None (with the reason in `error()`) if disabled or it fails to build."""
    if "module" in _state:
        return _state["module"]
    if os.environ.get("ZONEOUT_FUSED_CPP", "1") == "0":
        _state.update(module=None, error="disabled by ZONEOUT_FUSED_CPP=0")
        return None
    isa = _isa()
    flags = ["-O3", "-fopenmp", f"-DCPU_CAPABILITY={isa}", f"-DCPU_CAPABILITY_{isa}", *_ISA_FLAGS.get(isa, [])]
    digest = hashlib.sha1((SOURCE.read_text() + " ".join(flags) + torch.__version__).encode()).hexdigest()[:10]
    start = time.perf_counter()
    try:
        from torch.utils import cpp_extension

        module = cpp_extension.load(name=f"zoneout_fused_cpu_{isa.lower()}_{digest}", sources=[str(SOURCE)],
                                    extra_cflags=flags, extra_ldflags=["-fopenmp"], verbose=verbose)
    except Exception as error:  # no compiler, no ninja, no headers: the PyTorch kernels still work
        _log.warning("zoneout fused CPU kernels could not be built (%s); using the pure-PyTorch path",
                     str(error).splitlines()[0] if str(error) else type(error).__name__)
        _state.update(module=None, error=f"{type(error).__name__}: {error}")
        return None
    _state.update(module=module, error=None, build_seconds=time.perf_counter() - start)
    return module


def error() -> str | None:
    return _state.get("error")


def load_seconds() -> float | None:
    """Wall time of the first load in this process (the full build on a cold cache)."""
    return _state.get("build_seconds")
