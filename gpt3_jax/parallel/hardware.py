"""Peak dense bf16 FLOP/s per chip (for MFU) and a measured CPU ceiling."""

from __future__ import annotations

import functools
import os
import platform
import time
from typing import Optional

import jax
import jax.numpy as jnp

# Dense bf16 peaks (../shared/REFERENCE.md). Keys are lower-case names, matched against device_kind.
PEAK_FLOPS = {
    "h200": 989e12,
    "h100": 989e12,
    "a100": 312e12,
    "tpu v4": 275e12,
    "tpu v5 lite": 197e12,  # v5e reports "TPU v5 lite"
    "tpu v5e": 197e12,
    "tpu v5p": 459e12,
    "tpu v5": 459e12,
    "tpu v6 lite": 918e12,  # v6e (Trillium)
    "tpu v6e": 918e12,
}
CHIP_NAMES = {"v4": "tpu v4", "v5e": "tpu v5e", "v5p": "tpu v5p", "v6e": "tpu v6e",
              "a100": "a100", "h100": "h100", "h200": "h200"}


def chip_platform(chip: str) -> str:
  """The JAX platform of a chip named as in CHIP_NAMES: 'tpu' or 'gpu'."""
  chip_peak_flops(chip)  # an unknown name fails here, in one line
  return "tpu" if CHIP_NAMES[chip.lower()].startswith("tpu") else "gpu"


def chip_peak_flops(chip: str) -> float:
  """Peak of a chip named as in CHIP_NAMES (v4, v5e, v5p, v6e, a100, h100, h200)."""
  key = CHIP_NAMES.get(chip.lower())
  if key is None:
    raise ValueError(f"unknown chip {chip!r}; choose one of {sorted(CHIP_NAMES)}")
  return PEAK_FLOPS[key]


def device_peak_flops(device: Optional[jax.Device] = None) -> Optional[float]:
  """Peak of a known accelerator, None for CPUs and unknown kinds."""
  device = device or jax.devices()[0]
  kind = device.device_kind.lower()
  for name in sorted(PEAK_FLOPS, key=len, reverse=True):  # most specific first
    if name in kind:
      return PEAK_FLOPS[name]
  return None


def cpu_model(cpuinfo: str = "/proc/cpuinfo") -> str:
  """The host CPU's model name (Linux's /proc/cpuinfo, else `platform`), for benchmark reports: the ratios
  between frameworks depend on the CPU (vector units, AMX), and the development machines differ by day."""
  try:
    with open(cpuinfo) as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or platform.machine()


def host_line() -> str:
  """Today's date and this host's CPUs, e.g. '2026-12-06, 2 CPUs (AMD EPYC)': a benchmark report's first words."""
  return f"{time.strftime('%Y-%m-%d')}, {os.cpu_count()} CPUs ({cpu_model()})"


def square_matmul(n: int = 2048, dtype=jnp.float32):
  """A compiled, warmed-up call that runs one n x n matmul on the default device and waits for it."""
  a = jnp.ones((n, n), dtype)
  f = jax.jit(lambda x: x @ x)
  f(a).block_until_ready()
  return lambda: f(a).block_until_ready()


def measure_matmul_flops(n: int = 2048, dtype=jnp.float32, repeats: int = 5) -> float:
  """FLOP/s of one large square matmul on the default device: the practical ceiling of a CPU."""
  matmul = square_matmul(n, dtype)
  best = float("inf")
  for _ in range(repeats):
    start = time.perf_counter()
    matmul()
    best = min(best, time.perf_counter() - start)
  return 2.0 * n ** 3 / best


def total_peak_flops(per_device: Optional[float] = None) -> float:
  """The FLOP/s that MFU is measured against: `per_device` (or the chip's datasheet peak) times the device
  count; on CPUs, one large float32 matmul measured now (the forced host devices share the same cores)."""
  per_device = per_device or device_peak_flops()
  return per_device * jax.device_count() if per_device else _measured_ceiling()


@functools.lru_cache(maxsize=None)
def _measured_ceiling() -> float:
  """The CPU ceiling for the training log's MFU, measured once per process with a 1024 matmul (0.4 s on 2 cores,
  where the benchmarks' 2048 one takes 3 s: every start paid it, every in-process sweep trial again)."""
  return measure_matmul_flops(n=1024, repeats=8)
