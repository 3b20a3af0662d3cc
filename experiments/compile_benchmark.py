r"""Compile time of the train step against depth: with the scanned layer stack it should not grow with n_layers.

  python experiments/compile_benchmark.py                      # 12 vs 96 layers, d_model 128, scanned
  python experiments/compile_benchmark.py --layers=12,24 --unrolled   # also scan_layers=False, for contrast

The step (forward, backward, AdamW update) is lowered and compiled ahead of time from ShapeDtypeStructs on the
default backend (nothing is allocated). A 2-layer compile runs first, unreported, to warm JAX up; each config is
compiled --repeats times (fresh jit objects, so nothing is cached) and the fastest time is reported.
"""

from __future__ import annotations

import time

from absl import app, flags

flags.DEFINE_list("layers", ["12", "96"], "Depths to compile (even numbers: alternating attention).")
flags.DEFINE_integer("d_model", 128, "Residual width.")
flags.DEFINE_integer("n_heads", 4, "Heads (d_head = d_model / n_heads).")
flags.DEFINE_integer("seq_len", 128, "Sequence length (= n_ctx).")
flags.DEFINE_integer("batch_size", 8, "Global batch (sequences).")
flags.DEFINE_string("remat", "none", "ModelConfig.remat_policy.")
flags.DEFINE_integer("repeats", 2, "Compiles per config, interleaved over depths; the fastest is reported.")
flags.DEFINE_integer("local_window", 32, "Band width of the local layers (GPT-3 Small: 256).")
flags.DEFINE_integer("attention_block", 128, "ModelConfig.attention_block (0: one masked block per layer).")
flags.DEFINE_bool("unrolled", False, "Also compile with scan_layers=False (time grows with depth).")
FLAGS = flags.FLAGS


def compile_seconds(cfg, batch_size: int) -> tuple[float, float]:
  """(lowering seconds, compile seconds) of the jitted train step for `cfg` on all local devices."""
  import jax
  import numpy as np

  from gpt3_jax.parallel import mesh as mesh_lib
  from gpt3_jax.training import assembly
  from gpt3_jax.training import optimizer as opt_lib

  mesh = mesh_lib.make_mesh(mesh_lib.MeshConfig(shape=(-1, 1, 1)))
  asm = assembly.assemble(cfg, opt_lib.OptimizerConfig(), mesh, seq_len=cfg.n_ctx)
  with asm.activate():
    lr = jax.ShapeDtypeStruct((), np.float32, sharding=mesh_lib.replicated(mesh))
    start = time.perf_counter()
    lowered = asm.train_step.lower(asm.abstract_state, asm.batch_spec(batch_size), lr)
    mid = time.perf_counter()
    lowered.compile()
    end = time.perf_counter()
  return mid - start, end - mid


def main(argv) -> None:
  del argv
  import jax

  from gpt3_jax.model.config import ModelConfig

  def config(n_layers: int, scan: bool) -> ModelConfig:
    return ModelConfig(vocab_size=512, n_ctx=FLAGS.seq_len, d_model=FLAGS.d_model, n_layers=n_layers,
                       n_heads=FLAGS.n_heads, d_head=FLAGS.d_model // FLAGS.n_heads, local_window=FLAGS.local_window,
                       attention_block=FLAGS.attention_block,
                       attention_pattern="alternating", remat_policy=FLAGS.remat, scan_layers=scan)

  compile_seconds(config(2, True), FLAGS.batch_size)  # warm-up
  depths = [int(x) for x in FLAGS.layers]
  best = {}
  for _ in range(FLAGS.repeats):  # interleaved, so load from other processes hits every depth alike
    for scan in ([True, False] if FLAGS.unrolled else [True]):
      for n in depths:
        lower_s, compile_s = compile_seconds(config(n, scan), FLAGS.batch_size)
        if (n, scan) not in best or lower_s + compile_s < sum(best[n, scan]):
          best[n, scan] = (lower_s, compile_s)
  rows = [(n, scan, *times) for (n, scan), times in best.items()]
  print(f"backend {jax.default_backend()} x {jax.device_count()}, d_model {FLAGS.d_model}, seq {FLAGS.seq_len}, "
        f"batch {FLAGS.batch_size}, remat {FLAGS.remat}")
  print("| n_layers | layer stack | lower (s) | compile (s) | lower + compile (s) |")
  print("|---:|---|---:|---:|---:|")
  for n, scan, lower_s, compile_s in rows:
    print(f"| {n} | {'scan' if scan else 'unrolled'} | {lower_s:.2f} | {compile_s:.2f} | {lower_s + compile_s:.2f} |")
  for scan in sorted({r[1] for r in rows}, reverse=True):
    total = {n: lo + co for n, s, lo, co in rows if s == scan}
    first, last = depths[0], depths[-1]
    print(f"{'scan' if scan else 'unrolled'}: {last} / {first} layers compile-time ratio "
          f"{total[last] / total[first]:.2f}")


if __name__ == "__main__":
  app.run(main)
