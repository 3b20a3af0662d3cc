"""Several sweep workers on one machine (`SweepConfig.workers = N`), each with its share of the devices.

The command starts N copies of itself (with workers = 1) on the same study and waits for them:
  - CPU: the cores this process may run on are split into N contiguous groups, and each worker is pinned to its
    group (sched_setaffinity; XLA:CPU sizes its thread pools by the cores it may use);
  - NVIDIA GPUs: the visible GPUs (CUDA_VISIBLE_DEVICES, else `nvidia-smi -L`) are dealt round-robin, at least one
    per worker.
Nothing here initializes a JAX backend in the launching process, so it holds no device memory.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from typing import Dict, List, Optional, Sequence


def _gpus() -> List[str]:
  visible = os.environ.get("CUDA_VISIBLE_DEVICES")
  if visible is not None:
    return [d for d in visible.split(",") if d.strip()]
  if "cpu" in os.environ.get("JAX_PLATFORMS", "").split(",") or not shutil.which("nvidia-smi"):
    return []
  listed = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, check=False).stdout
  return [str(i) for i, line in enumerate(listed.splitlines()) if line.startswith("GPU ")]


def shares(n: int) -> List[Dict[str, object]]:
  """Per worker: {'cpus': [...]} or {'gpus': [...]}."""
  gpus = _gpus()
  if gpus:
    if len(gpus) < n:
      raise ValueError(f"SweepConfig.workers={n} but {len(gpus)} GPUs are visible; use at most {len(gpus)}")
    return [{"gpus": gpus[i::n]} for i in range(n)]
  cpus = sorted(os.sched_getaffinity(0))
  if len(cpus) < n:
    raise ValueError(f"SweepConfig.workers={n} but this process may use {len(cpus)} CPU cores; use at most "
                     f"{len(cpus)}")
  size = len(cpus) // n
  return [{"cpus": cpus[i * size:(i + 1) * size] if i < n - 1 else cpus[i * size:]} for i in range(n)]


def describe(share: Dict[str, object]) -> str:
  return ", ".join(f"{k} {','.join(map(str, v))}" for k, v in share.items())


def run_workers(n: int, argv: Optional[Sequence[str]] = None) -> int:
  """Starts n workers (this command with SweepConfig.workers = 1) and waits; returns the first non-zero exit
  status, or 0."""
  argv = list(sys.argv if argv is None else argv)
  procs = []
  for i, share in enumerate(shares(n)):
    env = dict(os.environ, GPT3_JAX_SWEEP_WORKER=f"{i} of {n}: {describe(share)}")
    if "gpus" in share:
      env["CUDA_VISIBLE_DEVICES"] = ",".join(share["gpus"])
    cpus = share.get("cpus")
    preexec = (lambda c=cpus: os.sched_setaffinity(0, c)) if cpus else None
    print(f"sweep worker {i} of {n}: {describe(share)}", flush=True)
    procs.append(subprocess.Popen([sys.executable, "-m", "gpt3_jax.main", *argv[1:],
                                   "--gin.SweepConfig.workers=1"], env=env, preexec_fn=preexec))
  codes = [p.wait() for p in procs]
  return next((c for c in codes if c), 0)
