"""gpt3_jax.parallel.hardware: the CPU name the benchmarks print beside their ratios."""

import platform

from gpt3_jax.parallel import hardware


def test_cpu_model_reads_the_model_name_line(tmp_path):
  cpuinfo = tmp_path / "cpuinfo"
  cpuinfo.write_text("processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC 7B13\nflags\t\t: avx2\n"
                     "processor\t: 1\nmodel name\t: AMD EPYC 7B13\n")
  assert hardware.cpu_model(str(cpuinfo)) == "AMD EPYC 7B13"


def test_cpu_model_without_cpuinfo_falls_back_to_platform(tmp_path, monkeypatch):
  monkeypatch.setattr(platform, "processor", lambda: "Apple M3")
  monkeypatch.setattr(platform, "machine", lambda: "arm64")
  assert hardware.cpu_model(str(tmp_path / "missing")) == "Apple M3"
  monkeypatch.setattr(platform, "processor", lambda: "")
  assert hardware.cpu_model(str(tmp_path / "missing")) == "arm64"


def test_host_line_names_the_date_the_core_count_and_the_cpu(monkeypatch):
  monkeypatch.setattr(hardware, "cpu_model", lambda: "AMD EPYC 7B13")
  monkeypatch.setattr(hardware.os, "cpu_count", lambda: 2)
  monkeypatch.setattr(hardware.time, "strftime", lambda fmt: "2026-12-06" if fmt == "%Y-%m-%d" else fmt)
  assert hardware.host_line() == "2026-12-06, 2 CPUs (AMD EPYC 7B13)"
