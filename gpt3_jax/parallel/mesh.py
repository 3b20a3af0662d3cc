"""The device mesh (data, fsdp, tensor) and the one table mapping logical axis names to mesh axes."""

from __future__ import annotations

import collections
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
  """Mesh shape over (data, fsdp, tensor); one entry may be -1 to take the remaining devices.

  Hybrid (ICI x DCN) meshes: with `dcn_shape` != (1, 1, 1), `shape` is the mesh INSIDE one granule (a TPU slice,
  or one process / GPU node: fast interconnect) and `dcn_shape` arranges the granules (slow network); the mesh
  is their element-wise product, e.g. shape (1, 16, 8) x dcn_shape (4, 1, 1) = (4, 16, 8) puts only the data
  axis across 4 nodes. Each may hold one -1: in `shape` it takes the devices of one granule, in `dcn_shape`
  the granules.
  """

  shape: Tuple[int, int, int] = (-1, 1, 1)
  dcn_shape: Tuple[int, int, int] = (1, 1, 1)


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


def resolve_hybrid_shape(shape: Sequence[int], dcn_shape: Sequence[int], num_devices: int,
                         num_granules: int) -> Tuple[Tuple[int, ...], Tuple[int, ...]]:
  """(ici shape, dcn shape) with -1 filled: dcn over the granules, ici over the devices of one granule."""
  if num_granules <= 0 or num_devices % num_granules:
    raise ValueError(f"{num_devices} devices do not split evenly into {num_granules} slices / nodes; every "
                     f"slice must have the same number of devices for a hybrid mesh")
  try:
    dcn = resolve_mesh_shape(dcn_shape, num_granules)
  except ValueError as e:
    raise ValueError(f"MeshConfig.dcn_shape: {e} (here a 'device' is a slice / node: {num_granules} found)") \
        from None
  try:
    ici = resolve_mesh_shape(shape, num_devices // num_granules)
  except ValueError as e:
    raise ValueError(f"MeshConfig.shape (per slice / node with a dcn_shape): {e}") from None
  return ici, dcn


def _slices_are_granules(device: jax.Device) -> bool:
  # Only TPUs have meaningful slices; multi-process CPU / GPU runtimes may report slice_index 0 everywhere.
  return device.platform == "tpu" and getattr(device, "slice_index", None) is not None


def granule_key(device: jax.Device) -> int:
  """The DCN unit of a device: its slice on TPU, else its process (one process per GPU node)."""
  return device.slice_index if _slices_are_granules(device) else device.process_index


def hybrid_device_grid(devices: Sequence[jax.Device], ici: Sequence[int], dcn: Sequence[int],
                       key=granule_key) -> np.ndarray:
  """Device grid of shape ici * dcn: granule g (sorted by key) fills block g of the dcn grid (row-major), its
  devices in their listed order inside the block. The same layout as mesh_utils.create_hybrid_device_mesh,
  without its topology optimization (used where that refuses the devices, e.g. CPU processes)."""
  groups = {}
  for d in devices:
    groups.setdefault(key(d), []).append(d)
  blocks = np.asarray([groups[k] for k in sorted(groups)], dtype=object)
  n = len(MESH_AXES)
  grid = blocks.reshape(tuple(dcn) + tuple(ici))
  order = [i for pair in zip(range(n), range(n, 2 * n)) for i in pair]  # d0, i0, d1, i1, ...
  return grid.transpose(order).reshape(tuple(a * b for a, b in zip(dcn, ici)))


def make_mesh(cfg: MeshConfig, devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A Mesh over (data, fsdp, tensor) with Auto axes; hybrid ICI x DCN when cfg.dcn_shape != (1, 1, 1).

  The hybrid path calls mesh_utils.create_hybrid_device_mesh (topology-aware on TPU slices, and on GPU nodes
  with one process per node); where it refuses the devices it falls back to `hybrid_device_grid`."""
  from jax.experimental import mesh_utils
  devices = list(jax.devices() if devices is None else devices)
  if tuple(cfg.dcn_shape) != (1,) * len(MESH_AXES):
    sizes = collections.Counter(granule_key(d) for d in devices)
    num_granules = len(sizes)
    if len(set(sizes.values())) > 1:
      raise ValueError(f"slices / nodes have different device counts {dict(sizes)}; a hybrid mesh needs equal ones")
    ici, dcn = resolve_hybrid_shape(cfg.shape, cfg.dcn_shape, len(devices), num_granules)
    try:
      grid = mesh_utils.create_hybrid_device_mesh(
          ici, dcn, devices=devices, process_is_granule=not _slices_are_granules(devices[0]))
    except Exception:  # e.g. forced CPU devices: no physical topology to optimize for
      grid = hybrid_device_grid(devices, ici, dcn)
    return Mesh(grid, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES))
  shape = resolve_mesh_shape(cfg.shape, len(devices))
  try:
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


def place(value: Any, sharding: NamedSharding, dtype=None) -> jax.Array:
  """`value` as a global array in `sharding`: an array already there is kept, one on this process's devices is
  moved, and a host value (which every process holds in full, e.g. a loaded checkpoint) is cut into its shards."""
  if isinstance(value, jax.Array) and value.sharding == sharding and (dtype is None or value.dtype == dtype):
    return value
  if isinstance(value, jax.Array) and value.is_fully_addressable:
    return jax.device_put(value if dtype is None else value.astype(dtype), sharding)
  host = np.asarray(value, dtype)
  return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Token batches [B, T]: rows over data x fsdp."""
  return NamedSharding(mesh, P(("data", "fsdp"), None))


@contextlib.contextmanager
def activate(mesh: Mesh, rules=LOGICAL_AXIS_RULES):
  """Mesh + logical rules in context, so the model's logical sharding constraints bind to mesh axes."""
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    yield
