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
flags.DEFINE_integer("steps", 5, "Timed steps (after three warm-up steps); the median is reported.")
flags.DEFINE_bool("retain_host_memory", True, "Keep freed host memory mapped (gpt3_jax.parallel.host_memory).")
flags.DEFINE_string("dtype", None, "Override ModelConfig.dtype (float32 / bfloat16).")
flags.DEFINE_string("remat", None, "Override ModelConfig.remat_policy.")
flags.DEFINE_string("attention_impl", None, "Override ModelConfig.attention_impl.")
flags.DEFINE_bool("json", False, "Print one JSON object instead of a table.")
FLAGS = flags.FLAGS


def model_config_from_flags():
  """The model config of --gin_file / --gin_bindings with the --dtype / --remat / --attention_impl overrides."""
  from gpt3_jax import configs

  bindings = list(FLAGS.gin_bindings)
  for name, value in (("dtype", FLAGS.dtype), ("remat_policy", FLAGS.remat), ("attention_impl",
                                                                               FLAGS.attention_impl)):
    if value:
      bindings.append(f"ModelConfig.{name} = '{value}'")
  return configs.parse_and_build(FLAGS.gin_file, bindings).model


def compiled_train_step(model_cfg, *, seq_len: int, batch_size: int, num_batches: int):
  """The real jitted train step (donated state, all devices on the data axis) compiled for random-token batches.

  Returns (compiled step, initial state, num_batches device batches, learning rate, compile seconds).
  """
  import jax
  import numpy as np

  from gpt3_jax.parallel import mesh as mesh_lib
  from gpt3_jax.training import assembly
  from gpt3_jax.training import optimizer as opt_lib

  asm = assembly.assemble(model_cfg, opt_lib.OptimizerConfig(), mesh_lib.make_mesh(mesh_lib.MeshConfig(shape=(-1, 1, 1))),
                          seq_len=seq_len)
  lr = np.float32(1e-4)
  rng = np.random.default_rng(0)
  with asm.activate():
    state = asm.fresh_state(seed=0)
    batches = [asm.place_batch(rng.integers(0, model_cfg.vocab_size, (batch_size, seq_len + 1)).astype(np.int32))
               for _ in range(num_batches)]
    start = time.perf_counter()
    compiled = asm.compile_train_step(batch_size)
    return compiled, state, batches, lr, time.perf_counter() - start


def masked_attention_share(model_cfg, seq_len: int):
  """Share of the PaLM-formula model FLOPs that are attention products of fully masked key blocks, which the
  block-sparse xla attention does not compute (the formula counts every (query, key) pair, as PaLM does).
  None for the cudnn / splash kernels, which skip masked tiles of their own sizes."""
  from gpt3_jax.model.attention import model_pairs_computed
  from gpt3_jax.model.config import flops_per_token

  if model_cfg.attention_impl != "xla":
    return None
  skipped = model_cfg.n_layers * seq_len * seq_len - model_pairs_computed(model_cfg, seq_len)
  return 12 * model_cfg.n_heads * model_cfg.d_head * skipped / (seq_len * flops_per_token(model_cfg, seq_len))


def benchmark(model_cfg, *, seq_len: int, batch_size: int, steps: int, warmup: int = 3) -> dict:
  import statistics

  import jax

  from gpt3_jax.model.config import flops_per_token
  from gpt3_jax.parallel import hardware, host_memory

  peak = hardware.device_peak_flops()
  compiled, state, batches, lr, compile_s = compiled_train_step(model_cfg, seq_len=seq_len, batch_size=batch_size,
                                                                num_batches=warmup + steps)
  # Warm-up steps reach the steady state (the allocator holds the step's scratch memory after a few steps).
  step_s, faults, ceilings = [], [], []
  for i, batch in enumerate(batches):
    faults_before, start = host_memory.minor_page_faults(), time.perf_counter()
    state, metrics = compiled(state, batch, lr)
    jax.block_until_ready((state, metrics))
    if i >= warmup:
      step_s.append(time.perf_counter() - start)
      faults.append(host_memory.minor_page_faults() - faults_before)
      if peak is None:  # CPU: sample the matmul ceiling next to each step, so both see the same machine
        ceilings.append(hardware.measure_matmul_flops(n=2048))
  memory = compiled.memory_analysis()
  flops_per_step = batch_size * seq_len * flops_per_token(model_cfg, seq_len)
  median_s = statistics.median(step_s)
  result = {
      "backend": jax.default_backend(), "device_kind": jax.devices()[0].device_kind, "devices": jax.device_count(),
      "cpu": hardware.cpu_model(),
      "params": sum(x.size for x in jax.tree.leaves(state.params)), "dtype": model_cfg.compute_dtype,
      "seq_len": seq_len, "batch_size": batch_size, "compile_s": compile_s, "step_s": median_s,
      "step_s_min": min(step_s), "tokens_s": batch_size * seq_len / median_s,
      "model_tflops_s": flops_per_step / median_s / 1e12, "loss": float(metrics["loss"]),
      "temp_bytes": getattr(memory, "temp_size_in_bytes", None),
      "state_bytes": sum(x.nbytes for x in jax.tree.leaves(state)),  # params + optimizer state (LoRA: adapters')
      "trained_params": sum(x.size for x in jax.tree.leaves(state.opt_state)) // 2,  # Adam's two moments each
      "page_faults_per_step": int(statistics.median(faults)),
      "masked_attention_share": masked_attention_share(model_cfg, seq_len),
  }
  if peak is not None:
    result["mfu"] = flops_per_step / median_s / (peak * jax.device_count())
  else:
    # Each step against the matmul measured right after it; the median of those ratios is robust to the
    # machine's speed drifting during the run (a shared VM's neighbours).
    ratios = [flops_per_step / s / c for s, c in zip(step_s, ceilings)]
    result["matmul_ceiling_tflops_s"] = statistics.median(ceilings) / 1e12
    result["fraction_of_matmul_ceiling"] = statistics.median(ratios)
    result["fraction_range"] = f"{min(ratios):.3f}-{max(ratios):.3f}"
  return result


def main(argv):
  del argv
  from gpt3_jax.parallel import host_memory

  retained = FLAGS.retain_host_memory and host_memory.retain_freed_memory()  # before JAX starts its threads
  result = benchmark(model_config_from_flags(), seq_len=FLAGS.seq_len, batch_size=FLAGS.batch_size, steps=FLAGS.steps)
  result["retained_host_memory"] = retained
  if FLAGS.json:
    print(json.dumps(result))
    return
  for key, value in result.items():
    print(f"{key:>28}: {value:.4g}" if isinstance(value, float) else f"{key:>28}: {value}")


if __name__ == "__main__":
  sys.path.insert(0, ".")
  app.run(main)
