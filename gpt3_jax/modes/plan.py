"""--mode=plan: what the configured model costs on a mesh and chip, without allocating it (gpt3_jax/planner.py)."""

from __future__ import annotations

import json
import sys

from gpt3_jax.errors import UserError


def plan_options(bundle, flags) -> dict:
  """The --plan_* flags, with defaults from the gin-configured mesh and training settings."""
  mesh = bundle.mesh.shape
  if flags.plan_mesh:
    try:
      mesh = tuple(int(x) for x in flags.plan_mesh.split(","))
    except ValueError:
      raise UserError(f"--plan_mesh={flags.plan_mesh!r} must be three integers 'data,fsdp,tensor'") from None
  return dict(mesh_shape=mesh, num_devices=flags.plan_devices, chip=flags.plan_chip,
              global_batch=flags.plan_batch or bundle.train.global_batch_size,
              seq_len=flags.plan_seq_len or bundle.train.seq_len,
              num_microbatches=flags.plan_microbatches or bundle.train.num_microbatches,
              mfu=flags.plan_mfu, chip_memory_gb=flags.plan_chip_memory_gb, compile=flags.plan_compile,
              optimizer=bundle.optimizer, topology=flags.plan_topology)


def run(bundle, flags) -> None:
  from gpt3_jax import planner
  report = planner.plan_report(bundle.model, **plan_options(bundle, flags))
  print(json.dumps(report) if flags.json else planner.format_report(report))
  failed = report.get("compiled", {}).get("failed")
  if failed:  # the report is printed (the analytic plan stands); the exit status says the compile did not
    print(f"error: the training step did not compile: {failed}", file=sys.stderr)
    sys.exit(1)
