"""One XLA:CPU device per core: data parallelism inside one CPU process (`python -m gpt3_jax.main --cpu_devices`).

XLA:CPU runs each batched matmul of the attention core on one thread: on the 2-core development machine a
[64, 128, 32] x [64, 32, 256] product took the same time with Eigen's multi-threading off (2.9 ms, where PyTorch's
bmm on 2 threads took 1.6 ms). Large matmuls do use every core. Asked for one CPU device per core
(`--xla_force_host_platform_device_count`), XLA runs the step's data-parallel shards concurrently, each on its own
core, so the small products run in parallel too. The same run then keeps one replica of the parameters and
optimizer state per device and all-reduces the gradients between them in memory. Measured against PyTorch on
that machine (README's Benchmarks, peer_benchmark.py --cpu_devices=2): tiny.gin's shape went from 0.95-0.97x to
1.04x, the quickstart's from 1.24-1.27x to 1.34x, GPT-2 124M's from 1.06x to 1.12x; the 0.8M shape stayed at 1.4x.

The count must reach XLA before JAX starts its CPU backend (the first computation), so `main` applies it before
anything else runs. It does not change a GPU or TPU run's devices, which are the accelerators. The global batch
must be a multiple of the data-parallel size, as on any mesh ('auto' picks a count for which it is). A batch
ramp's stages stop halving where the data-parallel size no longer divides them, so a ramped run resumes only with
the device count it started with. With several processes, each gets the count.
"""

from __future__ import annotations

import os
import re
from typing import MutableMapping, Optional, Sequence

FLAG = "--xla_force_host_platform_device_count"
_SET = re.compile(re.escape(FLAG) + r"=(\d+)")
_JAX_ENV = "JAX_NUM_CPU_DEVICES"  # jax's own setting: it takes precedence over the XLA flag


def cores() -> int:
  """The cores this process may run on (its CPU affinity), else the machine's."""
  try:
    return len(os.sched_getaffinity(0))
  except AttributeError:  # not Linux
    return os.cpu_count() or 1


def _fits(count: int, batch: Optional[int], mesh_shape: Sequence[int]) -> bool:
  """Whether `count` devices fill `mesh_shape` (one -1 allowed) with a data-parallel size dividing `batch`."""
  from gpt3_jax.parallel import mesh as mesh_lib  # imports jax; starts no backend
  try:
    data, fsdp, _ = mesh_lib.resolve_mesh_shape(mesh_shape, count)
  except ValueError:
    return False
  return not batch or batch % (data * fsdp) == 0


def parse(value: str, batch: Optional[int] = None, mesh_shape: Sequence[int] = (-1, 1, 1)) -> int:
  """'auto' or a positive integer -> the device count; anything else is a one-line error. 'auto' is one device per
  core, or the most that fill `mesh_shape` with a data-parallel size dividing `batch`."""
  if value == "auto":
    return max([d for d in range(1, cores() + 1) if _fits(d, batch, mesh_shape)], default=1)
  try:
    count = int(value)
  except ValueError:
    count = 0
  if count < 1:
    raise ValueError(f"--cpu_devices={value!r} must be a positive integer or 'auto' (one per core), e.g. "
                     f"--cpu_devices={cores()}")
  return count


def request(value: str, batch: Optional[int] = None, mesh_shape: Sequence[int] = (-1, 1, 1),
            environ: Optional[MutableMapping[str, str]] = None) -> int:
  """Asks XLA:CPU for `value` devices ('auto' or a count, see `parse`) through XLA_FLAGS, before JAX's backend
  starts; returns the count in effect. '1' (the default) changes nothing: XLA's own single device, or whatever
  XLA_FLAGS / JAX_NUM_CPU_DEVICES already ask for (the mesh tests' 8 forced devices). Any other count that differs
  from one of those is a conflict and a one-line error."""
  environ = os.environ if environ is None else environ
  flags = environ.get("XLA_FLAGS", "")
  existing = {}
  if found := _SET.findall(flags):
    existing[f"XLA_FLAGS' {FLAG}"] = int(found[-1])  # XLA takes the last occurrence
  if environ.get(_JAX_ENV):
    existing[_JAX_ENV] = int(environ[_JAX_ENV])
  if value == "1":
    return next(iter(existing.values()), 1)
  count = parse(value, batch, mesh_shape)
  for name, n in existing.items():
    if n != count:
      raise ValueError(f"--cpu_devices={value} ({count}) conflicts with {name}={n}; set one of them")
  if count > 1 and not existing:
    environ["XLA_FLAGS"] = f"{flags} {FLAG}={count}".strip()
  return count
