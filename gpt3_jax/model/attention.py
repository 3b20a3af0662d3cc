"""Causal self-attention, dense or locally banded (GPT-3 §2.1, Sparse Transformer local band).

A local layer with window w lets query i attend key j iff 0 <= i - j < w. Dense layers are the same with no band.

Implementations (ModelConfig.attention_impl):
  xla:    portable einsums + masked float32 softmax; runs everywhere. Block-sparse over query blocks of
          ModelConfig.attention_block: key blocks outside a query block's causal band are skipped.
  cudnn:  jax.nn.dot_product_attention(implementation='cudnn') with its causal local window (GPU only):
          flash attention that skips fully masked blocks.
  splash: Pallas splash attention with a causal local mask (TPU only): skips fully masked blocks.

Incremental decoding (SelfAttention(decode=True)) keeps a KV cache in the 'cache' collection and always uses
the xla implementation (the cache needs arbitrary per-row masks):
  cached_key, cached_value: [B, S, H, D]; cached_pos: [B, S] int32, the position of the token in each slot, or
    EMPTY_POSITION for an empty slot or a padding token (a huge position: causality hides it from every query);
  cache_index: int32 scalar, the number of token slots written so far (shared by all rows).
Dense layers keep S = max_len slots; local layers keep a ring buffer of S = min(window, max_len) slots, written
at slot (index mod S): the slot a new token overwrites holds a token that is already outside the band.
"""

from __future__ import annotations

import functools
from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name

from gpt3_jax.model import lora
from gpt3_jax.model.config import ModelConfig

# Large negative instead of -inf so a fully masked row (never produced by a causal mask) stays finite.
_MASK_VALUE = -0.7 * float(jnp.finfo(jnp.float32).max)
# A dense layer of at least this many query blocks (a power of two) runs as _causal_by_halves. Below it the
# per-block products ran as fast or faster on CPU (T = 256, 2 blocks: 35-42 against 46-50 ms forward + backward;
# T = 512, 4 blocks: within noise), and their few products compile quickly.
HALVES_MIN_BLOCKS = 8
# Position of an empty cache slot or a padding key: later than any query, so the causal mask hides it.
EMPTY_POSITION = 2 ** 30


def band_mask(q_positions: jax.Array, k_positions: jax.Array, window: Optional[int]) -> jax.Array:
  """Boolean [..., Tq, Tk] mask: key j visible from query i iff 0 <= i - j (< window when banded)."""
  delta = q_positions[..., :, None] - k_positions[..., None, :]
  visible = delta >= 0
  if window is not None:
    visible = visible & (delta < window)
  return visible


def _attention_core(q, k, v, mask):
  """q (pre-scaled): [..., Tq, D]; k, v: [..., Tk, D]; mask broadcastable to [..., Tq, Tk] -> [..., Tq, D].

  Float32 softmax, normalized after the value product (divide [.., Tq, D] rather than [.., Tq, Tk])."""
  _, total, out = _partial(q, k, v, mask)
  return out / total[..., None]


def attention_probabilities(q, k, window: Optional[int]) -> jax.Array:
  """The softmax weights [B, H, T, T] (float32) of self-attention over a whole sequence; q, k: [B, T, H, D].

  What the model's `intermediates` collection records for inspection (gpt3_jax/inference/attention_maps.py);
  training never computes it (the block-sparse product never forms the full matrix)."""
  t = q.shape[1]
  logits = jnp.einsum("bqhd,bkhd->bhqk", q * q.shape[-1] ** -0.5, k, preferred_element_type=jnp.float32)
  logits = jnp.where(band_mask(jnp.arange(t), jnp.arange(t), window), logits, _MASK_VALUE)
  return jax.nn.softmax(logits, axis=-1)


def key_block_start(q_start: int, window: Optional[int], block: int) -> int:
  """First key (a multiple of `block`) that any query in [q_start, q_start + block) can see."""
  return 0 if window is None else max(0, (q_start - window + 1) // block) * block


def blocks_apply(t_q: int, t_k: int, block: int) -> bool:
  """Whether xla_attention runs block-sparse: self-attention over T > block tokens, T a multiple of block."""
  return bool(block) and t_q == t_k and t_q > block and t_q % block == 0


def _reach(window: int, block: int) -> int:
  """Key blocks left of a query block's own that its band (width `window`) reaches."""
  return -((1 - window) // block)


def _own_blocks(n: int, window: Optional[int], block: int) -> int:
  """Leading query blocks of a length-n-block sequence that _block_sparse computes one by one, each over its
  exact key range; the rest share one product over (reach + 1)-block key windows.

  A local layer of HALVES_MIN_BLOCKS or more blocks whose band does not reach key 0 from its last block runs as
  one product: its first blocks' windows are padded on the left with masked keys (0 own blocks). Below that
  its blocks whose band starts at key 0 keep their own products; a dense layer's are all its own."""
  if window is None:
    return n
  reach = _reach(window, block)
  return 0 if n >= HALVES_MIN_BLOCKS and reach < n else min(reach, n)


def scores_computed(t: int, window: Optional[int], block: int) -> int:
  """(query, key) pairs xla_attention computes per head for a length-t sequence (t^2 in one block)."""
  if not blocks_apply(t, t, block):
    return t * t
  n = t // block
  own = _own_blocks(n, window, block)
  exact = sum(block * (start + block - key_block_start(start, window, block))
              for start in range(0, own * block, block))
  if own == n:
    return exact
  return exact + (n - own) * block * (_reach(window, block) + 1) * block


def model_pairs_computed(cfg: ModelConfig, t: int) -> int:
  """(query, key) pairs per head and sequence that all of the model's attention layers compute together."""
  return sum(scores_computed(t, window, cfg.attention_block) for window in cfg.layer_windows)


def _partial(q, k, v, mask=None):
  """Unnormalized softmax attention of q [..., Tq, D] over k, v [..., Tk, D]: (row max m, row sum l, out o) with
  o = sum_j exp(s_j - m) v_j and l = sum_j exp(s_j - m), all float32, so partials over disjoint key sets merge
  exactly (`_merge`). m is a stop_gradient constant: o / l is the softmax product whatever m is."""
  logits = jnp.einsum("...qd,...kd->...qk", q, k, preferred_element_type=jnp.float32)
  if mask is not None:
    logits = jnp.where(mask, logits, _MASK_VALUE)
  m = jax.lax.stop_gradient(jnp.max(logits, axis=-1))
  weights = jnp.exp(logits - m[..., None])
  o = jnp.einsum("...qk,...kd->...qd", weights.astype(v.dtype), v, preferred_element_type=jnp.float32)
  return m, jnp.sum(weights, axis=-1), o


def _merge(a, b):
  """Two partials of the same queries over disjoint keys -> the partial over their union."""
  m = jnp.maximum(a[0], b[0])
  wa, wb = jnp.exp(a[0] - m), jnp.exp(b[0] - m)
  return m, wa * a[1] + wb * b[1], wa[..., None] * a[2] + wb[..., None] * b[2]


def _causal_by_halves(qh, kh, vh, block: int):
  """Dense causal attention [B, H, T, D] -> [B, H, T, D] for T = block * 2^k, in log2(T / block) + 1 batched
  products (one per chunk size, each batched over all its chunks).

  Cut the sequence into chunks of c = T/2, T/4, ..., block: at each size, every odd chunk attends the whole even
  chunk before it (a square, unmasked product, batched over all such chunk pairs), and finally every block
  attends itself under the causal mask. Each (query, key) pair with key <= query is in exactly one product,
  and the partials merge by their row maxima (`_merge`). Same work as one product per query block over its
  causal prefix (n + 1) / 2n of the square, but XLA compiles 1 + log2(n) products, not n of different shapes
  (GPT-3 Small at T = 2048, block 128: 5 instead of 16 per dense layer; its train step compiled in 8.2-13.4
  against 13.8-15.3 s, and 4.2-5.6 s with one masked block: experiments/compile_benchmark.py, README)."""
  b, h, t, d = qh.shape
  n = t // block
  qb, kb, vb = (x.reshape(b, h, n, block, d) for x in (qh, kh, vh))
  diagonal = jnp.tril(jnp.ones((block, block), bool))
  m, l, o = (x.reshape(b, h, t, *x.shape[4:]) for x in _partial(qb, kb, vb, diagonal))
  chunks = 2
  while chunks <= n:
    c = t // chunks

    def pairs(x):  # [B, H, chunks/2, 2, c, ...]: chunk 2i (even) and 2i + 1 (odd)
      return x.reshape(b, h, chunks // 2, 2, c, *x.shape[3:])

    q_odd = pairs(qh)[:, :, :, 1]
    part = _partial(q_odd, pairs(kh)[:, :, :, 0], pairs(vh)[:, :, :, 0])
    acc = [pairs(x) for x in (m, l, o)]
    merged = _merge(tuple(x[:, :, :, 1] for x in acc), part)
    m, l, o = (jnp.stack([x[:, :, :, 0], y], axis=3).reshape(b, h, t, *x.shape[5:]) for x, y in zip(acc, merged))
    chunks *= 2
  return o / l[..., None]


def _block_sparse(qh, kh, vh, window: Optional[int], block: int):
  """[B, H, T, D] -> [B, H, T, D], query block by query block over the key blocks its band reaches.

  A dense layer of HALVES_MIN_BLOCKS or more blocks (a power of two) runs as `_causal_by_halves`.
  A local layer's query blocks past `_own_blocks` attend the same number of key blocks ending at their own,
  under the same band (relative positions repeat): they are one batched product over [B, H, blocks, block, D]
  against the stacked key windows, instead of one product each. From HALVES_MIN_BLOCKS blocks on that product
  covers every block: keys left of position 0 are padding, masked out, so a local layer compiles one product
  (GPT-3 Small at T = 2048: 1 instead of 3 (16 before 2026-12-02), at 48 instead of 45 computed block pairs)."""
  b, h, t, d = qh.shape
  n = t // block
  if window is None and n >= HALVES_MIN_BLOCKS and n & (n - 1) == 0:
    return _causal_by_halves(qh, kh, vh, block)
  own = _own_blocks(n, window, block)
  outs = []
  for i in range(own):  # each its own shape, over its exact key range
    start, stop = i * block, (i + 1) * block
    lo = key_block_start(start, window, block)
    mask = band_mask(jnp.arange(start, stop), jnp.arange(lo, stop), window)
    outs.append(_attention_core(qh[:, :, start:stop], kh[:, :, lo:stop], vh[:, :, lo:stop], mask))
  if own < n:
    reach, count = _reach(window, block), n - own
    pad = reach - own  # key blocks of padding left of position 0: all `reach` when own is 0, else none
    q_blocks = qh[:, :, own * block:].reshape(b, h, count, block, d)

    def windows(x):  # [B, H, count, (reach + 1) * block, D]: key blocks i - reach .. i of each query block i
      x = jnp.pad(x, ((0, 0), (0, 0), (pad * block, 0), (0, 0))) if pad else x
      blocks = x.reshape(b, h, n + pad, block, d)
      return jnp.concatenate([blocks[:, :, j:j + count] for j in range(reach + 1)], axis=3)

    span = (reach + 1) * block
    mask = band_mask(jnp.arange(reach * block, span), jnp.arange(span), window)  # the same for every block
    if pad:  # [count, block, span]: a window's keys left of position 0 are padding
      key_pos = (jnp.arange(own, n) - reach)[:, None] * block + jnp.arange(span)
      mask = mask & (key_pos >= 0)[:, None, :]
    out = _attention_core(q_blocks, windows(kh), windows(vh), mask)
    outs.append(out.reshape(b, h, count * block, d))
  return jnp.concatenate(outs, axis=2) if len(outs) > 1 else outs[0]


def xla_attention(q, k, v, *, window: Optional[int], q_positions=None, k_positions=None, block: int = 0):
  """Reference attention. q: [B, Tq, H, D]; k, v: [B, Tk, H, D] -> [B, Tq, H, D].

  Positions default to 0..T-1 for keys and the last Tq of those for queries (prefill / training).
  The batched products run in [B, H, T, D] layout.

  block > 0 (self-attention over a whole sequence, default positions, T a multiple of block larger than it):
  block-sparse. Queries are cut into blocks of `block`; each block attends only keys from the first block its
  causal band reaches up to its own end, so fully masked key blocks are never computed. Same result as the
  masked dense form (a masked key contributes exactly 0 either way). Work: a dense causal layer does
  (n + 1) / 2n of the dense products for n blocks, a local layer about (window + block) / T of them.
  Forward + backward on 2 CPU cores, H=12, D=64, block 128 (experiments/attention_benchmark.py): T=256, B=4
  dense 25 vs 32 ms; T=2048, B=1 dense 220 vs 391 ms, window 256 89 vs 386 ms.
  """
  tq, tk = q.shape[1], k.shape[1]
  q = q * q.shape[-1] ** -0.5
  qh, kh, vh = (jnp.swapaxes(t, 1, 2) for t in (q, k, v))  # [B, H, T, D]
  if q_positions is None and k_positions is None and blocks_apply(tq, tk, block):
    out = _block_sparse(qh, kh, vh, window, block)
  else:
    if k_positions is None:
      k_positions = jnp.arange(tk)
    if q_positions is None:
      q_positions = jnp.arange(tk - tq, tk)
    mask = band_mask(q_positions, k_positions, window)
    if mask.ndim == 3:  # per-batch positions [B, Tq, Tk]
      mask = mask[:, None]
    out = _attention_core(qh, kh, vh, mask)
  return jnp.swapaxes(out, 1, 2).astype(v.dtype)


def cudnn_attention(q, k, v, *, window: Optional[int]):
  """cuDNN flash attention; the local window is (window - 1) keys to the left, none to the right."""
  local = None if window is None else (window - 1, 0)
  return jax.nn.dot_product_attention(q, k, v, is_causal=True, local_window_size=local,
                                      implementation="cudnn")


def _splash_per_shard(q, k, v, *, window: Optional[int], interpret: bool):
  """The splash kernel over one device's rows and heads: q, k, v [B, T, H, D] -> [B, T, H, D]."""
  from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as sk
  from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as sm

  _, t, h, d = q.shape
  if window is None:
    mask = sm.CausalMask(shape=(t, t))
  else:
    mask = sm.LocalMask(shape=(t, t), window_size=(window - 1, 0), offset=0)
  kernel = sk.make_splash_mha(mask=sm.MultiHeadMask([mask] * h), head_shards=1, q_seq_shards=1,
                               interpret=interpret)
  # splash works on [H, T, D] per example; fold the 1/sqrt(d) scale into q.
  qh = jnp.swapaxes(q, 1, 2) * (d ** -0.5)
  out = jax.vmap(kernel)(qh, jnp.swapaxes(k, 1, 2), jnp.swapaxes(v, 1, 2))
  return jnp.swapaxes(out, 1, 2)


def activation_spec() -> jax.sharding.PartitionSpec:
  """The mesh axes of a [B, T, H, D] attention input under the logical-axis rules in context (the project's
  table, gpt3_jax/parallel/mesh.py, when none is set): rows over data x fsdp, heads over tensor."""
  from gpt3_jax.parallel import mesh as mesh_lib
  rules = nn.get_logical_axis_rules() or mesh_lib.LOGICAL_AXIS_RULES
  return nn.logical_to_mesh_axes(("act_batch", "act_length", "act_heads", "act_kv"), rules)


def splash_attention(q, k, v, *, window: Optional[int], interpret: bool = False):
  """Pallas splash attention (TPU): block-sparse kernel that skips blocks outside the causal band.

  A Mosaic kernel cannot be partitioned by XLA, so on a mesh of more than one device (the one `jax.set_mesh`
  puts in context, as the trainer does) it runs under shard_map: each device attends its own rows and heads,
  split as the logical-axis rules split activations. `interpret=True` runs the same Pallas kernel in the
  interpreter on any backend (how the tests check it on CPU).
  """
  per_shard = functools.partial(_splash_per_shard, window=window, interpret=interpret)
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty or mesh.size == 1:
    return per_shard(q, k, v)
  spec = activation_spec()
  return jax.shard_map(per_shard, mesh=mesh, in_specs=(spec, spec, spec), out_specs=spec, check_vma=False)(q, k, v)


def check_attention_impl(impl: str) -> None:
  """Fails with one line when `impl` cannot run on the default backend."""
  backend = jax.default_backend()
  needs = {"cudnn": "gpu", "splash": "tpu"}
  if impl in needs and backend != needs[impl]:
    raise ValueError(f"attention_impl={impl!r} needs a {needs[impl].upper()} backend but JAX is running on "
                     f"{backend!r}; set ModelConfig.attention_impl='xla'")


def attend(q, k, v, *, window: Optional[int], impl: str, block: int = 0):
  """Causal (optionally banded) attention over a full sequence with the chosen implementation; `block` is the
  xla implementation's query block (0: one block)."""
  if impl == "xla":
    return xla_attention(q, k, v, window=window, block=block)
  if impl == "cudnn":
    return cudnn_attention(q, k, v, window=window)
  if impl == "splash":
    return splash_attention(q, k, v, window=window)
  raise ValueError(f"unknown attention_impl {impl!r}")


def cache_slots(window: Optional[int], max_len: int) -> int:
  """KV-cache length of one layer: every position for a dense layer, a ring of the band for a local one."""
  return max_len if window is None else min(window, max_len)


class SelfAttention(nn.Module):
  """Multi-head causal self-attention with biases; heads * d_head may differ from d_model.

  With decode=True, __call__(x, positions) reads and appends to the KV cache (see the module docstring):
  positions [B, T] are each new token's position, negative for a padding token. The first call (inside
  `init`) only creates an empty cache sized for x: batch B and max_len = T.
  """

  cfg: ModelConfig
  window: Optional[int] = None  # None: dense; int: local band width
  decode: bool = False

  @nn.compact
  def __call__(self, x: jax.Array, positions: Optional[jax.Array] = None) -> jax.Array:
    cfg = self.cfg
    dtype, pdt = jnp.dtype(cfg.compute_dtype), jnp.dtype(cfg.param_dtype)
    init = nn.initializers.normal(cfg.init_std)
    out_init = nn.initializers.normal(cfg.init_std / (2 * cfg.n_layers) ** 0.5)  # GPT-2 residual scaling
    w_qkv = self.param("qkv_kernel", nn.with_logical_partitioning(init, ("embed", "qkv", "heads", "kv")),
                       (cfg.d_model, 3, cfg.n_heads, cfg.d_head), pdt)
    b_qkv = self.param("qkv_bias", nn.with_logical_partitioning(nn.initializers.zeros, ("qkv", "heads", "kv")),
                       (3, cfg.n_heads, cfg.d_head), pdt)
    w_out = self.param("out_kernel", nn.with_logical_partitioning(out_init, ("heads", "kv", "embed")),
                       (cfg.n_heads, cfg.d_head, cfg.d_model), pdt)
    b_out = self.param("out_bias", nn.with_logical_partitioning(nn.initializers.zeros, ("embed",)),
                       (cfg.d_model,), pdt)
    qkv = jnp.einsum("btd,dshk->btshk", x, w_qkv.astype(dtype)) + b_qkv.astype(dtype)
    if (d := lora.delta(self, cfg, "qkv", x, ("embed",), ("qkv", "heads", "kv"), (cfg.d_model,),
                        (3, cfg.n_heads, cfg.d_head))) is not None:
      qkv = qkv + d
    q, k, v = (nn.with_logical_constraint(qkv[:, :, i], ("act_batch", "act_length", "act_heads", "act_kv"))
               for i in range(3))
    if self.decode:
      y = self._cached_attention(q, k, v, positions)
    else:
      y = attend(q, k, v, window=self.window, impl=cfg.attention_impl, block=cfg.attention_block)
      if self.is_mutable_collection("intermediates"):  # only when asked for (apply(..., mutable=[...]))
        self.sow("intermediates", "attention_weights", attention_probabilities(q, k, self.window))
    y = checkpoint_name(y, "attention_context")
    out = jnp.einsum("bthk,hkd->btd", y, w_out.astype(dtype)) + b_out.astype(dtype)
    if (d := lora.delta(self, cfg, "attn_out", y, ("heads", "kv"), ("embed",), (cfg.n_heads, cfg.d_head),
                        (cfg.d_model,))) is not None:
      out = out + d
    return checkpoint_name(out, "attention_out")

  def _cached_attention(self, q, k, v, positions):
    """Attends the new tokens to [cache ; new tokens], then writes the new keys/values into the cache."""
    b, t, h, d = k.shape
    creating = not self.has_variable("cache", "cached_key")
    slots = cache_slots(self.window, t)  # only used when the cache is created: t is then max_len
    cached_key = self.variable("cache", "cached_key", jnp.zeros, (b, slots, h, d), k.dtype)
    cached_value = self.variable("cache", "cached_value", jnp.zeros, (b, slots, h, d), v.dtype)
    cached_pos = self.variable("cache", "cached_pos", jnp.full, (b, slots), EMPTY_POSITION, jnp.int32)
    cache_index = self.variable("cache", "cache_index", lambda: jnp.zeros((), jnp.int32))
    if positions is None:
      raise ValueError("SelfAttention(decode=True) needs per-row positions [B, T]")
    positions = jnp.broadcast_to(positions, (b, t)).astype(jnp.int32)
    if creating:  # init: shapes only, nothing is written
      return xla_attention(q, k, v, window=self.window)
    k_pos = jnp.where(positions >= 0, positions, EMPTY_POSITION)
    keys = jnp.concatenate([cached_key.value, k], axis=1)
    values = jnp.concatenate([cached_value.value, v], axis=1)
    all_pos = jnp.concatenate([cached_pos.value, k_pos], axis=1)
    y = xla_attention(q, keys, values, window=self.window, q_positions=positions, k_positions=all_pos)
    # Write the last min(t, S) new tokens at ring slots (index + j) mod S; a dense cache never wraps.
    size = cached_key.value.shape[1]
    keep = min(t, size)
    slot = (cache_index.value + jnp.arange(t - keep, t)) % size
    cached_key.value = cached_key.value.at[:, slot].set(k[:, t - keep:])
    cached_value.value = cached_value.value.at[:, slot].set(v[:, t - keep:])
    cached_pos.value = cached_pos.value.at[:, slot].set(k_pos[:, t - keep:])
    cache_index.value = cache_index.value + t
    return y
