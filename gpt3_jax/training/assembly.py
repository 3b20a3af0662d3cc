"""One assembled run: from the config dataclasses to the mesh, optimizer, shardings, abstract state and the jitted
train and eval steps. The trainer, the planner's compile check, the benchmarks and the mesh tests all build their
steps here; nothing else puts these pieces together.

  asm = assembly.assemble(model_cfg, opt_cfg, mesh_lib.make_mesh(mesh_cfg), seq_len=256)
  with asm.activate():
    state = asm.fresh_state(seed=0)               # or asm.state_from_params(params) for a fine-tune
    step = asm.compile_train_step(batch_size=8)   # XLA-compiled, state donated
    state, metrics = step(state, asm.place_batch(rows), np.float32(lr))
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh

from gpt3_jax.model import lora
from gpt3_jax.model.config import ModelConfig
from gpt3_jax.parallel import mesh as mesh_lib
from gpt3_jax.training import optimizer as optimizer_lib
from gpt3_jax.training import train_state as state_lib
from gpt3_jax.training import train_step as step_lib


@dataclasses.dataclass(frozen=True)
class Assembly:
  """Everything a step needs, built once. `train_step(state, batch, lr)` and `eval_step(params, batch)` are jitted
  with the named shardings; batches are int32 [rows, seq_len + 1] split over data x fsdp."""

  model: ModelConfig
  mesh: Mesh
  tx: optax.GradientTransformationExtraArgs
  seq_len: int
  shardings: state_lib.TrainState
  abstract_state: state_lib.TrainState
  train_step: Any
  eval_step: Any

  def activate(self):
    """The mesh and logical-axis rules that tracing and running the steps need."""
    return mesh_lib.activate(self.mesh)

  def batch_spec(self, batch_size: int) -> jax.ShapeDtypeStruct:
    return jax.ShapeDtypeStruct((batch_size, self.seq_len + 1), np.int32, sharding=mesh_lib.batch_sharding(self.mesh))

  def compile_train_step(self, batch_size: int):
    """The train step compiled ahead of time for global batches of `batch_size` rows."""
    lr = jax.ShapeDtypeStruct((), np.float32, sharding=mesh_lib.replicated(self.mesh))
    return self.train_step.lower(self.abstract_state, self.batch_spec(batch_size), lr).compile()

  def place_batch(self, local_rows: np.ndarray) -> jax.Array:
    """A global batch from this process's rows of it."""
    return jax.make_array_from_process_local_data(mesh_lib.batch_sharding(self.mesh), local_rows)

  def fresh_state(self, seed: int) -> state_lib.TrainState:
    """Initial parameters from `seed`, created directly in their shardings."""
    return state_lib.create_state(self.model, self.tx, self.mesh, seed, self.shardings)[0]

  def state_from_params(self, params: Any) -> state_lib.TrainState:
    """These parameters (host arrays, e.g. from `workdir.load_model`), a fresh optimizer state and step 0."""
    expected = self.abstract_state.params
    if self.model.lora_rank or self.model.class_labels:
      fresh = state_lib.host_params(self.model, seed=0)
      # A LoRA run from a plain model: its adapters start fresh (B = 0: the model is the base).
      params = lora.add_missing_adapters(params, fresh) if self.model.lora_rank else params
      if self.model.class_labels and "score" not in params:  # a classifier from a language model: a fresh head
        params = {**params, "score": fresh["score"]}
    check_param_shapes(params, expected)

    placed = jax.tree.map(lambda value, spec: mesh_lib.place(value, spec.sharding, spec.dtype), params, expected)
    init = jax.jit(lambda p: state_lib.TrainState(step=jnp.zeros((), jnp.int32), params=p,
                                                  opt_state=self.tx.init(p)), out_shardings=self.shardings)
    return init(placed)


def check_param_shapes(params: Any, expected: Any) -> None:
  """Raises a one-line ValueError naming the first parameter whose presence or shape differs."""
  got = {jax.tree_util.keystr(p): np.shape(v) for p, v in jax.tree_util.tree_leaves_with_path(params)}
  want = {jax.tree_util.keystr(p): tuple(v.shape) for p, v in jax.tree_util.tree_leaves_with_path(expected)}
  for name in sorted(set(got) | set(want)):
    if name not in got or name not in want:
      where = "the initial parameters" if name not in got else "this run's model"
      raise ValueError(f"parameter {name} is missing from {where}; the model configs differ (check ModelConfig "
                       f"against the checkpoint's)")
    if tuple(got[name]) != want[name]:
      raise ValueError(f"parameter {name} has shape {tuple(got[name])} in the initial parameters but "
                       f"{want[name]} in this run's model; match the ModelConfig to the checkpoint's")


def assemble(model_cfg: ModelConfig, opt_cfg: optimizer_lib.OptimizerConfig, mesh: Mesh, *, seq_len: int,
             num_microbatches: int = 1) -> Assembly:
  opt_cfg = optimizer_lib.for_model(opt_cfg, model_cfg)  # LoRA trains the adapters only
  tx = optimizer_lib.make_optimizer(opt_cfg)
  with mesh_lib.activate(mesh):
    shardings = state_lib.state_shardings(model_cfg, tx, mesh)
    abstract = state_lib.with_shardings(state_lib.state_shapes(model_cfg, tx), shardings)
  stop = functools.partial(optimizer_lib.stop_frozen_gradients, opt_cfg)
  step = step_lib.jit_train_step(step_lib.make_train_step(model_cfg, tx, num_microbatches, stop), shardings, mesh)
  eval_step = step_lib.make_eval_step(model_cfg, shardings, mesh)
  return Assembly(model=model_cfg, mesh=mesh, tx=tx, seq_len=seq_len, shardings=shardings, abstract_state=abstract,
                  train_step=step, eval_step=eval_step)
