"""What /proc/cpuinfo says about this CPU: its model name (run summaries, benchmark reports) and its
vendor (the fused kernels' measured per-vendor GEMM choice, zoneout/nn/fused/cpu_gemm.py)."""
from __future__ import annotations

import functools
from pathlib import Path


@functools.lru_cache(maxsize=None)
def _fields() -> dict[str, str]:
    """The first processor's fields; empty without /proc/cpuinfo (not Linux)."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return {}
    fields: dict[str, str] = {}
    for line in lines:
        key, sep, value = line.partition(":")
        if sep:
            fields.setdefault(key.strip(), value.strip())
    return fields


def cpu_model() -> str | None:
    """e.g. 'AMD EPYC' or 'Intel(R) Xeon(R) Processor'; None where /proc/cpuinfo does not say."""
    return _fields().get("model name")


def cpu_vendor() -> str:
    """'amd', 'intel' or 'cpu' (anything else, or no /proc/cpuinfo), from vendor_id."""
    return {"AuthenticAMD": "amd", "GenuineIntel": "intel"}.get(_fields().get("vendor_id", ""), "cpu")


def cpu_flags() -> set[str]:
    """The instruction-set flags (e.g. 'avx2', 'avx512_bf16'); empty without /proc/cpuinfo."""
    return set(_fields().get("flags", "").split())


def cpu_description() -> str:
    """Model name with family/model numbers, e.g. 'AMD EPYC, family 25 model 1' (names alone can hide
    the generation: a virtualised 'AMD EPYC' may be Zen 3 or Zen 4)."""
    fields = _fields()
    name = fields.get("model name", "unknown CPU")
    if "cpu family" in fields and "model" in fields:
        return f"{name}, family {fields['cpu family']} model {fields['model']}"
    return name
