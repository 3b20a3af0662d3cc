r"""Block-sparse vs one-block xla attention: forward + backward time of one attention call.

  python experiments/attention_benchmark.py --cases=256:4,2048:1 --window=256 --block=128

For each `seq_len:batch` case and each layer kind (dense causal, local band of --window), times
jax.grad of sum(attention(q, k, v) * g) with ModelConfig.attention_block = --block against 0 (one masked block),
interleaved, and prints the medians, the speed-up and the share of (query, key) pairs computed. Both forms give
the same values (checked here to 1e-5).
"""

from __future__ import annotations

import statistics
import sys
import time

from absl import app, flags

flags.DEFINE_list("cases", ["256:4", "2048:1"], "seq_len:batch pairs.")
flags.DEFINE_integer("window", 256, "Band width of the local layer.")
flags.DEFINE_integer("block", 128, "Query block of the block-sparse form.")
flags.DEFINE_integer("heads", 12, "Attention heads.")
flags.DEFINE_integer("d_head", 64, "Head width.")
flags.DEFINE_integer("repeats", 9, "Timed calls per form (after one warm-up).")
FLAGS = flags.FLAGS


def main(argv):
  del argv
  from gpt3_jax.parallel import host_memory

  host_memory.retain_freed_memory()  # as the train step's benchmark: no page faults in the timings
  import jax
  import jax.numpy as jnp
  import numpy as np

  from gpt3_jax.model import attention

  print(f"# {jax.default_backend()}, heads {FLAGS.heads}, d_head {FLAGS.d_head}, float32, block {FLAGS.block}")
  print("| T | batch | layer | one block (ms) | block-sparse (ms) | speed-up | pairs computed |")
  print("|---:|---:|---|---:|---:|---:|---:|")
  for case in FLAGS.cases:
    t, b = (int(x) for x in case.split(":"))
    q, k, v, g = (jax.random.normal(key, (b, t, FLAGS.heads, FLAGS.d_head))
                  for key in jax.random.split(jax.random.key(0), 4))
    for kind, window in (("dense", None), (f"local {FLAGS.window}", FLAGS.window)):
      fns = {}
      for block in (0, FLAGS.block):
        def loss(q, k, v, block=block):
          return jnp.sum(attention.xla_attention(q, k, v, window=window, block=block) * g)
        fns[block] = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))
      values = [attention.xla_attention(q, k, v, window=window, block=block) for block in fns]
      np.testing.assert_allclose(np.asarray(values[0]), np.asarray(values[1]), atol=1e-5, rtol=1e-5)
      times = {block: [] for block in fns}
      for block, fn in fns.items():
        jax.block_until_ready(fn(q, k, v))
      for _ in range(FLAGS.repeats):
        for block, fn in fns.items():
          start = time.perf_counter()
          jax.block_until_ready(fn(q, k, v))
          times[block].append(time.perf_counter() - start)
      one, sparse = (statistics.median(times[block]) * 1e3 for block in fns)
      pairs = attention.scores_computed(t, window, FLAGS.block) / (t * t)
      print(f"| {t} | {b} | {kind} | {one:.1f} | {sparse:.1f} | {one / sparse:.2f}x | {pairs:.3f} |")


if __name__ == "__main__":
  sys.path.insert(0, ".")
  app.run(main)
