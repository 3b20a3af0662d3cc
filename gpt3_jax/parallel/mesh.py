"""The device mesh (data, fsdp, tensor) and the one table mapping logical axis names to mesh axes."""

from __future__ import annotations

import contextlib
import dataclasses
import math
from typing import Any, Sequence, Tuple

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

MESH_AXES = ("data", "fsdp", "tensor")

# The single source of truth for sharding. Parameters: FSDP shards the embed dimension (ZeRO-3 style, gathered
# per layer inside the scan); tensor parallelism splits heads, the MLP hidden dimension and the vocabulary
# (Megatron). Activations: batch over data x fsdp, the head / MLP dimensions over tensor.
LOGICAL_AXIS_RULES: Tuple[Tuple[str, Any], ...] = (
    # parameters
    ("vocab", "tensor"),
    ("embed", "fsdp"),
    ("heads", "tensor"),
    ("mlp", "tensor"),
    ("kv", None),
    ("qkv", None),
    ("position", None),
    ("layers", None),
    # activations
    ("act_batch", ("data", "fsdp")),
    ("act_length", None),
    ("act_embed", None),
    ("act_heads", "tensor"),
    ("act_kv", None),
    ("act_mlp", "tensor"),
    ("act_vocab", "tensor"),
)


@dataclasses.dataclass(frozen=True)
class MeshConfig:
  """Mesh shape over (data, fsdp, tensor); one entry may be -1 to take the remaining devices."""

  shape: Tuple[int, int, int] = (-1, 1, 1)


def resolve_mesh_shape(shape: Sequence[int], num_devices: int) -> Tuple[int, ...]:
  """Fills a single -1 with the remaining devices; fails with one line when the shape cannot match."""
  shape = tuple(int(s) for s in shape)
  if len(shape) != len(MESH_AXES):
    raise ValueError(f"mesh shape {shape} must have {len(MESH_AXES)} entries for axes {MESH_AXES}")
  if shape.count(-1) > 1 or any(s == 0 or s < -1 for s in shape):
    raise ValueError(f"mesh shape {shape}: use positive sizes and at most one -1")
  known = math.prod(s for s in shape if s != -1)
  if -1 in shape:
    if num_devices % known:
      raise ValueError(f"mesh shape {shape} does not divide the {num_devices} available devices; "
                       f"choose sizes whose product divides {num_devices}")
    shape = tuple(num_devices // known if s == -1 else s for s in shape)
  if math.prod(shape) != num_devices:
    raise ValueError(f"mesh shape {shape} needs {math.prod(shape)} devices but {num_devices} are available; "
                     f"set MeshConfig.shape so its product is {num_devices} (or use -1)")
  return shape


def make_mesh(cfg: MeshConfig, devices: Sequence[jax.Device] | None = None) -> Mesh:
  devices = list(jax.devices() if devices is None else devices)
  shape = resolve_mesh_shape(cfg.shape, len(devices))
  try:
    from jax.experimental import mesh_utils
    grid = mesh_utils.create_device_mesh(shape, devices=devices)
  except Exception:  # topology helpers refuse some device sets (e.g. forced CPU devices); fall back to order
    grid = np.asarray(devices).reshape(shape)
  return Mesh(grid, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES))


def data_parallel_size(mesh: Mesh) -> int:
  return mesh.shape["data"] * mesh.shape["fsdp"]


def logical_to_sharding(logical_specs: Any, mesh: Mesh, rules=LOGICAL_AXIS_RULES) -> Any:
  """Maps a tree of logical PartitionSpecs to NamedShardings; an axis name with no rule is an error."""
  known = {name for name, _ in rules}

  def check(spec):
    for name in spec:
      names = name if isinstance(name, tuple) else (name,)
      for n in names:
        if n is not None and n not in known:
          raise ValueError(f"logical axis {n!r} has no rule in LOGICAL_AXIS_RULES; add one in "
                           f"gpt3_jax/parallel/mesh.py")
    return spec

  jax.tree.map(check, logical_specs, is_leaf=lambda x: isinstance(x, P))
  return nn.logical_to_mesh_sharding(logical_specs, mesh, rules)


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Token batches [B, T]: rows over data x fsdp."""
  return NamedSharding(mesh, P(("data", "fsdp"), None))


@contextlib.contextmanager
def activate(mesh: Mesh, rules=LOGICAL_AXIS_RULES):
  """Mesh + logical rules in context, so the model's logical sharding constraints bind to mesh axes."""
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    yield
