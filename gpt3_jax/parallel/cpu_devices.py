"""One XLA:CPU device per core: data parallelism inside one CPU process (`python -m gpt3_jax.main --cpu_devices`).

XLA:CPU runs each batched matmul of the attention core on one thread: on the 2-core development machine a
[64, 128, 32] x [64, 32, 256] product took the same time with Eigen's multi-threading off (2.9 ms, where PyTorch's
bmm on 2 threads took 1.6 ms). Large matmuls do use every core. Asked for one CPU device per core
(`--xla_force_host_platform_device_count`), XLA runs the step's data-parallel shards concurrently, each on its own
core, so the small products run in parallel too. The same run then keeps one replica of the parameters and
optimizer state per device and all-reduces the gradients between them in memory. Measured against PyTorch on
that machine (README's Benchmarks, peer_benchmark.py --cpu_devices=2): tiny.gin's shape went from 0.95-0.97x to
1.04x, the quickstart's from 1.24-1.27x to 1.34x, GPT-2 124M's from 1.06x to 1.12x; the 0.8M shape stayed at 1.4x.

The count must reach XLA before JAX starts its CPU backend (the first computation), so `main` applies it first.
It changes nothing on a GPU or TPU run, whose devices are the accelerators. The global batch must be a multiple of
the device count, as on any data-parallel mesh (a one-line error says so otherwise).
"""

from __future__ import annotations

import os
import re
from typing import MutableMapping, Optional

FLAG = "--xla_force_host_platform_device_count"
_SET = re.compile(re.escape(FLAG) + r"=(\d+)")


def cores() -> int:
  """The cores this process may run on (its CPU affinity), else the machine's."""
  try:
    return len(os.sched_getaffinity(0))
  except AttributeError:  # not Linux
    return os.cpu_count() or 1


def parse(value: str, batch: Optional[int] = None) -> int:
  """'auto' or a positive integer -> the device count; anything else is a one-line error. 'auto' is one device per
  core, or the most that divide `batch` (each device takes an equal share of every batch)."""
  if value == "auto":
    n = cores()
    return max(d for d in range(1, n + 1) if not batch or batch % d == 0)
  try:
    count = int(value)
  except ValueError:
    count = 0
  if count < 1:
    raise ValueError(f"--cpu_devices={value!r} must be a positive integer or 'auto' (one per core), e.g. "
                     f"--cpu_devices={cores()}")
  return count


def request(value: str, batch: Optional[int] = None, environ: Optional[MutableMapping[str, str]] = None) -> int:
  """Asks XLA:CPU for `value` devices ('auto' or a count, see `parse`) through XLA_FLAGS, before JAX's backend
  starts; returns the count. An XLA_FLAGS that already sets a different count (say the mesh tests' 8 forced
  devices) is a conflict and a one-line error."""
  environ = os.environ if environ is None else environ
  count = parse(value, batch)
  flags = environ.get("XLA_FLAGS", "")
  if match := _SET.search(flags):
    if int(match.group(1)) != count:
      raise ValueError(f"--cpu_devices={value} ({count}) conflicts with XLA_FLAGS' {match.group(0)}; set one of them")
    return count
  if count > 1:
    environ["XLA_FLAGS"] = f"{flags} {FLAG}={count}".strip()
  return count
