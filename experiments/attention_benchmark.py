r"""Block-sparse vs one-block xla attention: forward + backward time of one attention call.

  python experiments/attention_benchmark.py --cases=256:4,2048:1 --window=256 --block=128

For each `seq_len:batch` case and each layer kind (dense causal, local band of --window), times
jax.grad of sum(attention(q, k, v) * g) with ModelConfig.attention_block = --block against 0 (one masked block),
interleaved, and prints the medians, the speed-up and the share of (query, key) pairs computed. Both forms give
the same values (checked here to 1e-5). With --torch, the dense rows also time PyTorch's
`scaled_dot_product_attention(is_causal=True)` forward + backward on the same tensors in the same rotation (its
CPU flash kernel: the PyTorch peer's attention in peer_benchmark.py).
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
flags.DEFINE_bool("torch", False, "Also time PyTorch's causal scaled_dot_product_attention on the dense rows.")
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
  extra = (" PyTorch sdpa (ms) |", "---:|") if FLAGS.torch else ("", "")
  print("| T | batch | layer | one block (ms) | block-sparse (ms) | speed-up | pairs computed |" + extra[0])
  print("|---:|---:|---|---:|---:|---:|---:|" + extra[1])
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
      if FLAGS.torch and window is None:
        fns["torch"] = _torch_sdpa(q, k, v, g)
      times = {block: [] for block in fns}
      for block, fn in fns.items():
        jax.block_until_ready(fn(q, k, v))
      for _ in range(FLAGS.repeats):
        for block, fn in fns.items():
          start = time.perf_counter()
          jax.block_until_ready(fn(q, k, v))
          times[block].append(time.perf_counter() - start)
      one, sparse = (statistics.median(times[block]) * 1e3 for block in (0, FLAGS.block))
      pairs = attention.scores_computed(t, window, FLAGS.block) / (t * t)
      row = f"| {t} | {b} | {kind} | {one:.1f} | {sparse:.1f} | {one / sparse:.2f}x | {pairs:.3f} |"
      if FLAGS.torch:  # PyTorch's sdpa has no band: a dash on the local rows
        row += f" {statistics.median(times['torch']) * 1e3:.1f} |" if "torch" in times else " - |"
      print(row)


def _torch_sdpa(q, k, v, g):
  """A call that runs PyTorch's causal attention forward + backward (gradients of sum(out * g)) on copies of
  q, k, v [B, T, H, D] in its [B, H, T, D] layout."""
  import os

  import numpy as np
  import torch

  torch.set_num_threads(os.cpu_count())
  qt, kt, vt, gt = (torch.tensor(np.asarray(x)).transpose(1, 2).contiguous() for x in (q, k, v, g))
  for x in (qt, kt, vt):
    x.requires_grad_(True)

  def run(*_):  # called as the jitted forms are, with the jax arrays, which it ignores
    out = torch.nn.functional.scaled_dot_product_attention(qt, kt, vt, is_causal=True)
    return torch.autograd.grad((out * gt).sum(), (qt, kt, vt))

  return run


if __name__ == "__main__":
  sys.path.insert(0, ".")
  app.run(main)
