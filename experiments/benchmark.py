r"""Train-step benchmark: compile time, step time, tokens/s and MFU for a model config on the current backend.

  python experiments/benchmark.py --gin_file=gin_configs/models/small.gin --seq_len=256 --batch_size=4

On CPU it also measures a large float32 matmul in the same run and reports the step's FLOP/s as a fraction of
it (the practical ceiling of this machine); on accelerators MFU is against the chip's datasheet peak.
Synthetic token batches (random ids): throughput does not depend on the data.
"""

from __future__ import annotations

import json
import sys
import time

from absl import app, flags

flags.DEFINE_multi_string("gin_file", ["gin_configs/models/small.gin"], "Model gin files.")
flags.DEFINE_multi_string("gin_bindings", [], "Extra gin bindings.")
flags.DEFINE_integer("seq_len", 256, "Sequence length (<= n_ctx).")
flags.DEFINE_integer("batch_size", 4, "Global batch size (sequences).")
flags.DEFINE_integer("steps", 5, "Timed steps (after one warm-up step).")
flags.DEFINE_string("dtype", None, "Override ModelConfig.dtype (float32 / bfloat16).")
flags.DEFINE_string("remat", None, "Override ModelConfig.remat_policy.")
flags.DEFINE_string("attention_impl", None, "Override ModelConfig.attention_impl.")
flags.DEFINE_bool("json", False, "Print one JSON object instead of a table.")
FLAGS = flags.FLAGS


def benchmark(model_cfg, *, seq_len: int, batch_size: int, steps: int) -> dict:
  import jax
  import numpy as np

  from gpt3_jax.model.config import flops_per_token
  from gpt3_jax.parallel import hardware
  from gpt3_jax.parallel import mesh as mesh_lib
  from gpt3_jax.training import optimizer as opt_lib
  from gpt3_jax.training import train_state, train_step

  mesh = mesh_lib.make_mesh(mesh_lib.MeshConfig(shape=(-1, 1, 1)))
  tx = opt_lib.make_optimizer(opt_lib.OptimizerConfig())
  lr = np.float32(1e-4)
  rng = np.random.default_rng(0)
  batches = [rng.integers(0, model_cfg.vocab_size, (batch_size, seq_len + 1)).astype(np.int32)
             for _ in range(steps + 1)]
  with mesh_lib.activate(mesh):
    state, shardings = train_state.create_state(model_cfg, tx, mesh, seed=0)
    step = train_step.jit_train_step(train_step.make_train_step(model_cfg, tx), shardings, mesh)
    batch_sharding = mesh_lib.batch_sharding(mesh)
    device_batches = [jax.device_put(b, batch_sharding) for b in batches]
    t0 = time.perf_counter()
    compiled = step.lower(state, device_batches[0], lr).compile()
    compile_s = time.perf_counter() - t0
    state, metrics = compiled(state, device_batches[0], lr)  # warm-up
    jax.block_until_ready(metrics)
    t0 = time.perf_counter()
    for b in device_batches[1:]:
      state, metrics = compiled(state, b, lr)
    jax.block_until_ready((state, metrics))
    step_s = (time.perf_counter() - t0) / steps
  memory = compiled.memory_analysis()
  tokens_s = batch_size * seq_len / step_s
  model_flops_s = tokens_s * flops_per_token(model_cfg, seq_len)
  result = {
      "backend": jax.default_backend(), "device_kind": jax.devices()[0].device_kind, "devices": jax.device_count(),
      "params": sum(x.size for x in jax.tree.leaves(state.params)), "dtype": model_cfg.dtype,
      "seq_len": seq_len, "batch_size": batch_size, "compile_s": compile_s, "step_s": step_s, "tokens_s": tokens_s,
      "model_tflops_s": model_flops_s / 1e12, "loss": float(metrics["loss"]),
      "temp_bytes": getattr(memory, "temp_size_in_bytes", None),
  }
  peak = hardware.device_peak_flops()
  if peak is not None:
    result["mfu"] = model_flops_s / (peak * jax.device_count())
  else:
    ceiling = hardware.measure_matmul_flops(n=2048)
    result["matmul_ceiling_tflops_s"] = ceiling / 1e12
    result["fraction_of_matmul_ceiling"] = model_flops_s / ceiling
  return result


def main(argv):
  del argv
  from gpt3_jax import configs

  bindings = list(FLAGS.gin_bindings)
  for name, value in (("dtype", FLAGS.dtype), ("remat_policy", FLAGS.remat), ("attention_impl",
                                                                               FLAGS.attention_impl)):
    if value:
      bindings.append(f"ModelConfig.{name} = '{value}'")
  model_cfg = configs.parse_and_build(FLAGS.gin_file, bindings).model
  result = benchmark(model_cfg, seq_len=FLAGS.seq_len, batch_size=FLAGS.batch_size, steps=FLAGS.steps)
  if FLAGS.json:
    print(json.dumps(result))
    return
  for key, value in result.items():
    print(f"{key:>28}: {value:.4g}" if isinstance(value, float) else f"{key:>28}: {value}")


if __name__ == "__main__":
  sys.path.insert(0, ".")
  app.run(main)
