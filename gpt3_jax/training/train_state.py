"""The train state (step, params, optimizer state) and its sharded creation from the logical-axis rules."""

from __future__ import annotations

import functools
from typing import Any, Optional, Tuple

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, PartitionSpec

from gpt3_jax.model.config import ModelConfig
from gpt3_jax.model.transformer import GPT
from gpt3_jax.parallel import mesh as mesh_lib


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  opt_state: Any


def init_params_fn(cfg: ModelConfig):
  """rng -> boxed params (LogicallyPartitioned leaves).

  The parameters do not depend on the attention kernel, so initialization always traces the portable one: a
  kernel's shape limits (splash's 128-token query blocks) never meet the short init dummy."""
  model = GPT(cfg.replace(attention_impl="xla"))
  # The dummy is made inside the function: under eval_shape / jit it is traced, so an abstract mesh (TPU
  # topology devices on a CPU host, --plan_topology) never sees a concrete array.
  return lambda rng: model.init(rng, jnp.zeros((1, min(cfg.n_ctx, 8)), jnp.int32))["params"]


@functools.lru_cache(maxsize=16)
def _boxed_shapes(cfg: ModelConfig):
  """The params' ShapeDtypeStructs in their logical-partitioning boxes: one trace of the model's init per config
  (set-up asks for specs, shapes and shardings several times; each trace of the model costs about a second on a
  CPU)."""
  init = init_params_fn(cfg)
  return jax.eval_shape(lambda: init(jax.random.key(0)))  # the key is traced too: no device work at all


def param_logical_specs(cfg: ModelConfig):
  """Tree of logical PartitionSpecs for the params, computed without allocating anything."""
  return nn.get_partition_spec(_boxed_shapes(cfg))


def _abstract_params(cfg: ModelConfig):
  """The params' ShapeDtypeStructs (outside a trace: no sharding constraint is applied)."""
  return jax.tree.map(lambda box: box.unbox(apply_constraint=False), _boxed_shapes(cfg),
                      is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))


def param_shardings(cfg: ModelConfig, mesh: Mesh):
  """NamedShardings of the params by the rules table."""
  return mesh_lib.logical_to_sharding(param_logical_specs(cfg), mesh)


def host_params(cfg: ModelConfig, seed: int):
  """Initial params as host NumPy arrays (e.g. fresh LoRA adapters to add to a loaded base)."""
  return jax.tree.map(np.asarray, nn.unbox(init_params_fn(cfg)(jax.random.key(seed))))


def state_shardings(cfg: ModelConfig, tx: optax.GradientTransformation, mesh: Mesh) -> TrainState:
  """NamedShardings of every leaf of the TrainState: params by the rules table, optimizer moments like their
  params, scalars (step, counts) replicated."""
  param_sh = param_shardings(cfg, mesh)
  abstract_params = _abstract_params(cfg)
  abstract_opt = jax.eval_shape(tx.init, abstract_params)
  rep = mesh_lib.replicated(mesh)
  return TrainState(step=rep, params=param_sh, opt_state=opt_state_shardings(abstract_opt, abstract_params,
                                                                             param_sh, rep))


def opt_state_shardings(abstract_opt, abstract_params, param_sh, rep):
  """Each optimizer-state leaf whose tree path ends with a parameter's path and has its shape (Adam's moments,
  also inside multi_transform / masked states, as for frozen parameters) takes that parameter's sharding; the
  rest (counts, empty states) is replicated."""
  leaves = jax.tree.leaves(param_sh, is_leaf=lambda x: isinstance(x, PartitionSpec))  # NamedShardings or specs
  by_path = {tuple(str(k) for k in path): (leaf.shape, sh) for (path, leaf), sh in
             zip(jax.tree_util.tree_leaves_with_path(abstract_params), leaves)}
  depth = max(len(p) for p in by_path)

  def pick(path, leaf):
    keys = tuple(str(k) for k in path)
    for n in range(min(depth, len(keys)), 0, -1):
      match = by_path.get(keys[-n:])
      if match is not None and match[0] == leaf.shape:
        return match[1]
    return rep

  return jax.tree_util.tree_map_with_path(pick, abstract_opt)


def state_shapes(cfg: ModelConfig, tx: optax.GradientTransformation) -> TrainState:
  """ShapeDtypeStructs (no shardings) of every leaf of a fresh state, computed without allocating anything."""
  params = _abstract_params(cfg)
  return TrainState(step=jax.ShapeDtypeStruct((), jnp.int32), params=params,
                    opt_state=jax.eval_shape(tx.init, params))


def abstract_state(cfg: ModelConfig, tx: optax.GradientTransformation, mesh: Mesh) -> TrainState:
  """ShapeDtypeStructs with shardings: the restore target for checkpoints, and the planner's input."""
  return with_shardings(state_shapes(cfg, tx), state_shardings(cfg, tx, mesh))


def with_shardings(shapes: TrainState, shardings: TrainState) -> TrainState:
  return jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), shapes, shardings)


def _fresh_state(cfg: ModelConfig, tx, rng) -> TrainState:
  params = nn.unbox(init_params_fn(cfg)(rng))
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))


def create_state(cfg: ModelConfig, tx: optax.GradientTransformation, mesh: Mesh, seed: int,
                 shardings: Optional[TrainState] = None) -> Tuple[TrainState, TrainState]:
  """Initializes the state directly into its shardings (no host copy of the full model)."""
  shardings = shardings or state_shardings(cfg, tx, mesh)
  init = jax.jit(lambda r: _fresh_state(cfg, tx, r), out_shardings=shardings)
  return init(jax.random.key(seed)), shardings
