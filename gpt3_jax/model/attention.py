"""Causal self-attention, dense or locally banded (GPT-3 §2.1, Sparse Transformer local band).

A local layer with window w lets query i attend key j iff 0 <= i - j < w. Dense layers are the same with no band.

Implementations (ModelConfig.attention_impl):
  xla:    portable einsum + masked softmax (float32 softmax); runs everywhere, masks but does not skip work.
  cudnn:  jax.nn.dot_product_attention(implementation='cudnn') with its causal local window (GPU only):
          flash attention that skips fully masked blocks.
  splash: Pallas splash attention with a causal local mask (TPU only): skips fully masked blocks.
"""

from __future__ import annotations

from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name

from gpt3_jax.model.config import ModelConfig

# Large negative instead of -inf so a fully masked row (never produced by a causal mask) stays finite.
_MASK_VALUE = -0.7 * float(jnp.finfo(jnp.float32).max)


def band_mask(q_positions: jax.Array, k_positions: jax.Array, window: Optional[int]) -> jax.Array:
  """Boolean [..., Tq, Tk] mask: key j visible from query i iff 0 <= i - j (< window when banded)."""
  delta = q_positions[..., :, None] - k_positions[..., None, :]
  visible = delta >= 0
  if window is not None:
    visible = visible & (delta < window)
  return visible


def xla_attention(q, k, v, *, window: Optional[int], q_positions=None, k_positions=None):
  """Reference attention. q: [B, Tq, H, D]; k, v: [B, Tk, H, D] -> [B, Tq, H, D].

  Positions default to 0..T-1 for keys and the last Tq of those for queries (prefill / training).
  """
  tq, tk = q.shape[1], k.shape[1]
  if k_positions is None:
    k_positions = jnp.arange(tk)
  if q_positions is None:
    q_positions = jnp.arange(tk - tq, tk)
  scale = q.shape[-1] ** -0.5
  logits = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32) * scale
  mask = band_mask(q_positions, k_positions, window)
  if mask.ndim == 3:  # per-batch positions [B, Tq, Tk]
    mask = mask[:, None]
  logits = jnp.where(mask, logits, _MASK_VALUE)
  probs = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
  return jnp.einsum("bhqk,bkhd->bqhd", probs, v)


def cudnn_attention(q, k, v, *, window: Optional[int]):
  """cuDNN flash attention; the local window is (window - 1) keys to the left, none to the right."""
  local = None if window is None else (window - 1, 0)
  return jax.nn.dot_product_attention(q, k, v, is_causal=True, local_window_size=local,
                                      implementation="cudnn")


def splash_attention(q, k, v, *, window: Optional[int]):
  """Pallas splash attention (TPU): block-sparse kernel that skips blocks outside the causal band."""
  from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as sk
  from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as sm

  _, t, h, d = q.shape
  if window is None:
    mask = sm.CausalMask(shape=(t, t))
  else:
    mask = sm.LocalMask(shape=(t, t), window_size=(window - 1, 0), offset=0)
  kernel = sk.make_splash_mha(mask=sm.MultiHeadMask([mask] * h), head_shards=1, q_seq_shards=1)
  # splash works on [H, T, D] per example; fold the 1/sqrt(d) scale into q.
  qh = jnp.swapaxes(q, 1, 2) * (d ** -0.5)
  out = jax.vmap(kernel)(qh, jnp.swapaxes(k, 1, 2), jnp.swapaxes(v, 1, 2))
  return jnp.swapaxes(out, 1, 2)


def check_attention_impl(impl: str) -> None:
  """Fails with one line when `impl` cannot run on the default backend."""
  backend = jax.default_backend()
  needs = {"cudnn": "gpu", "splash": "tpu"}
  if impl in needs and backend != needs[impl]:
    raise ValueError(f"attention_impl={impl!r} needs a {needs[impl].upper()} backend but JAX is running on "
                     f"{backend!r}; set ModelConfig.attention_impl='xla'")


def attend(q, k, v, *, window: Optional[int], impl: str):
  """Causal (optionally banded) attention over a full sequence with the chosen implementation."""
  if impl == "xla":
    return xla_attention(q, k, v, window=window)
  if impl == "cudnn":
    return cudnn_attention(q, k, v, window=window)
  if impl == "splash":
    return splash_attention(q, k, v, window=window)
  raise ValueError(f"unknown attention_impl {impl!r}")


class SelfAttention(nn.Module):
  """Multi-head causal self-attention with biases; heads * d_head may differ from d_model."""

  cfg: ModelConfig
  window: Optional[int] = None  # None: dense; int: local band width

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    cfg = self.cfg
    dtype = jnp.dtype(cfg.dtype)
    init = nn.initializers.normal(cfg.init_std)
    out_init = nn.initializers.normal(cfg.init_std / (2 * cfg.n_layers) ** 0.5)  # GPT-2 residual scaling
    w_qkv = self.param("qkv_kernel", nn.with_logical_partitioning(init, ("embed", "qkv", "heads", "kv")),
                       (cfg.d_model, 3, cfg.n_heads, cfg.d_head))
    b_qkv = self.param("qkv_bias", nn.with_logical_partitioning(nn.initializers.zeros, ("qkv", "heads", "kv")),
                       (3, cfg.n_heads, cfg.d_head))
    w_out = self.param("out_kernel", nn.with_logical_partitioning(out_init, ("heads", "kv", "embed")),
                       (cfg.n_heads, cfg.d_head, cfg.d_model))
    b_out = self.param("out_bias", nn.with_logical_partitioning(nn.initializers.zeros, ("embed",)),
                       (cfg.d_model,))
    qkv = jnp.einsum("btd,dshk->sbthk", x, w_qkv.astype(dtype)) + b_qkv.astype(dtype)[:, None, None]
    q, k, v = (nn.with_logical_constraint(t, ("act_batch", "act_length", "act_heads", "act_kv")) for t in qkv)
    y = attend(q, k, v, window=self.window, impl=cfg.attention_impl)
    y = checkpoint_name(y, "attention_context")
    out = jnp.einsum("bthk,hkd->btd", y, w_out.astype(dtype)) + b_out.astype(dtype)
    return checkpoint_name(out, "attention_out")
