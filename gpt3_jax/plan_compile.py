"""XLA's own numbers for a plan: the real train step lowered and compiled ahead of time from ShapeDtypeStructs,
nothing allocated. Two targets:

  --plan_compile             math.prod(mesh) forced CPU devices (any mesh up to MAX_COMPILE_DEVICES);
  --plan_topology=v5e:2x2    abstract TPU chips of that slice from libtpu (`pip install 'gpt3_jax[tpu]'`), on a
                             CPU-only host: the TPU compiler's per-chip memory, with splash attention's kernels.

Each compile runs in a subprocess (`python -m gpt3_jax.plan_compile REQUEST`), so the device set can be chosen.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
import os
import re
import subprocess
import sys
import time
from typing import Any, Dict, Optional, Sequence, Tuple

from gpt3_jax.model.config import ModelConfig

MAX_COMPILE_DEVICES = 64  # --plan_compile simulates the mesh with this many forced CPU devices at most
TOPOLOGY_CHIPS = ("v4", "v5e", "v5p", "v6e")  # TPU generations the planner has memory and peak figures for
_TOPOLOGY = re.compile(r"^(v4|v5e|v5p|v6e):(\d+)x(\d+)(?:x(\d+))?$")


def parse_topology(name: str) -> Tuple[str, int]:
  """'v5p:4x4x4' -> ('v5p', 64): the chip and the number of chips; a one-line error for anything else."""
  match = _TOPOLOGY.match(name or "")
  if not match:
    raise ValueError(f"--plan_topology={name!r}: use CHIP:AxB or CHIP:AxBxC with CHIP one of {TOPOLOGY_CHIPS}, "
                     f"e.g. v5e:2x2 or v5p:4x4x4")
  dims = [int(x) for x in match.groups()[1:] if x is not None]
  return match.group(1), math.prod(dims)


def check_libtpu() -> None:
  if importlib.util.find_spec("libtpu") is None:
    raise ValueError("--plan_topology needs libtpu to compile for TPU on this host: pip install 'gpt3_jax[tpu]' "
                     "(or drop --plan_topology and use --plan_compile)")


def compile_memory(cfg: ModelConfig, mesh_shape: Sequence[int], global_batch: int, seq_len: int,
                   num_microbatches: int, topology: Optional[str] = None, timeout_s: float = 900
                   ) -> Dict[str, Any]:
  """Per-device memory_analysis() in bytes, XLA's FLOP count and the compile time; {'skipped': reason} when the
  mesh is too large to simulate, {'failed': XLA's last error line} when the compile fails."""
  n = math.prod(mesh_shape)
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  if topology:
    check_libtpu()
    env.pop("XLA_FLAGS", None)
  elif n > MAX_COMPILE_DEVICES:
    return {"skipped": f"{n} devices > {MAX_COMPILE_DEVICES}: too many to simulate on CPU"}
  else:
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={n}"
  request = {"model": dataclasses.asdict(cfg), "mesh": list(mesh_shape), "global_batch": global_batch,
             "seq_len": seq_len, "num_microbatches": num_microbatches, "topology": topology}
  out = subprocess.run([sys.executable, "-m", "gpt3_jax.plan_compile", json.dumps(request)], capture_output=True,
                       text=True, env=env, timeout=timeout_s)
  if out.returncode != 0:
    lines = [line for line in out.stderr.strip().splitlines() if line.strip()]
    errors = [line for line in lines if "Error" in line.split(":")[0]]
    return {"failed": str((errors or lines or [f"exit status {out.returncode}"])[-1])}
  return json.loads(out.stdout.strip().splitlines()[-1])


def memory_summary(compiled) -> Dict[str, int]:
  """XLA's per-device bytes of a compiled step, and its peak: arguments + outputs - aliased + temporaries."""
  m = compiled.memory_analysis()
  out = {"argument_bytes": m.argument_size_in_bytes, "output_bytes": m.output_size_in_bytes,
         "alias_bytes": m.alias_size_in_bytes, "temp_bytes": m.temp_size_in_bytes,
         "generated_code_bytes": m.generated_code_size_in_bytes}
  out["peak_bytes"] = out["argument_bytes"] + out["output_bytes"] - out["alias_bytes"] + out["temp_bytes"]
  return out


def _devices(topology: Optional[str], n: int):
  import jax
  if not topology:
    return jax.devices()
  from jax.experimental import topologies
  devices = topologies.get_topology_desc(platform="tpu", topology_name=topology).devices
  if len(devices) != n:
    raise ValueError(f"topology {topology} has {len(devices)} chips but the mesh needs {n}")
  return devices


def _compile_in_this_process(request: Dict[str, Any]) -> Dict[str, Any]:
  """The subprocess side of compile_memory: the devices are the forced CPU ones or the topology's chips."""
  from gpt3_jax.parallel import mesh as mesh_lib
  from gpt3_jax.training import assembly
  from gpt3_jax.training import optimizer as optimizer_lib
  cfg = ModelConfig(**request["model"])
  topology = request.get("topology")
  devices = _devices(topology, math.prod(request["mesh"]))
  mesh = mesh_lib.make_mesh(mesh_lib.MeshConfig(shape=tuple(request["mesh"])), devices)
  asm = assembly.assemble(cfg, optimizer_lib.OptimizerConfig(), mesh, seq_len=request["seq_len"],
                          num_microbatches=request["num_microbatches"])
  with asm.activate():
    start = time.perf_counter()
    compiled = asm.compile_train_step(request["global_batch"])
    seconds = time.perf_counter() - start
  cost = compiled.cost_analysis() or {}
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return {"devices": len(devices), "topology": topology, "compile_seconds": seconds, **memory_summary(compiled),
          "flops": float(cost.get("flops", 0.0)), "scanned": cfg.scan_layers}


if __name__ == "__main__":
  print(json.dumps(_compile_in_this_process(json.loads(sys.argv[1]))))
