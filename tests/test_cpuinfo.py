"""What the benchmark reports and the per-vendor GEMM choice read from /proc/cpuinfo."""
from zoneout import cpuinfo

ZEN3 = {"vendor_id": "AuthenticAMD", "cpu family": "25", "model": "1", "model name": "AMD EPYC",
        "flags": "fpu sse avx avx2 fma"}


def test_fields_of_a_zen3_epyc(monkeypatch):
    monkeypatch.setattr(cpuinfo, "_fields", lambda: ZEN3)
    assert cpuinfo.cpu_model() == "AMD EPYC"
    assert cpuinfo.cpu_vendor() == "amd"
    assert cpuinfo.cpu_description() == "AMD EPYC, family 25 model 1"
    assert "avx2" in cpuinfo.cpu_flags() and "avx512_bf16" not in cpuinfo.cpu_flags()


def test_no_proc_cpuinfo(monkeypatch):
    monkeypatch.setattr(cpuinfo, "_fields", lambda: {})
    assert cpuinfo.cpu_model() is None
    assert cpuinfo.cpu_vendor() == "cpu"
    assert cpuinfo.cpu_description() == "unknown CPU"
    assert cpuinfo.cpu_flags() == set()


def test_this_machine_reads_without_error():
    assert isinstance(cpuinfo.cpu_description(), str)
    assert isinstance(cpuinfo.cpu_flags(), set)


def test_run_summaries_name_the_cpu_generation_not_only_its_brand(monkeypatch):
    import torch

    from zoneout import train

    monkeypatch.setattr(cpuinfo, "_fields", lambda: ZEN3)
    threads = torch.get_num_threads()
    assert train.describe_device(torch.device("cpu")) == f"cpu (AMD EPYC, family 25 model 1, {threads} threads)"
    monkeypatch.setattr(cpuinfo, "_fields", lambda: {})
    assert train.describe_device(torch.device("cpu")) == f"cpu ({threads} threads)"
