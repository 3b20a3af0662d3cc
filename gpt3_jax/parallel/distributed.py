"""Multi-process (multi-host) start-up: `jax.distributed.initialize` from explicit flags or the cluster.

Call `initialize` once, before any other JAX call (before the first `jax.devices()`):

* explicit: `coordinator_address`, `num_processes` and `process_id` all given (e.g. `--coordinator_address=
  10.0.0.1:1234 --num_processes=2 --process_id=0` on every host, process ids 0..n-1);
* automatic: none given, and the environment is a multi-process cluster that JAX can read by itself (a
  multi-host Cloud TPU slice or multislice, a SLURM job with more than one task, an Open MPI job with more than
  one rank): `jax.distributed.initialize()` with no arguments, which reads the cluster's variables;
* otherwise a plain single process (nothing is called).

After it, `jax.devices()` lists every process's devices and `jax.local_devices()` this process's.
"""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Mapping, Optional, Sequence

import jax

from gpt3_jax.parallel import peer_watchdog


@dataclasses.dataclass(frozen=True)
class DistributedInfo:
  """How the run was started: `mode` is 'explicit', 'auto:<cluster>' or 'single'."""

  mode: str
  process_id: int
  num_processes: int


def _count(value: Optional[str]) -> int:
  try:
    return int(value) if value else 0
  except ValueError:
    return 0


def _hosts(value: Optional[str]) -> int:
  return len([h for h in (value or "").split(",") if h.strip()])


def detect_cluster(environ: Mapping[str, str] = os.environ) -> Optional[str]:
  """Name of a multi-process cluster JAX can initialize from its environment ('tpu', 'slurm', 'ompi'), or None.

  Only multi-process jobs count: a single SLURM task or MPI rank, or a one-host TPU VM, is a plain process.
  (Google Cloud TPU VMs that expose their workers only through the metadata server are not seen here: pass the
  explicit flags there, or set TPU_WORKER_HOSTNAMES as GKE does.)
  """
  if (_hosts(environ.get("TPU_WORKER_HOSTNAMES")) > 1 or _hosts(environ.get("TPU_PROCESS_ADDRESSES")) > 1
      or _count(environ.get("MEGASCALE_NUM_SLICES")) > 1):
    return "tpu"
  if "SLURM_JOB_ID" in environ and _count(environ.get("SLURM_NTASKS")) > 1:
    return "slurm"
  if _count(environ.get("OMPI_COMM_WORLD_SIZE")) > 1:
    return "ompi"
  return None


def check_flags(coordinator_address: Optional[str], num_processes: Optional[int],
                process_id: Optional[int]) -> bool:
  """True when the explicit flags are all given, False when none are; ValueError (one line) otherwise."""
  given = {"coordinator_address": coordinator_address, "num_processes": num_processes, "process_id": process_id}
  missing = [name for name, value in given.items() if value is None]
  if len(missing) == 3:
    return False
  if missing:
    raise ValueError(f"distributed flags are all-or-none: missing --{', --'.join(missing)} (give "
                     f"--coordinator_address=HOST:PORT, --num_processes=N and --process_id=I on every process)")
  host, _, port = coordinator_address.rpartition(":")
  if not host or not port.isdigit():
    raise ValueError(f"--coordinator_address={coordinator_address!r} must be HOST:PORT, e.g. 10.0.0.1:1234")
  if num_processes < 1:
    raise ValueError(f"--num_processes must be at least 1, got {num_processes}")
  if not 0 <= process_id < num_processes:
    raise ValueError(f"--process_id={process_id} must be in [0, {num_processes}) for --num_processes="
                     f"{num_processes}")
  return True


def initialize(coordinator_address: Optional[str] = None, num_processes: Optional[int] = None,
               process_id: Optional[int] = None, local_device_ids: Optional[Sequence[int]] = None,
               environ: Mapping[str, str] = os.environ, peer_timeout_s: float = 60.0) -> DistributedInfo:
  """Starts JAX's distributed runtime when there is more than one process (see the module docstring), and the
  peer watchdog: a lost process is reported in one line within `peer_timeout_s` (`peer_watchdog`)."""
  explicit = check_flags(coordinator_address, num_processes, process_id)
  if not peer_timeout_s > 0:
    raise ValueError(f"--peer_timeout_s must be positive, got {peer_timeout_s}; e.g. --peer_timeout_s=60")
  ids = list(local_device_ids) if local_device_ids else None
  if jax.distributed.is_initialized():
    return DistributedInfo("already", jax.process_index(), jax.process_count())
  # The coordination service's own heartbeat is the backstop, after the watchdog had its chance to report. It
  # declares a task dead between half its timeout and its timeout after the task's last heartbeat, so 4x ours
  # leaves the watchdog (timeout plus a polling interval) a margin of about the timeout itself.
  heartbeat = max(10, int(math.ceil(4 * peer_timeout_s)))
  if explicit:
    jax.distributed.initialize(coordinator_address=coordinator_address, num_processes=num_processes,
                               process_id=process_id, local_device_ids=ids, heartbeat_timeout_seconds=heartbeat)
    peer_watchdog.start(peer_timeout_s)
    return DistributedInfo("explicit", process_id, num_processes)
  cluster = detect_cluster(environ)
  if cluster is not None:
    jax.distributed.initialize(local_device_ids=ids, heartbeat_timeout_seconds=heartbeat)
    peer_watchdog.start(peer_timeout_s)
    return DistributedInfo(f"auto:{cluster}", jax.process_index(), jax.process_count())
  if ids is not None:
    raise ValueError("--local_device_ids only applies to a multi-process run; also give the distributed flags")
  return DistributedInfo("single", 0, 1)
