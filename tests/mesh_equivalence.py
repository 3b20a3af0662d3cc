"""Run inside a process with 8 forced CPU devices: trains 3 steps of a tiny model on several meshes (and with
gradient accumulation) and prints JSON with the losses and every parameter's per-device shard shape."""

import json
import sys

import jax
import numpy as np

from gpt3_jax.model.config import ModelConfig
from gpt3_jax.parallel import mesh as mesh_lib
from gpt3_jax.training import optimizer as opt_lib
from gpt3_jax.training import assembly

CFG = ModelConfig(vocab_size=500, n_ctx=32, d_model=64, n_layers=2, n_heads=4, d_head=16,
                  attention_pattern="alternating", local_window=8, attention_block=8)  # 4 query blocks
BATCH = 8
MESHES = {"single": (1, 1, 1), "dp": (8, 1, 1), "fsdp": (1, 8, 1), "tp": (1, 1, 4), "dp_fsdp": (2, 4, 1),
          "dp_tp": (2, 1, 4), "fsdp_tp": (1, 2, 4)}


def run(shape, microbatches=1, steps=3, lrs=(1e-2,) * 3):
  n = int(np.prod(shape))
  mesh = mesh_lib.make_mesh(mesh_lib.MeshConfig(shape=shape), devices=jax.devices()[:n])
  asm = assembly.assemble(CFG, opt_lib.OptimizerConfig(), mesh, seq_len=CFG.n_ctx, num_microbatches=microbatches)
  rng = np.random.default_rng(0)
  batches = [rng.integers(0, CFG.vocab_size, (BATCH, CFG.n_ctx + 1)).astype(np.int32) for _ in range(steps)]
  with asm.activate():
    state = asm.fresh_state(seed=0)
    losses = []
    for batch, lr in zip(batches, lrs):
      state, metrics = asm.train_step(state, batch, np.float32(lr))
      losses.append(float(metrics["loss"]))
  shards = {jax.tree_util.keystr(path): list(leaf.addressable_shards[0].data.shape)
            for path, leaf in jax.tree_util.tree_leaves_with_path(state.params)}
  return {"losses": losses, "shards": shards}


if __name__ == "__main__":
  out = {name: run(shape) for name, shape in MESHES.items()}
  out["single_accum4"] = run((1, 1, 1), microbatches=4)
  out["dp_accum4"] = run((2, 1, 1), microbatches=4)
  # Deliberate bugs the comparison must catch: a lost update (step 2's learning rate 0) and every update 1% off.
  out["single_lost_update"] = run((1, 1, 1), lrs=(1e-2, 0.0, 1e-2))
  out["single_update_1pct_off"] = run((1, 1, 1), lrs=(1.01e-2,) * 3)
  json.dump(out, sys.stdout)
