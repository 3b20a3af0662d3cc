"""The GPT-3 decoder: embeddings, a scanned stack of pre-LN blocks, final LayerNorm, tied LM head (and, for a
fine-tuned classifier, a `score` head at one token per row: `GPT.classify`).

Every parameter carries logical axis names (embed, heads, kv, mlp, vocab, position, layers, qkv); activations
carry act_* names. gpt3_jax/parallel/mesh.py maps both to mesh axes with one rules table.

Decoding: GPT(cfg, decode=True) has the same parameters plus a 'cache' collection (per attention layer, stacked
along the scanned layer axis like the params; see gpt3_jax/model/attention.py). Create the empty cache with
`init_cache`, then call `apply({'params': p, 'cache': c}, tokens, positions, mutable=['cache'])` with per-row
positions [B, T] (negative for padding tokens) on a prompt chunk, then on one token per step.
"""

from __future__ import annotations

from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name

from gpt3_jax.model import lora
from gpt3_jax.model.attention import EMPTY_POSITION, SelfAttention
from gpt3_jax.model.config import ModelConfig

_ACT = ("act_batch", "act_length", "act_embed")
_MASK_VALUE = -1e9  # logits of padded vocabulary entries (float32): exp() underflows to exactly 0


def remat_policy(name: str):
  """Named rematerialization policies (None means: do not wrap in remat)."""
  policies = {
      "none": None,
      "full": jax.checkpoint_policies.nothing_saveable,
      "save_dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
      "save_attention_mlp_outputs": jax.checkpoint_policies.save_only_these_names(
          "attention_out", "mlp_out"),
  }
  return policies[name]


def _layer_norm(cfg: ModelConfig, name: str) -> nn.LayerNorm:
  return nn.LayerNorm(
      epsilon=cfg.layer_norm_epsilon, dtype=jnp.dtype(cfg.compute_dtype), param_dtype=jnp.dtype(cfg.param_dtype),
      name=name,
      scale_init=nn.with_logical_partitioning(nn.initializers.ones, ("embed",)),
      bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("embed",)))


class Mlp(nn.Module):
  """GELU MLP d_model -> d_ff -> d_model with biases (GPT-2's tanh-approximate GELU)."""

  cfg: ModelConfig

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    cfg = self.cfg
    dtype, pdt = jnp.dtype(cfg.compute_dtype), jnp.dtype(cfg.param_dtype)
    init = nn.initializers.normal(cfg.init_std)
    out_init = nn.initializers.normal(cfg.init_std / (2 * cfg.n_layers) ** 0.5)
    zeros = nn.initializers.zeros
    w_in = self.param("in_kernel", nn.with_logical_partitioning(init, ("embed", "mlp")),
                      (cfg.d_model, cfg.mlp_width), pdt)
    b_in = self.param("in_bias", nn.with_logical_partitioning(zeros, ("mlp",)), (cfg.mlp_width,), pdt)
    w_out = self.param("out_kernel", nn.with_logical_partitioning(out_init, ("mlp", "embed")),
                       (cfg.mlp_width, cfg.d_model), pdt)
    b_out = self.param("out_bias", nn.with_logical_partitioning(zeros, ("embed",)), (cfg.d_model,), pdt)
    h = jnp.einsum("btd,df->btf", x, w_in.astype(dtype)) + b_in.astype(dtype)
    if (d := lora.delta(self, cfg, "mlp_in", x, ("embed",), ("mlp",), (cfg.d_model,), (cfg.mlp_width,))) is not None:
      h = h + d
    h = nn.with_logical_constraint(h, ("act_batch", "act_length", "act_mlp"))
    h = jax.nn.gelu(h, approximate=True)
    out = jnp.einsum("btf,fd->btd", h, w_out.astype(dtype)) + b_out.astype(dtype)
    if (d := lora.delta(self, cfg, "mlp_out", h, ("mlp",), ("embed",), (cfg.mlp_width,), (cfg.d_model,))) is not None:
      out = out + d
    return checkpoint_name(out, "mlp_out")


class Block(nn.Module):
  """Pre-LN Transformer block: x + attn(ln_1(x)), then + mlp(ln_2(x))."""

  cfg: ModelConfig
  window: Optional[int] = None
  decode: bool = False

  @nn.compact
  def __call__(self, x: jax.Array, positions: Optional[jax.Array] = None) -> jax.Array:
    attention = SelfAttention(self.cfg, self.window, decode=self.decode, name="attention")
    x = x + attention(_layer_norm(self.cfg, "ln_1")(x), positions)
    x = x + Mlp(self.cfg, name="mlp")(_layer_norm(self.cfg, "ln_2")(x))
    return nn.with_logical_constraint(x, _ACT)


class LayerUnit(nn.Module):
  """The repeating unit of the stack: one dense block, or a (dense, local) pair for the paper's pattern.

  Scanning over pairs keeps each block's window static, so a block-sparse kernel can skip masked work.
  """

  cfg: ModelConfig
  decode: bool = False

  @nn.compact
  def __call__(self, x: jax.Array, positions: Optional[jax.Array] = None):
    """positions: per-row [B, T] token positions, only read by the attention cache when decoding."""
    if self.cfg.attention_pattern == "dense":
      x = Block(self.cfg, None, self.decode, name="block")(x, positions)
    else:
      x = Block(self.cfg, None, self.decode, name="dense")(x, positions)
      x = Block(self.cfg, self.cfg.local_window, self.decode, name="local")(x, positions)
    return x, None


def num_units(cfg: ModelConfig) -> int:
  return cfg.n_layers if cfg.attention_pattern == "dense" else cfg.n_layers // 2


class GPT(nn.Module):
  """GPT-3 language model. __call__(tokens [B, T] int32) -> logits [B, T, padded_vocab] in cfg.logits_dtype.

  decode=True turns on the KV cache (module docstring); the parameters are the same.
  """

  cfg: ModelConfig
  decode: bool = False

  def setup(self):
    cfg = self.cfg
    init, pdt = nn.initializers.normal(cfg.init_std), jnp.dtype(cfg.param_dtype)
    self.wte = self.param("wte", nn.with_logical_partitioning(init, ("vocab", "embed")),
                          (cfg.padded_vocab_size, cfg.d_model), pdt)
    self.wpe = self.param("wpe", nn.with_logical_partitioning(init, ("position", "embed")),
                          (cfg.n_ctx, cfg.d_model), pdt)
    unit = LayerUnit
    policy = remat_policy(cfg.remat_policy)
    if cfg.remat_policy != "none":
      unit = nn.remat(unit, policy=policy, prevent_cse=not cfg.scan_layers)
    if cfg.scan_layers:
      self.layers = nn.scan(
          unit, variable_axes={"params": 0, "cache": 0, "intermediates": 0},
          split_rngs={"params": True, "dropout": True}, in_axes=nn.broadcast,
          length=num_units(cfg), unroll=min(cfg.scan_unroll, num_units(cfg)),
          metadata_params={nn.PARTITION_NAME: "layers"})(
              cfg, self.decode, name="layers")
    else:
      self.layers = [unit(cfg, self.decode, name=f"layers_{i}") for i in range(num_units(cfg))]
    self.ln_f = _layer_norm(cfg, "ln_f")
    if cfg.class_labels:
      self.score = self.param("score", nn.with_logical_partitioning(init, ("embed", None)),
                              (cfg.d_model, cfg.num_labels), jnp.float32)  # trained, as LoRA's adapters

  def __call__(self, tokens: jax.Array, positions: Optional[jax.Array] = None, *,
               last_only: bool = False) -> jax.Array:
    """Logits [B, T, padded_vocab]; last_only=True returns only the last column [B, 1, padded_vocab].

    positions default to 0..T-1. When decoding they are required, per row [B, T], and a negative position
    marks a padding token (it sees nothing and nothing sees it; its embedding uses position 0).
    """
    x = self.hidden(tokens, positions)
    if last_only:
      x = x[:, -1:]
    return self.logits(x)

  def classify(self, tokens: jax.Array, last: jax.Array) -> jax.Array:
    """Class logits [B, num_labels] (float32) of the head (cfg.class_labels) at each row's token `last` [B]:
    the last non-padding token, as Hugging Face's GPT2ForSequenceClassification reads it."""
    x = self.hidden(tokens)
    pooled = jnp.take_along_axis(x, last[:, None, None], axis=1)[:, 0]
    return jnp.einsum("bd,dl->bl", pooled, self.score.astype(pooled.dtype), preferred_element_type=jnp.float32)

  def hidden(self, tokens: jax.Array, positions: Optional[jax.Array] = None) -> jax.Array:
    """Final hidden states ln_f(h) [B, T, d_model] (the input of the tied LM head); positions as __call__."""
    cfg = self.cfg
    dtype = jnp.dtype(cfg.compute_dtype)
    if positions is None:
      if self.decode:
        raise ValueError("GPT(decode=True) needs per-row positions [B, T]")
      if tokens.shape[-1] > cfg.n_ctx:
        raise ValueError(f"sequence length {tokens.shape[-1]} exceeds the position table n_ctx={cfg.n_ctx}")
      positions = jnp.arange(tokens.shape[-1])[None]
    attn_positions = None
    if self.decode:
      attn_positions = jnp.broadcast_to(positions, tokens.shape)
      positions = jnp.maximum(attn_positions, 0)
    x = (jnp.take(self.wte, tokens, axis=0) + jnp.take(self.wpe, positions, axis=0)).astype(dtype)
    x = nn.with_logical_constraint(x, _ACT)
    if cfg.scan_layers:
      x, _ = self.layers(x, attn_positions)
    else:
      for layer in self.layers:
        x, _ = layer(x, attn_positions)
    return self.ln_f(x)

  def logits(self, x: jax.Array) -> jax.Array:
    """Tied output projection; padded vocabulary entries get -1e9 added (probability exactly 0).

    An added [V] bias rather than a select: its gradient is the identity, so the backward pass has no masking
    pass over the [B, T, V] logits gradient. The product accumulates in float32 and is stored in
    cfg.logits_dtype."""
    logits = jnp.einsum("btd,vd->btv", x, self.wte.astype(x.dtype), preferred_element_type=jnp.float32)
    logits = logits.astype(jnp.dtype(self.cfg.logits_dtype))
    logits = nn.with_logical_constraint(logits, ("act_batch", "act_length", "act_vocab"))
    real = jnp.arange(self.cfg.padded_vocab_size) < self.cfg.vocab_size
    return logits + jnp.where(real, 0.0, _MASK_VALUE).astype(logits.dtype)


def init_cache(cfg: ModelConfig, batch: int, max_len: int) -> dict:
  """An empty KV cache (the 'cache' collection of GPT(cfg, decode=True)) for `batch` rows of `max_len` slots.

  Only shapes are traced (jax.eval_shape), so no parameters are computed. Empty slots hold EMPTY_POSITION.
  A dense layer's cache holds max_len token slots in all (prompt chunk + steps): writing more wraps around and
  overwrites the oldest keys, so size it for everything the rows will feed (local rings wrap by design).
  """
  model = GPT(cfg, decode=True)
  tokens = jnp.zeros((batch, max_len), jnp.int32)
  shapes = jax.eval_shape(
      lambda: model.init(jax.random.key(0), tokens, jnp.broadcast_to(jnp.arange(max_len), tokens.shape)))
  shapes = nn.meta.unbox(shapes["cache"])

  def empty(path, leaf):
    fill = EMPTY_POSITION if path[-1].key == "cached_pos" else 0
    return jnp.full(leaf.shape, fill, leaf.dtype)

  return jax.tree_util.tree_map_with_path(empty, shapes)


def unboxed_params(params):
  """The model's parameter tree from {'params': tree} or the tree itself, logical-partitioning boxes removed."""
  if "params" in params and "wte" not in params:
    params = params["params"]
  return nn.meta.unbox(params)
