"""Decode throughput: KV-cache `generate` vs cache-free `generate_recompute`, greedy, batch 1.

  python experiments/decode_benchmark.py [--new_tokens 64,128,256] [--prompt_len 32] [--d_model 256] ...

Each setting runs once to compile (not timed), then `--repeats` timed runs (best is reported). tokens/s counts
new tokens only. Weights are random (N(0, 0.02)), so the greedy outputs are arbitrary but must agree between the
two methods; the 'same' column checks that.
"""

from __future__ import annotations

import argparse
import platform
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from gpt3_jax.inference.sampling import generate, generate_recompute
from gpt3_jax.model.config import ModelConfig
from gpt3_jax.model.transformer import GPT


def best_time(fn, repeats):
  out = fn()  # compile
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    out = fn()
    times.append(time.perf_counter() - start)
  return min(times), out


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--new_tokens", default="64,128,256")
  parser.add_argument("--prompt_len", type=int, default=32)
  parser.add_argument("--d_model", type=int, default=256)
  parser.add_argument("--n_layers", type=int, default=4)
  parser.add_argument("--n_heads", type=int, default=8)
  parser.add_argument("--vocab_size", type=int, default=50257)
  parser.add_argument("--attention_pattern", default="dense")
  parser.add_argument("--local_window", type=int, default=64)
  parser.add_argument("--repeats", type=int, default=2)
  args = parser.parse_args()

  cfg = ModelConfig(vocab_size=args.vocab_size, n_ctx=1024, d_model=args.d_model, n_layers=args.n_layers,
                    n_heads=args.n_heads, d_head=args.d_model // args.n_heads,
                    attention_pattern=args.attention_pattern, local_window=args.local_window)
  params = nn.meta.unbox(jax.jit(GPT(cfg).init)(jax.random.key(0), jnp.zeros((1, 1), jnp.int32))["params"])
  prompt = np.random.default_rng(0).integers(0, cfg.vocab_size, args.prompt_len).tolist()
  print(f"# {jax.default_backend()} ({platform.processor() or platform.machine()}, {jax.device_count()} device), "
        f"jax {jax.__version__}; d_model={cfg.d_model} n_layers={cfg.n_layers} n_heads={cfg.n_heads} "
        f"vocab={cfg.vocab_size} pattern={cfg.attention_pattern}; batch 1, prompt {args.prompt_len} tokens, greedy")
  print("| new tokens | KV cache tok/s | recompute tok/s | speed-up | same |")
  print("|---|---|---|---|---|")
  for n in (int(x) for x in args.new_tokens.split(",")):
    kwargs = dict(max_new_tokens=n, temperature=0)
    t_cache, out_cache = best_time(lambda: generate(cfg, params, [prompt], **kwargs), args.repeats)
    t_recompute, out_recompute = best_time(lambda: generate_recompute(cfg, params, [prompt], **kwargs),
                                           args.repeats)
    print(f"| {n} | {n / t_cache:,.0f} | {n / t_recompute:,.0f} | {t_recompute / t_cache:.1f}x | "
          f"{'yes' if out_cache == out_recompute else 'NO'} |", flush=True)


if __name__ == "__main__":
  main()
