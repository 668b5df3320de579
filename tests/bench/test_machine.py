"""The machine probe of `tscm bench`: its fields and their format (no timing assertions)."""

from __future__ import annotations

import json

from tscm import machine as machine_module
from tscm.bench.machine import MachineProfile, gflops_fraction, probe_machine
from tscm.machine import ISA_FLAGS


def test_probe_reports_every_field_with_positive_numbers():
    profile = probe_machine(1, matmul_size=128, copy_mb=4, repeats=2)
    assert isinstance(profile, MachineProfile)
    assert profile.cpu_model and isinstance(profile.cpu_model, str)
    assert profile.logical_cpus >= 1 and profile.threads == 1 and profile.matmul_size == 128 and profile.copy_mb == 4
    assert isinstance(profile.isa_flags, list) and all(flag in ISA_FLAGS for flag in profile.isa_flags)
    assert profile.torch_cpu_capability
    for name in ("fp32_gflops", "fp32_gflops_median", "copy_gb_s", "copy_gb_s_median", "copy_gb_s_1thread",
                 "copy_gb_s_1thread_median"):
        assert getattr(profile, name) > 0, name
    assert profile.fp32_gflops >= profile.fp32_gflops_median  # best-of is never below the median
    assert profile.copy_gb_s_1thread >= profile.copy_gb_s_1thread_median
    assert isinstance(profile.load_average, list) and all(value >= 0 for value in profile.load_average)
    as_json = json.loads(json.dumps(profile.to_json()))
    assert MachineProfile(**as_json) == profile  # what bench.json holds rebuilds the profile
    line = profile.line()
    assert line.startswith("machine: ") and profile.cpu_model in line and "GFLOP/s" in line and "GB/s" in line


def test_isa_flags_and_model_come_from_cpuinfo(monkeypatch):
    text = "processor\t: 0\nmodel name\t: Example CPU 9000\nflags\t\t: fpu sse4_2 avx avx2 fma avx512f avx512_vnni amx_int8 foo\n"
    monkeypatch.setattr(machine_module, "_cpuinfo", lambda: text)
    assert machine_module.cpu_model() == "Example CPU 9000"
    assert machine_module.isa_flags() == ["sse4_2", "avx", "fma", "avx2", "avx512f", "avx512_vnni", "amx_int8"]
    monkeypatch.setattr(machine_module, "_cpuinfo", lambda: "")
    assert machine_module.isa_flags() == [] and machine_module.cpu_model()


def test_gflops_fraction():
    assert gflops_fraction(1e9, 0.02, 200.0) == 0.5  # 2 GFLOP in 20 ms = 100 GFLOP/s, half of 200
