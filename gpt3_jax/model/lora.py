"""LoRA adapters (Hu et al. 2021) beside the dense projections, and their merge into the base weights.

With ModelConfig.lora_rank = r > 0, each targeted projection y = x W gains y += (alpha / r) * (x A) B with
A [in, r] (normal, std 1 / sqrt(in)) and B [r, out] (zeros): at initialization the model is exactly its base.
The adapters are ordinary parameters named `<kernel>_lora_a` / `_lora_b` beside the kernel, partitioned by the
same rules table (A's input axes and B's output axes like the kernel's, the rank axis unsharded). Training a LoRA
model freezes everything else (assembly: OptimizerConfig.frozen defaults to every non-adapter parameter), so the
base gets no gradient work and no optimizer state. `merge(cfg, params)` folds the adapters into the kernels and
returns the plain model (lora_rank 0), for export or faster inference. `lora_dropout` drops each adapter's input
while training (the train step passes a 'dropout' rng derived from the step, so resume stays exact); evaluation,
sampling and the merge are deterministic.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from gpt3_jax.model.config import ModelConfig

ADAPTER_PATTERN = r".*_lora_[ab]"  # parameter names of the adapters (optimizer.param_name, full match)
# target -> the kernel it adapts, inside its module (attention or mlp).
KERNELS = {"qkv": "qkv_kernel", "attn_out": "out_kernel", "mlp_in": "in_kernel", "mlp_out": "out_kernel"}


def delta(module: nn.Module, cfg: ModelConfig, target: str, x: jax.Array, in_logical: Sequence,
          out_logical: Sequence, in_shape: Sequence[int], out_shape: Sequence[int]):
  """(alpha / r) * (x A) B for x [b, t, *in_shape] -> [b, t, *out_shape], or None when `target` has no adapter."""
  if cfg.lora_rank == 0 or target not in cfg.lora_targets:
    return None
  name, r = KERNELS[target], cfg.lora_rank
  fan_in = int(np.prod(in_shape))
  a = module.param(f"{name}_lora_a", nn.with_logical_partitioning(
      nn.initializers.normal(1.0 / math.sqrt(fan_in)), tuple(in_logical) + (None,)), tuple(in_shape) + (r,))
  b = module.param(f"{name}_lora_b", nn.with_logical_partitioning(
      nn.initializers.zeros, (None,) + tuple(out_logical)), (r,) + tuple(out_shape))
  dtype = jnp.dtype(cfg.compute_dtype)
  n_in = len(in_shape)
  if cfg.lora_dropout and module.has_rng("dropout"):  # training passes the rng; evaluation and inference do not
    x = nn.Dropout(cfg.lora_dropout, deterministic=False)(x)
  low = jnp.tensordot(x, a.astype(dtype), axes=(tuple(range(2, 2 + n_in)), tuple(range(n_in))))
  return jnp.tensordot(low, b.astype(dtype), axes=((2,), (0,))) * (cfg.lora_alpha / r)


def merge(cfg: ModelConfig, params):
  """(the plain config, params with each kernel W + (alpha / r) A B and no adapters)."""
  if cfg.lora_rank == 0:
    return cfg, params
  scale = cfg.lora_alpha / cfg.lora_rank

  def fold(tree):
    if not isinstance(tree, dict):
      return tree
    out = {}
    for key, value in tree.items():
      if key.endswith(("_lora_a", "_lora_b")):
        continue
      value = fold(value)
      if f"{key}_lora_a" in tree:
        a, b = np.asarray(tree[f"{key}_lora_a"], np.float32), np.asarray(tree[f"{key}_lora_b"], np.float32)
        value = np.asarray(value, np.float32) + scale * _product(a, b, np.ndim(value))
      out[key] = value
    return out

  return dataclasses.replace(cfg, lora_rank=0), fold(jax.tree.map(np.asarray, params))


def _product(a: np.ndarray, b: np.ndarray, kernel_ndim: int) -> np.ndarray:
  """A B contracted over the rank axis, with a leading stacked-layers axis on both when there is one."""
  lead = a.ndim + b.ndim - 2 - kernel_ndim  # 1 for scanned layers (both carry the layer axis), else 0
  if lead == 0:
    return np.tensordot(a, b, axes=((a.ndim - 1,), (0,)))
  return np.stack([np.tensordot(a[i], b[i], axes=((a.ndim - 2,), (0,))) for i in range(a.shape[0])])


def add_missing_adapters(params, fresh):
  """`params` (a plain model's, or a LoRA model's) with every adapter it lacks taken from `fresh` (a LoRA model's
  initial parameters)."""
  if not isinstance(fresh, dict):
    return params
  out = dict(params)
  for key, value in fresh.items():
    if key.endswith(("_lora_a", "_lora_b")):
      out.setdefault(key, value)
    elif key in params:
      out[key] = add_missing_adapters(params[key], value)
  return out
