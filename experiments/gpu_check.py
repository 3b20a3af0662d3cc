r"""One short check for a GPU machine: is the GPU path right, and how fast is it?

  python experiments/gpu_check.py                 # on the GPU: cuDNN checks, then GPT-3 Small and XL at n_ctx 2048
  python experiments/gpu_check.py --smoke         # anywhere: the same script on tiny shapes (xla attention), a test

1. cuDNN attention (dense and the local band) against the xla path in bf16: output and gradient differences.
2. For each model: a few steps of the real train step in bf16 against float32 on the same repeated batch (the
   loss curves must track within 0.05 nats); for each dtype, tokens/s and MFU (against the chip's datasheet peak)
   over the last half of the steps, XLA's peak memory of the compiled step and the compile time.
Prints one markdown table per part, ready for docs/benchmarks.md (with the date and this command), and a verdict
line; exits 1 when bf16 attention (0.05 absolute, gradients 2% of their largest) or the bf16 loss (0.05 nats) is
off the float32 reference.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import benchmark as bench  # noqa: E402  (its flags: --seq_len, --batch_size, --steps, --remat, --json)

flags.DEFINE_list("models", ["small", "xl"], "gin_configs/models/<name>.gin to run.")
flags.DEFINE_bool("smoke", False, "Tiny shapes on any backend (xla attention): checks that the script runs.")
FLAGS = flags.FLAGS
DEFAULTS = {"seq_len": 2048, "batch_size": 8, "steps": 6, "remat": "full"}

SMOKE_BINDINGS = ["ModelConfig.n_layers = 2", "ModelConfig.d_model = 64", "ModelConfig.n_heads = 2",
                  "ModelConfig.d_head = 32", "ModelConfig.vocab_size = 512", "ModelConfig.n_ctx = 128",
                  "ModelConfig.local_window = 32", "ModelConfig.attention_block = 32"]


def attention_rows(impl: str, seq_len: int):
  """cuDNN (or, for --smoke, the xla path itself) against the xla reference, dense and local, in bf16."""
  import jax
  import jax.numpy as jnp
  from gpt3_jax.model import attention

  rows = []
  keys = jax.random.split(jax.random.key(0), 3)
  q, k, v = (jax.random.normal(key, (2, seq_len, 16, 128), jnp.bfloat16) for key in keys)
  for window in (None, 256 if seq_len > 256 else seq_len // 4):
    def loss(fn):
      return lambda q, k, v: jnp.sum(fn(q, k, v).astype(jnp.float32) ** 2)
    def ours(q, k, v):
      return attention.attend(q, k, v, window=window, impl=impl)
    def ref(q, k, v):
      return attention.xla_attention(q.astype(jnp.float32), k.astype(jnp.float32), v.astype(jnp.float32),
                                     window=window, block=128)
    out, grads = jax.jit(ours)(q, k, v), jax.jit(jax.grad(loss(ours), argnums=(0, 1, 2)))(q, k, v)
    want, want_grads = jax.jit(ref)(q, k, v), jax.jit(jax.grad(loss(ref), argnums=(0, 1, 2)))(q, k, v)
    scale = max(float(jnp.max(jnp.abs(g))) for g in want_grads)
    rows.append({"impl": impl, "window": window or "dense",
                 "max abs out error": float(jnp.max(jnp.abs(out.astype(jnp.float32) - want))),
                 "max grad error / max grad": max(float(jnp.max(jnp.abs(g.astype(jnp.float32) - w)))
                                                    for g, w in zip(grads, want_grads)) / scale})
  return rows


def train_rows(name: str, impl: str):
  """bf16 against float32 on one repeated batch (loss curves), and the bf16 step's speed and memory."""
  import jax
  import numpy as np
  from gpt3_jax import configs
  from gpt3_jax import plan_compile
  from gpt3_jax.model.config import flops_per_token
  from gpt3_jax.parallel import hardware

  bindings = [f"ModelConfig.remat_policy = '{FLAGS.remat}'", "ModelConfig.attention_pattern = 'alternating'"]
  bindings += FLAGS.gin_bindings
  bindings += SMOKE_BINDINGS if FLAGS.smoke else []
  base = configs.parse_and_build([f"gin_configs/models/{name}.gin"], bindings).model
  rows, losses = [], {}
  for dtype in ("float32", "bfloat16"):
    cfg = base.replace(dtype=dtype, attention_impl=impl if dtype == "bfloat16" else "xla")
    compiled, state, batches, _, compile_s = bench.compiled_train_step(
        cfg, seq_len=FLAGS.seq_len, batch_size=FLAGS.batch_size, num_batches=1)
    lr = np.float32(3e-4)
    step_s, curve = [], []
    for i in range(FLAGS.steps):
      start = time.perf_counter()
      state, metrics = compiled(state, batches[0], lr)
      curve.append(float(jax.block_until_ready(metrics)["loss"]))
      if i >= FLAGS.steps // 2:
        step_s.append(time.perf_counter() - start)
    losses[dtype] = curve
    tokens = FLAGS.batch_size * FLAGS.seq_len
    median = statistics.median(step_s)
    peak = hardware.device_peak_flops()
    rows.append({"model": name, "dtype": dtype, "attention": cfg.attention_impl, "compile s": compile_s,
                 "step s": median, "tokens/s": tokens / median,
                 "MFU": (tokens * flops_per_token(cfg, FLAGS.seq_len) / median / (peak * jax.device_count())
                         if peak else None),
                 "peak GB": plan_compile.memory_summary(compiled)["peak_bytes"] / 1e9,  # the step, not the process
                 "first loss": curve[0], "last loss": curve[-1]})
    del state, compiled
  gap = max(abs(a - b) for a, b in zip(losses["float32"], losses["bfloat16"]))
  for row in rows:
    row["max loss gap bf16 vs f32"] = gap
  return rows


def main(argv):
  del argv
  import jax
  on_gpu = jax.default_backend() == "gpu"
  if not on_gpu and not FLAGS.smoke:
    raise SystemExit(f"error: experiments/gpu_check.py needs a GPU (JAX runs on {jax.default_backend()!r}); "
                     "use --smoke to check the script on tiny shapes")
  if FLAGS.smoke:
    FLAGS.seq_len, FLAGS.batch_size, FLAGS.steps = min(FLAGS.seq_len, 128), min(FLAGS.batch_size, 2), 4
  impl = "cudnn" if on_gpu else "xla"
  print(f"# gpu_check on {jax.devices()[0].device_kind} x {jax.device_count()}, jax {jax.__version__}, "
        f"seq {FLAGS.seq_len}, batch {FLAGS.batch_size}, remat {FLAGS.remat}")
  parts = [attention_rows(impl, FLAGS.seq_len)]
  for name in FLAGS.models:
    parts.append(train_rows(name, impl))
  from gpt3_jax.sweep.results import markdown_table
  for rows in parts:
    print("\n".join(markdown_table(rows, list(rows[0]))) + "\n")
    if FLAGS.json:
      for row in rows:
        print(json.dumps(row))
  problems = [f"{r['impl']} attention window {r['window']}" for r in parts[0]
              if r["max abs out error"] > 0.05 or r["max grad error / max grad"] > 0.02]
  problems += [f"{rows[0]['model']} bf16 loss off float32 by {rows[0]['max loss gap bf16 vs f32']:.3g} nats"
               for rows in parts[1:] if rows[0]["max loss gap bf16 vs f32"] > 0.05]
  print("verdict: " + ("OK" if not problems else "PROBLEMS: " + "; ".join(problems)))
  if problems:
    raise SystemExit(1)


if __name__ == "__main__":
  sys.path.insert(0, ".")
  for name, value in DEFAULTS.items():
    FLAGS.set_default(name, value)
  app.run(main)
