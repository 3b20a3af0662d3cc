"""Attention weights of a trained model, layer by layer, for inspection (the notebook's images).

The model records each layer's softmax weights in its `intermediates` collection only when that collection is
mutable (gpt3_jax/model/attention.py: attention_probabilities), so training and sampling never pay for them.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from gpt3_jax.model.config import ModelConfig
from gpt3_jax.model.transformer import GPT, unboxed_params


def attention_weights(cfg: ModelConfig, params, tokens) -> np.ndarray:
  """Softmax weights [n_layers, B, n_heads, T, T] of every layer (in depth order) for tokens [B, T]."""
  tokens = jnp.asarray(tokens, jnp.int32)
  if tokens.ndim == 1:
    tokens = tokens[None]
  record = jax.jit(lambda p, t: GPT(cfg).apply({"params": p}, t, mutable=["intermediates"])[1])
  state = record(unboxed_params(params), tokens)
  found = []  # (unit, position in the unit, weights [B, H, T, T])

  def visit(path, leaf):
    keys = [getattr(p, "key", getattr(p, "idx", None)) for p in path]
    if "attention_weights" not in keys:
      return
    names = [str(k) for k in keys]
    within = 1 if "local" in names else 0  # a (dense, local) unit: the local block is the second layer
    unit = next((int(n.split("_", 1)[1]) for n in names if n.startswith("layers_")), None)
    stacked = np.asarray(leaf[0])  # sow keeps a tuple of the values recorded
    if unit is None:  # scanned layers: the leading axis is the unit
      found.extend((u, within, stacked[u]) for u in range(stacked.shape[0]))
    else:
      found.append((unit, within, stacked))

  jax.tree_util.tree_map_with_path(visit, state["intermediates"], is_leaf=lambda x: isinstance(x, tuple))
  found.sort(key=lambda f: (f[0], f[1]))
  if len(found) != cfg.n_layers:
    raise RuntimeError(f"found attention weights of {len(found)} layers, expected {cfg.n_layers}")
  return np.stack([w for _, _, w in found])
